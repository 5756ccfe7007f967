"""Run a stage: fingerprint it before running, reuse a complete output, resume a partial one.

Each shard's record (``pipeline.records``) is written by the process that ran it to ``_shards/<id>.json``
after its outputs are in place, with the size and sha256 of every file it wrote, so a killed run (``kill -9``
included) resumes from the committed shards and damage can be traced to the shard to redo. Only the driver
writes ``manifest.json`` and calls ``finalize``, holding the output's lock (one writer per output).
A stage is complete only when it stays within its error budget; otherwise it is ``failed``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

from pipeline import integrity
from pipeline.atomic import CorruptFile, clear_dirs, guarded, journal, remove_stale, write_json
from pipeline.cluster import Cluster, SchedulerLost, worker_died
from pipeline.code import code_digest
from pipeline.digests import kept_in
from pipeline.errors import SkelError, error_message, shell
from pipeline.faults import crash_point
from pipeline.fingerprint import fingerprint, fingerprint_params
from pipeline.inputs import Given, Upstream, ancestors, resolve_inputs
from pipeline.lock import holds, output_lock
from pipeline.progress import Heartbeat, stage_progress
from pipeline.records import committed, drop, forget, read_record, release, shard_key, standing, write_record
from pipeline.stage import Context, Shard, Stage, check_params
from pipeline.values import absolute_paths
from pipeline.workdir import MANIFEST, PLAN, SHARDS, Output, load_output, mark_used, now, output_dir, write_manifest

log = logging.getLogger("skel")

# Error budget: the share of a stage's samples that may fail (rounded up) before the stage fails. The CLI
# default is MAX_ERRORS; called as a library the runner fails a stage only when every sample failed.
MAX_ERRORS = 0.1


@dataclass(frozen=True)
class Plan:
    """What running a stage with these parameters means: its fingerprint, output and cache state."""

    stage: Stage
    params: Any
    inputs: dict[str, Upstream]
    fingerprint: str
    out: Path
    cached: bool
    external: dict  # what of the world outside the workdir the fingerprint holds (``Stage.external``), as planned

    def context(self, workdir: Path, *, quiet: bool = False) -> Context:
        """What a shard runs with; its paths absolute, for a worker of a ``--scheduler`` cluster has a current
        directory of its own."""
        paths = {name: up.path.absolute() for name, up in self.inputs.items()}
        return Context(workdir.absolute(), self.out.absolute(), self.params, paths, self.fingerprint, quiet,
                       external=self.external, code=code_digest())


def _code_version() -> str:
    try:
        return version("skel")
    except PackageNotFoundError:
        return "dev"


def make_plan(stage: Stage, workdir: Path, params: Any, inputs: Given | None = None,
              where: Mapping[str, dict] | None = None) -> Plan:
    """The plan of running ``stage`` with ``params`` (its path parameters made absolute: ``absolute_paths``) on
    these inputs (``pipeline.inputs.resolve_inputs``)."""
    params = absolute_paths(params)
    ups = resolve_inputs(stage, workdir, params, inputs, where)
    with kept_in(workdir):
        external = stage.external(params)
    fp = fingerprint(
        stage.name,
        stage.version,
        fingerprint_params(params),
        {name: up.fingerprint for name, up in sorted(ups.items())},
        external,
    )
    out = output_dir(workdir, stage.name, fp)
    cached = hit_output(out) is not None  # a damaged output is repaired, not a hit
    return Plan(stage, params, ups, fp, out, cached, external)


def _check_external(plan: Plan) -> None:
    """The files outside the workdir that the fingerprint holds are as they were planned: a recipe plans every step
    at its start, and an ``--init`` checkpoint (a pickle, a labels CSV) replaced while earlier steps ran would
    otherwise be used under the fingerprint of its old content, a later cache hit of the old content's request."""
    with kept_in(plan.out.parent.parent):
        now = plan.stage.external(plan.params)
    if changed := sorted(k for k in now.keys() | plan.external.keys() if now.get(k) != plan.external.get(k)):
        raise SkelError(f"{plan.stage.name}: {', '.join(changed)} changed since this step was planned: run the "
                        "command again (the steps done are kept)")


