"""`skel train` on one or several processes: relaunched under torchrun for DDP, the stage run in a process group."""

from __future__ import annotations

import os
from pathlib import Path

from inference.device import pick_device
from pipeline.cluster import Cluster
from pipeline.runner import run_stage
from stages.train.dist import process_group, rank, relaunch
from stages.train.params import TrainParams
from stages.train.stage import TrainStage


def relaunched(nproc: int, argv: list[str]) -> int | None:
    """With ``nproc`` > 1 outside torchrun: ``skel argv`` run under torchrun, and its exit code; else None."""
    return relaunch(nproc, argv) if nproc > 1 and "LOCAL_RANK" not in os.environ else None


def train(workdir: Path, params: TrainParams, *, source: str | None, kind: str | None, quiet: bool) -> Path | None:
    """Run the train stage on the ``kind`` volumes (None: those ``source`` names, whatever their kind) in this
    process's group (one rank of DDP under torchrun); the output directory on the primary rank, None on the
    others."""
    with process_group(pick_device(params.device)):
        primary = rank() == 0
        out = run_stage(TrainStage(), workdir, params, Cluster(workers=0), inputs={"volumes": source},
                        where={"volumes": {"kind": kind}} if kind else None, quiet=quiet or not primary,
                        primary=primary)
    return out if primary else None
