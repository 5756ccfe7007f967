"""The workdir: ``<workdir>/<stage>/<fingerprint>/`` outputs, each described by its manifest.json.

Besides the manifest an output holds ``plan.json`` (everything needed to run it again, written when it
starts), ``_shards/<id>.json`` (one commit record per finished shard), ``.lock`` (the writer's pid and
host) and ``.used`` (when a run last used it: completed it or hit it in the cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from pipeline.atomic import CorruptFile, read_json, write_bytes, write_json
from pipeline.errors import SkelError
from pipeline.lock import alive

MANIFEST = "manifest.json"
PLAN = "plan.json"
SHARDS = "_shards"
USED = ".used"
SEAL = "sha256"  # the manifest's digest of its own content

log = logging.getLogger("skel")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Output:
    """One stage output directory and its manifest (``corrupt`` names the manifest when it does not parse;
    ``installed`` is the version of its stage this skel makes, when the caller looked it up)."""

    path: Path
    manifest: dict
    corrupt: str | None = None
    installed: str | None = None

    @property
    def stage(self) -> str:
        return self.manifest.get("stage", self.path.parent.name)

    @property
    def fingerprint(self) -> str:
        return self.manifest.get("fingerprint", self.path.name)

    @property
    def version(self) -> str | None:
        """The version of its stage that made it: its manifest's, else its plan.json's (None: not recorded)."""
        if "version" in self.manifest:
            return str(self.manifest["version"])
        try:
            version = (read_json(self.path / PLAN) or {}).get("version")
        except (CorruptFile, OSError):
            return None
        return None if version is None else str(version)

    @property
    def stale(self) -> str:
        """Why this skel can neither finish nor repair it, if another version of its stage made it ('' if not):
        the version is part of the fingerprint, so a rerun makes a new output beside it."""
        made = self.version
        if self.installed is None or made is None or made == self.installed:
            return ""
        return (f"made by {self.stage} version {made}; this skel makes version {self.installed}: "
                f"rerun `skel {self.stage}` for a current one")

    @property
    def state(self) -> str:
        """complete, failed, running, interrupted (its run was killed), corrupt (unreadable manifest) or stale
        (made by another version of its stage: ``stale`` says which), whatever its run left unless it runs."""
        state = self.manifest.get("state", "unknown")
        if state == "running" and alive(self.path):
            return "running"
        if self.stale:
            return "stale"
        if self.corrupt:
            return "corrupt"
        return "interrupted" if state == "running" else state

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    @property
    def failed_for_machine(self) -> bool:
        """Failed while it ran for the machine (a full disk, memory, lost workers: the runner marks it
        ``transient``), which a repair retries; one that failed for its work (a diverged training, a stage over its
        error budget) would fail again."""
        return self.state == "failed" and bool(self.manifest.get("transient"))

    @property
    def last_used(self) -> str:
        """When a run last produced or reused this output (what ``newest`` sorts by)."""
        try:
            used = (self.path / USED).read_text().strip()
        except (OSError, ValueError):  # never used since it was made, unreadable, or damaged (not UTF-8)
            used = ""
        return max(used, self.manifest.get("finished") or self.manifest.get("started") or "")


def output_dir(workdir: Path, stage: str, fp: str) -> Path:
    return workdir / stage / fp


def _seal(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(out: Path, manifest: dict) -> None:
    """Write an output's manifest with the sha256 of its own content, so that a changed byte that still parses
    (a parameter, a file's digest, the state) reads as damage, not as another output."""
    body = json.loads(json.dumps(manifest, default=str))  # as a later read sees it
    write_json(out / MANIFEST, body | {SEAL: _seal(body)})


_SAID: set[str] = set()  # the damaged manifests this process has warned of


def load_output(path: Path) -> Output | None:
    """The output at ``path``; None when it has no manifest. A corrupt manifest (unreadable, or its content
    not the one it sealed) is logged (naming the file) and the output counts as incomplete, so the rest of
    the workdir stays usable."""
    try:
        try:
            manifest = read_json(path / MANIFEST)
        except OSError as exc:  # a directory in its place, no permission
            raise CorruptFile(f"{path / MANIFEST}: unreadable ({exc.strerror or exc})") from None
        bad = _bad_file_entry(manifest or {})
        if bad is not None:
            raise CorruptFile(f"{path / MANIFEST}: file entry {bad!r} has no integer size and sha256")
        if manifest and SEAL in manifest and manifest[SEAL] != _seal(manifest):
            raise CorruptFile(f"{path / MANIFEST}: damaged (its content differs from the sha256 it records)")
    except CorruptFile as exc:
        if str(exc) not in _SAID:  # planning, input resolution and the runner read it each: said once
            _SAID.add(str(exc))
            log.warning("%s (treated as incomplete: rerun its stage to repair it)", exc)
        return Output(path, {}, corrupt=str(exc))
    return Output(path, manifest) if manifest else None


def _bad_file_entry(manifest: dict) -> str | None:
    """The first entry of the manifest's file table that the integrity checks could not read (None: all fit)."""
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        return "files"
    return next((rel for rel, e in files.items() if not (isinstance(e, dict) and type(e.get("size")) is int
                                                         and isinstance(e.get("sha256"), str))), None)


def mark_used(out: Path) -> None:
    """Record that a run just used this output, so it is the default input of the next stage (not on a
    read-only workdir, where cache hits still work)."""
    try:
        write_bytes(out / USED, now().encode())
    except OSError as exc:
        log.debug("%s: cannot record its use: %s", out, exc)


def outputs(workdir: Path, stages: tuple[str, ...] | None = None,
            versions: Callable[[str], str | None] | None = None) -> list[Output]:
    """All outputs in the workdir (optionally of some stages), least recently used first. A directory with a
    run's plan or shard records but no manifest counts too: as a run that has just started (``running``, or
    ``interrupted`` when its writer is gone) while it has no shard records, else as ``corrupt`` (deleting a
    manifest must not make an output, and its damage, invisible). ``versions`` (a stage name -> the version of
    it this skel makes, None for an unknown stage) lets an output of another version read as ``stale``."""
    found = []
    for path in _output_dirs(workdir):
        out = load_output(path) or _unmanifested(path)
        if stages is None or out.stage in stages:
            found.append(replace(out, installed=versions(out.stage)) if versions else out)
    return sorted(found, key=lambda o: o.last_used)


def _output_dirs(workdir: Path) -> list[Path]:
    """The directories ``stage/fingerprint`` of the workdir that hold a manifest, a plan or shard records, and
    those that cannot be listed (no permission): these read as corrupt, where a glob would pass over them and
    status and verify would not name them."""
    found = []
    for stage in _subdirs(workdir) or []:
        outs = _subdirs(stage)
        if outs is None:
            found.append(stage)
            continue
        found += [path for path in outs
                  if _subdirs(path) is None or any((path / name).exists() for name in (MANIFEST, PLAN, SHARDS))]
    return sorted(found)


def _subdirs(path: Path) -> list[Path] | None:
    """The directories in ``path``; None when it cannot be listed. An entry that cannot be followed (a link in a
    loop) is none: it hid every output beside it, its folder read as one output."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return None
    return [Path(e.path) for e in entries if _is_dir(e)]


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _unmanifested(path: Path) -> Output:
    """An output directory without a manifest: a run killed between its plan and its manifest, or damage."""
    if not any((path / SHARDS).glob("*.json")):
        return Output(path, {"stage": path.parent.name, "fingerprint": path.name, "state": "running"})
    return Output(path, {}, corrupt=f"{path / MANIFEST}: missing")


def newest_complete(
    workdir: Path, stages: tuple[str, ...], where: dict | None = None, like: dict[str, str] | None = None
) -> Output | None:
    """The most recently used complete output of these stages whose params match ``where`` and whose inputs
    of the names in ``like`` have those fingerprints (failed, interrupted and corrupt outputs never fit)."""
    done = [
        o for o in outputs(workdir, stages)
        if o.complete
        and all(o.manifest.get("params", {}).get(k) == v for k, v in (where or {}).items())
        and all(o.manifest.get("inputs", {}).get(name, {}).get("fingerprint", fp) == fp
                for name, fp in (like or {}).items())
    ]  # fmt: skip
    return done[-1] if done else None


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def require_workdir(workdir: Path) -> None:
    """A typo in ``-w`` is an error, not an empty workdir that verifies."""
    if not workdir.is_dir():
        raise SkelError(f"{workdir}: no such workdir")
