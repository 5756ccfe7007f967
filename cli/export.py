"""`skel export`: a trained model -> an ONNX classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import Common, Force, command, from_argument, made_meanwhile, say_the_model_taken, trained_on, writable
from pipeline.log import console


@command("export", shared=("workdir", "verbose"), interrupted="interrupted")
def export_cmd(
    opts: Common,
    out: Annotated[Path, typer.Argument(help="ONNX file to write (an existing file only with --force).",
                                        dir_okay=False)],
    source: from_argument("train") = None,
    last: Annotated[bool, typer.Option("--last", help="Export the last checkpoint instead of the best.",
                                       rich_help_panel="Export")] = False,
    force: Force = False,
) -> None:
    """Export a trained model as ONNX (probabilities, dynamic batch) and check it on onnxruntime."""
    from apps.export import export_train_output

    writable(out, force)
    with made_meanwhile(out):
        train_dir, result = export_train_output(opts.workdir, source, out, last=last, overwrite=force)
    if source is None:
        say_the_model_taken(opts.workdir, train_dir, "--from FINGERPRINT")
    console.print(f"exported {train_dir.name}{trained_on(train_dir)} -> {out}: input x {list(result.input_shape)} "
                  f"(batch dynamic), onnxruntime vs torch max |diff| {result.max_abs_diff:.2g}")
