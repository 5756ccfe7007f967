"""The heatmap volumes of a render output (one Zarr v3 array per stage shard) and their read store.

Heatmap volumes (docs/architecture.md, Volumes)::

    volumes.zarr/              zarr group; attributes describe the whole set (kind, sigma, flip_perm, ...)
    volumes.zarr/<shard>/      one array per stage shard: [F, K, H, W], the frames of all its samples
                               one after another; one inner chunk per frame (blosc lz4 + crc32c) inside
                               a single zarr shard file, so a shard of 64 samples is two files
    index.parquet              sample_id, array, offset (first frame row), n_frames, label, split, crop box

A frame is the unit every reader wants (a training clip is a set of frames), so each frame is its own
chunk; its K channels are contiguous, which compresses and decodes faster than channels-last pixels.
Render shards write their arrays with ``stores.shard_codec.FrameWriter``; the training loader decodes
frames straight into its batch buffer with ``VolumeStore.read_frames`` (every chunk's crc32c checked, a
missing or damaged chunk an error naming the output, sample and file, never zeros).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
import pyarrow as pa

from pipeline.errors import SkelError
from stores.arrays import ArrayStore
from stores.shard_codec import FrameChunks

GROUP = "volumes.zarr"

INDEX_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("array", pa.string()),
        ("offset", pa.int64()),
        ("n_frames", pa.int32()),
        ("label", pa.int32()),
        ("split", pa.string()),
        ("nbytes", pa.int64()),
        ("img_shape", pa.list_(pa.int32())),
        ("crop_box", pa.list_(pa.int32())),
        ("frames", pa.list_(pa.int32())),
    ]
)

# Stored dtype -> factor that turns stored values back into heatmap values in [0, 1].
SCALES = {"float16": 1.0, "float32": 1.0, "uint8": 1.0 / 255.0}


def heat_values(stored: np.ndarray, dtype: str) -> np.ndarray:
    """float32 heatmap values of volumes stored as `dtype` (uint8 holds the value × 255, rounded)."""
    out = stored.astype(np.float32)
    if SCALES[dtype] != 1.0:
        out *= np.float32(SCALES[dtype])
    return out


@dataclass
class VolumeStore(ArrayStore):
    """Heatmap volumes of a render output: per-sample rows of the index, frames decoded on demand."""

    group: ClassVar[str] = GROUP

    @cached_property
    def rows(self) -> dict[str, dict]:
        """sample_id -> its index row (without the long ``frames`` list)."""
        cols = [c for c in self.index.column_names if c != "frames"]
        return {r["sample_id"]: r for r in self.index.select(cols).to_pylist()}

    @cached_property
    def _full_rows(self) -> dict[str, dict]:
        return {r["sample_id"]: r for r in self.index.to_pylist()}

    def meta(self, sample_id: str) -> dict:
        """The sample's full index row, with ``frames`` (the original frame indices kept)."""
        return self._full_rows[sample_id]

    @cached_property
    def scale(self) -> float:
        return SCALES[self.attrs.get("dtype", "uint8")]

    @cached_property
    def _chunks(self) -> dict[str, FrameChunks]:
        return {}

    def chunks(self, array: str) -> FrameChunks:
        """A shard array, opened (mapped, index checked) once per store object."""
        if array not in self._chunks:
            path = self.path / self.group / array
            try:
                self._chunks[array] = FrameChunks(path)
            except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
                raise SkelError(f"{path}: cannot open volume array ({type(exc).__name__}: {exc})") from None
        return self._chunks[array]

    def read_frames(self, sample_id: str, frames: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Decode the sample's ``frames`` (indices into its own frames) into ``out`` [len(frames), K, H, W]
        of the stored dtype: no conversion, no intermediate copy."""
        row = self.rows[sample_id]
        frames = np.asarray(frames, np.int64)
        if len(frames) and not (0 <= frames.min() and frames.max() < row["n_frames"]):
            bad = frames[(frames < 0) | (frames >= row["n_frames"])][0]
            raise IndexError(f"{sample_id}: frame {bad} outside 0..{row['n_frames'] - 1}")
        try:
            self.chunks(row["array"]).decode_rows(row["offset"] + frames, out[: len(frames)])
        except SkelError as exc:
            raise SkelError(f"{self.path.name} sample {sample_id}: {exc}") from None
        return out

    def read(self, sample_id: str, frames: np.ndarray | None = None) -> np.ndarray:
        """float32 [K, T', H, W] heatmap values of the given frames (all when None)."""
        row = self.rows[sample_id]
        frames = np.arange(row["n_frames"]) if frames is None else np.asarray(frames, np.int64)
        arr = self.chunks(row["array"])
        uniq, inverse = np.unique(frames, return_inverse=True)  # test views share frames: decode each once
        raw = self.read_frames(sample_id, uniq, np.empty((len(uniq), *arr.shape[1:]), arr.dtype))
        return heat_values(raw[inverse].transpose(1, 0, 2, 3), self.attrs.get("dtype", "uint8"))
