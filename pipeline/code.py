"""The digest of skel's own code (its Python and C sources), which a shard's process must share with the command.

A Dask worker of a ``--scheduler`` cluster imports the skel of its own environment: another version, another
checkout, a tree being edited. Its shards would be committed under the command's fingerprint, the output complete
and verified though its bytes are another code's. Sources, not built kernels: each machine builds its own.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

PACKAGES = ("pipeline", "stores", "inference", "stages", "models", "apps", "cli")  # pyproject's packages
SOURCES = (".py", ".c", ".h")


@cache
def code_digest() -> str:
    """sha256 over the path and bytes of every source file of skel's packages (once per process)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.suffix in SOURCES and "__pycache__" not in path.parts and path.is_file():
                data = path.read_bytes()
                digest.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()
