"""`skel train` on one or several processes: relaunched under torchrun for DDP, the stage run in a process group."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from inference.device import pick_device
from pipeline.cluster import Cluster
from pipeline.runner import make_plan, run_stage
from pipeline.stage import check_params
from stages.train.dist import process_group, rank, relaunch
from stages.train.params import TrainParams
from stages.train.stage import TrainStage, torchrun_world


def relaunched(argv: list[str], workdir: Path, params: TrainParams, *, source: str | None,
               kind: str | None) -> int | None:
    """With ``params.nproc`` > 1 outside torchrun: ``skel argv`` run under torchrun, and its exit code; else None.
    What every rank would refuse (parameters, inputs, their splits, a batch that does not split) is refused here
    first, once."""
    if params.nproc <= 1 or torchrun_world() is not None:
        return None
    stage = TrainStage()
    check_params(stage, params)
    plan = make_plan(stage, workdir, params, {"volumes": source}, _where(kind))
    stage.check_data(plan.context(workdir).inputs, replace(params, nproc=1))  # the ranks check their count
    return relaunch(params.nproc, argv)


def _where(kind: str | None) -> dict | None:
    return {"volumes": {"kind": kind}} if kind else None


def train(workdir: Path, params: TrainParams, *, source: str | None, kind: str | None, quiet: bool) -> Path | None:
    """Run the train stage on the ``kind`` volumes (None: those ``source`` names, whatever their kind) in this
    process's group (one rank of DDP under torchrun); the output directory on the primary rank, None on the
    others."""
    with process_group(pick_device(params.device)):
        primary = rank() == 0
        out = run_stage(TrainStage(), workdir, params, Cluster(workers=0), inputs={"volumes": source},
                        where=_where(kind), quiet=quiet or not primary, primary=primary)
    return out if primary else None
