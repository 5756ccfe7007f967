"""`skel test`: multi-clip, flip-averaged scores of a trained model on a split."""

from __future__ import annotations

from typing import Any

from cli.common import Common, command, from_option, print_metrics, trained_on
from cli.fields import Opt, field_values
from inference.splits import split_label
from pipeline.inputs import inputs_of
from pipeline.log import console
from pipeline.runner import run_stage
from stages.test.params import TestParams

OPTIONS = [
    from_option("train"),
    Opt("split", "Split to score ('' = every labelled sample, as `skel train --train-split ''`).", "Test"),
    Opt("num_clips", "Clips per sample.", "Test"),
    Opt("flip", "Average with mirrored clips.", "Test", ("--flip/--no-flip",)),
    Opt("last", "Use the last checkpoint instead of the best.", "Test", ("--last",), type=bool, default=False),
    Opt("input_size", "Test size (default: as rendered).", "Test"),
    Opt("threads", "Torch threads per worker (default: cores / workers).", "Cluster", extra={"min": 1}),
    Opt("bf16", "Score in bf16 on a CPU that computes it natively (AVX512-BF16/AMX; scores move by ~1e-3; a no-op "
        "elsewhere).", "Cluster", ("--bf16",), type=bool, default=False),
    Opt("device", "auto (CUDA when available), cpu or cuda.", "Cluster"),
]


@command("test", shared=("workdir", "workers", "scheduler", "quiet", "verbose"), options=(TestParams, OPTIONS))
def test_cmd(opts: Common, **o: Any) -> None:
    """Score a split with multi-clip, flip-averaged softmax: top-1/top-5/mean class accuracy, confusion."""
    from inference import checkpoint
    from stages.test.stage import TestStage

    cluster = opts.cluster()
    params = TestParams(**{**field_values(TestParams, o), "checkpoint": checkpoint.which(o["last"]),
                           "threads": o["threads"] or cluster.threads})
    with cluster:
        out = run_stage(TestStage(), opts.workdir, params, cluster, inputs={"model": o["source"]}, quiet=opts.quiet)
    on = f"the {params.split} split" if params.split else split_label(params.split)
    model = inputs_of(out)["model"]
    console.print(f"scored {checkpoint.of(model, params.checkpoint)}{trained_on(model)} on {on}")
    print_metrics(out)
