"""`skel status`'s rows: each output of a workdir with its state, inputs, parameters, size and counts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.integrity import output_problems
from pipeline.workdir import dir_size, outputs, require_workdir


def status_rows(workdir: Path, versions: Callable[[str], str | None]) -> list[dict]:
    """One row per output of ``workdir`` for `skel status`: stage, fingerprint, state (``damaged`` when a
    file is missing or truncated), why it is stale (``versions``: the version of each stage this skel makes),
    input fingerprints, params, the files outside the workdir it depends on (``external``: their digests and marks,
    e.g. an ``--init`` checkpoint's, or bf16 run in float32; lists left out), size, errors, shard counts, seconds,
    path."""
    require_workdir(workdir)
    rows = []
    for o in outputs(workdir, versions=versions):
        damaged = o.complete and bool(output_problems(o))
        rows.append({
            "stage": o.stage, "fingerprint": o.fingerprint, "state": "damaged" if damaged else o.state,
            "stale": o.stale if o.state == "stale" else "",
            "inputs": {k: v["fingerprint"] for k, v in o.manifest.get("inputs", {}).items()},
            "params": o.manifest.get("params", {}), "external": _external(o.manifest), "bytes": dir_size(o.path),
            "errors": o.manifest.get("summary", {}).get("errors", len(o.manifest.get("failures", {}))),
            "shards": o.manifest.get("shards", {}), "seconds": o.manifest.get("seconds"), "path": str(o.path),
        })  # fmt: skip
    return rows


def _external(manifest: dict) -> dict:
    """The manifest's external digests and marks that are one value (a video listing's are lists: left out), with the
    path of a file the plan names beside its digest (``init`` beside ``init_sha256``)."""
    plan = manifest.get("plan", {}).get("params", {})
    found = {}
    for key, value in manifest.get("external", {}).items():
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            name = key.removesuffix("_sha256")
            short = value[:12] if name != key else value
            found[key] = f"{plan[name]} ({short})" if name != key and plan.get(name) else short
    return found
