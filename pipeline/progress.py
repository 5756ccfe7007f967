"""One rich progress bar per stage (shards done / total) or training epoch (steps): elapsed and ETA, on stderr."""

from __future__ import annotations

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
