"""`skel status`: the stage outputs of a workdir."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import Common, command
from pipeline.log import report


@command("status", shared=("workdir", "verbose"), panel="Info", interrupted="interrupted")
def status_cmd(
    opts: Common,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")] = False,
) -> None:
    """Show the stage outputs of a workdir: fingerprints, state, inputs, sizes, errors.

    States: complete, damaged (files missing or truncated: `skel verify --repair`), failed (errors over
    budget or a shard failed), interrupted (its run was killed: rerun to resume), running, corrupt (unreadable
    manifest: rerun its stage), stale (made by another version of its stage: rerun its stage for a current one).
    """
    from pipeline.status import status_rows
    from stages import installed_version

    rows = status_rows(opts.workdir, installed_version)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        report.print(f"no stage outputs in {escape(str(opts.workdir))}")
        return
    colour = {"complete": "green", "failed": "red", "damaged": "bold red", "corrupt": "bold red"}
    table = Table(title=f"skel status: {escape(str(opts.workdir))}", title_justify="left", box=None, pad_edge=False)
    for col in ("stage", "fp", "state", "err", "size", "time"):  # never wrapped or cut
        table.add_column(col, no_wrap=True, overflow="ignore", min_width=len(col))
    table.add_column("inputs", overflow="fold")
    for r in rows:
        inputs = " ".join(f"{k}:{v[:8]}" for k, v in r["inputs"].items())
        secs = f"{r['seconds']:.1f}s" if r["seconds"] is not None else ""
        table.add_row(r["stage"], r["fingerprint"][:8], f"[{colour.get(r['state'], 'yellow')}]{r['state']}",
                      str(r["errors"]), f"{r['bytes'] / 1e6:.1f} MB", secs, inputs)
    report.print(table)
    for r in rows:
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        report.print(f"[bold]{r['stage']} {r['fingerprint'][:8]}[/]: {escape(params)}", highlight=False)
        if r["external"]:
            line = " ".join(f"{k}={v}" for k, v in r["external"].items())
            report.print(f"  from outside the workdir: {escape(line)}", highlight=False)
        if r["stale"]:
            report.print(f"  stale: {escape(r['stale'])}", highlight=False)
