"""`skel run`: every step of a workflow recipe, after printing its plan."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import STAGE, Common, command, summary
from pipeline.log import console
from pipeline.workflow import Recipe


@command("run", shared=STAGE, workdir=None, panel="Workflows")
def run_cmd(
    opts: Common,
    recipe: Annotated[Path, typer.Argument(help="TOML recipe (see workflows/).", dir_okay=False)],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a step parameter: STEP.PARAM=VALUE "
                                                   "(repeatable), e.g. render_joint.sigma=1.0.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (hit / repair / resume / run per step) and "
                                   "stop.")] = False,
    side_by_side: Annotated[int | None, typer.Option(
        "--side-by-side", min=1, help="Run up to N training steps that do not need each other (a recipe's joint and "
        "limb streams) at once, each in its own process on its share of the cores. Pays for trainings of similar "
        "length whose steps scale badly with threads (bf16 on a CPU); not for unequal ones (the longer one keeps "
        "its share: docs/architecture.md, Workflows). Default: the recipe's workflow.side_by_side, else 1 (one "
        "after another).")] = None,
) -> None:
    """Run every step of a workflow recipe: cache hits are skipped, interrupted steps resume.

    The plan (hit / repair / resume / run per step) is printed before anything runs; a --set on one step
    reruns that step and the steps that depend on it only.
    """
    from pipeline.workflow import load_recipe
    from stages import get_stage

    rec = load_recipe(recipe, get_stage, set_ or [])
    workdir = opts.workdir or Path(os.path.expanduser(rec.workdir or f"runs/{rec.name}"))
    plan_and_run(rec, workdir, opts, dry_run=dry_run, side_by_side=side_by_side)


def plan_and_run(rec: Recipe, workdir: Path, opts: Common, *, dry_run: bool = False,
                 side_by_side: int | None = None) -> list:
    """Check the steps of a recipe and print its plan (hit / repair / resume / run per step), then run it
    (pipeline.workflow.run_recipe) with a rule before each step, ``side_by_side`` (default: the recipe's)
    trainings at once; returns the plans."""
    from pipeline.workflow import check_recipe, check_splits, plan_recipe, plan_state, run_recipe

    check_recipe(rec)
    plans = plan_recipe(rec, workdir)
    table = Table(title=escape(f"plan: {rec.name} in {workdir}"))
    for col in ("step", "stage", "fingerprint", "inputs", "action"):
        table.add_column(col)
    colour = {"hit": "green", "repair": "yellow", "resume": "yellow", "run": "cyan"}
    states = [plan_state(p) for p in plans]
    for step, plan, state in zip(rec.steps, plans, states, strict=True):
        ins = " ".join(f"{k}:{v}" for k, v in step.inputs.items())
        table.add_row(escape(step.id), plan.stage.name, plan.fingerprint, escape(ins), f"[{colour[state]}]{state}")
    console.print(table)
    if dry_run:
        check_splits(rec, plans, rec.steps, set())  # against the outputs there are (a run checks as they come)
        return plans

    def announce(steps: list) -> None:
        if not opts.quiet:
            together = f", side by side on {len(steps)} shares of the cores" if len(steps) > 1 else ""
            console.rule(escape(" + ".join(f"{s.id} ({s.stage.name})" for s in steps) + together))

    run_recipe(rec, plans, workdir, opts.cluster(), quiet=opts.quiet, max_errors=opts.max_errors,
               jobs=side_by_side or rec.side_by_side, on_step=announce)
    done = f"workflow {rec.name}: {len(plans)} steps done, {states.count('hit')} from cache -> {workdir}"
    console.print(escape(done), highlight=False)
    scored = [(step.id, plan.out) for step, plan in zip(rec.steps, plans, strict=True)
              if plan.stage.name in ("test", "fuse")]
    if scored:
        console.print(results_table(f"{rec.name}: results", scored))
    return plans


def results_table(title: str, scored: list[tuple[str, Path]]) -> Table:
    """Top-1, top-5 and mean class accuracy of test or fuse outputs, one row per (step id, output)."""
    table = Table(title=escape(title))
    for col in ("step", "top-1", "top-5", "mean class", "samples"):
        table.add_column(col)
    for name, out in scored:
        s = summary(out)
        accuracy = (f"{100 * s[k]:.1f}%" for k in ("top1", "top5", "mean_class_accuracy"))
        table.add_row(escape(name), *accuracy, str(s["samples"]))
    return table
