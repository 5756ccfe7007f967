"""The store of a frames output: one uint8 RGB array [T, H, W, 3] per sample (docs/architecture.md, Volumes).

``frames.zarr/<sample name>`` holds the frames behind a pose volume, cropped like it; ``index.parquet``
lists the arrays. Written by `skel frames` (stages.frames) with ``write_array``, read by RGBPose training
and testing through ``FrameStore``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import zarr
from zarr.codecs import ZstdCodec

from pipeline.atomic import atomic_dir
from pipeline.workdir import dir_size
from stores.arrays import ArrayStore

GROUP = "frames.zarr"
INDEX_SCHEMA = pa.schema([("sample_id", pa.string()), ("array", pa.string()), ("label", pa.int32()),
                          ("split", pa.string()), ("n_frames", pa.int32()), ("nbytes", pa.int64())])


def write_array(
    group: Path, name: str, data: np.ndarray, attributes: dict, *, chunks: tuple[int, ...],
    dimension_names: tuple[str, ...], shards: tuple[int, ...] | None = None,
) -> int:
    """Write ``group/name`` through zarr, atomically (temporary array, then rename), zstd-compressed;
    return its bytes on disk. One array per sample."""
    final = group / name
    with atomic_dir(final) as tmp:
        arr = zarr.create_array(
            store=str(tmp), shape=data.shape, chunks=chunks, shards=shards, dtype=data.dtype,
            compressors=ZstdCodec(level=3), fill_value=0, dimension_names=dimension_names, attributes=attributes,
            zarr_format=3,
            # Skipping zarr's all-zero check triples write speed; frame chunks are rarely all zero.
            config={"write_empty_chunks": True},
        )  # fmt: skip
        arr[...] = data
    return dir_size(final)


@dataclass
class FrameStore(ArrayStore):
    """Read side of a frames output: uint8 RGB frames of one sample."""

    group: ClassVar[str] = GROUP

    def read(self, name: str, frames: np.ndarray | None = None) -> np.ndarray:
        """uint8 [T', H, W, 3] for the given frame indices (all frames when None)."""
        arr = self.array(name)
        return arr[...] if frames is None else arr.oindex[np.asarray(frames, dtype=np.int64)]
