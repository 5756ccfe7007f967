"""Triplet tables: coordinate triplets (x, y, score) per frame, person and joint, in Parquet.

Schema: docs/architecture.md, Triplet tables.

A triplet output directory holds::

    samples.parquet          one row per sample (label, split, image size, frames, where its rows are)
    triplets/part-*.parquet  one row per (sample, frame, person); one row group per sample
    errors.parquet           what was skipped and why

Stages that produce triplets (import, extract) write parts from their shards with ``write_part`` and
call ``finalize_tables`` in the driver; readers use ``TripletStore``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_path
from pipeline.checked import checked
from stores.coco import NUM_KEYPOINTS as V
from stores.error_table import write_errors

SCHEMA_VERSION = "1"

KP_TYPE = pa.list_(pa.float32(), V)
BOX_TYPE = pa.list_(pa.float32(), 5)

TRIPLET_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("frame", pa.int32()),
        ("person", pa.int16()),
        ("box", BOX_TYPE),
        ("x", KP_TYPE),
        ("y", KP_TYPE),
        ("score", KP_TYPE),
    ],
    metadata={"skel.schema_version": SCHEMA_VERSION},
)

SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("label", pa.int32()),
        ("split", pa.string()),  # comma-separated split names (a sample may be in several)
        ("img_h", pa.int32()),
        ("img_w", pa.int32()),
        ("n_frames", pa.int32()),
        ("fps", pa.float32()),
        ("source", pa.string()),
        ("n_persons", pa.int16()),
        ("part", pa.string()),  # triplets/part-*.parquet holding the sample's rows
        ("row_group", pa.int32()),
        ("extra", pa.string()),  # JSON of any other per-sample fields (kept for lossless export)
    ],
    metadata={"skel.schema_version": SCHEMA_VERSION},
)


def split_names(value: str | None) -> list[str]:
    """The split names of a sample's ``split`` cell (comma-separated; None or "" = no split)."""
    return [name for name in (value or "").split(",") if name]


@dataclass
class Skeleton:
    """One sample in pyskl's array layout."""

    keypoint: np.ndarray  # float32 [M, T, V, 2]
    score: np.ndarray  # float32 [M, T, V]
    box: np.ndarray | None = None  # float32 [M, T, 5] (detections), None for imported data


Index = int | slice | np.ndarray  # a person or frame position, a range of frames, or one per row


