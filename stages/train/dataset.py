"""Streaming clip datasets over a render output (pipeline.volumes): decode only the sampled frames.

Training items are whole batches: ``TrainClips[indices]`` decodes each clip's sampled frames straight
from the shard files into one uint8 batch buffer [N, T, K, H, W] and draws each clip's crop box and
mirror; nothing else happens on the loader's CPU. ``stages.train.augment`` then crops, resizes, mirrors
and converts the batch on the training device. Training randomness comes from a RandomState keyed by
(seed, epoch, item), so a clip does not depend on the worker that loads it, the number of workers, or
whether the run resumed. Test items are one sample's fixed views, converted on the CPU (few per second).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, DistributedSampler, get_worker_info

from pipeline.errors import SkelError
from pipeline.volumes import VolumeStore
from stages.train.augment import augment
from stages.train.sampling import sample_test, sample_train
from stages.train.transforms import Augment, flip, resize


@dataclass(frozen=True)
class Item:
    """One sample of the index: which volume and what it is."""

    sample_id: str
    label: int
    n_frames: int


def split_items(store: VolumeStore, split: str | None) -> list[Item]:
    """Samples whose comma-separated split column contains ``split`` (all labelled samples when None)."""
    items = []
    for row in store.rows.values():
        names = (row["split"] or "").split(",")
        if row["label"] is not None and (split is None or split in names):
            items.append(Item(row["sample_id"], int(row["label"]), int(row["n_frames"])))
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
    """Shared part: the item list, the lazy per-process store, reading a set of frames."""

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


@dataclass(frozen=True)
class ClipBatch:
    """What the loader hands over: raw stored clips and how to augment them on the device."""

    clips: torch.Tensor  # stored dtype [N, T, K, H, W]
    boxes: torch.Tensor  # int64 [N, 4]: top, left, height, width
    mirror: torch.Tensor  # bool [N]
    labels: torch.Tensor  # int64 [N]

    def pin_memory(self) -> ClipBatch:
        return ClipBatch(*(t.pin_memory() for t in (self.clips, self.boxes, self.mirror, self.labels)))


PREFETCH = 2  # the DataLoader's prefetch_factor for TrainClips
RING = PREFETCH + 2  # batch buffers per loader process: every batch in flight, the current and the previous one


class TrainClips(_Clips):
    """Random clips (pyskl's sampling, RandomResizedCrop box, flip coin) for ``repeat`` passes per epoch.

    Indexed by a list of item indices (see ``loader_sampler``): returns a ``ClipBatch``; ``on_device``
    turns it into the model input. Batches are decoded into a ring of ``RING`` buffers per process (in
    shared memory inside a DataLoader worker, so handing a batch to the trainer copies nothing, and no
    fresh pages are faulted in per batch): a batch's ``clips`` stay valid until ``RING`` more batches have
    been made by the same process — a training loop (DataLoader with ``prefetch_factor=PREFETCH``) uses
    each batch before that; code that keeps batches must clone them.
    """

    def __init__(self, path: Path, split: str | None, *, clip_len: int, size: int, seed: int = 0,
                 repeat: int = 1, flip_ratio: float = 0.5) -> None:
        super().__init__(path, split, clip_len=clip_len, size=size)
        self.seed, self.repeat, self.flip_ratio = seed, repeat, flip_ratio
        self.epoch = 0
        first = self.store.chunks(self.store.rows[self.items[0].sample_id]["array"])
        self.frame_shape, self.dtype = first.shape[1:], torch.from_numpy(np.empty(0, first.dtype)).dtype
        self._ring: list[torch.Tensor] = []
        self._turn = 0

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_ring": [], "_turn": 0}

    def _buffer(self, n: int) -> torch.Tensor:
        """The next ring buffer, [n, T, K, H, W] (allocated on first use, regrown for a larger batch)."""
        slot = self._turn % RING
        self._turn += 1
        if len(self._ring) < RING or self._ring[slot].shape[0] < n:
            buf = torch.empty((n, self.clip_len, *self.frame_shape), dtype=self.dtype)
            if get_worker_info() is not None:
                buf.share_memory_()
            if len(self._ring) < RING:
                self._ring.append(buf)
                slot = len(self._ring) - 1
            else:
                self._ring[slot] = buf
        return self._ring[slot][:n]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def __getitem__(self, indices: Sequence[int]) -> ClipBatch:
        n = len(indices)
        clips = self._buffer(n)
        raw = clips.numpy()
        boxes, mirror, labels = np.empty((n, 4), np.int64), np.empty(n, bool), np.empty(n, np.int64)
        for j, index in enumerate(indices):
            item = self.items[index % len(self.items)]
            rng = np.random.RandomState([self.seed, self.epoch, index])
            frames = sample_train(item.n_frames, self.clip_len, rng)
            aug = Augment.draw(self.stored, self.stored, rng, self.flip_ratio)
            self.store.read_frames(item.sample_id, frames, raw[j])
            boxes[j], mirror[j], labels[j] = aug.box, aug.mirror, item.label
        return ClipBatch(clips, *(torch.from_numpy(a) for a in (boxes, mirror, labels)))

    def on_device(self, batch: ClipBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The model input (float32 [N, K, T, size, size], channels_last_3d) and labels, on ``device``."""
        perm = torch.tensor(self.perm, device=device)
        x = augment(batch.clips.to(device, non_blocking=True), batch.boxes.to(device), batch.mirror.to(device),
                    self.size, perm, self.scale)
        return x, batch.labels.to(device, non_blocking=True)


def loader_sampler(dataset: Dataset, batch_size: int, *, rank: int, world: int, seed: int, epoch: int) -> BatchSampler:
    """This rank's shuffled batches of indices for an epoch (DDP-aware), for datasets indexed by batch."""
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return BatchSampler(sampler, batch_size, drop_last=False)


class EvalClips(_Clips):
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