def _still_held(ctx: Context, shard: Shard) -> None:
    """The shard's run still holds the output: one that ended (Ctrl-C) may leave the shard running on a cluster's
    worker, and what it would write or commit now belongs to no run (a later one may have committed it already)."""
    if ctx.run and not holds(ctx.out, ctx.run):
        raise SkelError(f"{ctx.out}: shard {shard.id} finished after its run ended; not written")


def _execute(stage_cls: type[Stage], ctx: Context, shard: Shard, commit: bool = True,
             carried: dict[str, dict] | None = None) -> dict:
    """Run one shard (on a worker or in the driver) and commit its record, with the digests of the files
    it wrote, last (unless ``commit`` is off). A sequential stage's record lists the whole state the next
    shard starts from: ``carried`` (the previous record's files) less what the shard ``released``, updated
    with what it wrote; released files are deleted only once the record is committed."""
    _check_worker(ctx, commit)
    if commit and carried is None and (done := _committed_now(ctx, shard)) is not None:
        return done
    start = time.perf_counter()
    try:
        with journal() as written, guarded(functools.partial(_still_held, ctx, shard)):
            record = stage_cls().run_shard(ctx, shard)
        record["seconds"] = round(time.perf_counter() - start, 3)
        if commit:
            files = integrity.written_by_shard(ctx.out, written)
            if carried is not None:
                files = integrity.carry(carried, files, record.get("released", ()), shard.id)
            record.update(shard=shard_key(shard), files=files)
            crash_point(f"uncommitted:{stage_cls.name}/{shard.id}")
            _still_held(ctx, shard)
            record = write_record(ctx.out / SHARDS / f"{shard.id}.json", record)
            crash_point(f"commit:{stage_cls.name}/{shard.id}")
            release(ctx.out, [record])
    except Exception as exc:
        # the shard's frames go now, and the files they hold open with them: a Dask worker keeps a failed task's
        # error, and a deleted temporary's room on a full disk stays taken while it is open
        traceback.clear_frames(exc.__traceback__)
        if isinstance(exc, OSError) and exc.filename is None:  # name at least the output being written
            raise OSError(exc.errno, exc.strerror or str(exc), str(ctx.out)) from exc
        raise
    return record


def _check_worker(ctx: Context, commit: bool) -> None:
    """The process running a shard (a Dask worker of the user's scheduler, perhaps on another machine) runs the
    command's skel and, where it commits, sees its output: else its shards would be another code's, or fail as if
    their run had ended (a rank of torchrun other than the first commits nothing, and may start before the first
    made the output's folder)."""
    where = f"{socket.gethostname()} (pid {os.getpid()})"
    if ctx.code and ctx.code != code_digest():
        raise SkelError(f"{where}: this worker runs other skel code than the command (sources {code_digest()[:12]}, "
                        f"the command's {ctx.code[:12]}): give every worker the same skel")
    if commit and not ctx.out.is_dir():
        raise SkelError(f"{where}: this worker cannot see {ctx.out}: is the workdir on a filesystem every worker "
                        "shares?")


def _committed_now(ctx: Context, shard: Shard) -> dict | None:
    """The record of ``shard`` when it is committed already. A run forgets every record it does not keep before it
    submits a shard, so this is the same run's: Dask computes a task again when the worker that held its result
    dies, and redoing the shard replaced its committed files (a kill then left the complete output without one)."""
    try:
        done = read_record(ctx.out / SHARDS / f"{shard.id}.json")
    except CorruptFile:
        return None
    return done if done is not None and done.get("shard") == shard_key(shard) else None


def _budget(summary: dict, max_errors: float) -> str | None:
    """Why a finished stage failed its error budget, if it did (stages without per-sample errors pass)."""
    if "samples" not in summary or "errors" not in summary:
        return None
    ok, bad = summary["samples"], summary["errors"]
    if ok == 0:
        return f"all {bad} samples failed" if bad else "no samples"
    if bad > math.ceil(max_errors * (ok + bad)):
        return f"{bad} of {ok + bad} samples failed, more than --max-errors {max_errors:g} allows"
    return None