def pose_arrays(
    n_persons: int, n_frames: int, rows: Iterable[tuple[Index, Index, np.ndarray, np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints [M, T, 17, 2], scores [M, T, 17] and boxes [M, T, 5] (float32) from ``(person, frame, keypoints
    [..., 17, 2], scores [..., 17], boxes [..., 5])`` rows; what no row fills stays zero (absent)."""
    kp = np.zeros((n_persons, n_frames, V, 2), np.float32)
    score = np.zeros((n_persons, n_frames, V), np.float32)
    box = np.zeros((n_persons, n_frames, 5), np.float32)
    for m, t, k, s, b in rows:
        kp[m, t], score[m, t], box[m, t] = k, s, b
    return kp, score, box


def _fixed(values: np.ndarray, size: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()), size)


def sample_table(sample_id: str, skel: Skeleton) -> pa.Table:
    """Rows of one sample, sorted by frame then person (every person slot of every frame)."""
    m, t, v, _ = skel.keypoint.shape
    if v != V:
        raise ValueError(f"expected {V} keypoints (COCO-17), got {v}")
    kp = np.ascontiguousarray(skel.keypoint.transpose(1, 0, 2, 3), dtype=np.float32)  # [T, M, V, 2]
    sc = np.ascontiguousarray(skel.score.transpose(1, 0, 2), dtype=np.float32)
    n = t * m
    box = (
        pa.nulls(n, BOX_TYPE)
        if skel.box is None
        else _fixed(np.ascontiguousarray(skel.box.transpose(1, 0, 2), dtype=np.float32), 5)
    )
    return pa.Table.from_arrays(
        [
            pa.array([sample_id] * n, pa.string()),
            pa.array(np.repeat(np.arange(t, dtype=np.int32), m)),
            pa.array(np.tile(np.arange(m, dtype=np.int16), t)),
            box,
            _fixed(kp[..., 0], V),
            _fixed(kp[..., 1], V),
            _fixed(sc, V),
        ],
        schema=TRIPLET_SCHEMA,
    )


def _column(table: pa.Table, name: str, width: int) -> np.ndarray:
    return table.column(name).combine_chunks().flatten().to_numpy().reshape(-1, width)


def table_skeleton(table: pa.Table, n_frames: int, n_persons: int | None = None) -> Skeleton:
    """Inverse of ``sample_table``; frames or persons without rows are zero."""
    frame = table.column("frame").to_numpy()
    person = table.column("person").to_numpy().astype(np.int64)
    m = n_persons if n_persons is not None else (int(person.max()) + 1 if len(person) else 0)
    has_box = table.column("box").combine_chunks().is_valid().to_numpy(zero_copy_only=False)
    box = np.zeros((len(person), 5), np.float32)
    box[has_box] = _column(table.filter(pa.array(has_box)), "box", 5)
    xy = np.stack([_column(table, "x", V), _column(table, "y", V)], axis=-1)
    keypoint, score, boxes = pose_arrays(m, n_frames, [(person, frame, xy, _column(table, "score", V), box)])
    return Skeleton(keypoint, score, boxes if has_box.any() else None)


def write_part(path: Path, tables: list[pa.Table]) -> list[int]:
    """Write sample tables to one Parquet part (a row group each), atomically; return row-group indices."""
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, TRIPLET_SCHEMA, compression="zstd") as writer:
            for table in tables:
                writer.write_table(table, row_group_size=max(1, table.num_rows))
    return list(range(len(tables)))


def finalize_tables(out: Path, records: dict[str, dict], stage: str, metadata: dict | None = None) -> dict:
    """Driver: merge the shards' sample and error rows into samples.parquet and errors.parquet."""
    samples, errors = [], []
    for shard_id in sorted(records):
        samples += records[shard_id].get("samples", [])
        errors += records[shard_id].get("errors", [])
    meta = {"skel.schema_version": SCHEMA_VERSION}
    meta.update({f"skel.{k}": json.dumps(v) for k, v in (metadata or {}).items()})
    sample_tbl = pa.Table.from_pylist(samples, schema=SAMPLE_SCHEMA.with_metadata(meta))
    with atomic_path(out / "samples.parquet") as tmp:
        pq.write_table(sample_tbl, tmp)
    write_errors(out, errors, stage)
    return {"samples": len(samples), "errors": len(errors)}


@dataclass
class TripletStore:
    """Read side of a triplet output: sample metadata and one sample's arrays without scanning.

    ``check``: each file is checked against the output's manifest before it is read, for readers outside
    the runner (which checks a stage's inputs before the stage runs).
    """

    path: Path
    check: bool = False

    def _file(self, rel: str) -> Path:
        return checked(self.path / rel) if self.check else self.path / rel

    @cached_property
    def samples(self) -> pa.Table:
        return pq.read_table(self._file("samples.parquet"))

    @cached_property
    def metadata(self) -> dict:
        raw = self.samples.schema.metadata or {}
        return {k.decode()[5:]: json.loads(v) for k, v in raw.items()
                if k.startswith(b"skel.") and k != b"skel.schema_version"}

    @cached_property
    def errors(self) -> pa.Table:
        return pq.read_table(self._file("errors.parquet"))

    @cached_property
    def _rows(self) -> dict[str, dict]:
        return {row["sample_id"]: row for row in self.samples.to_pylist()}

    @cached_property
    def _parts(self) -> dict[str, tuple[pa.Table, list[int]]]:
        return {}

    def _part(self, part: str) -> tuple[pa.Table, list[int]]:
        """A whole part table and its row groups' first rows, read once: one read for the samples of a
        part instead of one per sample (a shard of work reads most of a part)."""
        if part not in self._parts:
            self._parts.clear()  # keep one part in memory
            file = pq.ParquetFile(self._file(part))
            starts = np.cumsum([0] + [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)])
            self._parts[part] = (file.read(), starts.tolist())
        return self._parts[part]

    def ids(self) -> list[str]:
        return self.samples.column("sample_id").to_pylist()

    def meta(self, sample_id: str) -> dict:
        return self._rows[sample_id]

    def read(self, sample_id: str) -> Skeleton:
        row = self._rows[sample_id]
        table, starts = self._part(row["part"])
        group = row["row_group"]
        part = table.slice(starts[group], starts[group + 1] - starts[group])
        return table_skeleton(part, row["n_frames"], row["n_persons"])


def part_name(shard_id: str) -> str:
    return os.path.join("triplets", f"part-{shard_id}.parquet")
