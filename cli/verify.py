"""`skel verify`: every file of the outputs against its recorded sha256; --repair redoes what was lost."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cli.common import Common, command
from pipeline.errors import SkelError, shell
from pipeline.log import print_error, report


@command("verify", shared=("workdir", "workers", "scheduler", "quiet", "verbose"), panel="Info")
def verify_cmd(
    opts: Common,
    output: Annotated[str | None, typer.Argument(help="One output (fingerprint prefix or directory); "
                                                 "default: every output of the workdir.")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Redo exactly the shards whose files are damaged (and "
                                         "the index files), then check again.")] = False,
) -> None:
    """Check every file of the outputs against the size and sha256 recorded when it was written.

    Lists each damaged file with the shard and samples it holds; exits 1 while anything is damaged. A stale
    output (made by another version of its stage) is listed and left as it is: rerunning its stage makes a
    current one.
    """
    from pipeline.verify import Report, repair_all, verify_workdir
    from stages import get_stage, installed_version

    workdir = opts.workdir
    reports = verify_workdir(workdir, output, installed_version)
    bad = [r for r in reports if r.needs_repair]
    for r in reports:
        name = f"{r.output.stage} {r.output.fingerprint[:8]}"
        if r.ok:
            report.print(f"{name}: ok ({len(r.output.manifest.get('files', {}))} files)", highlight=False)
            continue
        report.print(f"{name}: {escape(r.note or f'damaged, {len(r.problems)} file(s)')}", highlight=False)
        for p in r.problems:
            samples = r.samples.get(p.path, [])
            owner = f"shard {', '.join(p.shards)}" if p.shards else "index files (finalize)"
            more = f" ({', '.join(samples[:3])}{f' +{len(samples) - 3} more' if len(samples) > 3 else ''})"
            report.print(f"  {escape(p.path)}: {p.what}; {escape(owner)}{escape(more) if samples else ''}",
                          highlight=False)

    def repaired(r: Report, out: Path) -> None:
        report.print(f"repaired {r.output.stage} {r.output.fingerprint[:8]} -> {escape(str(out))}", highlight=False)

    if bad and repair:
        bad = repair_all(bad, workdir, get_stage, opts.cluster(), versions=installed_version, ref=output,
                         quiet=opts.quiet, repaired=repaired, failed=lambda _r, message: print_error(message))
    if bad:
        unfinished = sum((r.output.state == "interrupted" or r.output.failed_for_machine) and not r.problems
                         for r in bad)  # killed or failed runs: not damage
        what = " or ".join(w for w, n in (("damaged", len(bad) - unfinished), ("unfinished", unfinished)) if n)
        redo = "" if repair else f"; `skel verify --repair -w {shell(workdir)}` redoes what they lost and finishes them"
        raise SkelError(f"{len(bad)} {what} output(s) in {workdir}{redo}")
    running = sum(r.output.state == "running" for r in reports)  # another run's to finish: nothing to repair
    also = f"; {running} being written by another run, not checked" if running else ""
    report.print(f"verified {len(reports) - running} output(s) in {escape(str(workdir))}{also}", highlight=False)
