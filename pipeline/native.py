"""The project's compiled C kernels (setup.py builds them), imported on first use and checked against their
source: every command that does not need a kernel works without it, and a stale or missing build is one line
saying how to rebuild, not a crash or a silently old kernel."""

from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path
from types import ModuleType

from pipeline.errors import SkelError
from pipeline.integrity import sha256

REBUILD = "pip install -e ."  # run in the repository: builds every kernel (setup.py)


@cache
def load_kernel(module: str, what: str) -> ModuleType:
    """Import the extension ``module`` (dotted name, built from the ``.c`` file of the same name beside it) and
    check the sha256 baked into it against that source; ``what`` names it in errors ("the heatmap kernel")."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise SkelError(f"{what} is not built ({exc}); run `{REBUILD}` in the repository") from None
    source = Path(mod.__file__).parent / (module.rsplit(".", 1)[-1] + ".c")
    if source.is_file() and mod.SOURCE_SHA256 != sha256(source):
        raise SkelError(f"{what} is stale (built from another {source.name}); run `{REBUILD}` in "
                        f"{source.parents[2]}")
    return mod
