"""Batch augmentations on the device, after the loader's crop / resize / flip: a small random affine per
clip, mixup, and label smoothing (as soft targets, so one cross-entropy serves all three).

Randomness comes from torch's generator of the batch's device, which a resumed run restores from
``last.pt``, so a killed run still ends with the same weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BatchAugment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (x, labels) -> (x, targets)


@dataclass(frozen=True)
class ExtraAug:
    """Strengths; 0 turns a part off. Angles in degrees; ``scale`` 0.1 means a zoom in [0.9, 1.1]."""

    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha) mixing weight; pairs are a random permutation of the batch
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if min(self.rotate, self.scale, self.shear, self.mixup, self.label_smoothing) < 0:
            raise ValueError("augmentation strengths must be >= 0")
        if self.scale >= 1 or self.label_smoothing >= 1:
            raise ValueError("affine scale and label smoothing must be < 1")

    @property
    def affine(self) -> bool:
        return bool(self.rotate or self.scale or self.shear)


def _uniform(n: int, half_width: float, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, device=device) * 2 - 1) * half_width


def random_affine(x: torch.Tensor, rotate: float, scale: float, shear: float) -> torch.Tensor:
    """One random rotation / zoom / horizontal shear per clip of x [N, K, T, H, W] (same for every frame and
    channel, about the centre; pixels from outside the frame are 0), bilinear."""
    n, k, t, h, w = x.shape
    angle = _uniform(n, math.radians(rotate), x.device)
    zoom = 1 + _uniform(n, scale, x.device)
    slant = torch.tan(_uniform(n, math.radians(shear), x.device))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # theta maps output to input coordinates: (rotation @ shear) / zoom
    a = torch.stack([torch.stack([cos, cos * slant - sin], -1), torch.stack([sin, sin * slant + cos], -1)], 1)
    theta = torch.cat([a / zoom[:, None, None], torch.zeros(n, 2, 1, device=x.device)], dim=2)
    grid = F.affine_grid(theta.to(x.dtype), [n, 1, h, w], align_corners=False)
    planes = F.grid_sample(x.reshape(n, k * t, h, w), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    return planes.reshape(n, k, t, h, w)


def batch_augment(aug: ExtraAug, num_classes: int) -> BatchAugment:
    """(x, labels) -> (augmented x, soft targets [N, classes]) for ``F.cross_entropy``."""

    def apply(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        target = F.one_hot(labels, num_classes).to(x.dtype)
        if aug.label_smoothing:
            target = target * (1 - aug.label_smoothing) + aug.label_smoothing / num_classes
        if aug.affine:
            x = random_affine(x, aug.rotate, aug.scale, aug.shear)
        if aug.mixup:
            lam = torch.distributions.Beta(aug.mixup, aug.mixup).sample().to(x.device)
            perm = torch.randperm(len(x), device=x.device)
            x = lam * x + (1 - lam) * x[perm]
            target = lam * target + (1 - lam) * target[perm]
        return x, target

    return apply
