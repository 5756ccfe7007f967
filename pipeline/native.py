"""The project's compiled C kernels (setup.py builds them), imported on first use and checked against their
source: every command that does not need a kernel works without it, and a stale or missing build is one line
saying how to rebuild, not a crash or a silently old kernel."""

from __future__ import annotations

import hashlib
import importlib
from functools import cache
from pathlib import Path
from types import ModuleType

from pipeline.errors import SkelError

REBUILD = "pip install -e ."  # run in the repository: builds every kernel (setup.py)
HEADER = Path(__file__).with_name("native.h")  # shared by every kernel: part of each one's digest
REPOSITORY = HEADER.parents[1]


def digest(source: Path) -> str:
    """What setup.py bakes into a kernel built from ``source``: the sha256 of it and ``native.h``."""
    return hashlib.sha256(source.read_bytes() + HEADER.read_bytes()).hexdigest()


@cache
def load_kernel(module: str, what: str) -> ModuleType:
    """Import the extension ``module`` (dotted name, built from the ``.c`` file of the same name beside it) and
    check the sha256 baked into it against that source and ``native.h``; ``what`` names it in errors ("the
    heatmap kernel")."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise SkelError(f"{what} is not built ({exc}); run `{REBUILD}` in the repository") from None
    source = Path(mod.__file__).parent / (module.rsplit(".", 1)[-1] + ".c")
    if source.is_file() and mod.SOURCE_SHA256 != digest(source):
        raise SkelError(f"{what} is stale (built from another {source.name}); run `{REBUILD}` in "
                        f"{REPOSITORY}")
    return mod
