"""torch.distributed helpers: rank/world from torchrun's environment, one process group per command."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.errors import SkelError, error_message
from pipeline.log import LAUNCHER_FILE, report_to_launcher
from pipeline.together import die_with
from stages.train.stage import torchrun_world

LAUNCHER_PID = "SKEL_LAUNCHER_PID"  # set by stages.train.torchrun for the ranks it starts
LOST_RANK = "another training rank was lost: killed from outside, or out of memory"
USER_THREADS = "SKEL_USER_OMP_NUM_THREADS"  # the OMP_NUM_THREADS a user set, for the ranks ``relaunch`` starts


def asked_threads() -> int | None:
    """The torch threads a user asked for through OMP_NUM_THREADS, as PyTorch and pyskl honour it (a rank reads
    it from USER_THREADS: its launcher set OMP_NUM_THREADS=1); None where it is not set."""
    value = os.environ.get(USER_THREADS, os.environ.get("OMP_NUM_THREADS", ""))
    return int(value) if value.isdigit() and int(value) > 0 else None


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run this very command (``argv``, less its ``--nproc``: torchrun's parser would take it, and each rank knows
    it as WORLD_SIZE) again under torchrun with ``nproc`` processes on this machine; returns torchrun's exit
    status."""
    args = [a for i, a in enumerate(argv) if not (a.startswith("--nproc") or i and argv[i - 1] == "--nproc")]
    cmd = [sys.executable, "-m", "stages.train.torchrun", "--standalone", f"--nproc-per-node={nproc}", "-m", "cli",
           *args]
    # the launcher dies with this process and each rank with the launcher (``join``), so kill -9 leaves none;
    # OMP_NUM_THREADS set as torchrun would set it, without its banner (skel sets each rank's threads itself, to
    # the user's OMP_NUM_THREADS, which USER_THREADS passes on, else to cores / ranks)
    env = {"OMP_NUM_THREADS": "1", **os.environ, USER_THREADS: os.environ.get("OMP_NUM_THREADS", "")}
    code = subprocess.run(cmd, env=env, preexec_fn=functools.partial(die_with, os.getpid())).returncode
    if code < 0:  # its ranks died with it; torchrun says what else ends it (a rank's error, Ctrl-C, SIGTERM)
        raise SkelError(f"the training launcher (torchrun) was killed ({signal.Signals(-code).name}): the same "
                        "command resumes from what was committed")
    return code



@contextmanager
def lost_ranks_told() -> Iterator[None]:
    """A rank that ended fails the others' collectives with the backend's RuntimeError. One that failed for its work
    (a bad sample: each rank reads its own) said why in its error file before it ended: raised as that (SkelError).
    One killed from outside (the OOM killer, ``kill``) said nothing: raised as a ChildProcessError, an OSError, so
    the run failed for the machine (pipeline.runner) and the same command resumes it."""
    try:
        yield
    except RuntimeError as exc:
        if world_size() == 1 or not (isinstance(exc, dist.DistError) or "/gloo/transport/" in str(exc)):
            raise
        if (said := peer_error()) is not None:
            raise SkelError(said) from exc
        raise ChildProcessError(LOST_RANK) from exc


def peer_error() -> str | None:
    """The error line another rank of this torchrun attempt wrote to its error file (``report_to_launcher``), if any,
    but for one that says a rank was lost (with three ranks, a second one may say so first): torchrun gives rank r
    the file ``.../attempt_N/r/error.json``."""
    own = os.environ.get(LAUNCHER_FILE)
    if not own:
        return None
    for path in sorted(Path(own).parent.parent.glob("*/error.json")):
        if path != Path(own):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                if LOST_RANK not in (message := json.loads(path.read_text())["message"]):
                    return f"training rank {path.parent.name}: {message}"
    return None

@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join torchrun's group (nccl on GPU, gloo on CPU) when launched with WORLD_SIZE > 1; no-op otherwise."""
    if (torchrun_world() or 1) == 1:
        yield
        return
    # the launcher (it says its pid: the rank's parent may have gone already, which getppid() would not tell)
    die_with(int(os.environ.get(LAUNCHER_PID) or os.getppid()))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if dist.get_rank():  # rank 0 tells the user what happens; the others only what goes wrong
        logging.getLogger("skel").setLevel(logging.WARNING)
    # channels_last_3d weights of 1x1x1 kernels have other strides than their grads' bucket views: the same
    # memory order, so DDP's warning about it says nothing here
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    try:
        yield
        dist.barrier()
    except Exception as exc:  # reported now, before the group goes and the other ranks fail for it
        report_to_launcher(error_message(exc))
        raise
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of a few numbers over all ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def all_gather(obj: object) -> list[object]:
    """Every rank's ``obj`` (a list of one element without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running stats) to every rank, so all replicas are identical."""
    if dist.is_initialized():
        for buf in module.buffers():
            dist.broadcast(buf, 0)
