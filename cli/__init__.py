"""skel — skeleton-based action recognition with PoseConv3D: extract, render, train, test.

Every stage writes ``<workdir>/<stage>/<fingerprint>/`` with a manifest; the same command twice is a
cache hit, a killed run resumes, and a changed parameter reruns only what depends on it.

One module per command, each declaring its options and printing its results: a stage's
options are read from its Params dataclass (``cli.fields``: the field's type and default, the command's
help text), other inputs are named with ``--from`` (the rest is resolved by ``pipeline.inputs``), and the
work is handed to ``pipeline.runner``, a stage or an application in ``apps/``. The options every command
shares are declared once, in ``cli.common``. Importing a command module registers it on ``app``.
"""

import sys
from importlib import import_module

# in the order `skel --help` lists them
COMMANDS = ("import_pkl", "extract", "export_pkl", "frames", "render", "train", "test", "fuse", "export", "status",
            "verify", "run", "predict", "demo")
try:
    from cli.common import app

    for _name in COMMANDS:
        import_module(f"cli.{_name}")
except KeyboardInterrupt:  # Ctrl-C while the commands load (torch: about half a second): nothing has started
    sys.exit(130)

__all__ = ["app"]
