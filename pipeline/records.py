"""Shard commit records: ``_shards/<id>.json``, written by the process that ran a shard once its files are in
place, sealed with a digest of its own content; which records a rerun keeps, and undoing the ones behind
damaged files (docs/architecture.md, Atomic shards and resume)."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from pipeline import integrity
from pipeline.atomic import CorruptFile, discard, read_json, write_json
from pipeline.fingerprint import canonical_json
from pipeline.stage import Shard
from pipeline.workdir import SHARDS

log = logging.getLogger("skel")

DIGEST = "digest"  # a shard record's digest of its own content


def _sealed(record: dict) -> tuple[dict, str]:
    """The record as JSON stores it, and the sha256 of its canonical form."""
    plain = json.loads(canonical_json(record))
    return plain, hashlib.sha256(canonical_json(plain).encode()).hexdigest()


def write_record(path: Path, record: dict) -> dict:
    """Commit a shard record with a digest of its own content (an edited record is not taken); returns it as
    a later read will see it."""
    plain, digest = _sealed(record)
    write_json(path, {**plain, DIGEST: digest})
    return plain


def read_record(path: Path) -> dict | None:
    """A committed shard record; ``CorruptFile`` when it does not parse or its content no longer matches its
    digest (damaged or edited: the shard reruns)."""
    rec = read_json(path)
    if rec is None:
        return None
    digest = rec.pop(DIGEST, None)
    if _sealed(rec)[1] != digest:
        raise CorruptFile(f"{path}: edited or damaged (content does not match its digest)")
    return rec


def shard_key(shard: Shard) -> str:
    """What a shard covers (its payload, hashed): a record counts only for the same work, so a rerun that
    groups samples differently (another samples_per_shard) does not take another grouping's records."""
    return hashlib.sha256(canonical_json(shard.payload).encode()).hexdigest()[:16]


def committed(out: Path) -> dict[str, dict]:
    """Shard records that parse and match their digests (a corrupt or edited record is left out: its shard
    reruns and its new record replaces the old one)."""
    records = {}
    for path in sorted((out / SHARDS).glob("*.json")):
        try:
            rec = read_record(path)
        except CorruptFile as exc:
            log.warning("%s; its shard reruns", exc)
            continue
        if rec is not None:
            records[path.stem] = rec
    return records


def _intact(out: Path, sid: str, rec: dict) -> bool:
    problems = integrity.check(out, rec.get("files", {}), full=True)
    if problems:
        log.warning("%s: %s of shard %s is %s; it reruns", out, problems[0].path, sid, problems[0].what)
    return not problems


def standing(out: Path, shards: list[Shard], found: dict[str, dict], sequential: bool) -> dict[str, dict]:
    """The committed records a run keeps: those whose files are intact (read in full: a resume never builds
    on damaged work). A sequential stage keeps an unbroken run of shards from the first, up to the newest
    whose files, the state the next shard starts from, are intact; its earlier records describe files
    that later shards replaced or released (docs/architecture.md, Atomic shards and resume)."""
    if not sequential:
        return {sid: rec for sid, rec in found.items() if _intact(out, sid, rec)}
    chain = [s.id for s in itertools.takewhile(lambda s: s.id in found, shards)]
    while chain and not _intact(out, chain[-1], found[chain[-1]]):
        chain.pop()
    return {sid: found[sid] for sid in chain}


def forget(out: Path, markers: list[Path], sequential: bool) -> None:
    """Remove shard commits and, unless the stage is sequential (whose files are the state every later shard
    shares and rewrites), the files they list (a corrupt record's files are rewritten by its rerun)."""
    for marker in markers:
        if not sequential:
            try:
                rec = read_json(marker) or {}
            except CorruptFile:
                rec = {}
            for rel in rec.get("files", {}):
                discard(out / rel)
        discard(marker)


def drop(out: Path, problems: list[integrity.Problem], sequential: bool) -> set[str]:
    """Undo the commits behind damaged files: their shards' markers and files (for a sequential stage,
    every shard from the first that wrote one), and the damaged files themselves. Returns the shard ids."""
    shards = {s for p in problems for s in p.shards}
    markers = sorted((out / SHARDS).glob("*.json"))
    if sequential and shards:
        shards = {m.stem for m in markers if m.stem >= min(shards)}
    forget(out, [m for m in markers if m.stem in shards], sequential)
    for p in problems:
        discard(out / p.path)
    return shards


def release(out: Path, records: Iterable[dict]) -> None:
    """Delete the files committed records released (again after a kill between a commit and the deletion)."""
    for rec in records:
        for rel in rec.get("released", ()):
            discard(out / rel)
