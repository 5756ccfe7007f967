"""torchrun for `skel train --nproc N`, quiet: a rank that fails has printed its own one-line error, so the
launcher exits 1 without its log lines and ChildFailedError traceback (``--verbose``: all of them)."""

from __future__ import annotations

import logging
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

if __name__ == "__main__":
    if "--verbose" not in sys.argv and "-v" not in sys.argv:
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(sys.argv[1:]))
    except ChildFailedError:
        sys.exit(1)
