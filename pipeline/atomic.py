"""Atomic writes: write to a temporary name in the same directory, then os.replace into place.

Every atomic writer asks ``temp_name`` for its temporary; while a shard runs (``journal``) that call
also notes the final path, so the runner learns which files a shard wrote without the stage listing
them, whatever the storage format.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from pipeline.errors import SkelError
from pipeline.faults import crash_point
from pipeline.lock import running

TMP_GLOB = ".*.tmp-*"  # what temp_name() produces
TMP_NAME_BYTES = 200  # a longer name's temporary is shortened (room for .tmp-<pid> and an extension)
_JOURNAL: ContextVar[list[Path] | None] = ContextVar("skel_write_journal", default=None)
_GUARD: ContextVar[Callable[[], None] | None] = ContextVar("skel_write_guard", default=None)


class CorruptFile(SkelError):
    """A file skel wrote that no longer parses (damaged on disk)."""


@contextmanager
def journal() -> Iterator[list[Path]]:
    """Collect the final paths of the atomic writes made in this block (this thread only)."""
    written: list[Path] = []
    token = _JOURNAL.set(written)
    try:
        yield written
    finally:
        _JOURNAL.reset(token)


@contextmanager
def guarded(check: Callable[[], None]) -> Iterator[None]:
    """Call ``check`` before each rename into place in this block (it raises to stop the write): a shard still
    running on a cluster's worker after its run ended must not replace files a later run has committed."""
    token = _GUARD.set(check)
    try:
        yield
    finally:
        _GUARD.reset(token)


def _check_guard() -> None:
    if (check := _GUARD.get()) is not None:
        check()


def temp_name(final: Path) -> Path:
    """The temporary sibling a process writes before renaming it to ``final`` (noted in the journal)."""
    written = _JOURNAL.get()
    if written is not None:
        written.append(final)
    return final.with_name(f"{_temp_stem(final)}.tmp-{os.getpid()}")


def _temp_stem(final: Path) -> str:
    """``.<name>``, or, for a name too long to take the suffix within the usual 255 bytes, its first bytes and a
    digest of the whole name (a video named with 240 characters failed its preview after the work was done)."""
    name = os.fsencode(final.name)
    if len(name) <= TMP_NAME_BYTES:
        return f".{final.name}"
    start = name[: TMP_NAME_BYTES - 20].decode("utf-8", "ignore")  # whole characters: OpenCV writes some of them
    return f".{start}~{hashlib.sha256(name).hexdigest()[:12]}"


def remove_stale(root: Path) -> int:
    """Delete temporaries that killed writers left under ``root`` (call when no writer is running)."""
    stale = sorted(root.rglob(TMP_GLOB), key=lambda p: len(p.parts), reverse=True)
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return len(stale)


def discard(path: Path) -> None:
    """Delete a file of skel's own, or a directory standing where one belongs (damage: no rename can replace
    a directory); never call it where a user's files may be."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def clear_dirs(root: Path, rels: Iterable[str]) -> None:
    """`discard` the directories standing where files of ``root`` belong."""
    for rel in rels:
        if (root / rel).is_dir():
            discard(root / rel)


@contextmanager
def atomic_path(final: Path, *, reclaim: bool = False, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path to write; it replaces ``final`` only if the block succeeds. ``reclaim``:
    first delete the temporaries of ``final`` that killed writers left (for a file outside any output, which
    no run's `remove_stale` cleans: an export into a user's folder). ``overwrite`` off: a file made at ``final``
    meanwhile (another command's, writing the same path) is kept, and FileExistsError raised."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file where a directory of the path should be: name it
        blocker = next((p for p in (final.parent, *final.parent.parents) if p.exists() and not p.is_dir()),
                       final.parent)
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory (a file, where the path needs one)",
                                 str(blocker)) from None
    if reclaim:
        reclaim_temporaries(final)
    tmp = temp_name(final)
    try:
        yield tmp
        _check_guard()
        if overwrite:
            os.replace(tmp, final)
        else:
            _publish(tmp, final)
        crash_point(f"wrote:{final.name}")
    except OSError as exc:
        if exc.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(exc.errno, exc.strerror or str(exc), str(final)) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _publish(tmp: Path, final: Path) -> None:
    """``tmp`` linked in as ``final`` only if no file is there (one step: two writers of the same path cannot both
    succeed); a filesystem without hard links (FAT, some FUSE) checks, then renames."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "made meanwhile by another command", str(final)) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if final.exists():
            raise FileExistsError(errno.EEXIST, "made meanwhile by another command", str(final)) from None
        os.replace(tmp, final)


def reclaim_temporaries(final: Path) -> None:
    """Delete the temporaries of ``final`` that killed writers left (a writer's pid ends the name, before any
    extension it keeps: ``Mp4Writer``'s do)."""
    for path in final.parent.glob(f"{glob.escape(_temp_stem(final))}.tmp-*"):
        pid = path.name.rpartition("-")[2].partition(".")[0]
        if pid.isdigit() and not running(int(pid)):
            path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path (a killed writer's leftover there removed) for the block to make and fill
    as a directory; it replaces the directory ``final`` only if the block succeeds. A failed block leaves the
    temporary to ``remove_stale``, as a killed writer does."""
    tmp = temp_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    yield tmp
    _check_guard()
    if final.exists():  # os.replace cannot replace a directory that is not empty
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_bytes(final: Path, data: bytes, *, reclaim: bool = False, overwrite: bool = True) -> None:
    with atomic_path(final, reclaim=reclaim, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def json_bytes(obj: object) -> bytes:
    """The bytes ``write_json`` writes for ``obj`` (one form, so a file can be compared with what it should hold)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


def write_json(final: Path, obj: object) -> None:
    write_bytes(final, json_bytes(obj))


def special(path: Path) -> bool:
    """Whether a FIFO, socket or device lies at ``path``: a read of it blocks for ever, or reads no file's bytes."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def read_json(path: Path) -> dict | None:
    """Read a JSON object; None when the file is absent, ``CorruptFile`` (naming it) when it does not parse."""
    if special(path):
        raise CorruptFile(f"{path}: corrupt (not a regular file)")
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFile(f"{path}: corrupt ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptFile(f"{path}: corrupt (not a JSON object)")
    return data
