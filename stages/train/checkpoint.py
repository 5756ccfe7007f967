"""Training checkpoints, written atomically (``save``); reading them back is inference.checkpoint's.

``last.pt`` and every epoch's state file hold everything needed to resume; ``best.pt`` the weights to
test (docs/architecture.md, Train outputs).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from pipeline.atomic import write_bytes


def save(path: Path, state: dict) -> None:
    """Serialise in memory, then write atomically: the bytes depend only on ``state`` (torch names the archive
    after the file it writes, here a pid-named temporary), and a full disk is an OSError naming ``path``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getvalue())
