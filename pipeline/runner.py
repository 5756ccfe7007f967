"""Run a stage: fingerprint it before running, reuse a complete output, resume a partial one.

Each shard's record is written by the process that ran it to ``_shards/<id>.json`` after its outputs
are in place, so a killed run (``kill -9`` included) resumes from the committed shards. Only the
driver writes ``manifest.json`` and calls ``finalize``.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from distributed import as_completed

from pipeline.atomic import read_json, remove_stale, write_json
from pipeline.cluster import Cluster
from pipeline.errors import SkelError
from pipeline.fingerprint import fingerprint, fingerprint_params
from pipeline.progress import stage_progress
from pipeline.stage import Context, Shard, Stage
from pipeline.workdir import MANIFEST, SHARDS, load_output, newest_complete, output_dir

log = logging.getLogger("skel")


@dataclass(frozen=True)
class Upstream:
    """An input of a stage: the producing stage, its fingerprint and its output directory."""

    stage: str
    fingerprint: str
    path: Path


@dataclass(frozen=True)
class Plan:
    """What running a stage with these parameters means: its fingerprint, output and cache state."""

    stage: Stage
    params: Any
    inputs: dict[str, Upstream]
    fingerprint: str
    out: Path
    cached: bool

    def context(self, workdir: Path) -> Context:
        paths = {name: up.path for name, up in self.inputs.items()}
        return Context(workdir, self.out, self.params, paths, self.fingerprint)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _code_version() -> str:
    try:
        return version("skel")
    except PackageNotFoundError:
        return "dev"


def resolve_inputs(
    stage: Stage, workdir: Path, params: Any, given: dict[str, Upstream] | None = None
) -> dict[str, Upstream]:
    """The inputs these params need: given ones win, the others default to the newest complete matching output."""
    resolved = dict(given or {})
    for name, producers in stage.inputs_for(params).items():
        if name in resolved:
            continue
        found = newest_complete(workdir, producers)
        if found is None:
            raise SkelError(
                f"{stage.name}: no complete {' or '.join(producers)} output in {workdir} "
                f"(run `skel {producers[0]}` first)"
            )
        resolved[name] = Upstream(found.stage, found.fingerprint, found.path)
    return resolved


def make_plan(stage: Stage, workdir: Path, params: Any, inputs: dict[str, Upstream] | None = None) -> Plan:
    ups = resolve_inputs(stage, workdir, params, inputs)
    fp = fingerprint(
        stage.name,
        stage.version,
        fingerprint_params(params),
        {name: up.fingerprint for name, up in sorted(ups.items())},
        stage.external(params),
    )
    out = output_dir(workdir, stage.name, fp)
    existing = load_output(out)
    return Plan(stage, params, ups, fp, out, cached=bool(existing and existing.complete))


def _execute(stage_cls: type[Stage], ctx: Context, shard: Shard, commit: bool = True) -> dict:
    """Run one shard (on a worker or in the driver) and commit its record last (unless ``commit`` is off)."""
    start = time.perf_counter()
    record = stage_cls().run_shard(ctx, shard)
    record["seconds"] = round(time.perf_counter() - start, 3)
    if commit:
        write_json(ctx.out / SHARDS / f"{shard.id}.json", record)
    return record


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SkelError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run_plan(plan: Plan, workdir: Path, cluster: Cluster, *, quiet: bool = False, primary: bool = True) -> Path:
    """Execute a plan (cache hit: nothing to do) and return its output directory.

    ``primary=False`` is for the other ranks of a multi-process (torchrun) run of a sequential stage:
    they run every shard alongside the primary but write no manifest, shard marker or finalize output.
    """
    stage = plan.stage
    if plan.cached:
        log.info("%s: cache hit %s", stage.name, plan.out)
        return plan.out
    ctx = plan.context(workdir)
    plan.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifest: dict[str, Any] = {
        "stage": stage.name,
        "version": stage.version,
        "fingerprint": plan.fingerprint,
        "params": fingerprint_params(plan.params),
        "inputs": {n: {"stage": u.stage, "fingerprint": u.fingerprint, "path": str(u.path)}
                   for n, u in plan.inputs.items()},
        "external": stage.external(plan.params),
        "code_version": _code_version(),
        "state": "running",
        "started": _now(),
    }
    if primary:
        write_json(plan.out / MANIFEST, manifest)

    shards = stage.shards(ctx)
    records: dict[str, dict] = {}
    for shard in shards:
        rec = read_json(plan.out / SHARDS / f"{shard.id}.json")
        if rec is not None:
            records[shard.id] = rec
    resumed = len(records)
    pending = [s for s in shards if s.id not in records]
    if resumed:
        log.info("%s: resuming, %d of %d shards already committed", stage.name, resumed, len(shards))
    failures: dict[str, str] = {}

    with stage_progress(quiet=quiet) as progress:
        task = progress.add_task(stage.name, total=len(shards), completed=resumed)

        def done(shard: Shard, rec: dict | None, exc: BaseException | None) -> None:
            if exc is None:
                records[shard.id] = rec
            else:
                failures[shard.id] = _describe(exc)
                log.debug("shard %s failed:\n%s", shard.id, "".join(traceback.format_exception(exc)))
            progress.advance(task)

        if stage.sequential or cluster.inline:
            for shard in pending:
                try:
                    done(shard, _execute(type(stage), ctx, shard, primary), None)
                except Exception as exc:  # noqa: BLE001 - recorded per shard, reported below
                    done(shard, None, exc)
                    if stage.sequential:
                        break
        elif pending:
            client = cluster.client
            futures = {
                client.submit(_execute, type(stage), ctx, s, key=f"{stage.name}-{plan.fingerprint[:8]}-{s.id}",
                              pure=False, retries=1): s
                for s in pending
            }
            for fut in as_completed(futures):
                try:
                    done(futures[fut], fut.result(), None)
                except Exception as exc:  # noqa: BLE001
                    done(futures[fut], None, exc)

    manifest["shards"] = {"total": len(shards), "resumed": resumed, "failed": len(failures)}
    if failures:
        manifest.update(state="failed", failures=failures, finished=_now())
        if primary:
            write_json(plan.out / MANIFEST, manifest)
        first_id, first = next(iter(failures.items()))
        raise SkelError(f"{stage.name}: {len(failures)} shard(s) failed; {first_id}: {first}")
    if not primary:
        return plan.out
    remove_stale(plan.out)
    summary = stage.finalize(ctx, records)
    manifest.update(
        state="complete",
        finished=_now(),
        seconds=round(time.perf_counter() - started, 2),
        summary=summary,
    )
    write_json(plan.out / MANIFEST, manifest)
    return plan.out


def run_stage(
    stage: Stage,
    workdir: Path,
    params: Any,
    cluster: Cluster,
    *,
    inputs: dict[str, Upstream] | None = None,
    quiet: bool = False,
    primary: bool = True,
) -> Path:
    """Plan and run one stage; returns its output directory."""
    return run_plan(make_plan(stage, workdir, params, inputs), workdir, cluster, quiet=quiet, primary=primary)
