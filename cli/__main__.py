"""``python -m cli``: the ``skel`` command (torchrun relaunches training this way)."""

from cli import app

app()
