"""Crash points: ``SKEL_CRASH_AT=NAME`` makes the process kill itself with SIGKILL when it reaches point NAME.

Resume tests use them to kill a real run at an exact boundary (right after a shard's commit, between a
shard's files and its commit, between two files of finalize, at a training step) instead of racing a
timer. Unset, a crash point costs one dictionary lookup. Names: ``commit:<stage>/<shard>`` (its record
written), ``uncommitted:<stage>/<shard>`` (its files written, its record not), ``wrote:<file name>`` (an
atomic write in place), ``finalized:<stage>`` (finalize done, the manifest not yet complete),
``step:<optimizer step>`` (training, mid-epoch), ``loader-worker`` (a training's DataLoader worker, as it starts).
"""

from __future__ import annotations

import os
import signal

VAR = "SKEL_CRASH_AT"


def crash_point(name: str) -> None:
    """Die here, as ``kill -9`` would, when ``SKEL_CRASH_AT`` names this point."""
    if os.environ.get(VAR) == name:
        os.kill(os.getpid(), signal.SIGKILL)
