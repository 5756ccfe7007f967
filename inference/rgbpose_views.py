"""RGBPose test views: aligned RGB frames (a frames output) and heatmaps (its render output) per sample.

Built on ``inference.rgbpose_sampling``: one temporal grid, one crop box and one flip for both modalities.
Items are ``((imgs, heatmaps), label)`` with imgs [clips, 3, rgb_len, S, S] and heatmaps
[clips, K, pose_len, s, s]. Samples the frames stage could not decode are left out (logged). The sample
list and stores (``RGBPoseClips``) are shared with the training dataset (stages.train.rgbpose_data).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset

from inference.clip_spec import ClipSpec
from inference.rgbpose_sampling import Clip, apply_clip, eval_clips
from inference.splits import Item, split_items
from pipeline.errors import SkelError
from stores.arrays import sample_name
from stores.frames import FrameStore
from stores.volumes import VolumeStore

log = logging.getLogger("skel")
_TOLD: set[tuple[str, str | None]] = set()  # (frames, split) said to leave samples out: once per process

Views = tuple[torch.Tensor, torch.Tensor]


class RGBPoseClips(Dataset):
    """Samples of a split that have both modalities (base of the test and training datasets): the stores,
    opened lazily in each process, and one aligned view of one item."""

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
        if len(self.items) < len(items) and (str(frames), split) not in _TOLD:
            _TOLD.add((str(frames), split))  # a training builds its sets each epoch, a test in each shard
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


class RGBPoseEvalClips(RGBPoseClips):
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
