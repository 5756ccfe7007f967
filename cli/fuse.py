"""`skel fuse`: late fusion of test outputs."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import Common, command, number_list, print_metrics
from pipeline.cluster import Cluster
from pipeline.fingerprint import param_default
from pipeline.runner import run_stage
from stages.test.params import FuseParams


@command("fuse", shared=("workdir", "quiet", "verbose"))
def fuse_cmd(
    opts: Common,
    scores: Annotated[list[str], typer.Argument(help="Test (or fuse) outputs: directories or fingerprint prefixes.")],
    weights: Annotated[str | None, typer.Option(help="Comma-separated weights, one per output (default: all 1).",
                                                rich_help_panel="Fuse")] = None,
) -> None:
    """Late fusion: weighted sum of several test outputs' scores (e.g. joint + limb), with the same metrics."""
    from stages.test.fuse import FuseStage

    w = number_list(weights, float, "--weights") or param_default(FuseParams, "weights")
    inputs = {f"scores{i}": ref for i, ref in enumerate(scores)}
    out = run_stage(FuseStage(), opts.workdir, FuseParams(weights=w), Cluster(workers=0), inputs=inputs,
                    quiet=opts.quiet)
    print_metrics(out)
