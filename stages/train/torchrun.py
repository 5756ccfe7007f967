"""torchrun for `skel train --nproc N`, quiet: each rank that fails writes its one-line error to its error file
(``pipeline.log.report_to_launcher``) and this launcher prints one, the first rank's to fail (the others fail
because it did), without torchrun's log lines and ChildFailedError traceback (``--verbose``: all of them)."""

from __future__ import annotations

import logging
import os
import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from pipeline.log import INTERRUPTED, console, print_error
from stages.train.dist import LAUNCHER_PID


def first_error(exc: ChildFailedError) -> str:
    """The error line of the rank that failed first. A rank killed by a signal wrote none and comes first: the
    others can only have failed for it. ``exc.failures`` is in torchrun's capture order: the ranks that ended on
    their own, then those it stopped (SIGTERM) once one had, which may die before writing their line and come
    after every rank that wrote one."""
    failures = list(exc.failures.items())
    silent = [(rank, f) for rank, f in failures if f.exitcode < 0 and "skel_ns" not in f.error_file_data]
    # SIGTERM is how the launcher stops the ranks left once one has failed: a rank that died of it, having said
    # nothing, is named only when no rank says why (one refused by another run's lock, say)
    killed = [(rank, f) for rank, f in silent if f.exitcode != -signal.SIGTERM]
    reported = sorted((f.error_file_data["skel_ns"], f.message) for _, f in failures if "skel_ns" in f.error_file_data)
    if reported and not killed:
        return reported[0][1]
    if killed or silent:
        rank, failure = (killed or silent)[0]
        return f"training rank {rank} was killed: {failure.message}"
    rank, failure = exc.get_first_failure()
    return f"training rank {rank} failed (exit code {failure.exitcode}): {failure.message}"


if __name__ == "__main__":
    verbose = "--verbose" in sys.argv or "-v" in sys.argv
    if not verbose:  # some of its loggers have levels of their own ("Received 2 death signal" is a warning)
        for name in ["torch.distributed.elastic", *logging.root.manager.loggerDict]:
            if name.startswith("torch.distributed.elastic"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ[LAUNCHER_PID] = str(os.getpid())  # the ranks' parent, which they must not outlive
    try:
        run(parse_args(sys.argv[1:]))
    except ChildFailedError as exc:
        if verbose:
            raise
        print_error(first_error(exc))
        sys.exit(1)
    except SignalException as exc:  # the ranks are stopped; Ctrl-C reached the skel above too, which says it
        if verbose:
            raise
        if exc.sigval != signal.SIGINT:
            console.print(INTERRUPTED, highlight=False)
        sys.exit(128 + exc.sigval)