def run_plan(
    plan: Plan,
    workdir: Path,
    cluster: Cluster,
    *,
    quiet: bool = False,
    primary: bool = True,
    max_errors: float = 1.0,
    damaged: list[integrity.Problem] | None = None,
) -> Path:
    """Execute a plan (cache hit: nothing to do) and return its output directory.

    A complete output whose files are missing or truncated (or ``damaged``, from a full check) has the
    shards behind them redone. ``primary=False`` is for the other ranks of a multi-process (torchrun) run
    of a sequential stage: they run every shard alongside the primary but write no manifest, shard marker
    or finalize output, and take no lock. Environment errors (read-only, full disk, ...) are one line.
    """
    try:
        if not primary:
            return _run(plan, workdir, cluster, quiet=quiet, primary=False, max_errors=max_errors)
        if damaged is None and (hit := hit_output(plan.out)):
            log.info("%s: cache hit %s", plan.stage.name, plan.out)
            over = _budget(hit.manifest.get("summary", {}), max_errors)  # the budget is not in the fingerprint
            if over:
                raise SkelError(f"{plan.stage.name}: {over} (its complete output {plan.out} was made under a looser "
                                f"budget); see {plan.out / 'errors.parquet'}")
            mark_used(plan.out)
            return plan.out
        with kept_in(workdir):  # the checks read files outside the workdir too (render's: the import's pickle)
            _check_inputs(plan)
            _check_external(plan)
            plan.stage.check_data(plan.context(workdir).inputs, plan.params)
        if not (cluster.inline or plan.stage.sequential):  # before the output is touched: a cluster that cannot
            cluster.client  # noqa: B018 - start (too few files, an unreachable scheduler) leaves no output behind
        run = uuid.uuid4().hex
        with output_lock(plan.out, run) as killed:
            if killed:
                log.info("%s: taking over from a killed run (pid %s, host %s)", plan.stage.name, killed["pid"],
                         killed["host"])
            existing = load_output(plan.out)
            if existing and existing.complete:
                problems = damaged if damaged is not None else integrity.output_problems(existing)
                remove_stale(plan.out)  # we hold the lock: a killed restore's temporaries
                left = integrity.restore_twins(plan.out, existing.manifest.get("files", {}), problems)
                if len(left) < len(problems):
                    log.warning("%s: %d damaged file(s) of %s put back from identical copies in it (e.g. %s)",
                                plan.stage.name, len(problems) - len(left), plan.out,
                                next(p.path for p in problems if p not in left))
                if not left:  # another run completed it meanwhile, or every damaged file had a twin
                    mark_used(plan.out)
                    return plan.out
                problems = left
                redo = drop(plan.out, problems, plan.stage.sequential)
                log.warning("%s: %s is damaged (%d file(s), e.g. %s %s); redoing %s", plan.stage.name, plan.out,
                            len(problems), problems[0].path, problems[0].what,
                            f"shard(s) {', '.join(sorted(redo))}" if redo else "its index files")
            return _run(plan, workdir, cluster, quiet=quiet, primary=True, max_errors=max_errors, run=run)
    except OSError as exc:
        raise SkelError(f"{plan.stage.name}: {error_message(exc)}") from None


def _check_inputs(plan: Plan) -> None:
    """Read every file of the inputs, and of the outputs they were made from, against its digest before using
    them (about one pass over the data, which the stage reads anyway; a test reads its model's volumes): a
    damaged input is refused, never computed on."""
    for found in ancestors([up.path for up in plan.inputs.values()]):
        problems = integrity.output_problems(found, full=True)
        if problems:
            p = problems[0]
            raise SkelError(f"{plan.stage.name}: input {found.path} is damaged ({len(problems)} file(s), e.g. {p.path} "
                            f"{p.what}); run `skel verify --repair -w {shell(found.path.parent.parent)}`")


def hit_output(out: Path) -> Output | None:
    """The output at ``out`` if it is complete with every recorded file present at its size (a cache hit)."""
    existing = load_output(out)
    return existing if existing and existing.complete and not integrity.output_problems(existing) else None


