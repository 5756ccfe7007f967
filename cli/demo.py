"""`skel demo`: skel end to end on generated data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import Common, command
from cli.run import plan_and_run
from pipeline.errors import shell
from pipeline.log import console


@command("demo", shared=("workdir", "workers", "quiet", "verbose"), workdir=Path("demo-run"), panel="Info")
def demo_cmd(
    opts: Common,
    per_class: Annotated[int, typer.Option(help="Synthetic clips per action class.")] = 24,
) -> None:
    """Run skel end to end on generated data (about a minute on 2 cores).

    Synthetic people doing six actions -> import -> joint and limb volumes (with PNG previews) -> a small
    SlowOnly per stream -> multi-clip test -> fusion. The steps are workflows/demo.toml; a second run is
    all cache hits.
    """
    from apps.demo import demo_recipe, previews, synthetic_data

    workdir = opts.workdir
    pkl, data = synthetic_data(workdir, per_class)
    console.print(f"generated {len(data['annotations'])} clips of {len(data['classes'])} actions "
                  f"({', '.join(data['classes'])}) -> {pkl}")
    rec = demo_recipe(pkl)
    plans = plan_and_run(rec, workdir, opts)
    outs = {step.id: plan.out for step, plan in zip(rec.steps, plans, strict=True)}
    for kind, folder in previews(outs).items():
        console.print(f"{kind} volume previews: {folder}")
    console.print(f"confusion matrix: {outs['fuse']}; everything: `skel status -w {shell(workdir)}`")
