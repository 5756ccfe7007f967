"""Where the benchmarks find the repository and the shared models and data: ``SKEL_SHARED``, by default
``shared/`` next to the repository (as for the tests)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKEL_SHARED", REPO.parent / "shared"))
