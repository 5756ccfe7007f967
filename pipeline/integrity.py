"""File digests of stage outputs: what a shard or finalize wrote, and whether it is still there, intact.

A shard's record lists ``files`` (path relative to the output -> size and sha256) for every file it wrote,
taken when it commits; the manifest of a complete output lists every file of the output with its
digest and the shards that wrote it (none: ``finalize``). Checking needs nothing from the storage
format: a deleted, truncated or bit-flipped file is found whatever wrote it.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import atomic_path, discard
from pipeline.workdir import MANIFEST, PLAN, SHARDS, Output

NOT_DATA = {MANIFEST, PLAN, SHARDS}  # the runner's own files, not part of the data


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def data_files(out: Path, roots: Iterable[Path] | None = None) -> list[str]:
    """Data files under ``roots`` (default: the whole output), relative to ``out``: not the runner's own
    files, and nothing hidden (locks, temporaries of killed writers)."""
    found = set()
    for root in ([out] if roots is None else roots):
        candidates = [root] if root.is_file() else root.rglob("*") if root.is_dir() else []
        for path in candidates:
            rel = path.relative_to(out)
            if path.is_file() and rel.parts[0] not in NOT_DATA and not any(p.startswith(".") for p in rel.parts):
                found.add(rel.as_posix())
    return sorted(found)


def digests(out: Path, rels: Iterable[str]) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of these files."""
    table = {}
    for rel in rels:
        path = out / rel
        table[rel] = {"size": path.stat().st_size, "sha256": sha256(path)}
    return table


def written_by_shard(out: Path, written: list[Path]) -> dict[str, dict]:
    """Digests of the files a shard wrote (the final paths of its atomic writes, files or directories)."""
    roots = [p for p in dict.fromkeys(written) if p.is_relative_to(out)]
    return digests(out, data_files(out, roots))


def carry(previous: dict[str, dict], written: dict[str, dict], released: Iterable[str], by: str) -> dict[str, dict]:
    """A sequential shard's files: the previous shard's list less what this one released, updated with what
    it wrote; each entry names the shard (``by``) that wrote it."""
    gone = set(released)
    files = {rel: entry for rel, entry in previous.items() if rel not in gone}
    files.update({rel: {**entry, "by": by} for rel, entry in written.items()})
    return dict(sorted(files.items()))


def table(out: Path, records: dict[str, dict], since_ns: int, before: Iterable[str] | None,
          sequential: bool = False) -> dict[str, dict]:
    """The manifest's file table after finalize: each file with its digest and the shards that wrote it
    (in order; the last one's digest counts; a sequential stage's newest record lists them all). Files no
    shard claims are finalize's, digested now, if written since ``since_ns`` or finalize's in the earlier
    table ``before`` (a finalize may leave a file as it was; None: no readable earlier table, every such
    file counts); other files (previews written after an earlier run) are not part of the output."""
    files: dict[str, dict] = {}
    if sequential and records:
        newest = records[max(records)]["files"]
        files = {rel: {"size": e["size"], "sha256": e["sha256"], "shards": [e["by"]]} for rel, e in newest.items()}
    else:
        for sid in sorted(records):
            for rel, entry in records[sid].get("files", {}).items():
                shards = files.get(rel, {}).get("shards", [])
                files[rel] = {**entry, "shards": [*shards, sid]}
    rest = [rel for rel in data_files(out)
            if rel not in files and (before is None or rel in before or (out / rel).stat().st_mtime_ns >= since_ns)]
    files.update({rel: {**entry, "shards": []} for rel, entry in digests(out, rest).items()})
    return dict(sorted(files.items()))


@dataclass(frozen=True)
class Problem:
    """One damaged file."""

    path: str
    what: str  # missing | a directory, not a file | truncated or size changed | digest mismatch
    shards: tuple[str, ...]  # the shards that wrote it; empty: finalize


def check(out: Path, files: dict[str, dict], *, full: bool = True) -> list[Problem]:
    """Damaged files of a table: missing or of another size, and (``full``) with another sha256.

    Without ``full`` it only stats files: cheap enough for every cache hit and ``skel status``.
    """
    problems = []
    for rel, entry in files.items():
        path = out / rel
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            what = "missing"
        else:
            size = st.st_size
            what = ("a directory, not a file" if stat.S_ISDIR(st.st_mode) else
                    ("truncated" if size < entry["size"] else "size changed") if size != entry["size"] else "")
            if not what and full and sha256(path) != entry["sha256"]:
                what = "digest mismatch"
        if what:
            problems.append(Problem(rel, what, tuple(entry.get("shards", ()))))
    return problems


def output_problems(o: Output, *, full: bool = False) -> list[Problem]:
    """`check` of an output's recorded files (its manifest's table); quick (sizes only) unless ``full``."""
    return check(o.path, o.manifest.get("files", {}), full=full)


def restore_twins(out: Path, files: dict[str, dict], problems: list[Problem]) -> list[Problem]:
    """Put back each damaged file that another file of the table holds byte for byte (same size and sha256, and
    intact now): a training's newest epoch state and its ``last.pt`` are one state, and rerunning every epoch for
    want of one copy threw away a whole training. Returns the problems no twin mends."""
    by_content: dict[tuple[int, str], list[str]] = {}
    for rel, entry in files.items():
        by_content.setdefault((entry["size"], entry["sha256"]), []).append(rel)
    damaged = {p.path for p in problems}
    left = []
    for p in problems:
        entry = files.get(p.path)
        twins = [] if entry is None else [rel for rel in by_content[(entry["size"], entry["sha256"])]
                                          if rel not in damaged]
        twin = next((rel for rel in twins if not check(out, {rel: entry})), None)
        if twin is None:
            left.append(p)
            continue
        discard(out / p.path)  # a directory standing in its place, say
        with atomic_path(out / p.path) as tmp:
            shutil.copyfile(out / twin, tmp)
        if check(out, {p.path: entry}):
            left.append(p)
    return left
