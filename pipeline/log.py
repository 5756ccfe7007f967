"""Logging and console output through rich, on stderr so stdout stays machine-readable."""

from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

PLAIN = "SKEL_PLAIN_CONSOLE"  # set: never a live terminal display (plans run side by side share the screen)
console = Console(stderr=True, force_terminal=False if os.environ.get(PLAIN) else None)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    for noisy in ("distributed", "asyncio", "tornado", "bokeh"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # OpenCV's FFmpeg prints its own lines for a bad video ("moov atom not found"), which our one-line error
    # already says; quiet (AV_LOG_QUIET) unless --verbose (AV_LOG_WARNING). Set before any video opens, so
    # Dask workers started later inherit it; a value the user set stays.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "24" if verbose else "-8")


def print_error(message: str) -> None:
    """One ``error:`` line on stderr, the message as text (not rich markup: paths may hold brackets)."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
