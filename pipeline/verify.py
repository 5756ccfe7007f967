"""`skel verify`: check every file of every output against the digests recorded when it was written,
and repair what is damaged by redoing exactly the shards that wrote it (then finalize again).

A repair rebuilds the stage from the output's ``plan.json`` (its full parameters and inputs) and refuses
when the fingerprint no longer matches (an input or source file changed since), so the result is the
output a clean run would make.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.atomic import CorruptFile, json_bytes, read_json
from pipeline.cluster import Cluster
from pipeline.errors import SkelError, SourceGone, shell
from pipeline.inputs import Upstream, ancestors, find_output
from pipeline.integrity import Problem, output_problems
from pipeline.records import read_record
from pipeline.runner import Plan, make_plan, run_plan
from pipeline.stage import Stage
from pipeline.values import make_params
from pipeline.workdir import PLAN, SHARDS, Output, output_dir, outputs, require_workdir


@dataclass(frozen=True)
class Report:
    """What is wrong with one output (nothing: ``ok``)."""

    output: Output
    problems: list[Problem] = field(default_factory=list)
    samples: dict[str, list[str]] = field(default_factory=dict)  # damaged file -> the samples it holds
    note: str = ""  # why the output itself is unusable (corrupt manifest, never finished)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.note

    @property
    def needs_repair(self) -> bool:
        """Damaged files, an unreadable or missing manifest, or a run that was killed or failed for the machine
        (a full disk, a repair's too: ``Output.failed_for_machine``): what ``--repair`` finishes. A stage that failed
        for its work (over its error budget, a diverged training: a rerun repeats it) is not damage, nor is a stale
        output (another version of its stage made it, which this skel cannot redo: ``Output.stale``)."""
        return (bool(self.problems) or self.output.state in ("corrupt", "interrupted")
                or self.output.failed_for_machine)


def _samples(out: Path, problem: Problem) -> list[str]:
    """Sample ids in a damaged file: the rows of its shards' records that name one of the file's path parts
    (an array or part name), else every sample of those shards (error rows are not stored samples)."""
    rows = []
    for shard in problem.shards:
        try:
            rec = read_json(out / SHARDS / f"{shard}.json") or {}
        except CorruptFile:
            continue
        rows += [row for key, items in rec.items() if key != "errors" and isinstance(items, list)
                 for row in items if isinstance(row, dict) and "sample_id" in row]
    parts = set(Path(problem.path).parts)
    named = [row for row in rows if parts & {str(v) for v in row.values()}]
    return [row["sample_id"] for row in (named or rows)]


def verify_output(found: Output) -> Report:
    """Full check of one output: every recorded file present, of its size and sha256."""
    if found.state == "stale":
        return Report(found, note=f"stale, left as it is: {found.stale}")
    if found.corrupt:
        return Report(found, note=f"{found.corrupt}")
    if found.state == "failed" and (failures := found.manifest.get("failures")):
        first, why = next(iter(failures.items()))
        again = "; --repair runs it again" if found.failed_for_machine else ""
        return Report(found, note=f"failed while it ran ({first}: {why}), not complete{again}")
    if found.state != "complete":
        return Report(found, note=f"{found.state}, not complete")
    if "files" not in found.manifest:
        return Report(found, note="no file table (written before skel recorded digests): cannot be verified; "
                                  "rerun its stage to make one")
    problems = output_problems(found, full=True) + _bookkeeping_problems(found)
    return Report(found, problems, {p.path: _samples(found.path, p) for p in problems})


def _bookkeeping_problems(found: Output) -> list[Problem]:
    """The run's own files, which the file table does not hold: ``plan.json`` (what a repair redoes) against the
    plan the sealed manifest keeps (outputs made before it kept one: not checked), and each shard record against
    its own digest (the shard reruns)."""
    problems = []
    if "plan" in found.manifest:
        try:
            held = (found.path / PLAN).read_bytes()
        except FileNotFoundError:
            problems.append(Problem(PLAN, "missing", ()))
        except IsADirectoryError:  # the repair's run clears it
            problems.append(Problem(PLAN, "a directory, not a file", ()))
        else:
            if held != json_bytes(found.manifest["plan"]):
                problems.append(Problem(PLAN, "differs from the manifest's plan", ()))
    for path in sorted((found.path / SHARDS).glob("*.json")):
        try:
            read_record(path)
        except CorruptFile:
            problems.append(Problem(f"{SHARDS}/{path.name}", "edited or damaged", (path.stem,)))
    return problems


def verify_workdir(workdir: Path, ref: str | None, versions: Callable[[str], str | None]) -> list[Report]:
    """Reports for every output of the workdir, or the one named by ``ref`` (directory or fingerprint prefix);
    ``versions`` tells the version of each stage this skel makes (``outputs``)."""
    require_workdir(workdir)
    found = outputs(workdir, versions=versions)
    if ref is None:
        return [verify_output(o) for o in found]
    path = Path(ref)
    matches = [o for o in found if o.path.resolve() == path.resolve() or o.fingerprint.startswith(ref)]
    if len(matches) != 1:
        raise SkelError(f"{workdir}: {len(matches)} outputs match {ref!r}")
    return [verify_output(matches[0])]


def _plan(stage: Stage, workdir: Path, params: object, inputs: dict[str, Upstream], name: str) -> Plan:
    """The plan a repair redoes, or one line naming the output ``name`` that cannot be planned and why (a source
    that is gone: where to make it again from)."""
    try:
        return make_plan(stage, workdir, params, inputs)
    except SourceGone as exc:
        raise SkelError(f"cannot repair {name}: its source {exc.path} is gone; "
                        f"rerun `{exc.rerun} -w {shell(workdir)}`") from None
    except SkelError as exc:
        raise SkelError(f"cannot repair {name}: {exc}") from None


def repair(report: Report, workdir: Path, registry: Callable[[str], Stage], cluster: Cluster, *,
           quiet: bool = False) -> Path:
    """Redo the damaged shards of an output (or all its missing work) and finalize it again."""
    out = report.output.path
    spec = _spec(report)
    stage = registry(spec["stage"])
    fields = {f.name for f in dataclasses.fields(stage.Params)}
    params = make_params(stage, {k: v for k, v in spec["params"].items() if k in fields}, f"cannot repair {out}")
    inputs = {}
    for name, up in spec["inputs"].items():
        path = output_dir(workdir, up["stage"], up["fingerprint"])
        inputs[name] = Upstream.of(find_output(workdir, (up["stage"],), str(path)))
    plan = _plan(stage, workdir, params, inputs, f"{stage.name} {out.name[:8]}")
    if plan.out != out:
        raise SkelError(f"cannot repair {out}: its inputs or source files changed since it was made, or this skel "
                        f"makes it otherwise (a fingerprint marker; it would now be {plan.out.name}): its stage's "
                        f"command makes the current output, and `rm -r {shell(out)}` takes this one out of the check")
    return run_plan(plan, workdir, cluster, quiet=quiet, damaged=report.problems if report.problems else None)


def _spec(report: Report) -> dict:
    """The plan a repair redoes: the sealed manifest's copy where it keeps one (a damaged plan.json is then
    rewritten by the repair), else plan.json, checked to hold a plan."""
    out = report.output.path
    spec = None if report.output.corrupt else report.output.manifest.get("plan")
    if spec is None:
        try:
            spec = read_json(out / PLAN)
        except CorruptFile as exc:
            raise SkelError(f"cannot repair: {exc}") from None
        if spec is None:
            raise SkelError(f"cannot repair {out}: no {PLAN} (made before skel recorded it); rerun its stage")
    ups = spec.get("inputs")
    if not (isinstance(spec.get("stage"), str) and isinstance(spec.get("params"), dict) and isinstance(ups, dict)
            and all(isinstance(up, dict) and {"stage", "fingerprint"} <= up.keys() for up in ups.values())):
        raise SkelError(f"cannot repair {out}: its {PLAN} is damaged (not a plan: stage, params and inputs); rerun "
                        "its stage")
    return spec


def _input_dirs(report: Report, workdir: Path) -> set[Path]:
    """The output directories an output reads (from its manifest, else its plan.json; none if neither reads)."""
    inputs = report.output.manifest.get("inputs") if not report.output.corrupt else None
    if inputs is None:
        try:
            inputs = (read_json(report.output.path / PLAN) or {}).get("inputs", {})
        except CorruptFile:
            inputs = {}
    return {output_dir(workdir, up["stage"], up["fingerprint"]).resolve() for up in inputs.values()
            if isinstance(up, dict) and {"stage", "fingerprint"} <= up.keys()}


def _upstream(report: Report, workdir: Path) -> set[Path]:
    """The outputs an output was made from, and those they were made from (a repair checks them all: a test's,
    its model's volumes too)."""
    return {o.path.resolve() for o in ancestors(sorted(_input_dirs(report, workdir)))}


def repair_order(reports: list[Report], workdir: Path) -> list[Report]:
    """The outputs to repair, each after those it was made from that are repaired too (a repair checks its inputs
    and theirs, and refuses a damaged one)."""
    todo = {r.output.path.resolve(): r for r in reports if r.needs_repair}
    needs = {path: _upstream(r, workdir) & todo.keys() for path, r in todo.items()}
    ordered: list[Report] = []
    while todo:
        ready = [path for path in todo if not needs[path] & todo.keys()] or list(todo)[:1]  # a cycle: as listed
        ordered += [todo.pop(path) for path in ready]
    return ordered


def repair_all(reports: list[Report], workdir: Path, registry: Callable[[str], Stage], cluster: Cluster, *,
               versions: Callable[[str], str | None], ref: str | None = None, quiet: bool = False,
               repaired: Callable[[Report, Path], None], failed: Callable[[Report, str], None]) -> list[Report]:
    """Repair every output of ``reports`` that needs it, inputs first (``repaired`` is told of each; ``failed``
    of each that cannot be repaired, and the others go on), then verify the workdir (or ``ref``) again: the
    reports that still need repair, or whose repair failed (one that failed for its work needs none after it)."""
    refused = set()
    with cluster:
        for r in repair_order(reports, workdir):
            try:
                out = repair(r, workdir, registry, cluster, quiet=quiet)
            except SkelError as exc:
                failed(r, str(exc))
                refused.add(r.output.path)
                continue
            repaired(r, out)
    return [r for r in verify_workdir(workdir, ref, versions) if r.needs_repair or r.output.path in refused]
