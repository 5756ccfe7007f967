"""Streaming clip datasets over a render output (pipeline.volumes): read only the sampled frames.

Each item reads the sampled frames of one sample from Zarr (only the chunks they touch; in training only
the random crop's pixels are converted), then resizes / flips the tensor. The store is opened lazily in
each DataLoader worker. Training randomness comes from a RandomState keyed by (seed, epoch, item), so a
clip does not depend on the worker that loads it, the number of workers, or whether the run resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.errors import SkelError
from pipeline.volumes import VolumeStore
from stages.train.sampling import sample_test, sample_train
from stages.train.transforms import Augment, flip, resize


@dataclass(frozen=True)
class Item:
    """One sample of the index: where its volume lives and what it is."""

    sample_id: str
    array: str
    label: int
    n_frames: int


def split_items(store: VolumeStore, split: str | None) -> list[Item]:
    """Samples whose comma-separated split column contains ``split`` (all labelled samples when None)."""
    items = []
    for row in store.index.to_pylist():
        names = (row["split"] or "").split(",")
        if row["label"] is not None and (split is None or split in names):
            items.append(Item(row["sample_id"], row["array"], int(row["label"]), int(row["n_frames"])))
    if not items:
        raise SkelError(f"{store.path}: no labelled samples in split {split!r}")
    return items


def num_classes(store: VolumeStore) -> int:
    """Class count: the class names when the store has them, else the largest label + 1."""
    classes = store.attrs.get("classes")
    if classes:
        return len(classes)
    labels = [v for v in store.index.column("label").to_pylist() if v is not None]
    return max(labels) + 1


class _Clips(Dataset):
    """Shared part: the item list, lazy per-process store, and reading a set of frames as float32."""

    def __init__(self, path: Path, split: str | None, *, clip_len: int, size: int | None) -> None:
        store = VolumeStore(Path(path))
        self.path = Path(path)
        self.items = split_items(store, split)
        self.clip_len = clip_len
        self.stored = int(store.attrs["size"])
        self.size = size or self.stored
        self.perm = list(store.attrs["flip_perm"])
        self._store: VolumeStore | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}  # each worker opens its own

    def read(self, item: Item, frames: np.ndarray, box: tuple[int, int, int, int] | None = None,
             mirror: bool = False) -> torch.Tensor:
        """float32 [K, len(frames), h, w] of the given frames inside ``box`` (top, left, h, w; None: all),
        mirrored (with left/right channels swapped) when ``mirror``.

        One contiguous slab from the first to the last frame is read (uniform samples touch every chunk
        between them anyway, and zarr's per-index selection is several times slower); frames are picked
        and mirrored in float16 and only the result is converted.
        """
        if self._store is None:
            self._store = VolumeStore(self.path)
        top, left, h, w = box or (0, 0, self.stored, self.stored)
        lo, hi = int(frames.min()), int(frames.max()) + 1
        slab = torch.from_numpy(self._store.array(item.array)[:, lo:hi, top : top + h, left : left + w])
        x = slab[:, torch.from_numpy(frames - lo)]
        x = (flip(x, self.perm) if mirror else x).float()
        return x if self._store.scale == 1.0 else x * self._store.scale


class TrainClips(_Clips):
    """Random clip -> RandomResizedCrop -> resize -> random flip; ``repeat`` passes over the split per epoch."""

    def __init__(self, path: Path, split: str | None, *, clip_len: int, size: int, seed: int = 0,
                 repeat: int = 1, flip_ratio: float = 0.5) -> None:
        super().__init__(path, split, clip_len=clip_len, size=size)
        self.seed, self.repeat, self.flip_ratio = seed, repeat, flip_ratio
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.items[index % len(self.items)]
        rng = np.random.RandomState([self.seed, self.epoch, index])
        frames = sample_train(item.n_frames, self.clip_len, rng)
        aug = Augment.draw(self.stored, self.stored, rng, self.flip_ratio)
        return resize(self.read(item, frames, aug.box, aug.mirror), self.size), item.label


class TestClips(_Clips):
    """``num_clips`` fixed clips (pyskl's seeded test sampling) resized to ``size``, plus their mirrors
    when ``flip``: items are [clips, K, T, H, W]."""

    def __init__(self, path: Path, split: str | None, *, clip_len: int, size: int | None = None,
                 num_clips: int = 1, flip: bool = False) -> None:
        super().__init__(path, split, clip_len=clip_len, size=size)
        self.num_clips, self.flip = num_clips, flip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.items[index]
        frames = sample_test(item.n_frames, self.clip_len, self.num_clips)
        return _views(self.read(item, frames.ravel()), frames.shape, self.size, self.flip, self.perm), item.label


def _views(x: torch.Tensor, shape: tuple[int, int], size: int, mirror: bool, perm: list[int]) -> torch.Tensor:
    """[K, clips * L, H, W] sampled frames -> [clips (x2 with mirror), K, L, size, size]."""
    x = resize(x.unflatten(1, shape).transpose(0, 1), size)
    return torch.cat([x, flip(x, perm)]) if mirror else x


def test_views(volume: torch.Tensor, clip_len: int, num_clips: int, *, size: int | None = None, flip: bool = False,
               perm: list[int] | None = None) -> torch.Tensor:
    """The test-time views of a whole in-memory volume [K, T, H, W], exactly as TestClips makes them from Zarr."""
    frames = sample_test(volume.shape[1], clip_len, num_clips)
    if flip and perm is None:
        raise ValueError("flip needs the channel permutation perm")
    return _views(volume[:, torch.from_numpy(frames.ravel())], frames.shape, size or volume.shape[-1], flip, perm)
