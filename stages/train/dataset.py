"""Streaming training clips over a render output (stores.volumes): decode only the sampled frames.

Training items are whole batches: ``TrainClips[indices]`` decodes each clip's sampled frames straight
from the shard files into one uint8 batch buffer [N, T, K, H, W] and draws each clip's crop box and
mirror; nothing else happens on the loader's CPU. ``stages.train.augment`` then crops, resizes, mirrors
and converts the batch on the training device. Training randomness comes from a RandomState keyed by
(seed, epoch, item), so a clip does not depend on the worker that loads it, the number of workers, or
whether the run resumed.
The sample list and the per-process store are inference.views' (``VolumeClips``), which also makes the
test views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, DistributedSampler, get_worker_info

from inference.sampling import sample_train, seeded
from inference.transforms import Augment
from inference.views import VolumeClips
from stages.train.augment import augment


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


class Ring:
    """``slots`` tensors handed out in turn by ``next(n)`` (made by ``make(n)`` on first use, remade for a
    larger batch; in shared memory inside a DataLoader worker when ``shared``): a tensor is valid until
    ``slots`` more have been handed out. Reusing them spares faulting in fresh pages for every batch."""

    def __init__(self, slots: int, make: Callable[[int], torch.Tensor], *, shared: bool = False) -> None:
        self.slots, self.make, self.shared = slots, make, shared
        self.buffers: list[torch.Tensor] = []
        self.turn = 0

    def next(self, n: int) -> torch.Tensor:
        slot = self.turn % self.slots
        self.turn += 1
        if slot < len(self.buffers) and self.buffers[slot].shape[0] >= n:
            return self.buffers[slot][:n]
        buf = self.make(n)
        if self.shared and get_worker_info() is not None:
            buf.share_memory_()
        if slot < len(self.buffers):
            self.buffers[slot] = buf
        else:
            self.buffers.append(buf)
        return buf


class TrainClips(VolumeClips):
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
        self._clips, self._inputs = self._rings()

    def _rings(self) -> tuple[Ring, Ring]:
        clips = Ring(RING, lambda n: torch.empty((n, self.clip_len, *self.frame_shape), dtype=self.dtype),
                     shared=True)
        k, size = self.frame_shape[0], self.size
        inputs = Ring(2, lambda n: torch.empty((n, k, self.clip_len, size, size),
                                               memory_format=torch.channels_last_3d))
        return clips, inputs

    def __getstate__(self) -> dict:
        return {k: v for k, v in super().__getstate__().items() if k not in ("_clips", "_inputs")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._clips, self._inputs = self._rings()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def __getitem__(self, indices: Sequence[int]) -> ClipBatch:
        n = len(indices)
        clips = self._clips.next(n)
        raw = clips.numpy()
        boxes, mirror, labels = np.empty((n, 4), np.int64), np.empty(n, bool), np.empty(n, np.int64)
        for j, index in enumerate(indices):
            item = self.items[index % len(self.items)]
            rng = seeded([self.seed, self.epoch, index])
            frames = sample_train(item.n_frames, self.clip_len, rng)
            aug = Augment.draw(self.stored, self.stored, rng, self.flip_ratio)
            self.store.read_frames(item.sample_id, frames, raw[j])
            boxes[j], mirror[j], labels[j] = aug.box, aug.mirror, item.label
        return ClipBatch(clips, *(torch.from_numpy(a) for a in (boxes, mirror, labels)))

    def on_device(self, batch: ClipBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The model input (float32 [N, K, T, size, size], channels_last_3d) and labels, on ``device``. On a
        CPU the input is one of two reused buffers (valid until the second next call, as a training loop uses
        it): a fresh 10 MB-per-clip tensor costs more in page faults than filling it."""
        perm = torch.tensor(self.perm, device=device)
        out = self._inputs.next(len(batch.labels)) if device.type == "cpu" else None
        x = augment(batch.clips.to(device, non_blocking=True), batch.boxes.to(device), batch.mirror.to(device),
                    self.size, perm, self.scale, out=out)
        return x, batch.labels.to(device, non_blocking=True)


def loader_sampler(dataset: Dataset, batch_size: int, *, rank: int, world: int, seed: int, epoch: int) -> BatchSampler:
    """This rank's shuffled batches of indices for an epoch (DDP-aware), for datasets indexed by batch."""
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return BatchSampler(sampler, batch_size, drop_last=False)


