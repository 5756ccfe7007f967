"""`skel export-pkl`: triplet tables (the newest, or those --from names) -> a pyskl pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import Common, Force, command, from_argument, made_meanwhile, writable
from pipeline.log import console


@command("export-pkl", shared=("workdir", "verbose"), interrupted="interrupted")
def export_pkl_cmd(
    opts: Common,
    out: Annotated[Path, typer.Argument(help="Pickle to write (an existing file only with --force).", dir_okay=False)],
    source: from_argument("import or extract") = None,
    force: Force = False,
) -> None:
    """Write the newest triplet tables (import or extract; --from another) back to a pyskl pickle (each table
    checked against its recorded sha256 first)."""
    writable(out, force)
    from pipeline.inputs import find_output
    from stages.import_pkl import imported_from
    from stages.render.stage import RenderStage
    from stores.pyskl import export_pickle
    from stores.triplets import TripletStore

    found = find_output(opts.workdir, RenderStage.inputs["triplets"], source)
    with made_meanwhile(out):
        n = export_pickle(TripletStore(found.path, check=True), out, overwrite=force)
    source = imported_from(found)
    console.print(f"wrote {n} samples of {found.path}{f' (imported from {source})' if source else ''} -> {out}")
