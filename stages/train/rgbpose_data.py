"""Streaming RGBPose training clips over the aligned stores of inference.rgbpose_views (``RGBPoseClips``).

Items are ``((imgs, heatmaps), label)`` with imgs [3, rgb_len, S, S] and heatmaps [K, pose_len, s, s].
Training randomness is keyed by (seed, epoch, item), as ``stages.train.dataset``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import default_collate

from inference.clip_spec import ClipSpec
from inference.device import to_device
from inference.rgbpose_sampling import train_clip
from inference.rgbpose_views import RGBPoseClips, Views
from inference.sampling import seeded


class RGBPoseTrainClips(RGBPoseClips):
    """One random aligned view per item (random phase, crop and flip); ``repeat`` passes per epoch.
    Indexed by a list of item indices, as ``TrainClips``: returns the collated batch."""

    def __init__(self, volumes: Path, frames: Path, split: str | None, spec: ClipSpec, *, seed: int = 0,
                 repeat: int = 1) -> None:
        super().__init__(volumes, frames, split, spec)
        self.seed, self.repeat, self.epoch = seed, repeat, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def __getitem__(self, indices: Sequence[int]) -> tuple[Views, torch.Tensor]:
        batch = []
        for index in indices:
            item = self.items[index % len(self.items)]
            clip = train_clip(item.n_frames, self.spec, seeded([self.seed, self.epoch, index]))
            batch.append((self.view(item, clip), item.label))
        return default_collate(batch)

    def on_device(self, batch: tuple[Views, torch.Tensor], device: torch.device) -> tuple[Views, torch.Tensor]:
        views, labels = batch
        return to_device(views, device), labels.to(device, non_blocking=True)