def _retried(name: str, found: dict[str, dict]) -> dict[str, dict]:
    """The committed shards a rerun of a failed output keeps: those whose samples all succeeded. A failed sample
    may have failed for a cause the user has since mended (a video moved back, a full disk, more --max-errors
    allowed the rest), which the fingerprint cannot see; a deterministic failure only fails again."""
    kept = {sid: rec for sid, rec in found.items() if not rec.get("errors")}
    if len(kept) < len(found):
        log.info("%s: the last run failed: retrying %d shard(s) with failed samples", name, len(found) - len(kept))
    return kept


def _say_unfinished_alike(plan: Plan, manifest: dict) -> None:
    """Name the unfinished outputs of this stage, made from the same inputs by this version of it, that this run
    starts beside rather than resumes because a parameter differs (--epochs changed after a kill): its committed
    work is kept, and the command with its parameters resumes it. Not for a stage without inputs (an import of
    other data has other outputs beside it), nor where only the files outside the workdir differ."""
    if not manifest["inputs"]:
        return
    for other in sorted(plan.out.parent.iterdir()):
        found = load_output(other) if other != plan.out and other.is_dir() else None
        if found is None or found.manifest.get("inputs") != manifest["inputs"]:
            continue
        if found.manifest.get("version") != manifest["version"] or found.manifest.get("external") != manifest[
                "external"]:
            continue
        if found.state != "interrupted" and not found.failed_for_machine or not (done := committed(other)):
            continue
        theirs = found.manifest.get("params") or {}
        changed = ", ".join(f"{k} {theirs.get(k)!r} -> {v!r}" for k, v in manifest["params"].items()
                            if theirs.get(k) != v)
        if changed:
            log.warning("%s %s is unfinished, with %d of its %s committed; this run starts another (%s): the "
                        "command with its parameters resumes it", plan.stage.name, other.name[:8], len(done),
                        plan.stage.shard_noun, changed)


