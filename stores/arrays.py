"""Outputs of Zarr arrays listed by ``index.parquet`` (render volumes, RGB frames): array names and the
read side they share."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from pipeline.errors import SkelError

INDEX = "index.parquet"


def sample_name(sample_id: str) -> str:
    """A filesystem-safe, collision-free file or array name for a sample id."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id)[:60]
    return f"{safe}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}"


@dataclass
class ArrayStore:
    """Read side of an output of arrays in the Zarr group ``group``: the index, set attributes, opened arrays."""

    path: Path
    group: ClassVar[str]

    @cached_property
    def index(self) -> pa.Table:
        try:
            return pq.read_table(self.path / INDEX)
        except (OSError, pa.ArrowInvalid) as exc:
            raise SkelError(f"{self.path / INDEX}: cannot read the index ({exc})") from None

    @cached_property
    def attrs(self) -> dict:
        path = self.path / self.group / "zarr.json"
        try:
            meta = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise SkelError(f"{path}: cannot read the store's metadata ({type(exc).__name__}: {exc})") from None
        if not isinstance(meta, dict):
            raise SkelError(f"{path}: cannot read the store's metadata (not a JSON object)")
        return meta.get("attributes", {})

    @cached_property
    def _arrays(self) -> dict[str, zarr.Array]:
        return {}

    def array(self, name: str) -> zarr.Array:
        """The sample's array, opened once per store object (opening costs more than a small read)."""
        if name not in self._arrays:
            self._arrays[name] = zarr.open_array(store=str(self.path / self.group / name), mode="r")
        return self._arrays[name]
