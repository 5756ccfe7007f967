"""Logging and console output through rich, on stderr so stdout stays machine-readable."""

from __future__ import annotations

import json
import logging
import os
import time

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

LAUNCHER_FILE = "TORCHELASTIC_ERROR_FILE"  # torchrun gives each rank it starts the path of its error file
INTERRUPTED = "interrupted: the same command resumes from what was committed"  # a stage's line for Ctrl-C
PLAIN = "SKEL_PLAIN_CONSOLE"  # set: never a live terminal display (plans run side by side share the screen)
console = Console(stderr=True, force_terminal=False if os.environ.get(PLAIN) else None)
report = Console(force_terminal=False if os.environ.get(PLAIN) else None)  # what a command reports (status, verify):
# stdout, for `skel status | grep failed`; progress, logs and errors stay on stderr


_step = ""  # the id of the recipe step this process runs side by side with others ("" otherwise)


def name_lines(step: str) -> None:
    """Start this process's log records and ``say`` lines with ``step``: steps run side by side share the screen."""
    global _step
    _step = f"{step}: "
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: setattr(record, "msg", f"{_step}{record.msg}") or True)


def say(message: str) -> None:
    """A stage's own line to the user (its plan, what it loaded), not a log record: shown under --quiet too."""
    console.print(f"{_step}{message}")


_library_level: int | None = None  # what setup_logging chose for Dask's loggers


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    global _library_level
    _library_level = logging.ERROR if verbose else logging.CRITICAL
    quiet_libraries()
    # OpenCV's FFmpeg prints its own lines for a bad video ("moov atom not found"), and OpenCV its own ("[ERROR:0@0.5]
    # ... Could not find decoder", logged at ERROR: only FATAL hides it), which our one-line error already says;
    # quiet unless --verbose (warnings). OpenCV reads its level when cv2 is imported: set before (the commands
    # import it inside), and Dask workers started later inherit both; a value the user set stays.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "24" if verbose else "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "WARNING" if verbose else "FATAL")


def quiet_libraries() -> None:
    """Dask's loggers at ERROR under ``--verbose``, else CRITICAL: a lost scheduler makes Dask's client log tracebacks
    at ERROR, which the runner's one line says. Importing ``distributed`` sets levels of its own
    (distributed/config.py), so the cluster calls this again once it has imported it. Nothing before
    ``setup_logging`` (skel used as a library keeps the host's logging)."""
    if _library_level is None:
        return
    for noisy in ("distributed", "distributed.client", "distributed.gc", "asyncio", "tornado", "tornado.application",
                  "bokeh"):
        logging.getLogger(noisy).setLevel(_library_level)


def report_to_launcher(message: str) -> bool:
    """In a rank under torchrun: the error line written to the rank's error file, for the launcher to print the
    line of the rank that failed first (the others fail because it did); a line written before stays. False
    outside torchrun."""
    path = os.environ.get(LAUNCHER_FILE)
    if not path:
        return False
    if not os.path.exists(path):
        now = time.time_ns()
        with open(path, "w") as f:
            json.dump({"message": message, "timestamp": now // 10**9, "skel_ns": now}, f)
    return True


def print_error(message: str) -> None:
    """One ``error:`` line on stderr, the message as text (not rich markup: paths may hold brackets); in a rank
    under torchrun, to its launcher instead (``report_to_launcher``)."""
    if report_to_launcher(message):
        return
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
