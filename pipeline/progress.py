"""One rich progress bar per stage (shards done / total) or training epoch (steps): elapsed and ETA, on stderr;
off a terminal (a log file, a batch job), where a bar draws nothing until it ends, a line now and then instead."""

from __future__ import annotations

import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pipeline.log import console


def stage_progress(*, quiet: bool = False, fields: str | None = None, transient: bool = False) -> Progress:
    """``fields``: a format of the task's own fields shown after the counts (e.g. training's loss and lr)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *([TextColumn(fields)] if fields else []),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or (transient and not console.is_terminal),  # off a terminal it only leaves a blank line
        transient=transient,
    )


HEARTBEAT_S = 60.0  # off a terminal: at most one progress line a minute (short work prints none)


class Heartbeat:
    """Progress as log lines where a live bar shows nothing (output to a file: nohup, slurm): ``due`` is true once
    ``HEARTBEAT_S`` seconds have passed since the start or since it was last true."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.on, self.every, self.last = not quiet and not console.is_terminal, HEARTBEAT_S, time.monotonic()

    def due(self) -> bool:
        if not self.on or time.monotonic() - self.last < self.every:
            return False
        self.last = time.monotonic()
        return True
