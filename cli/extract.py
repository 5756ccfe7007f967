"""`skel extract`: videos -> COCO-17 triplet tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import STAGE, Common, command, summary
from cli.fields import Opt, field_values
from pipeline.log import console
from pipeline.runner import run_stage
from stages.extract.params import ExtractStageParams

OPTIONS = [
    Opt("labels", "CSV video,label[,split] (overrides folder labels; a header may order the columns). A video is "
        "named by its path or any trailing part of it; labels are class names (numbered in sorted order) or class "
        "indices from 0, used as they are. A name fitting several videos, a video named twice, a blank label or "
        "an unclosed quote is an error naming the line.", "Extract", type=Path | None,
        extra={"dir_okay": False}),
    Opt("models", "Directory with the ONNX models (and SHA256SUMS).", "Extract", type=Path | None,
        extra={"envvar": "SKEL_MODELS", "file_okay": False}),
    Opt("pose_model", "Top-down pose model: movenet-thunder, movenet-lightning or a heatmap model <name>.onnx. "
        "movenet-lightning is the fast profile: ~2.4x the frames/s with crowds (15 at 720p with 4-7 people on 2 "
        "cores), less exact joints (bench/README.md, extract Speed).", "Extract"),
    Opt("detector", "Person detector: mb3-centernet, movenet-multipose, or both joined by + (boxes fused; if one "
        "model file is missing, the other alone).", "Extract"),
    Opt("detector_size", "MoveNet MultiPose input long side (multiple of 32; 512 for small people).", "Extract"),
    Opt("detect_every", "Run the detector every N frames (and when a person is lost); crop around the last pose in "
        "between.", "Extract", extra={"min": 1}),
    Opt("max_persons", "Persons kept per video: the tracks seen longest, largest and most central (0: all; "
        "`skel render --max-persons` chooses later without extracting again).", "Extract", extra={"min": 0}),
    Opt("merge_gap", "Join a track lost for at most this many frames to the nearby track that follows it (0: never).",
        "Extract", extra={"min": 0}),
    Opt("min_score", "Detector person score to keep a detection (default: the model's own, 0.3 CenterNet, 0.2 "
        "MultiPose).", "Extract"),
    Opt("detector_pad", "Also run MultiPose on the frame padded by this share of its size per side, for people "
        "larger than the frame (0: off).", "Extract", extra={"min": 0}),
    Opt("fuse_iou", "Detector boxes overlapping at least this much are one person (higher keeps touching people "
        "apart; duplicate poses are removed by pose NMS).", "Extract", extra={"min": 0, "max": 1}),
    Opt("fps", "Resample to this frame rate: the first frame of each 1/fps slot, by the frames' times on a "
        "variable-rate video (overrides --stride).", "Extract"),
    Opt("stride", "Keep every N-th frame.", "Extract", extra={"min": 1}),
    Opt("max_frames", "Keep at most this many frames per video.", "Extract"),
    Opt("chunk_frames", "Split longer videos into shards of this many frames, extracted in parallel and each "
        "tracked on its own (a few frames of a person may be lost at each boundary; 0, or --max-frames set: never "
        "split). A range of an MP4/MOV/MKV/WebM seeks to its start, one of another file decodes the frames before "
        "it.",
        "Extract", extra={"min": 0}),
    Opt("device", "auto, cpu or cuda (auto: CUDA only if onnxruntime can use it).", "Extract", type=str),
    Opt("preview", "Write overlay MP4s of this many videos.", "Extract", type=int, default=0, extra={"min": 0}),
]


@command("extract", shared=STAGE, options=(ExtractStageParams, OPTIONS))
def extract_cmd(
    opts: Common,
    inputs: Annotated[list[str], typer.Argument(help="Video files, folders (root/<class>/<video> gives labels; "
                                                "linked folders are followed) or glob patterns (a path that exists is "
                                                "taken as named, though it holds [ ] * ?).")],
    **o: Any,
) -> None:
    """Extract COCO-17 poses from videos (ONNX person detector + top-down pose) into triplet tables.

    Videos that cannot be decoded are listed in errors.parquet and skipped; the rest completes.
    """
    from stages.extract.preview import PREVIEWS, write_previews
    from stages.extract.stage import ExtractStage
    from stages.extract.track import SHORT_TRACK

    cluster = opts.cluster()
    labels, models = o["labels"], o["models"]
    params = ExtractStageParams(**{
        **field_values(ExtractStageParams, o), "sources": tuple(inputs), "labels": str(labels) if labels else None,
        "models": str(models) if models else None, "threads": cluster.threads,
    })  # fmt: skip
    with cluster:
        out = run_stage(ExtractStage(), opts.workdir, params, cluster, quiet=opts.quiet, max_errors=opts.max_errors)
    s = summary(out)
    copied = f", {s['copied']} copied from an earlier extraction" if s.get("copied") else ""
    speed = f", {s['frames_per_s']} frames/s per worker" if s["frames_per_s"] is not None else ""
    console.print(f"extracted {s['samples']} videos ({s['errors']} skipped{copied}), {s['frames']} frames{speed} "
                  f"-> {out}")
    if f := s.get("fragments"):
        console.print(f"tracks: {f['tracks_before_merge']} -> {f['tracks']} after joining fragments, "
                      f"{f['short_tracks']} shorter than {SHORT_TRACK} frames")
    if o["preview"]:
        paths = write_previews(out, params, o["preview"])
        console.print(f"previews: {out / PREVIEWS}" if paths else "no videos to preview")
