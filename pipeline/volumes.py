"""Zarr v3 store of heatmap volumes: one [K, T, H, W] array per sample, plus index.parquet.

Layout of a render output directory::

    volumes.zarr/            zarr group; attributes describe the whole set (kind, sigma, flip_perm, ...)
    volumes.zarr/<array>/    one array per sample, written under a temporary name and renamed into place
    index.parquet            sample_id, array, label, split, n_frames, nbytes

Workers write whole arrays (one writer per array); only the driver writes the group and the index.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import ZstdCodec

from pipeline.atomic import atomic_path, temp_name
from pipeline.triplets import write_errors

GROUP = "volumes.zarr"
INDEX = "index.parquet"

INDEX_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("array", pa.string()),
        ("label", pa.int32()),
        ("split", pa.string()),
        ("n_frames", pa.int32()),
        ("nbytes", pa.int64()),
    ]
)

# Stored dtype -> factor that turns stored values back into heatmap values in [0, 1].
SCALES = {"float16": 1.0, "float32": 1.0, "uint8": 1.0 / 255.0}


def create_group(out: Path, attributes: dict, group: str = GROUP) -> None:
    """Create (or reopen) the arrays' group with its set-wide attributes. Driver only."""
    zarr.open_group(out / group, mode="a", zarr_format=3, attributes=attributes)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write_array(
    group: Path, name: str, data: np.ndarray, attributes: dict, *, chunks: tuple[int, ...],
    dimension_names: tuple[str, ...], shards: tuple[int, ...] | None = None,
) -> int:
    """Write ``group/name`` atomically (temporary array, then rename), zstd-compressed; return its bytes on disk.

    An existing array of that name is replaced, so a redone shard overwrites whatever a killed run left.
    """
    final = group / name
    tmp = temp_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    arr = zarr.create_array(
        store=str(tmp),
        shape=data.shape,
        chunks=chunks,
        shards=shards,
        dtype=data.dtype,
        compressors=ZstdCodec(level=3),
        fill_value=0,
        dimension_names=dimension_names,
        attributes=attributes,
        zarr_format=3,
        # Skipping zarr's all-zero check triples write speed; heatmap and frame chunks are rarely all zero.
        config={"write_empty_chunks": True},
    )
    arr[...] = data
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return _dir_bytes(final)


def write_volume(out: Path, name: str, volume: np.ndarray, attributes: dict, *, chunk_t: int = 64) -> int:
    """Write one sample's [K, T, H, W] volume (already in the stored dtype) with ``write_array``."""
    k, t, h, w = volume.shape
    chunks = (k, max(1, min(t, chunk_t)), h, w)
    return write_array(out / GROUP, name, volume, attributes, chunks=chunks, dimension_names=("k", "t", "y", "x"))


def write_index(out: Path, rows: list[dict]) -> None:
    """Write index.parquet (driver only), atomically."""
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    with atomic_path(out / INDEX) as tmp:
        pq.write_table(table, tmp)


def finalize_arrays(out: Path, records: dict[str, dict], stage: str, attributes: dict, group: str = GROUP) -> dict:
    """Driver: the group with its set-wide attributes, index.parquet and errors.parquet from the shard
    records (``rows`` and ``errors`` lists); returns the manifest summary."""
    rows = [r for sid in sorted(records) for r in records[sid]["rows"]]
    errors = [e for sid in sorted(records) for e in records[sid]["errors"]]
    create_group(out, attributes, group)
    write_index(out, rows)
    write_errors(out, errors, stage)
    nbytes = [r["nbytes"] for r in rows]
    return {
        "samples": len(rows),
        "errors": len(errors),
        "bytes": int(sum(nbytes)),
        "bytes_per_sample": int(np.mean(nbytes)) if nbytes else 0,
    }


@dataclass
class ArrayStore:
    """Read side of an output of per-sample arrays: the index, the set attributes, opened arrays."""

    path: Path
    group: ClassVar[str] = GROUP

    @cached_property
    def index(self) -> pa.Table:
        return pq.read_table(self.path / INDEX)

    @cached_property
    def attrs(self) -> dict:
        meta = json.loads((self.path / self.group / "zarr.json").read_text())
        return meta.get("attributes", {})

    @cached_property
    def _arrays(self) -> dict[str, zarr.Array]:
        return {}

    def array(self, name: str) -> zarr.Array:
        """The sample's array, opened once per store object (opening costs more than a small read)."""
        if name not in self._arrays:
            self._arrays[name] = zarr.open_array(store=str(self.path / self.group / name), mode="r")
        return self._arrays[name]


@dataclass
class VolumeStore(ArrayStore):
    """Heatmap volumes: frames of one sample as float32 heatmap values."""

    @cached_property
    def scale(self) -> float:
        return SCALES[self.attrs.get("dtype", "float16")]

    def read(self, name: str, frames: np.ndarray | None = None) -> np.ndarray:
        """Return float32 [K, T', H, W] for the given frame indices (all frames when None)."""
        arr = self.array(name)
        data = arr[...] if frames is None else arr.oindex[:, np.asarray(frames, dtype=np.int64)]
        out = data.astype(np.float32)
        if self.scale != 1.0:
            out *= self.scale
        return out
