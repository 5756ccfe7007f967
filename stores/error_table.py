"""``errors.parquet``: what a stage skipped and why, one row per sample or video (every stage output has one)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_path

ERROR_SCHEMA = pa.schema(
    [("sample_id", pa.string()), ("source", pa.string()), ("stage", pa.string()), ("message", pa.string())]
)


def write_errors(out: Path, errors: list[dict], stage: str) -> None:
    """errors.parquet: one row per skipped sample/video with the reason (driver only)."""
    table = pa.Table.from_pylist([{"stage": stage, **e} for e in errors], schema=ERROR_SCHEMA)
    with atomic_path(out / "errors.parquet") as tmp:
        pq.write_table(table, tmp)
