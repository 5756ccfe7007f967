"""Aligned RGB + pose clips for RGBPose-Conv3D: one temporal grid, one crop and one flip for both modalities.

Frame t of a pose volume and frame t of its RGB array (``stages.frames``) are the same video frame.
Temporal: the T frames are split into ``pose_len`` equal segments; pose frame j sits at (j + φ)·T/pose_len
and RGB frame i at the centre of pose frames r·i … r·i + r − 1 (r = pose_len / rgb_len), i.e. the RGB grid is
the pose grid coarsened over the same span. The phase φ is random in training and evenly spread over test
clips. (pyskl's MMUniformSampleFrames samples the two modalities independently; aligned grids keep each RGB
frame at the centre of the pose frames the lateral convolutions pool into it.)
Spatial: one box in normalised coordinates, drawn like pyskl's RandomResizedCrop (area 0.56–1, aspect
3/4–4/3) on the square crop both modalities share, and one flip decision; each modality is resampled
(bilinear) from that box to its own size. A flip mirrors both and swaps the left/right pose channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from inference.clip_spec import ClipSpec
from inference.transforms import crop_box
from models import IMAGENET_MEAN, IMAGENET_STD  # pyskl rgbpose_conv3d img_norm_cfg

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in [0, 1] of the stored crop
FULL: Box = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class Clip:
    """One sampled view: frame indices of each modality, the normalised crop box and the flip."""

    rgb: np.ndarray  # int64 [rgb_len]
    pose: np.ndarray  # int64 [pose_len]
    box: Box = FULL
    flip: bool = False


def clip_indices(n_frames: int, spec: ClipSpec, phase: float) -> tuple[np.ndarray, np.ndarray]:
    """(RGB, pose) frame indices on the shared grid at ``phase`` in [0, 1); short videos repeat frames."""
    if n_frames < 1:
        raise ValueError("cannot sample from a video with no frames")
    ratio = spec.pose_len // spec.rgb_len
    step = n_frames / spec.pose_len
    pose = (np.arange(spec.pose_len) + phase) * step
    rgb = (np.arange(spec.rgb_len) * ratio + (ratio - 1) / 2 + phase) * step
    return tuple(np.minimum(np.floor(x), n_frames - 1).astype(np.int64) for x in (rgb, pose))


def random_box(rng: np.random.RandomState, spec: ClipSpec) -> Box:
    """pyskl RandomResizedCrop (``crop_box``) on the square crop at the RGB side's pixels, normalised to [0, 1]."""
    side = spec.rgb_size
    top, left, h, w = crop_box(side, side, rng, spec.area, spec.aspect)
    return (left / side, top / side, (left + w) / side, (top + h) / side)


def train_clip(n_frames: int, spec: ClipSpec, rng: np.random.RandomState) -> Clip:
    """A random training view: random phase, random box, flip with probability ``spec.flip_ratio``."""
    rgb, pose = clip_indices(n_frames, spec, rng.uniform())
    box = random_box(rng, spec)
    return Clip(rgb, pose, box, bool(rng.rand() < spec.flip_ratio))


def eval_clips(n_frames: int, spec: ClipSpec, num_clips: int, flip: bool = False) -> list[Clip]:
    """``num_clips`` deterministic views at evenly spread phases, whole crop (mirrored when ``flip``)."""
    return [Clip(*clip_indices(n_frames, spec, (c + 0.5) / num_clips), FULL, flip) for c in range(num_clips)]


def view(x: torch.Tensor, box: Box, flip: bool, size: int) -> torch.Tensor:
    """Resample [C, T, H, W] from the normalised ``box`` to [C, T, size, size] (bilinear), mirrored if ``flip``.

    The whole box at the same size is the identity, and its mirror maps column j to W − 1 − j exactly.
    """
    c, t, h, w = x.shape
    x0, y0, x1, y1 = box
    sx = (x1 - x0) * (-1 if flip else 1)
    theta = torch.tensor([[[sx, 0.0, x0 + x1 - 1], [0.0, y1 - y0, y0 + y1 - 1]]], dtype=x.dtype)
    grid = F.affine_grid(theta, [1, c * t, size, size], align_corners=False)
    out = F.grid_sample(x.reshape(1, c * t, h, w), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(c, t, size, size)


def apply_clip(rgb: np.ndarray, heatmaps: np.ndarray, clip: Clip, spec: ClipSpec,
               flip_perm: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The network inputs of one view: normalised imgs [3, rgb_len, S, S] and heatmaps [K, pose_len, s, s].

    ``rgb`` is uint8 [rgb_len, H, W, 3] (the frames at ``clip.rgb``), ``heatmaps`` float32 [K, pose_len, h, w]
    (the volume at ``clip.pose``); ``flip_perm`` is the volume store's left/right channel permutation.
    """
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    imgs = (torch.from_numpy(rgb).permute(3, 0, 1, 2).float() - mean) / std
    imgs = view(imgs, clip.box, clip.flip, spec.rgb_size)
    heat = view(torch.as_tensor(heatmaps, dtype=torch.float32), clip.box, clip.flip, spec.pose_size)
    if clip.flip:
        heat = heat[flip_perm]
    return imgs, heat
