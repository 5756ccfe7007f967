"""One writer per output: an exclusive ``flock`` on ``<output>/.lock``, holding the writer's pid and host.

The driver takes it before it writes anything and keeps it while its Dask workers write shards. The
kernel drops a flock when its process dies, so the lock of a killed run is simply free again (its file
still names the dead pid, which the next run reports as the run it takes over). Whether a run is writing an
output is asked of the lock itself (``alive``), not of the pid: a work folder copied to another machine
carries the lock files of its killed runs, which name pids of that machine and are held by nobody here.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import SkelError

LOCK = ".lock"


def holder(out: Path) -> dict | None:
    """{"pid", "host"} of the run that holds (or last held) the output's lock; None if there is none."""
    try:
        who = json.loads((out / LOCK).read_text())
    except (OSError, ValueError):  # absent, unreadable or garbled: it names nobody
        return None
    return who if isinstance(who, dict) else None


def holds(out: Path, run: str) -> bool:
    """Whether the run with token ``run`` holds the output's lock now."""
    return (holder(out) or {}).get("run") == run


def alive(out: Path) -> bool:
    """Whether a run holds the output's write lock: the lock is probed with a shared flock, which only a holder's
    exclusive one refuses. Where the filesystem has no flock (some network mounts, where no run can take the
    lock either) the pid and host the file names decide, a pid on another host counting as alive."""
    try:
        fd = os.open(out / LOCK, os.O_RDONLY)
    except OSError:  # absent or unreadable: it names nobody (``holder``)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no flock here
        return _named_alive(holder(out))
    finally:
        os.close(fd)  # drops the probe's shared lock
    return False


def _named_alive(who: dict | None) -> bool:
    """Whether the run a lock file names may still be running, from its pid and host alone."""
    if not who or "pid" not in who:
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
def output_lock(out: Path, run: str = "") -> Iterator[dict | None]:
    """Hold the output's write lock for the block; yields the previous holder (a killed run) when the file names one.
    ``run``, a token of this run, is written beside the pid and host: a shard still running on a cluster's worker
    after its run ended commits nothing once the lock names another run or none (``holds``).

    Raises ``SkelError`` naming the other run when one holds it.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _take(fd):
            who = holder(out) or {}
            raise SkelError(f"another skel run (pid {who.get('pid', '?')}, host {who.get('host', '?')}) "
                            f"is writing {out}") from None
        previous = holder(out)
        me = {"pid": os.getpid(), "host": socket.gethostname()} | ({"run": run} if run else {})
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield previous or None  # we hold the lock: a run it still names was killed
        finally:
            os.ftruncate(fd, 0)  # a run that returns or raises leaves no holder; only a killed run leaves its pid
    finally:
        os.close(fd)  # releases the flock


def _take(fd: int) -> bool:
    """Take the exclusive lock without waiting for another run; a few short retries, for ``alive`` (``skel
    status``) holds a shared one for a moment."""
    for pause in (0.0, 0.01, 0.05, 0.2):
        time.sleep(pause)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        return True
    return False
