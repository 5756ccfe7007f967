"""`skel export-pkl`: the newest triplet tables -> a pyskl pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import Common, command
from pipeline.log import console


@command("export-pkl", shared=("workdir", "verbose"))
def export_pkl_cmd(
    opts: Common,
    out: Annotated[Path, typer.Argument(help="Pickle to write (an existing file only with --force).", dir_okay=False)],
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Write the newest triplet tables (import or extract) back to a pyskl pickle (each table checked against
    its recorded sha256 first)."""
    from pipeline.errors import SkelError
    from pipeline.inputs import find_output

    if out.exists() and not force:
        raise SkelError(f"{out} exists (an imported pickle, perhaps): give another path, or --force to replace it")
    from stages.import_pkl import export_pickle
    from stages.render.stage import RenderStage
    from stores.triplets import TripletStore

    store = TripletStore(find_output(opts.workdir, RenderStage.inputs["triplets"]).path, check=True)
    n = export_pickle(store, out)
    console.print(f"wrote {n} samples -> {out}")
