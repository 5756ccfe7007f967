"""The test views a checkpoint's model consumes, chosen from its config: pose clips of the render output
(``volumes``), or for RGBPose aligned RGB frames (``frames``) and heatmaps."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from inference.clip_spec import clip_spec_of
from inference.rgbpose_views import RGBPoseEvalClips
from inference.views import EvalClips
from models import uses_frames


def eval_set(config: dict, inputs: dict[str, Path], split: str | None, *, num_clips: int, flip: bool = False,
             size: int | None = None) -> Dataset:
    """Fixed test views; ``size`` None: the pose side as rendered (RGB 4x that)."""
    if uses_frames(config["model"]):
        spec = clip_spec_of(config, size or config["test_size"])
        return RGBPoseEvalClips(inputs["volumes"], inputs["frames"], split, spec, num_clips=num_clips, flip=flip)
    return EvalClips(inputs["volumes"], split, clip_len=config["clip_len"], size=size, num_clips=num_clips, flip=flip)
