"""Streaming RGBPose clips: aligned RGB frames (a frames output) and heatmaps (its render output) per sample.

Built on ``stages.train.rgbpose_sampling``: one temporal grid, one crop box and one flip for both modalities.
Items are ``((imgs, heatmaps), label)`` with imgs [3, rgb_len, S, S] and heatmaps [K, pose_len, s, s]
(test items add a leading clip axis). Samples the frames stage could not decode are left out (logged).
Training randomness is keyed by (seed, epoch, item), as ``stages.train.dataset``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from pipeline.errors import SkelError
from pipeline.frames import FrameStore
from pipeline.volumes import VolumeStore, sample_name
from stages.train.dataset import Item, split_items
from stages.train.loop import to_device
from stages.train.rgbpose_sampling import Clip, ClipSpec, apply_clip, eval_clips, train_clip

log = logging.getLogger("skel")

Views = tuple[torch.Tensor, torch.Tensor]


class _RGBPoseClips(Dataset):
    """Shared part: items that have both modalities, lazy per-process stores, one view of one item."""

    def __init__(self, volumes: Path, frames: Path, split: str | None, spec: ClipSpec) -> None:
        store, frame_store = VolumeStore(Path(volumes)), FrameStore(Path(frames))
        if frame_store.attrs.get("volumes_fingerprint") != Path(volumes).name:
            raise SkelError(f"{frames}: frames of render output {frame_store.attrs.get('volumes_fingerprint')}, "
                            f"not of {Path(volumes).name}")
        have = set(frame_store.index.column("sample_id").to_pylist())
        items = split_items(store, split)
        self.items: list[Item] = [it for it in items if it.sample_id in have]
        if not self.items:
            raise SkelError(f"{frames}: no RGB frames for the samples of split {split!r}")
        if len(self.items) < len(items):
            log.warning("%s: %d of %d samples of split %r have no RGB frames; left out", frames,
                        len(items) - len(self.items), len(items), split)
        self.volumes, self.frames, self.spec = Path(volumes), Path(frames), spec
        self.perm = list(store.attrs["flip_perm"])
        self._stores: tuple[VolumeStore, FrameStore] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_stores": None}  # each worker opens its own

    def view(self, item: Item, clip: Clip) -> Views:
        if self._stores is None:
            self._stores = (VolumeStore(self.volumes), FrameStore(self.frames))
        volumes, frames = self._stores
        return apply_clip(frames.read(sample_name(item.sample_id), clip.rgb), volumes.read(item.sample_id, clip.pose),
                          clip, self.spec, self.perm)


class RGBPoseTrainClips(_RGBPoseClips):
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
            clip = train_clip(item.n_frames, self.spec, np.random.RandomState([self.seed, self.epoch, index]))
            batch.append((self.view(item, clip), item.label))
        return default_collate(batch)

    def on_device(self, batch: tuple[Views, torch.Tensor], device: torch.device) -> tuple[Views, torch.Tensor]:
        views, labels = batch
        return to_device(views, device), labels.to(device, non_blocking=True)


class RGBPoseEvalClips(_RGBPoseClips):
    """``num_clips`` evenly spread whole-crop views, plus their mirrors when ``flip``: ([clips, 3, ...],
    [clips, K, ...])."""

    def __init__(self, volumes: Path, frames: Path, split: str | None, spec: ClipSpec, *, num_clips: int = 1,
                 flip: bool = False) -> None:
        super().__init__(volumes, frames, split, spec)
        self.num_clips, self.flip = num_clips, flip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Views, int]:
        item = self.items[index]
        clips = eval_clips(item.n_frames, self.spec, self.num_clips)
        if self.flip:
            clips += eval_clips(item.n_frames, self.spec, self.num_clips, flip=True)
        views = [self.view(item, c) for c in clips]
        return (torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views])), item.label
