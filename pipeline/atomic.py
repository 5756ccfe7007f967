"""Atomic writes: write to a temporary name in the same directory, then os.replace into place."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_GLOB = ".*.tmp-*"  # what temp_name() produces


def temp_name(final: Path) -> Path:
    """The temporary sibling a process writes before renaming it to ``final``."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def remove_stale(root: Path) -> int:
    """Delete temporaries that killed writers left under ``root`` (call when no writer is running)."""
    stale = sorted(root.rglob(TMP_GLOB), key=lambda p: len(p.parts), reverse=True)
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return len(stale)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; it replaces ``final`` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(final: Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_json(final: Path, obj: object) -> None:
    write_bytes(final, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(path: Path) -> dict | None:
    """Read a JSON file; None when it is absent (a torn file cannot exist thanks to atomic writes)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
