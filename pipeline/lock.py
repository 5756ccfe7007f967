"""One writer per output: an exclusive ``flock`` on ``<output>/.lock``, holding the writer's pid and host.

The driver takes it before it writes anything and keeps it while its Dask workers write shards. The
kernel drops a flock when its process dies, so the lock of a killed run is simply free again (its file
still names the dead pid, which ``skel status`` uses to tell ``interrupted`` from ``running``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import SkelError

LOCK = ".lock"


def holder(out: Path) -> dict | None:
    """{"pid", "host"} of the run that holds (or last held) the output's lock; None if there is none."""
    try:
        return json.loads((out / LOCK).read_text())
    except (OSError, ValueError):  # absent, unreadable or garbled: it names nobody
        return None


def alive(who: dict | None) -> bool:
    """Whether the run named in a lock file may still be running (a pid on another host is assumed alive)."""
    if not who:
        return False
    return who.get("host") != socket.gethostname() or running(int(who["pid"]))


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie: a killed run whose parent has not reaped it (or an orphan
    under an init that does not reap) keeps its pid, but holds no lock and does nothing."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(") ")[2][:1] != "Z"
    except OSError:  # gone since, or no procfs (not Linux), where the pid above exists
        return not Path("/proc/self").exists()


@contextmanager
def output_lock(out: Path) -> Iterator[dict | None]:
    """Hold the output's write lock for the block; yields the previous holder when it was a killed run.

    Raises ``SkelError`` naming the other run when one holds it.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = holder(out) or {}
            raise SkelError(f"another skel run (pid {who.get('pid', '?')}, host {who.get('host', '?')}) "
                            f"is writing {out}") from None
        previous = holder(out)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield previous if previous and previous != me and not alive(previous) else None
        finally:
            os.ftruncate(fd, 0)  # a run that returns or raises leaves no holder; only a killed run leaves its pid
    finally:
        os.close(fd)  # releases the flock