def _run(plan: Plan, workdir: Path, cluster: Cluster, *, quiet: bool, primary: bool, max_errors: float,
         run: str = "") -> Path:
    stage = plan.stage
    ctx = dataclasses.replace(plan.context(workdir, quiet=quiet), run=run)
    started = time.perf_counter()
    inputs = {n: {"stage": u.stage, "fingerprint": u.fingerprint, "path": output_dir(Path(), u.stage, u.fingerprint)
                  .as_posix()} for n, u in plan.inputs.items()}  # in the workdir, wherever it moves
    spec = {"stage": stage.name, "version": stage.version, "fingerprint": plan.fingerprint, "inputs": inputs,
            "params": dataclasses.asdict(plan.params)}  # plan.json's content, kept in the sealed manifest too
    manifest: dict[str, Any] = {
        "stage": stage.name,
        "version": stage.version,
        "fingerprint": plan.fingerprint,
        "params": fingerprint_params(plan.params),
        "inputs": inputs,
        "external": plan.external,
        "code_version": _code_version(),
        "plan": spec,
        "state": "running",
        "started": now(),
    }
    previous = load_output(plan.out) if primary else None  # its finalize files stay finalize's
    table = previous.manifest.get("files") if previous else None
    before = None if table is None else {rel for rel, e in table.items() if not e["shards"]}
    if primary:
        plan.out.mkdir(parents=True, exist_ok=True)
        remove_stale(plan.out)  # we hold the lock: temporaries are a killed writer's
        clear_dirs(plan.out, [MANIFEST, PLAN, *(table or {})])
        write_json(plan.out / PLAN, spec)
        write_manifest(plan.out, manifest)

    def fail(exc: Exception, **extra: Any) -> NoReturn:
        """Mark the output failed and raise ``exc``, or, when the mark cannot be written (status then shows the
        output interrupted), a SkelError that says so too. No shard runs now: the temporaries the failed ones
        left go first, for on a full disk they hold the room the mark needs."""
        manifest.update(state="failed", finished=now(), **extra)
        if primary:
            try:
                remove_stale(plan.out)
                write_manifest(plan.out, manifest)
            except OSError as unmarked:
                line = error_message(exc) if isinstance(exc, SkelError) else f"{stage.name}: {error_message(exc)}"
                raise SkelError(f"{line}; the output could not be marked failed ({unmarked.strerror or unmarked}): "
                                "skel status shows it interrupted") from exc
        raise exc

    try:
        with kept_in(workdir):
            shards = stage.shards(ctx)
        # again: a file replaced while the run started (a cluster's workers starting) would give its shards other
        # bytes than the fingerprint's, and a shard can only check the file against what shards() saw
        _check_external(plan)
    except Exception as exc:  # e.g. a split with no samples: the output failed, it was not killed
        fail(exc, failures={"shards": error_message(exc)}, **_transient(exc))
    keys = {s.id: shard_key(s) for s in shards}
    found = {sid: rec for sid, rec in committed(plan.out).items() if rec.get("shard") == keys.get(sid)}
    if previous and previous.state == "failed" and not stage.sequential:
        found = _retried(stage.name, found)
    records = standing(plan.out, shards, found, stage.sequential)
    if primary:  # commits of other work (another grouping of the samples) or damaged ones: not ours
        forget(plan.out, [m for m in (plan.out / SHARDS).glob("*.json") if m.stem not in records], stage.sequential)
        release(plan.out, records.values())
        clear_dirs(plan.out, [rel for rec in found.values() for rel in rec.get("files", {})])
    resumed = len(records)
    pending = [s for s in shards if s.id not in records]
    if resumed:
        log.info("%s: resuming, %d of %d %s already committed", stage.name, resumed, len(shards), stage.shard_noun)
    elif primary and previous is None:  # a new output (a repair starts none)
        _say_unfinished_alike(plan, manifest)
    failures: dict[str, str] = {}
    lost: set[str] = set()  # shards whose Dask workers died running them
    machine: set[str] = set()  # shards that failed for the machine (a full disk, memory, dead workers), not the work
    with stage_progress(quiet=quiet) as progress:
        task = progress.add_task(stage.name, total=len(shards), completed=resumed)
        heartbeat = Heartbeat(quiet=quiet)

        def done(shard: Shard, rec: dict | None, exc: BaseException | None) -> None:
            if exc is None:
                records[shard.id] = rec
            else:
                failures[shard.id] = error_message(exc)
                if _transient(exc) or worker_died(exc):
                    machine.add(shard.id)
                if worker_died(exc):
                    lost.add(shard.id)
                log.debug("shard %s failed:\n%s", shard.id, "".join(traceback.format_exception(exc)))
            progress.advance(task)
            if heartbeat.due():
                log.info("%s: %d of %d %s done", stage.name, len(records) + len(failures), len(shards),
                         stage.shard_noun)

        if stage.sequential or cluster.inline:
            carries = stage.sequential and primary  # each record lists the state after it (other ranks commit nothing)
            for shard in pending:
                carried = (records[max(records)]["files"] if records else {}) if carries else None
                try:
                    done(shard, _execute(type(stage), ctx, shard, primary, carried), None)
                except Exception as exc:  # noqa: BLE001 - recorded per shard, reported below
                    done(shard, None, exc)
                    if stage.sequential:
                        break
        elif pending:
            try:
                _on_dask(plan, ctx, cluster, pending, done)
            except SchedulerLost:  # an interruption: the output stays as it was, and the same command resumes
                raise
            except Exception as exc:  # the cluster failed (e.g. left without workers): so did the output
                fail(exc, failures={"cluster": error_message(exc)}, transient=True)

    if failures and lost == failures.keys():  # the output stays as it was (interrupted), as for a lost scheduler
        raise SchedulerLost(f"{stage.name}: {len(lost)} shard(s) lost: the Dask workers running them died (killed, or "
                            "out of memory: see the workers' logs); the same command resumes from what was committed")
    manifest["shards"] = {"total": len(shards), "resumed": resumed, "failed": len(failures)}
    if failures:
        first_id, first = next(iter(failures.items()))
        fail(SkelError(f"{stage.name}: {len(failures)} shard(s) failed; {first_id}: {first}"), failures=failures,
             **({"transient": True} if machine == failures.keys() else {}))
    if not primary:
        return plan.out
    remove_stale(plan.out)
    since = time.time_ns() - 2 * 10**9  # margin: file times come from a coarser clock
    try:
        summary = stage.finalize(ctx, records)
    except Exception as exc:
        fail(exc, failures={"finalize": error_message(exc)}, **_transient(exc))
    crash_point(f"finalized:{stage.name}")
    manifest.update(summary=summary, files=integrity.table(plan.out, records, since, before, stage.sequential))
    if gone := integrity.check(plan.out, manifest["files"], full=False):  # whatever took them, the rerun redoes them
        redo = ", ".join(sorted(drop(plan.out, gone, stage.sequential)))
        line = (f"{stage.name}: {len(gone)} file(s) written by this run changed before it ended (e.g. {gone[0].path} "
                f"{gone[0].what}); {f'shard(s) {redo} dropped: ' if redo else ''}run the command again to redo them")
        fail(SkelError(line), failures={"files": line}, transient=True)
    over = _budget(summary, max_errors)
    first = next((e for sid in sorted(records) for e in records[sid].get("errors", [])), None)
    sid = first and first["sample_id"]
    shown = sid if not sid or sid.isprintable() else repr(sid)  # a newline or an escape code in a name: quoted
    example = f" (first: {shown}: {first['message']})" if first else ""
    if over:
        fail(SkelError(f"{stage.name}: {over}{example}; see {plan.out / 'errors.parquet'}"))
    if summary.get("errors") and "samples" in summary:  # within the budget: the rest went on, but say so
        log.warning("%s: %d of %d samples skipped%s; see %s", stage.name, summary["errors"],
                    summary["errors"] + summary["samples"], example, plan.out / "errors.parquet")
    manifest.update(state="complete", finished=now(), seconds=round(time.perf_counter() - started, 2))
    write_manifest(plan.out, manifest)
    mark_used(plan.out)
    return plan.out


