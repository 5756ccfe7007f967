"""The test views a checkpoint's model consumes, chosen from its config: pose clips of the render output
(``volumes``), or for RGBPose aligned RGB frames (``frames``) and heatmaps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch.utils.data import Dataset

from inference.rgbpose_sampling import ClipSpec
from inference.rgbpose_views import RGBPoseEvalClips
from inference.views import EvalClips
from stages.train.params import uses_frames

RGB_SCALE = 4  # RGBPose: RGB side / pose side (the RGB stem downsamples 4x more than the pose stem)


def clip_spec_of(config: dict, size: int | None = None) -> ClipSpec:
    """A frames model's ClipSpec from its config; ``size`` overrides the pose side (the RGB side is 4x it)."""
    spec = ClipSpec(**config["clip_spec"])
    return spec if size is None else replace(spec, rgb_size=RGB_SCALE * size, pose_size=size)


def eval_set(config: dict, inputs: dict[str, Path], split: str | None, *, num_clips: int, flip: bool = False,
             size: int | None = None) -> Dataset:
    """Fixed test views; ``size`` None: the pose side as rendered (RGB 4x that)."""
    if uses_frames(config["model"]):
        spec = clip_spec_of(config, size or config["test_size"])
        return RGBPoseEvalClips(inputs["volumes"], inputs["frames"], split, spec, num_clips=num_clips, flip=flip)
    return EvalClips(inputs["volumes"], split, clip_len=config["clip_len"], size=size, num_clips=num_clips, flip=flip)
