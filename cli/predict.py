"""`skel predict`: label videos or a live source with a trained model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import Common, command, made_meanwhile, say_the_model_taken, writable
from pipeline.errors import SkelError, error_message
from pipeline.fingerprint import param_default
from pipeline.log import console, print_error
from stages.extract.params import ExtractStageParams
from stages.extract.sources import VIDEO_EXTENSIONS


@command("predict", shared=("verbose",), panel="Workflows", interrupted="interrupted")
def predict_cmd(
    opts: Common,
    videos: Annotated[list[Path] | None, typer.Argument(help="Video files to label (one that cannot be read is an "
                                                        "error line; the others are labelled).")] = None,
    live: Annotated[str | None, typer.Option("--live", help="Label a live SOURCE instead: a camera index, a "
                                             "stream URL OpenCV opens, or a video file played at its own "
                                             "frame rate.", rich_help_panel="Live")] = None,
    run: Annotated[Path | None, typer.Option("--run", help="Workdir whose most recently used train output is used.",
                                             file_okay=False, rich_help_panel="Model")] = None,
    model_dir: Annotated[Path | None, typer.Option("--model", help="A train output directory "
                                                   "(<workdir>/train/<fingerprint>).", file_okay=False,
                                                   rich_help_panel="Model")] = None,
    onnx: Annotated[Path | None, typer.Option("--onnx", help="A `skel export` ONNX classifier: runs on "
                                              "onnxruntime without torch.", dir_okay=False, exists=True,
                                              rich_help_panel="Model")] = None,
    models: Annotated[Path | None, typer.Option("--models", envvar="SKEL_MODELS", help="Directory of the ONNX pose "
                                                "models.", file_okay=False, rich_help_panel="Pose")] = None,
    pose_model: Annotated[str, typer.Option(help="Top-down pose model.", rich_help_panel="Pose")] = param_default(
        ExtractStageParams, "pose_model"),
    max_persons: Annotated[int | None, typer.Option(help="People to track (default: every person for the "
                                                    "whole scene, drawn as the model's render drew them; 6 per "
                                                    "person).", min=1, rich_help_panel="Pose")] = None,
    per_person: Annotated[bool, typer.Option("--per-person", help="Label each tracked person on their own (crop "
                                             "and skeleton of that person only).")] = False,
    window: Annotated[int | None, typer.Option(help="Frames per window (default: whole video; live: 48).", min=1,
                                               rich_help_panel="Windows")] = None,
    stride: Annotated[int | None, typer.Option(help="Frames between window starts (default: window/2; live: "
                                               "frames between decisions, 8).", min=1,
                                               rich_help_panel="Windows")] = None,
    max_frames: Annotated[int | None, typer.Option(help="Live: stop after this many source frames.", min=1,
                                                   rich_help_panel="Live")] = None,
    num_clips: Annotated[int | None, typer.Option(help="Test clips per window (default 10; live: 1, so that a "
                                                  "decision takes less than the frames between decisions).",
                                                  min=1, rich_help_panel="Model")] = None,
    no_flip: Annotated[bool, typer.Option("--no-flip", help="Skip the mirrored views.",
                                          rich_help_panel="Model")] = False,
    threads: Annotated[int, typer.Option(help="Threads for the classifier (0: all cores).", min=0,
                                         rich_help_panel="Model")] = 0,
    last: Annotated[bool, typer.Option("--last", help="--run/--model: the last checkpoint instead of the best.",
                                       rich_help_panel="Model")] = False,
    top: Annotated[int, typer.Option(help="Classes to list.", min=1)] = 5,
    out: Annotated[Path | None, typer.Option("--out", help="Overlay video with skeletons, boxes and the predicted "
                                             "labels (a .mp4 file for one video or live, else a directory).")] = None,
    parquet: Annotated[Path | None, typer.Option("--parquet", help="Also write the windows as a Parquet table "
                                                 "(video files).", dir_okay=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Results as JSON on stdout (live: one line per "
                                          "decision, then a summary line).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing --out and --parquet files (never an "
                                        "input video or the model).")] = False,
) -> None:
    """Label videos: extract skeletons -> render -> classify, printing the top classes (per window).

    Uses the model of a train output (`--run WORKDIR`, the most recently used, or `--model DIR`) or an exported ONNX
    file (`--onnx FILE`). `--per-person` labels each tracked person; `--live SOURCE` labels a camera or stream.
    """
    from apps.predict.model import load_classifier, pose_models
    from apps.predict.offline import overlay_paths

    if bool(videos) == bool(live):
        raise SkelError("give video files or --live SOURCE (not both)")
    if live and parquet is not None:
        raise SkelError("--parquet writes the windows of video files; live decisions go to stdout (--json: one line "
                        "each)")
    if videos and max_frames is not None:
        raise SkelError("--max-frames stops a --live source; video files are labelled whole (--window and --stride "
                        "choose the windows)")
    if live and out is not None and (out.suffix.lower() != ".mp4" or out.is_dir()):  # a camera cannot be replayed
        raise SkelError(f"--out {out}: a live session is recorded to one .mp4 file: name one")
    if out is not None and out.suffix.lower() in VIDEO_EXTENSIONS and not out.is_dir():  # one video's file name
        if out.suffix.lower() != ".mp4":
            raise SkelError(f"--out {out}: overlays are MP4 files: name a .mp4 file, or a folder")
        if len(videos or []) > 1:
            raise SkelError(f"--out {out} names one file: give a folder for the overlays of {len(videos)} videos")
    overlays = overlay_paths(videos, out) if videos else []
    inputs = [*(videos or []), *([Path(live)] if live and Path(live).is_file() else []), *([onnx] if onnx else [])]
    dests: dict[Path, str] = {}
    for dest, option in [*((d, "--out") for d in (overlays if videos else [out]) if d is not None),
                         *([(parquet, "--parquet")] if parquet is not None else [])]:
        writable(dest, force, option, inputs)
        if (first := dests.setdefault(dest.resolve(), option)) != option:
            raise SkelError(f"{option} {dest} is also where {first} writes: name another file")
    if live:
        from apps.predict.live import LIVE_NUM_CLIPS, LiveParams, describe, run_live

        num_clips = num_clips or LIVE_NUM_CLIPS
    clf = load_classifier(run=run, model_dir=model_dir, onnx=onnx, num_clips=num_clips, flip=not no_flip,
                          threads=threads, last=last)
    if run is not None:
        say_the_model_taken(run, Path(clf.source), "--model WORKDIR/train/FINGERPRINT")
    params, detector, pose = pose_models(models, pose_model, max_persons, per_person)
    if live:
        given = {k: v for k, v in (("window", window), ("stride", stride)) if v is not None}
        lp = LiveParams(**given, per_person=per_person, max_frames=max_frames, top=top)
        emit = (lambda d: typer.echo(json.dumps(d))) if as_json else (lambda d: console.print(describe(d)))
        summary = run_live(live, clf, detector=detector, pose=pose, params=params, live=lp, emit=emit, out=out)
        if as_json:
            typer.echo(json.dumps({"summary": summary.as_dict()}))
        else:
            console.print(summary.describe())
        for note in summary.notes():
            typer.echo(f"warning: {note}", err=True)
        if summary.overlay_error:
            print_error(summary.overlay_error)
            raise typer.Exit(1)
        return
    from apps.predict.offline import predict_videos, write_parquet

    def said(res: dict) -> None:  # as each video is done: a Ctrl-C later loses none of the labels shown
        if res.get("warning"):
            typer.echo(f"warning: {res['warning']}", err=True)
        if as_json:
            return
        if "error" in res:
            print_error(res["error"])
        else:
            _print_result(res, clf.classes, top, per_person)
        if "overlay_error" in res:  # its labels are shown above
            print_error(res["overlay_error"])

    results = predict_videos(videos, clf, detector=detector, pose=pose, params=params, window=window, stride=stride,
                             per_person=per_person, top=top, overlays=overlays, on_result=said)
    failed = [res for res in results if "error" in res]
    unwritten = [res["overlay_error"] for res in results if "overlay_error" in res]
    if as_json:  # one document, once every video is done; the errors after it
        typer.echo(json.dumps(results, indent=2))
        for line in [res["error"] for res in failed] + unwritten:
            print_error(line)
    if parquet is not None:  # after the results are shown: a failed write loses no video's labels
        try:
            with made_meanwhile(parquet, "--parquet"):
                write_parquet(results, parquet, overwrite=force)
        except OSError as exc:
            print_error(f"--parquet {parquet}: {error_message(exc)}")
            raise typer.Exit(1) from None
    if failed or unwritten:
        raise typer.Exit(1)


def _print_result(res: dict, classes: tuple[str, ...], top: int, per_person: bool) -> None:
    """One video's windows as a table (frames, seconds, track, top classes), then its overlay's path."""
    table = Table(title=f"{res['video']} ({res['frames']} frames)")
    table.add_column("frames")
    if res["fps"]:
        table.add_column("seconds")
    if per_person:
        table.add_column("id")
    for k in range(min(top, len(classes))):
        table.add_column(f"top-{k + 1}")
    for w in res["windows"]:
        secs = [f"{w['start'] / res['fps']:.1f}-{w['stop'] / res['fps']:.1f}"] if res["fps"] else []
        ids = [str(w["track"]) if w["track"] is not None else "-"] if per_person else []
        tops = [f"{t['label']} {t['score']:.2f}" for t in w["top"]] or [w["note"]]
        table.add_row(f"{w['start']}-{w['stop']}", *secs, *ids, *tops)
    console.print(table)
    if "overlay" in res:
        console.print(f"overlay: {res['overlay']}")
