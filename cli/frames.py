"""`skel frames`: the RGB frames behind a render output, for RGBPose-Conv3D."""

from __future__ import annotations

from typing import Any

from cli.common import STAGE, Common, command, from_option, summary
from cli.fields import Opt, field_values
from pipeline.log import console
from pipeline.runner import run_stage
from stages.frames.params import FramesParams

OPTIONS = [
    Opt("size", "Short side of the stored RGB frames.", "Frames", extra={"min": 8}),
    from_option("render"),
]


@command("frames", shared=STAGE, options=(FramesParams, OPTIONS))
def frames_cmd(opts: Common, **o: Any) -> None:
    """Store the RGB frames behind the newest render output (for RGBPose-Conv3D), cropped like its volumes.

    Samples without a readable video (imported pickles, missing or corrupt files) are listed in
    errors.parquet and skipped.
    """
    from stages.frames.stage import FramesStage

    with opts.cluster() as cluster:
        out = run_stage(FramesStage(), opts.workdir, FramesParams(**field_values(FramesParams, o)), cluster,
                        inputs={"volumes": o["source"]}, quiet=opts.quiet, max_errors=opts.max_errors)
    s = summary(out)
    console.print(f"stored frames of {s['samples']} samples ({s['errors']} skipped), "
                  f"{s['bytes_per_sample'] / 1e6:.1f} MB per sample -> {out}")
