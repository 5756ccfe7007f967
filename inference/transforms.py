"""Augmentations on stored heatmap tensors [K, T, H, W] (pyskl's keypoint transforms, done on pixels).

pyskl crops, resizes and flips the keypoints and then renders; skel renders once and applies the same
geometry to the rendered volume: an integer crop box, a bilinear resize, and a mirror along W with the
left/right channels exchanged (``flip_perm`` from the volume store).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

AREA = (0.56, 1.0)  # pyskl PoseC3D RandomResizedCrop(area_range=(0.56, 1.0))
ASPECT = (3 / 4, 4 / 3)


def crop_box(h: int, w: int, rng: np.random.RandomState, area: tuple[float, float] = AREA,
             aspect: tuple[float, float] = ASPECT, attempts: int = 10) -> tuple[int, int, int, int]:
    """pyskl ``RandomResizedCrop.get_crop_bbox``: (top, left, height, width); centre square if all tries fail."""
    ratios = np.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1]), size=attempts))
    areas = rng.uniform(*area, size=attempts) * h * w
    widths = np.round(np.sqrt(areas * ratios)).astype(np.int32)
    heights = np.round(np.sqrt(areas / ratios)).astype(np.int32)
    for cw, ch in zip(widths.tolist(), heights.tolist(), strict=True):
        if ch <= h and cw <= w:
            left = rng.randint(0, w - cw + 1)
            top = rng.randint(0, h - ch + 1)
            return top, left, ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of the last two dims of [K, T, H, W] (or [N, K, T, H, W]) to size x size.

    The (k, t) planes go through one channels-last image, which is faster on the CPU than K*T planes in
    the usual layout. The result is a view with channels-last strides (consumers copy it anyway).
    """
    if x.shape[-2:] == (size, size):
        return x
    planes = x.reshape(1, -1, *x.shape[-2:]).contiguous(memory_format=torch.channels_last)
    out = F.interpolate(planes, size=(size, size), mode="bilinear", align_corners=False)
    return out[0].unflatten(0, x.shape[:-2])


def flip(x: torch.Tensor, perm: list[int] | torch.Tensor) -> torch.Tensor:
    """Horizontal mirror of [..., K, T, H, W] (column j -> W-1-j) with left/right channels exchanged."""
    return x.flip(-1)[..., perm, :, :, :]


@dataclass(frozen=True)
class Augment:
    """One training clip's random geometry: a crop box (top, left, height, width) and whether to mirror.

    Mirroring commutes with the (align_corners=False) resize, so it can be applied to the small cropped
    float16 frames before they are converted and resized.
    """

    box: tuple[int, int, int, int]
    mirror: bool

    @classmethod
    def draw(cls, h: int, w: int, rng: np.random.RandomState, flip_ratio: float = 0.5) -> Augment:
        """RandomResizedCrop's box, then Flip's coin (pyskl's order of draws)."""
        box = crop_box(h, w, rng)
        return cls(box, bool(rng.rand() < flip_ratio))
