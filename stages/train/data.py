"""What a model trains on, chosen from its checkpoint config: the training datasets over its inputs and the loss.

Pose models read clips of the render output (``volumes``); RGBPose also reads the RGB frames stage output
(``frames``) through aligned views, and trains on the sum of its two heads' cross-entropies. The test views
(also used for validation) are inference.data's.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from inference.clip_spec import clip_spec_of
from models import uses_frames
from models.rgbpose import loss
from stages.train.dataset import TrainClips
from stages.train.loop import Criterion
from stages.train.rgbpose_data import RGBPoseTrainClips


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
