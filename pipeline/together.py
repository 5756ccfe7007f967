"""Run in-process plans (sequential stages, e.g. training) side by side: one spawned process per plan, each
pinned to its own share of the cores, so that trainings whose steps scale badly with threads each get cores of
their own instead of taking turns with all of them (docs/architecture.md, "Workflows").

A child dies with its parent (Linux PR_SET_PDEATHSIG, ``die_with``), so ``kill -9`` of ``skel run`` leaves only
committed shards behind, which the next run resumes from, as for one plan run in-process.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from pathlib import Path

from pipeline.cluster import Cluster
from pipeline.errors import SkelError, exit_on_next_interrupt
from pipeline.log import PLAIN
from pipeline.runner import Plan, run_plan


def core_shares(n: int) -> list[set[int]]:
    """This process's cores split into ``n`` disjoint, near-equal sets (n <= the cores)."""
    cores = sorted(os.sched_getaffinity(0))
    return [set(cores[i * len(cores) // n:(i + 1) * len(cores) // n]) for i in range(n)]


def die_with(parent: int) -> None:
    """Make this process (a child of ``parent``) get SIGKILL when its parent dies, on Linux; exit now if the
    parent is gone already. For any child that must not outlive its parent (a side-by-side step; a loader
    worker, which its own watchdog may leave blocked on a queue nobody reads)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _child(name: str, plan: Plan, workdir: Path, cores: set[int], quiet: bool, max_errors: float, verbose: bool,
           parent: int) -> None:
    from pipeline.log import name_lines, print_error, setup_logging  # the child's console: not a terminal (PLAIN)

    die_with(parent)
    os.sched_setaffinity(0, cores)
    setup_logging(verbose)
    name_lines(name)  # whose line it is, when several steps print
    try:
        run_plan(plan, workdir, Cluster(workers=0), quiet=quiet, max_errors=max_errors)
    except SkelError as exc:
        print_error(f"{name}: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the group: the parent says it, once
        exit_on_next_interrupt()
        sys.exit(130)


def run_together(named: list[tuple[str, Plan]], workdir: Path, *, quiet: bool, max_errors: float) -> None:
    """Run the plans at once, each in its own process on ``core_shares(len(named))``; wait for all of them (a
    failed one does not stop the others: their epochs are kept either way), then raise if any failed."""
    verbose = logging.getLogger().level <= logging.DEBUG
    ctx = multiprocessing.get_context("spawn")
    procs, parent = [], os.getpid()
    os.environ[PLAIN] = "1"  # inherited by the children only: spawn copies the environment at start
    try:
        for (name, plan), cores in zip(named, core_shares(len(named)), strict=True):
            proc = ctx.Process(target=_child, args=(name, plan, workdir, cores, quiet, max_errors, verbose, parent))
            proc.start()
            procs.append(proc)
    finally:
        del os.environ[PLAIN]
    for proc in procs:
        proc.join()
    failed = [f"{name} (exit {proc.exitcode})" for (name, _), proc in zip(named, procs, strict=True) if proc.exitcode]
    if failed:
        raise SkelError(f"step(s) {', '.join(failed)} failed; rerun to resume them")
