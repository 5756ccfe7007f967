"""The workdir: ``<workdir>/<stage>/<fingerprint>/`` outputs, each described by its manifest.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import read_json

MANIFEST = "manifest.json"
SHARDS = "_shards"


@dataclass(frozen=True)
class Output:
    """One stage output directory and its manifest."""

    path: Path
    manifest: dict

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def state(self) -> str:
        return self.manifest.get("state", "unknown")

    @property
    def complete(self) -> bool:
        return self.state == "complete"


def output_dir(workdir: Path, stage: str, fp: str) -> Path:
    return workdir / stage / fp


def load_output(path: Path) -> Output | None:
    manifest = read_json(path / MANIFEST)
    return Output(path, manifest) if manifest else None


def outputs(workdir: Path, stages: tuple[str, ...] | None = None) -> list[Output]:
    """All outputs in the workdir (optionally of some stages), oldest first."""
    found = []
    for manifest in sorted(workdir.glob(f"*/*/{MANIFEST}")):
        out = load_output(manifest.parent)
        if out and (stages is None or out.stage in stages):
            found.append(out)
    return sorted(found, key=lambda o: o.manifest.get("finished") or o.manifest.get("started") or "")


def newest_complete(workdir: Path, stages: tuple[str, ...], where: dict | None = None) -> Output | None:
    """The most recently finished complete output of these stages whose params match ``where``."""
    done = [
        o for o in outputs(workdir, stages)
        if o.complete and all(o.manifest.get("params", {}).get(k) == v for k, v in (where or {}).items())
    ]
    return done[-1] if done else None



def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
