"""Content digests of the files outside the workdir that fingerprints hold (videos, pickles, checkpoints, models).

A fingerprint must change with a file's bytes, not with its path or times, yet hashing every video at each plan
costs a pass over the whole collection. So a digest is kept in ``<workdir>/.digests.json`` with what `stat` says of
the file when it was hashed: size, mtime, ctime, inode and device. A file is hashed again when any of them differs.
Rewriting a file, copying another over it (``cp -p`` included) or moving one into its place changes its ctime or
inode, which no user tool can set back, so a digest is never reused for other bytes; a ``touch`` costs one hash and
keeps the fingerprint. A file changed in the last minute is hashed but not kept: a second write within the
filesystem's timestamp granularity would not show, nor would writes through a shared memory map to pages still dirty
(the kernel stamps a page's first write only, and writes dirty pages back within about 35 s by default). A file
changing while it is hashed is hashed again next time. Entries of files gone are dropped when the store is written.
The store is a cache: unreadable or unwritable, it is left aside and the files are hashed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path

from pipeline.atomic import write_bytes
from pipeline.errors import SkelError
from pipeline.integrity import sha256

DIGESTS = ".digests.json"
SETTLED_NS = 60_000_000_000  # a file changed more recently than this is hashed but not kept

log = logging.getLogger("skel")


def _key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class _Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries = self._read()
        self.added: dict[str, list] = {}

    def _read(self) -> dict[str, list]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.debug("%s: not read (%s); files are hashed again", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def digest(self, path: Path) -> str:
        name = str(path.absolute())
        before = _key(path.stat())
        kept = self.entries.get(name)
        if isinstance(kept, list) and len(kept) == 6 and kept[:5] == before:
            return kept[5]
        digest = _hash(name, *before)
        if _key(path.stat()) == before and time.time_ns() - before[2] > SETTLED_NS:
            self.added[name] = self.entries[name] = [*before, digest]
        return digest

    def save(self) -> None:
        """Write the entries added, over what another run wrote since this one read the store (not into a workdir
        that does not exist yet: a plan alone makes none), without those of files gone since (moved or deleted
        collections would grow it for good)."""
        if not self.added or not self.path.parent.is_dir():
            return
        merged = {name: kept for name, kept in (self._read() | self.added).items() if os.path.exists(name)}
        try:
            write_bytes(self.path, json.dumps(merged, sort_keys=True).encode(), reclaim=True)
        except OSError as exc:  # a read-only workdir: the next run hashes again
            log.debug("%s: not written (%s)", self.path, exc)


_STORE: ContextVar[_Store | None] = ContextVar("skel_digest_store", default=None)


@contextmanager
def kept_in(workdir: Path) -> Iterator[None]:
    """Keep the digests `file_digest` computes in this block in the workdir's store (nested blocks share one)."""
    if (store := _STORE.get()) is not None and store.path == workdir / DIGESTS:
        yield
        return
    store = _Store(workdir / DIGESTS)
    token = _STORE.set(store)
    try:
        yield
    finally:
        _STORE.reset(token)
        store.save()


@cache
def _hash(path: str, *key: int) -> str:
    return sha256(Path(path))


def file_digest(path: Path) -> str:
    """sha256 of a file's content: from the workdir's store inside `kept_in`, else memoised per process on its
    `stat` (size, mtime, ctime, inode, device)."""
    if (store := _STORE.get()) is not None:
        return store.digest(path)
    return _hash(str(path.absolute()), *_key(path.stat()))


def check_planned(path: Path, read: str, planned: str) -> None:
    """The digest of the bytes a process ``read`` of a file is the one its run planned (the fingerprint's): else
    the file was replaced since, and what was read must not be used under that fingerprint."""
    if read != planned:
        raise SkelError(f"{path}: changed since this run planned it: run the command again")
