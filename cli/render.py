"""`skel render`: triplet tables -> joint or limb heatmap volumes."""

from __future__ import annotations

from typing import Any

from cli.common import STAGE, Common, command, from_option, summary
from cli.fields import Opt, field_values
from pipeline.log import console
from pipeline.runner import run_stage
from stages.render.params import RenderParams

OPTIONS = [
    Opt("limb", "Limb heatmaps instead of joint heatmaps.", "Render", ("--limb",), type=bool, default=False),
    Opt("sigma", "Gaussian sigma in output pixels.", "Render"),
    Opt("size", "Output height and width.", "Render"),
    Opt("max_frames", "Frames kept per sample; longer ones are resampled uniformly.", "Render"),
    Opt("dtype", "Stored dtype: uint8 (x255, a quarter of float32 to read), float16 or float32.", "Render"),
    Opt("no_score", "Ignore keypoint scores (every point at 1).", "Render", ("--no-score",), type=bool, default=False),
    Opt("max_persons", "Draw only the N persons ranked first by --rank (0: all, as pyskl).", "Render",
        extra={"min": 0}),
    Opt("rank", "Ranking for --max-persons: salience (seen long, large, central) or score (sum of keypoint scores, "
        "pyskl's NTU choice).", "Render"),
    Opt("preview", "Write PNG previews of this many samples.", "Render", type=int, default=0, extra={"min": 0}),
    from_option("import or extract"),
]


@command("render", shared=STAGE, options=(RenderParams, OPTIONS))
def render_cmd(opts: Common, **o: Any) -> None:
    """Render heatmap volumes (subject-centred crop, resized) into Zarr: one array per shard of samples
    (frames x K x H x W), one compressed chunk per frame."""
    from stages.render.preview import write_previews
    from stages.render.stage import RenderStage

    params = RenderParams(**field_values(RenderParams, o), kind="limb" if o["limb"] else "joint",
                          use_score=not o["no_score"])
    with opts.cluster() as cluster:
        out = run_stage(RenderStage(), opts.workdir, params, cluster, inputs={"triplets": o["source"]},
                        quiet=opts.quiet, max_errors=opts.max_errors)
    s = summary(out)
    console.print(f"rendered {s['samples']} {params.kind} volumes ({s['errors']} skipped), "
                  f"{s['bytes_per_sample'] / 1e6:.3f} MB/sample -> {out}")
    if o["preview"]:
        paths = write_previews(out, o["preview"])
        console.print(f"previews: {paths[0].parent}" if paths else "no samples to preview")
