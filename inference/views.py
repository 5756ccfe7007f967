"""Test-time views of a render output's samples (docs/architecture.md, Test views): pyskl's seeded clips,
resized and mirrored on the stored volume, for `skel test` and for validation during training.

Items are one sample's fixed views, converted on the CPU (few per second); ``EvalClips.views`` keeps them as
the distinct frames they show, so frame-wise layers run once per frame. The sample list and the lazily
opened per-process store (``VolumeClips``) are shared with the training datasets (stages.train.dataset).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from inference.sampling import sample_test
from inference.splits import split_items
from inference.transforms import flip, resize
from stores.volumes import VolumeStore


def num_classes(store: VolumeStore) -> int:
    """Class count: the class names when the store has them, else the pickle's count (its largest label + 1,
    whether or not that sample imported), else the largest label + 1 of the samples (stores made before)."""
    classes = store.attrs.get("classes")
    if classes:
        return len(classes)
    if store.attrs.get("num_classes"):
        return int(store.attrs["num_classes"])
    labels = [v for v in store.index.column("label").to_pylist() if v is not None]
    return max(labels) + 1


class VolumeClips(Dataset):
    """Clips of a split's labelled samples (base of the test and training datasets): the item list and the
    store, opened lazily in each process."""

    def __init__(self, path: Path, split: str | None, *, clip_len: int, size: int | None) -> None:
        store = VolumeStore(Path(path))
        self.path = Path(path)
        self.items = split_items(store, split)
        self.clip_len = clip_len
        self.stored = int(store.attrs["size"])
        self.size = size or self.stored
        self.perm = list(store.attrs["flip_perm"])
        self.scale = store.scale
        self._store: VolumeStore | None = store

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}  # each worker maps its own files

    @property
    def store(self) -> VolumeStore:
        if self._store is None:
            self._store = VolumeStore(self.path)
        return self._store


class EvalClips(VolumeClips):
    """``num_clips`` fixed clips (pyskl's seeded test sampling) resized to ``size``, plus their mirrors
    when ``flip``: items are [clips, K, T, H, W]; ``views`` gives the same views as shared frames."""

    def __init__(self, path: Path, split: str | None, *, clip_len: int, size: int | None = None,
                 num_clips: int = 1, flip: bool = False) -> None:
        super().__init__(path, split, clip_len=clip_len, size=size)
        self.num_clips, self.flip = num_clips, flip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.views(index).dense(), self.items[index].label

    def views(self, index: int) -> SharedViews:
        """Sample ``index``'s test views, each distinct frame read and resized once."""
        item = self.items[index]
        return sample_views(lambda frames: torch.from_numpy(self.store.read(item.sample_id, frames)), item.n_frames,
                            self.clip_len, self.num_clips, self.size, self.flip, self.perm)


@dataclass(frozen=True)
class SharedViews:
    """A sample's test views as the distinct frames they show, ``frames`` [K, F, S, S] (the mirrored frames
    after the others), and each view's frames, ``index`` [views, L] (positions on the F axis). Clips of
    a short video repeat frames, so per-frame work (a backbone's ``forward_frames``) can run once per frame."""

    frames: torch.Tensor
    index: torch.Tensor

    def dense(self) -> torch.Tensor:
        """The views themselves, [views, K, L, S, S]."""
        return self.frames[:, self.index].transpose(0, 1)


def sample_views(read: Callable[[np.ndarray], torch.Tensor], n_frames: int, clip_len: int, num_clips: int, size: int,
                 mirror: bool, perm: list[int] | None) -> SharedViews:
    """pyskl's test views of a sample (docs/architecture.md, Test views) from ``read`` (frame indices ->
    [K, n, H, W]): ``num_clips`` seeded clips resized to ``size``, then, with ``mirror``, their mirrors."""
    clips = sample_test(n_frames, clip_len, num_clips)
    distinct, where = np.unique(clips, return_inverse=True)
    frames = resize(read(distinct), size)
    index = torch.from_numpy(where.reshape(clips.shape))
    if mirror:
        if perm is None:
            raise ValueError("flip needs the channel permutation perm")
        frames = torch.cat([frames, flip(frames, perm)], 1)
        index = torch.cat([index, index + len(distinct)])
    return SharedViews(frames, index)


def eval_views(volume: torch.Tensor, clip_len: int, num_clips: int, *, size: int | None = None, flip: bool = False,
               perm: list[int] | None = None) -> torch.Tensor:
    """The test-time views of a whole in-memory volume [K, T, H, W], exactly as EvalClips makes them from Zarr."""
    return sample_views(lambda frames: volume[:, torch.from_numpy(frames)], volume.shape[1], clip_len, num_clips,
                        size or volume.shape[-1], flip, perm).dense()
