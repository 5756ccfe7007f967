"""Driver side of an output of Zarr arrays: the group's set-wide attributes, ``index.parquet`` and
``errors.parquet`` from the shard records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from pipeline.atomic import atomic_path
from stores.arrays import INDEX
from stores.error_table import write_errors


def create_group(out: Path, attributes: dict, group: str) -> None:
    """Create (or reopen) the arrays' group with its set-wide attributes. Driver only."""
    zarr.open_group(out / group, mode="a", zarr_format=3, attributes=attributes)


def write_index(out: Path, rows: list[dict], schema: pa.Schema) -> None:
    """Write index.parquet (driver only), atomically."""
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(out / INDEX) as tmp:
        pq.write_table(table, tmp)


def finalize_arrays(out: Path, records: dict[str, dict], stage: str, attributes: dict, group: str,
                    schema: pa.Schema) -> dict:
    """Driver: the group with its set-wide attributes, index.parquet and errors.parquet from the shard
    records (``rows`` and ``errors`` lists); returns the manifest summary."""
    rows = [r for sid in sorted(records) for r in records[sid]["rows"]]
    errors = [e for sid in sorted(records) for e in records[sid]["errors"]]
    create_group(out, attributes, group)
    write_index(out, rows, schema)
    write_errors(out, errors, stage)
    nbytes = [r["nbytes"] for r in rows]
    return {
        "samples": len(rows),
        "errors": len(errors),
        "bytes": int(sum(nbytes)),
        "bytes_per_sample": int(np.mean(nbytes)) if nbytes else 0,
    }
