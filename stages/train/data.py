"""What a model trains on, chosen from its checkpoint config: the training datasets over its inputs and the loss.

Pose models read clips of the render output (``volumes``); RGBPose also reads the RGB frames stage output
(``frames``) through aligned views, and trains on the sum of its two heads' cross-entropies. The test views
(also used for validation) are inference.data's.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

# eval_set: re-exported for stages/train/stage.py (``data.eval_set``) until it imports inference.data itself
from inference.data import RGB_SCALE, clip_spec_of, eval_set  # noqa: F401
from inference.rgbpose_sampling import ClipSpec
from models.rgbpose import loss
from stages.train.dataset import TrainClips
from stages.train.loop import Criterion
from stages.train.params import uses_frames
from stages.train.rgbpose_data import RGBPoseTrainClips


def clip_spec(model: str, model_args: dict, clip_len: int, size: int, flip_ratio: float) -> dict:
    """Extra config of a frames model: its ClipSpec (pose clip_len x size, RGB 1/speed_ratio x 4 size)."""
    if not uses_frames(model):
        return {}
    ratio = int(model_args.get("speed_ratio", 4))
    if clip_len % ratio:
        raise ValueError(f"rgbpose: clip_len {clip_len} must be a multiple of speed_ratio {ratio}")
    spec = ClipSpec(rgb_len=clip_len // ratio, pose_len=clip_len, rgb_size=RGB_SCALE * size, pose_size=size,
                    flip_ratio=flip_ratio)
    return {"clip_spec": asdict(spec)}


def train_set(config: dict, inputs: dict[str, Path], split: str | None, *, seed: int, repeat: int,
              flip_ratio: float) -> Dataset:
    if uses_frames(config["model"]):
        return RGBPoseTrainClips(inputs["volumes"], inputs["frames"], split, clip_spec_of(config), seed=seed,
                                 repeat=repeat)
    return TrainClips(inputs["volumes"], split, clip_len=config["clip_len"], size=config["input_size"], seed=seed,
                      repeat=repeat, flip_ratio=flip_ratio)


def _rgbpose_loss(outputs: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    return loss(outputs, labels).total  # rgb + pose cross-entropy, 1:1


def criterion(config: dict) -> Criterion:
    return _rgbpose_loss if uses_frames(config["model"]) else F.cross_entropy
