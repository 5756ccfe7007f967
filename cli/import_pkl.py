"""`skel import`: a pyskl annotation pickle -> triplet tables."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from cli.common import STAGE, Common, command, summary
from pipeline.log import console
from pipeline.runner import run_stage


@command("import", shared=STAGE)
def import_cmd(
    opts: Common,
    source: Annotated[Path, typer.Argument(help="pyskl annotation pickle (split + annotations).", dir_okay=False)],
) -> None:
    """Import a pyskl pickle into triplet tables (samples, triplets, errors as Parquet).

    The pickle is a dict: 'split' (split name -> frame_dir list; train and test by default) and 'annotations',
    each a dict of frame_dir (unique), label (int), img_shape (H, W), keypoint \\[persons, frames, 17, 2] in
    pixels (COCO-17), and optionally keypoint_score \\[persons, frames, 17] and total_frames; a top-level
    'classes' list names the labels (README, "Your own pickle").

    It is read with a restricted unpickler: only numbers, strings, containers and numpy arrays. Malformed
    samples are listed in errors.parquet and skipped.
    """
    from stages.import_pkl import ImportParams, ImportStage

    with opts.cluster() as cluster:
        out = run_stage(ImportStage(), opts.workdir, ImportParams(source=str(source)), cluster,
                        quiet=opts.quiet, max_errors=opts.max_errors)
    from stores.triplets import TripletStore, split_names

    s = summary(out)
    splits = Counter(name for cell in TripletStore(out, check=True).samples.column("split").to_pylist()
                     for name in split_names(cell))
    listed = ", ".join(f"{name} {n}" for name, n in sorted(splits.items())) or "none (train and test need one)"
    console.print(f"imported {s['samples']} samples ({s['errors']} skipped; splits: {listed}) -> {out}")