def _transient(exc: BaseException) -> dict:
    """``{"transient": True}`` for a failure of the machine (an OSError: a full disk, a lost mount; memory), which a
    repair retries (``skel verify`` counts the output unfinished), not of the work (a diverged training, a split
    without samples), which it would repeat."""
    return {"transient": True} if isinstance(exc, OSError | MemoryError) else {}


def _on_dask(plan: Plan, ctx: Context, cluster: Cluster, pending: list[Shard],
             done: Callable[[Shard, dict | None, BaseException | None], None]) -> None:
    """Run the pending shards as Dask tasks, handing each to ``done`` (with its record or its error) as it ends."""
    client = cluster.client
    # the run's token in the key: a scheduler takes equal keys for one task, and two runs of one fingerprint (two
    # workdirs on a shared scheduler) would share each other's shards, written into one output only
    futures = {
        client.submit(_execute, type(plan.stage), ctx, s,
                      key=f"{plan.stage.name}-{plan.fingerprint[:8]}-{ctx.run[:8]}-{s.id}", pure=False, retries=1): s
        for s in pending
    }
    try:
        for fut in cluster.finished(futures):
            try:
                done(futures[fut], fut.result(), None)
            except Exception as exc:  # noqa: BLE001 - recorded per shard, reported by the runner
                done(futures[fut], None, exc)
    except BaseException:  # Ctrl-C, a lost scheduler: no queued shard starts after the run (running ones are fenced)
        with contextlib.suppress(Exception):  # a lost scheduler cancels nothing
            client.cancel(list(futures), force=True)
        raise


def run_stage(
    stage: Stage,
    workdir: Path,
    params: Any,
    cluster: Cluster,
    *,
    inputs: Given | None = None,
    where: Mapping[str, dict] | None = None,
    quiet: bool = False,
    primary: bool = True,
    max_errors: float = 1.0,
) -> Path:
    """Check, plan and run one stage; returns its output directory. ``inputs`` and ``where`` as ``make_plan``."""
    check_params(stage, params)
    try:
        plan = make_plan(stage, workdir, params, inputs, where)
    except OSError as exc:
        raise SkelError(f"{stage.name}: {error_message(exc)}") from None
    return run_plan(plan, workdir, cluster, quiet=quiet, primary=primary, max_errors=max_errors)
