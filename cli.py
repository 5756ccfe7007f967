"""skel — skeleton-based action recognition with PoseConv3D: extract, render, train, test.

Every stage writes ``<workdir>/<stage>/<fingerprint>/`` with a manifest; the same command twice is a
cache hit, a killed run resumes, and a changed parameter reruns only what depends on it.

This module parses options and prints results, nothing else: each command builds its stage's Params
(whose fields are the single source of the option defaults), names its inputs (``--from``; every other
input is resolved by ``pipeline.inputs``), and hands them to ``pipeline.runner`` or an application in
``apps/``. The options every command shares are declared once, in ``Common``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from pipeline.cluster import Cluster, default_workers
from pipeline.errors import SkelError
from pipeline.log import console, setup_logging
from pipeline.runner import MAX_ERRORS, describe, run_stage
from stages.extract.params import ExtractStageParams
from stages.frames.params import FramesParams
from stages.render.params import RenderParams
from stages.test.params import EvalParams, FuseParams
from stages.train.params import TrainParams

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    help=__doc__.split("\n\n")[0],
)


def default(params: type, name: str) -> Any:
    """The default of field ``name`` of a Params dataclass (the one place option defaults are written)."""
    f = next(f for f in dataclasses.fields(params) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


# --- options every command shares: declared here once, handed to the command as ``opts: Common`` ---------

@dataclass(frozen=True)
class Common:
    workdir: Path | None = None
    workers: int | None = None
    scheduler: str | None = None
    max_errors: float = MAX_ERRORS
    quiet: bool = False
    verbose: bool = False

    def cluster(self) -> Cluster:
        """The Dask cluster these options ask for (started only if a stage has shards to run)."""
        return Cluster(workers=default_workers() if self.workers is None else self.workers, scheduler=self.scheduler)


_Workdir = Annotated[Path | None, typer.Option(
    "--workdir", "-w", envvar="SKEL_WORKDIR", file_okay=False, show_default=False, rich_help_panel="Common",
    help="Where stage outputs live (default: runs/default; `skel demo`: demo-run; `skel run`: the recipe's "
    "workflow.workdir, else runs/<name>).")]
SHARED: dict[str, inspect.Parameter] = {p.name: p for p in (
    inspect.Parameter("workdir", inspect.Parameter.KEYWORD_ONLY, annotation=_Workdir, default=None),
    inspect.Parameter("workers", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        int | None, typer.Option("--workers", "-j", rich_help_panel="Cluster", help="Local Dask worker processes "
                                 "(0 = run in this process). Default: one per core.")]),
    inspect.Parameter("scheduler", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        str | None, typer.Option("--scheduler", rich_help_panel="Cluster", help="Address of an existing "
                                 "dask.distributed scheduler, e.g. tcp://host:8786.")]),
    inspect.Parameter("max_errors", inspect.Parameter.KEYWORD_ONLY, default=MAX_ERRORS, annotation=Annotated[
        float, typer.Option("--max-errors", min=0.0, max=1.0, rich_help_panel="Common", help="Share of the samples "
                            f"that may fail (recorded in errors.parquet) before the stage fails, rounded up; default "
                            f"{MAX_ERRORS:g} = {MAX_ERRORS:.0%}. A failed stage exits non-zero and is never used as "
                            "a default input.")]),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars.", rich_help_panel="Common")]),
    inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging and full tracebacks.", rich_help_panel="Common")]),
)}
STAGE = ("workdir", "workers", "scheduler", "max_errors", "quiet", "verbose")  # a stage on Dask


def command(name: str, *, shared: tuple[str, ...], workdir: Path | None = Path("runs/default"),
            panel: str = "Stages") -> Callable[[Callable], Callable]:
    """Register ``fn(opts: Common, ...)`` as a command that also takes the ``shared`` options; expected
    failures (bad input, missing upstream) print as one line and exit 1 (``--verbose``: the traceback)."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(**kwargs: Any) -> Any:
            given = {k: kwargs.pop(k) for k in shared}
            opts = Common(**{**given, "workdir": given.get("workdir") or workdir})
            setup_logging(opts.verbose)
            try:
                return fn(opts, **kwargs)
            except (SkelError, ValueError, OSError) as exc:
                if opts.verbose:
                    raise
                console.print(f"[bold red]error:[/] {escape(describe(exc))}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None

        own = list(inspect.signature(fn, eval_str=True).parameters.values())[1:]
        run.__signature__ = inspect.Signature([*own, *(SHARED[k] for k in shared)])
        return app.command(name, rich_help_panel=panel)(run)

    return register


def _from(stages: str) -> Any:
    """A --from option naming the output to read."""
    return Annotated[str | None, typer.Option(
        "--from", help=f"The {stages} output to read (fingerprint prefix or directory); default: the most recently "
        "used complete one.", rich_help_panel="Common")]


def _summary(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text()).get("summary", {})


def _ints(text: str | None) -> tuple[int, ...] | None:
    return tuple(int(v) for v in text.split(",")) if text else None


Device = Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.", rich_help_panel="Cluster")]


# --- stages -------------------------------------------------------------------------------------------------

@command("import", shared=STAGE)
def import_cmd(
    opts: Common,
    source: Annotated[Path, typer.Argument(help="pyskl annotation pickle (split + annotations).", dir_okay=False)],
) -> None:
    """Import a pyskl pickle into triplet tables (samples, triplets, errors as Parquet).

    The pickle is read with a restricted unpickler: only numbers, strings, containers and numpy arrays.
    Malformed samples are listed in errors.parquet and skipped.
    """
    from stages.import_pkl import ImportParams, ImportStage

    with opts.cluster() as cluster:
        out = run_stage(ImportStage(), opts.workdir, ImportParams(source=str(source.resolve())), cluster,
                        quiet=opts.quiet, max_errors=opts.max_errors)
    s = _summary(out)
    console.print(f"imported {s['samples']} samples ({s['errors']} skipped) -> {out}")


@command("extract", shared=STAGE)
def extract_cmd(
    opts: Common,
    inputs: Annotated[list[str], typer.Argument(help="Video files, folders (root/<class>/<video> gives labels) "
                                                "or glob patterns.")],
    labels: Annotated[Path | None, typer.Option(help="CSV video,label[,split] (overrides folder labels).",
                                                dir_okay=False,
                                                rich_help_panel="Extract")] = default(ExtractStageParams, "labels"),
    models: Annotated[Path | None, typer.Option(envvar="SKEL_MODELS", file_okay=False,
                                                help="Directory with the ONNX models (and SHA256SUMS).",
                                                rich_help_panel="Extract")] = default(ExtractStageParams, "models"),
    pose_model: Annotated[str, typer.Option(help="Top-down pose model: movenet-thunder, movenet-lightning or "
                                            "a heatmap model <name>.onnx.",
                                            rich_help_panel="Extract")] = default(ExtractStageParams, "pose_model"),
    detector: Annotated[str, typer.Option(help="Person detector: mb3-centernet, movenet-multipose, or both joined "
                                          "by + (boxes fused; if one model file is missing, the other alone).",
                                          rich_help_panel="Extract")] = default(ExtractStageParams, "detector"),
    detector_size: Annotated[int, typer.Option(help="MoveNet MultiPose input long side (multiple of 32; 512 for "
                                               "small people).",
        rich_help_panel="Extract")] = default(ExtractStageParams, "detector_size"),
    detect_every: Annotated[int, typer.Option(min=1, help="Run the detector every N frames (and when a person is "
                                              "lost); crop around the last pose in between.",
                                              rich_help_panel="Extract")] = default(ExtractStageParams, "detect_every"),
    max_persons: Annotated[int, typer.Option(min=0, help="Persons kept per video: the tracks seen longest, "
                                             "largest and most central (0: all tracks).",
                                             rich_help_panel="Extract")] = default(ExtractStageParams, "max_persons"),
    min_score: Annotated[float | None, typer.Option(help="Detector person score to keep a detection (default: "
                                                    "the model's own, 0.3 CenterNet, 0.2 MultiPose).",
        rich_help_panel="Extract")] = default(ExtractStageParams, "min_score"),
    fps: Annotated[float | None, typer.Option(help="Resample to this frame rate (overrides --stride).",
                                              rich_help_panel="Extract")] = default(ExtractStageParams, "fps"),
    stride: Annotated[int, typer.Option(min=1, help="Keep every N-th frame.",
        rich_help_panel="Extract")] = default(ExtractStageParams, "stride"),
    max_frames: Annotated[int | None, typer.Option(help="Keep at most this many frames per video.",
        rich_help_panel="Extract")] = default(ExtractStageParams, "max_frames"),
    chunk_frames: Annotated[int, typer.Option(help="Split longer videos into shards of this many frames "
                                              "(0: never).",
                                              rich_help_panel="Extract")] = default(ExtractStageParams, "chunk_frames"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (auto: CUDA only if onnxruntime can use it).",
                                        rich_help_panel="Extract")] = default(ExtractStageParams, "device"),
    preview: Annotated[int, typer.Option(help="Write overlay MP4s of this many videos.",
                                         rich_help_panel="Extract")] = 0,
) -> None:
    """Extract COCO-17 poses from videos (ONNX person detector + top-down pose) into triplet tables.

    Videos that cannot be decoded are listed in errors.parquet and skipped; the rest completes.
    """
    from stages.extract.stage import ExtractStage, write_previews

    cluster = opts.cluster()
    params = ExtractStageParams(
        sources=tuple(str(Path(i).absolute()) for i in inputs),
        labels=str(labels.resolve()) if labels else None, models=str(models.resolve()) if models else None,
        pose_model=pose_model, detector=detector, detector_size=detector_size,
        detect_every=detect_every, max_persons=max_persons, min_score=min_score, fps=fps, stride=stride,
        max_frames=max_frames, chunk_frames=chunk_frames, device=device, threads=cluster.threads,
    )  # fmt: skip
    with cluster:
        out = run_stage(ExtractStage(), opts.workdir, params, cluster, quiet=opts.quiet, max_errors=opts.max_errors)
    s = _summary(out)
    console.print(f"extracted {s['samples']} videos ({s['errors']} skipped), {s['frames']} frames, "
                  f"{s['frames_per_s']} frames/s per worker -> {out}")
    if preview:
        paths = write_previews(out, params, preview)
        console.print(f"previews: {paths[0].parent}" if paths else "no videos to preview")


@command("export-pkl", shared=("workdir", "verbose"))
def export_pkl_cmd(
    opts: Common,
    out: Annotated[Path, typer.Argument(help="Pickle to write.", dir_okay=False)],
) -> None:
    """Write the newest triplet tables (import or extract) back to a pyskl pickle (each table checked against
    its recorded sha256 first)."""
    from pipeline.inputs import find_output
    from pipeline.triplets import TripletStore
    from stages.import_pkl import export_pickle
    from stages.render.stage import RenderStage

    store = TripletStore(find_output(opts.workdir, RenderStage.inputs["triplets"]).path, check=True)
    n = export_pickle(store, out)
    console.print(f"wrote {n} samples -> {out}")


@command("frames", shared=STAGE)
def frames_cmd(
    opts: Common,
    size: Annotated[int, typer.Option(min=8, help="Short side of the stored RGB frames.",
                                      rich_help_panel="Frames")] = default(FramesParams, "size"),
    source: _from("render") = None,
) -> None:
    """Store the RGB frames behind the newest render output (for RGBPose-Conv3D), cropped like its volumes.

    Samples without a readable video (imported pickles, missing or corrupt files) are listed in
    errors.parquet and skipped.
    """
    from stages.frames.stage import FramesStage

    with opts.cluster() as cluster:
        out = run_stage(FramesStage(), opts.workdir, FramesParams(size=size), cluster, inputs={"volumes": source},
                        quiet=opts.quiet, max_errors=opts.max_errors)
    s = _summary(out)
    console.print(f"stored frames of {s['samples']} samples ({s['errors']} skipped), "
                  f"{s['bytes_per_sample'] / 1e6:.1f} MB per sample -> {out}")


@command("render", shared=STAGE)
def render_cmd(
    opts: Common,
    limb: Annotated[bool, typer.Option("--limb", help="Limb heatmaps instead of joint heatmaps.",
                                       rich_help_panel="Render")] = False,
    sigma: Annotated[float, typer.Option(help="Gaussian sigma in output pixels.",
                                         rich_help_panel="Render")] = default(RenderParams, "sigma"),
    size: Annotated[int, typer.Option(help="Output height and width.",
                                      rich_help_panel="Render")] = default(RenderParams, "size"),
    max_frames: Annotated[int, typer.Option(help="Frames kept per sample; longer ones are resampled uniformly.",
                                            rich_help_panel="Render")] = default(RenderParams, "max_frames"),
    dtype: Annotated[str, typer.Option(help="Stored dtype: uint8 (x255, a quarter of float32 to read), float16 "
                                            "or float32.", rich_help_panel="Render")] = default(RenderParams, "dtype"),
    no_score: Annotated[bool, typer.Option("--no-score", help="Ignore keypoint scores (every point at 1).",
                                           rich_help_panel="Render")] = False,
    preview: Annotated[int, typer.Option(help="Write PNG previews of this many samples.",
                                         rich_help_panel="Render")] = 0,
    source: _from("import or extract") = None,
) -> None:
    """Render heatmap volumes (subject-centred crop, resized) into Zarr: one array per shard of samples,
    [frames, K, H, W], one compressed chunk per frame."""
    from stages.render.stage import RenderStage, write_previews

    params = RenderParams(kind="limb" if limb else "joint", sigma=sigma, size=size, max_frames=max_frames,
                          dtype=dtype, use_score=not no_score)
    with opts.cluster() as cluster:
        out = run_stage(RenderStage(), opts.workdir, params, cluster, inputs={"triplets": source}, quiet=opts.quiet,
                        max_errors=opts.max_errors)
    s = _summary(out)
    console.print(f"rendered {s['samples']} {params.kind} volumes ({s['errors']} skipped), "
                  f"{s['bytes_per_sample'] / 1e6:.3f} MB/sample -> {out}")
    if preview:
        paths = write_previews(out, preview)
        console.print(f"previews: {paths[0].parent}" if paths else "no samples to preview")


@command("train", shared=("workdir", "quiet", "verbose"))
def train_cmd(
    opts: Common,
    model: Annotated[str, typer.Option(help="slowonly, c3d_light, x3d_shallow or rgbpose (RGB + pose: needs "
                                       "`skel frames`).", rich_help_panel="Model")] = default(TrainParams, "model"),
    base_channels: Annotated[int | None, typer.Option(min=1, help="Backbone width (pyskl: 32).",
                                                      rich_help_panel="Model")] = None,
    stage_blocks: Annotated[str | None, typer.Option(help="Blocks per stage, e.g. 2,3,2 (SlowOnly: 4,6,3).",
                                                     rich_help_panel="Model")] = None,
    rgb_base_channels: Annotated[int | None, typer.Option(min=1, help="rgbpose: RGB pathway width (pyskl: 64); "
                                                          "--base-channels/--stage-blocks set the pose pathway.",
                                                          rich_help_panel="Model")] = None,
    rgb_stage_blocks: Annotated[str | None, typer.Option(help="rgbpose: RGB blocks per stage (R50: 3,4,6,3).",
                                                         rich_help_panel="Model")] = None,
    dropout: Annotated[float, typer.Option(help="Head dropout.",
    rich_help_panel="Model")] = default(TrainParams, "dropout"),
    limb: Annotated[bool, typer.Option("--limb", help="Train on the newest limb volumes (default: joint).",
                                       rich_help_panel="Data")] = False,
    source: _from("render") = None,
    clip_len: Annotated[int, typer.Option(help="Frames per clip.",
    rich_help_panel="Data")] = default(TrainParams, "clip_len"),
    input_size: Annotated[int, typer.Option(help="Training crop size (H = W).",
    rich_help_panel="Data")] = default(TrainParams, "input_size"),
    train_split: Annotated[str, typer.Option(help="Split to train on.",
    rich_help_panel="Data")] = default(TrainParams, "train_split"),
    val_split: Annotated[str, typer.Option(help="A split to validate on ('' = carve --val-fraction from the "
                                           "training split; never the test split by default).",
                                           rich_help_panel="Data")] = "",
    val_fraction: Annotated[float | None, typer.Option(help="Share of the training split carved (seeded, "
                                                       "stratified) for validation and best.pt; default 10%, "
                                                       "at most 500 clips; 0 = none.",
                                                       rich_help_panel="Data")] = default(TrainParams, "val_fraction"),
    repeat: Annotated[int, typer.Option(help="Passes over the training split per epoch.",
                                        rich_help_panel="Data")] = default(TrainParams, "repeat"),
    epochs: Annotated[int, typer.Option(help="Epochs (ignored with --steps).",
    rich_help_panel="Optimiser")] = default(TrainParams, "epochs"),
    steps: Annotated[int | None, typer.Option(help="Optimizer steps in all, rounded up to whole epochs: the "
                                              "same budget at any data size.",
                                              rich_help_panel="Optimiser")] = default(TrainParams, "steps"),
    min_epochs: Annotated[int, typer.Option(help="With --steps: at least this many epochs (a recipe for any "
                                                 "data size: small sets get the steps, large ones the passes).",
                                            rich_help_panel="Optimiser")] = default(TrainParams, "min_epochs"),
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Global batch (split over --nproc).",
                                            rich_help_panel="Optimiser")] = default(TrainParams, "batch_size"),
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 0.4 x batch / 256).",
                                             rich_help_panel="Optimiser")] = default(TrainParams, "lr"),
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay.",
    rich_help_panel="Optimiser")] = default(TrainParams, "weight_decay"),
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps.",
    rich_help_panel="Optimiser")] = default(TrainParams, "warmup_steps"),
    seed: Annotated[int, typer.Option(help="Seed of weights, order and augmentation.",
                                      rich_help_panel="Optimiser")] = default(TrainParams, "seed"),
    init: Annotated[Path | None, typer.Option(help="Start from these weights: skel's best.pt/last.pt, a pyskl "
                                              ".pth, or a shipped model by name (penn-joint-s16: "
                                              "models/pretrained); head replaced when the classes differ.",
                                              exists=False,
                                              rich_help_panel="Transfer")] = default(TrainParams, "init"),
    backbone_lr_mult: Annotated[float, typer.Option(help="Backbone lr = lr x this (0 = frozen backbone).",
        rich_help_panel="Transfer")] = default(TrainParams, "backbone_lr_mult"),
    aug_rotate: Annotated[float, typer.Option(help="Random rotation per clip, +- degrees.",
                                              rich_help_panel="Augmentation")] = default(TrainParams, "aug_rotate"),
    aug_scale: Annotated[float, typer.Option(help="Random zoom per clip in [1-s, 1+s].",
                                             rich_help_panel="Augmentation")] = default(TrainParams, "aug_scale"),
    aug_shear: Annotated[float, typer.Option(help="Random shear per clip, +- degrees.",
                                             rich_help_panel="Augmentation")] = default(TrainParams, "aug_shear"),
    mixup: Annotated[float, typer.Option(help="Mixup Beta(a, a) (0 = off).",
    rich_help_panel="Augmentation")] = default(TrainParams, "mixup"),
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing.",
    rich_help_panel="Augmentation")] = default(TrainParams, "label_smoothing"),
    nproc: Annotated[int, typer.Option(help="Training processes (DDP via torchrun: gloo on CPU, nccl on GPU).",
                                       rich_help_panel="Cluster")] = 1,
    loader_workers: Annotated[int, typer.Option(help="DataLoader worker processes per training process (0 = load "
                                                "in the training process).", rich_help_panel="Cluster")]
    = default(TrainParams, "workers"),
    threads: Annotated[int | None, typer.Option(help="Torch threads per process (default: cores / nproc).",
                                                rich_help_panel="Cluster")] = None,
    device: Device = default(TrainParams, "device"),
) -> None:
    """Train a PoseConv3D model on rendered volumes; a killed run resumes at its last finished epoch."""
    import os
    import sys

    from stages.train.dist import pick_device, process_group, rank, relaunch
    from stages.train.params import backbone_args
    from stages.train.stage import TrainStage

    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        raise typer.Exit(relaunch(nproc, sys.argv[1:]))
    model_args = backbone_args(model, base_channels, _ints(stage_blocks), rgb_base_channels, _ints(rgb_stage_blocks))
    params = TrainParams(model=model, model_args=model_args, dropout=dropout, clip_len=clip_len,
                         input_size=input_size, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         warmup_steps=warmup_steps, repeat=repeat, seed=seed, train_split=train_split,
                         val_split=val_split or None, workers=loader_workers, device=device, threads=threads,
                         steps=steps, min_epochs=min_epochs, val_fraction=val_fraction,
                         init=str(init) if init else None,
                         backbone_lr_mult=backbone_lr_mult, aug_rotate=aug_rotate, aug_scale=aug_scale,
                         aug_shear=aug_shear, mixup=mixup, label_smoothing=label_smoothing)
    with process_group(pick_device(device)):
        primary = rank() == 0
        out = run_stage(TrainStage(), opts.workdir, params, Cluster(workers=0), inputs={"volumes": source},
                        where={"volumes": {"kind": "limb" if limb else "joint"}}, quiet=opts.quiet or not primary,
                        primary=primary)
    if primary:
        s = _summary(out)
        console.print(f"trained {s['epochs']} epochs ({s['steps']} steps), best val top-1 "
                      f"{s['best_top1'] if s['best_top1'] is None else format(s['best_top1'], '.4f')} "
                      f"(epoch {s['best_epoch']}) -> {out}")


@command("test", shared=("workdir", "workers", "scheduler", "quiet", "verbose"))
def test_cmd(
    opts: Common,
    source: _from("train") = None,
    split: Annotated[str, typer.Option(help="Split to score.", rich_help_panel="Test")] = default(EvalParams, "split"),
    num_clips: Annotated[int, typer.Option(help="Clips per sample.",
                                           rich_help_panel="Test")] = default(EvalParams, "num_clips"),
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Average with mirrored clips.",
                                       rich_help_panel="Test")] = default(EvalParams, "flip"),
    last: Annotated[bool, typer.Option("--last", help="Use the last checkpoint instead of the best.",
                                       rich_help_panel="Test")] = False,
    input_size: Annotated[int | None, typer.Option(help="Test size (default: as rendered).",
                                                   rich_help_panel="Test")] = default(EvalParams, "input_size"),
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads per worker (default: cores / workers).",
                                                rich_help_panel="Cluster")] = None,
    device: Device = default(EvalParams, "device"),
) -> None:
    """Score a split with multi-clip, flip-averaged softmax: top-1/top-5/mean class accuracy, confusion."""
    from stages.test.stage import EvalStage

    cluster = opts.cluster()
    params = EvalParams(split=split, num_clips=num_clips, flip=flip, checkpoint="last" if last else "best",
                        input_size=input_size, device=device, threads=threads or cluster.threads)
    with cluster:
        out = run_stage(EvalStage(), opts.workdir, params, cluster, inputs={"model": source}, quiet=opts.quiet)
    _print_metrics(out)


def _print_metrics(out: Path) -> None:
    s = _summary(out)
    console.print(f"{s['samples']} samples: top-1 {s['top1']:.4f}, top-5 {s['top5']:.4f}, "
                  f"mean class {s['mean_class_accuracy']:.4f} -> {out}")


@command("fuse", shared=("workdir", "quiet", "verbose"))
def fuse_cmd(
    opts: Common,
    scores: Annotated[list[str], typer.Argument(help="Test (or fuse) outputs: directories or fingerprint prefixes.")],
    weights: Annotated[str | None, typer.Option(help="Comma-separated weights, one per output (default: all 1).",
                                                rich_help_panel="Fuse")] = None,
) -> None:
    """Late fusion: weighted sum of several test outputs' scores (e.g. joint + limb), with the same metrics."""
    from stages.test.fuse import FuseStage

    w = tuple(float(v) for v in weights.split(",")) if weights else default(FuseParams, "weights")
    if w and len(w) != len(scores):
        raise SkelError(f"{len(w)} weights for {len(scores)} score outputs")
    inputs = {f"scores{i}": ref for i, ref in enumerate(scores)}
    out = run_stage(FuseStage(), opts.workdir, FuseParams(weights=w), Cluster(workers=0), inputs=inputs,
                    quiet=opts.quiet)
    _print_metrics(out)


@command("export", shared=("workdir", "verbose"))
def export_cmd(
    opts: Common,
    out: Annotated[Path, typer.Argument(help="ONNX file to write.", dir_okay=False)],
    source: _from("train") = None,
    last: Annotated[bool, typer.Option("--last", help="Export the last checkpoint instead of the best.",
                                       rich_help_panel="Export")] = False,
) -> None:
    """Export a trained model as ONNX (probabilities, dynamic batch) and check it on onnxruntime."""
    from apps.export import export_train_output

    train_dir, result = export_train_output(opts.workdir, source, out, last=last)
    console.print(f"exported {train_dir.name} -> {out}: input x {list(result.input_shape)} (batch dynamic), "
                  f"onnxruntime vs torch max |diff| {result.max_abs_diff:.2g}")


# --- info ---------------------------------------------------------------------------------------------------

@command("status", shared=("workdir", "verbose"), panel="Info")
def status_cmd(
    opts: Common,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")] = False,
) -> None:
    """Show the stage outputs of a workdir: fingerprints, state, inputs, sizes, errors.

    States: complete, damaged (files missing or truncated: `skel verify --repair`), failed (errors over
    budget or a shard failed), interrupted (its run was killed: rerun to resume), running, corrupt (unreadable
    manifest: rerun its stage).
    """
    from pipeline.verify import status_rows

    rows = status_rows(opts.workdir)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print(f"no stage outputs in {escape(str(opts.workdir))}")
        return
    colour = {"complete": "green", "failed": "red", "damaged": "bold red", "corrupt": "bold red"}
    table = Table(title=f"skel status: {escape(str(opts.workdir))}", title_justify="left", box=None, pad_edge=False)
    for col in ("stage", "fp", "state", "err", "size", "time"):  # never wrapped or cut
        table.add_column(col, no_wrap=True, overflow="ignore", min_width=len(col))
    table.add_column("inputs", overflow="fold")
    for r in rows:
        inputs = " ".join(f"{k}:{v[:8]}" for k, v in r["inputs"].items())
        secs = f"{r['seconds']:.1f}s" if r["seconds"] is not None else ""
        table.add_row(r["stage"], r["fingerprint"][:8], f"[{colour.get(r['state'], 'yellow')}]{r['state']}",
                      str(r["errors"]), f"{r['bytes'] / 1e6:.1f} MB", secs, inputs)
    console.print(table)
    for r in rows:
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        console.print(f"[bold]{r['stage']} {r['fingerprint'][:8]}[/]: {escape(params)}", highlight=False)


@command("verify", shared=("workdir", "workers", "scheduler", "quiet", "verbose"), panel="Info")
def verify_cmd(
    opts: Common,
    output: Annotated[str | None, typer.Argument(help="One output (fingerprint prefix or directory); "
                                                 "default: every output of the workdir.")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Redo exactly the shards whose files are damaged (and "
                                         "the index files), then check again.")] = False,
) -> None:
    """Check every file of the outputs against the size and sha256 recorded when it was written.

    Lists each damaged file with the shard and samples it holds; exits 1 while anything is damaged.
    """
    from pipeline.verify import repair as repair_output
    from pipeline.verify import verify_workdir
    from stages import get_stage

    workdir = opts.workdir
    reports = verify_workdir(workdir, output)
    bad = [r for r in reports if r.needs_repair]
    for r in reports:
        name = f"{r.output.stage} {r.output.fingerprint[:8]}"
        if r.ok:
            console.print(f"{name}: ok ({len(r.output.manifest.get('files', {}))} files)", highlight=False)
            continue
        console.print(f"{name}: {escape(r.note or f'damaged, {len(r.problems)} file(s)')}", highlight=False)
        for p in r.problems:
            samples = r.samples.get(p.path, [])
            owner = f"shard {', '.join(p.shards)}" if p.shards else "index files (finalize)"
            more = f" ({', '.join(samples[:3])}{f' +{len(samples) - 3} more' if len(samples) > 3 else ''})"
            console.print(f"  {escape(p.path)}: {p.what}; {escape(owner)}{escape(more) if samples else ''}",
                          highlight=False)
    if bad and repair:
        with opts.cluster() as cluster:
            for r in bad:
                out = repair_output(r, workdir, get_stage, cluster, quiet=opts.quiet)
                console.print(f"repaired {r.output.stage} {r.output.fingerprint[:8]} -> {escape(str(out))}",
                              highlight=False)
        bad = [r for r in verify_workdir(workdir, output) if r.needs_repair]
    if bad:
        raise SkelError(f"{len(bad)} damaged output(s) in {workdir}" + ("" if repair else "; `skel verify --repair` "
                                                                         "redoes what they lost"))
    console.print(f"verified {len(reports)} output(s) in {escape(str(workdir))}", highlight=False)


# --- workflows ----------------------------------------------------------------------------------------------

@command("run", shared=STAGE, workdir=None, panel="Workflows")
def run_cmd(
    opts: Common,
    recipe: Annotated[Path, typer.Argument(help="TOML recipe (see workflows/).", dir_okay=False)],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a step parameter: STEP.PARAM=VALUE "
                                                   "(repeatable), e.g. render_joint.sigma=1.0.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (hit/run per step) and stop.")] = False,
) -> None:
    """Run every step of a workflow recipe: cache hits are skipped, interrupted steps resume.

    The plan (hit / resume / run per step) is printed before anything runs; a --set on one step
    reruns that step and the steps that depend on it only.
    """
    from pipeline.workflow import load_recipe
    from stages import get_stage

    rec = load_recipe(recipe, get_stage, set_ or [])
    _run_recipe(rec, opts.workdir or Path(rec.workdir or f"runs/{rec.name}"), opts, dry_run=dry_run)


def _run_recipe(rec: Any, workdir: Path, opts: Common, *, dry_run: bool = False) -> list:
    """Print the plan of a recipe (hit / resume / run per step), then run it (pipeline.workflow.run_recipe)."""
    from pipeline.workflow import plan_recipe, plan_state, run_recipe

    plans = plan_recipe(rec, workdir)
    table = Table(title=f"plan: {rec.name} in {workdir}")
    for col in ("step", "stage", "fingerprint", "inputs", "action"):
        table.add_column(col)
    colour = {"hit": "green", "resume": "yellow", "run": "cyan"}
    states = [plan_state(p) for p in plans]
    for step, plan, state in zip(rec.steps, plans, states, strict=True):
        ins = " ".join(f"{k}:{v}" for k, v in step.inputs.items())
        table.add_row(step.id, plan.stage.name, plan.fingerprint, ins, f"[{colour[state]}]{state}")
    console.print(table)
    if dry_run:
        return plans

    def announce(step: Any, plan: Any) -> None:
        if not opts.quiet:
            console.rule(f"{step.id} ({plan.stage.name})")

    run_recipe(rec, plans, workdir, opts.cluster(), quiet=opts.quiet, max_errors=opts.max_errors, on_step=announce)
    console.print(f"workflow {rec.name}: {len(plans)} steps done, {states.count('hit')} from cache -> {workdir}")
    return plans


@command("predict", shared=("verbose",), panel="Workflows")
def predict_cmd(
    opts: Common,
    videos: Annotated[list[Path] | None, typer.Argument(help="Video files to label.", dir_okay=False,
                                                        exists=True)] = None,
    live: Annotated[str | None, typer.Option("--live", help="Label a live SOURCE instead: a camera index, a "
                                             "stream URL OpenCV opens, or a video file played at its own "
                                             "frame rate.", rich_help_panel="Live")] = None,
    run: Annotated[Path | None, typer.Option("--run", help="Workdir whose newest train output is used.",
                                             file_okay=False, rich_help_panel="Model")] = None,
    model_dir: Annotated[Path | None, typer.Option("--model", help="A train output directory "
                                                   "(<workdir>/train/<fingerprint>).", file_okay=False,
                                                   rich_help_panel="Model")] = None,
    onnx: Annotated[Path | None, typer.Option("--onnx", help="A `skel export` ONNX classifier: runs on "
                                              "onnxruntime without torch.", dir_okay=False, exists=True,
                                              rich_help_panel="Model")] = None,
    models: Annotated[Path | None, typer.Option("--models", envvar="SKEL_MODELS", help="Directory of the ONNX pose "
                                                "models.", file_okay=False, rich_help_panel="Pose")] = None,
    pose_model: Annotated[str, typer.Option(help="Top-down pose model.", rich_help_panel="Pose")] = "movenet-thunder",
    max_persons: Annotated[int | None, typer.Option(help="People to track (default: 2 for the whole scene, 6 per "
                                                    "person).", rich_help_panel="Pose")] = None,
    per_person: Annotated[bool, typer.Option("--per-person", help="Label each tracked person on their own (crop "
                                             "and skeleton of that person only).")] = False,
    window: Annotated[int | None, typer.Option(help="Frames per window (default: whole video; live: 48).",
                                               rich_help_panel="Windows")] = None,
    stride: Annotated[int | None, typer.Option(help="Frames between window starts (default: window/2; live: "
                                               "frames between decisions, 8).", rich_help_panel="Windows")] = None,
    max_frames: Annotated[int | None, typer.Option(help="Live: stop after this many source frames.",
                                                   rich_help_panel="Live")] = None,
    num_clips: Annotated[int, typer.Option(help="Test clips per window.", rich_help_panel="Model")] = 10,
    no_flip: Annotated[bool, typer.Option("--no-flip", help="Skip the mirrored views.",
                                          rich_help_panel="Model")] = False,
    threads: Annotated[int, typer.Option(help="Threads for the classifier (0: all cores).",
                                         rich_help_panel="Model")] = 0,
    last: Annotated[bool, typer.Option("--last", help="--run/--model: the last checkpoint instead of the best.",
                                       rich_help_panel="Model")] = False,
    top: Annotated[int, typer.Option(help="Classes to list.")] = 5,
    out: Annotated[Path | None, typer.Option("--out", help="Overlay video with skeletons, boxes and the predicted "
                                             "labels (a .mp4 file for one video or live, else a directory).")] = None,
    parquet: Annotated[Path | None, typer.Option("--parquet", help="Also write the results as a Parquet table.",
                                                 dir_okay=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Results as JSON on stdout (live: one line per "
                                          "decision, then a summary line).")] = False,
) -> None:
    """Label videos: extract skeletons -> render -> classify, printing the top classes (per window).

    Uses the model of a train output (`--run WORKDIR`, newest, or `--model DIR`) or an exported ONNX file
    (`--onnx FILE`). `--per-person` labels each tracked person; `--live SOURCE` labels a camera or stream.
    """
    from apps.predict.model import load_classifier, pose_models

    if bool(videos) == bool(live):
        raise SkelError("give video files or --live SOURCE (not both)")
    clf = load_classifier(run=run, model_dir=model_dir, onnx=onnx, num_clips=num_clips, flip=not no_flip,
                          threads=threads, last=last)
    params, detector, pose = pose_models(models, pose_model, max_persons, per_person)
    if live:
        from apps.predict.live import LiveParams, describe, run_live

        lp = LiveParams(window=window or 48, stride=stride or 8, per_person=per_person, max_frames=max_frames,
                        top=top)
        emit = (lambda d: typer.echo(json.dumps(d))) if as_json else (lambda d: console.print(describe(d)))
        summary = run_live(live, clf, detector=detector, pose=pose, params=params, live=lp, emit=emit, out=out)
        if as_json:
            typer.echo(json.dumps({"summary": summary.as_dict()}))
        else:
            console.print(summary.describe())
        return
    from apps.predict.offline import predict_videos

    results = predict_videos(videos, clf, detector=detector, pose=pose, params=params, window=window, stride=stride,
                             per_person=per_person, top=top, out=out, parquet=parquet)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for res in results:
        table = Table(title=f"{res['video']} ({res['frames']} frames)")
        table.add_column("frames")
        if res["fps"]:
            table.add_column("seconds")
        if per_person:
            table.add_column("id")
        for k in range(min(top, len(clf.classes))):
            table.add_column(f"top-{k + 1}")
        for w in res["windows"]:
            secs = [f"{w['start'] / res['fps']:.1f}-{w['stop'] / res['fps']:.1f}"] if res["fps"] else []
            ids = [str(w["track"])] if per_person else []
            table.add_row(f"{w['start']}-{w['stop']}", *secs, *ids,
                          *(f"{t['label']} {t['score']:.2f}" for t in w["top"]))
        console.print(table)
        if "overlay" in res:
            console.print(f"overlay: {res['overlay']}")


@command("demo", shared=("workdir", "workers", "quiet", "verbose"), workdir=Path("demo-run"), panel="Info")
def demo_cmd(
    opts: Common,
    per_class: Annotated[int, typer.Option(help="Synthetic clips per action class.")] = 24,
) -> None:
    """Run skel end to end on generated data (about a minute on 2 cores).

    Synthetic people doing six actions -> import -> joint and limb volumes (with PNG previews) -> a small
    SlowOnly per stream -> multi-clip test -> fusion. The steps are workflows/demo.toml; a second run is
    all cache hits.
    """
    from apps.synth import generate, write_pickle
    from pipeline.workflow import load_recipe
    from stages import get_stage
    from stages.render.stage import write_previews

    workdir = opts.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    pkl = workdir / "synthetic.pkl"
    data = generate(per_class, seed=0)
    write_pickle(data, pkl)
    console.print(f"generated {len(data['annotations'])} clips of {len(data['classes'])} actions "
                  f"({', '.join(data['classes'])}) -> {pkl}")
    rec = load_recipe(Path(__file__).parent / "workflows" / "demo.toml", get_stage, given={"DEMO_PKL": str(pkl)})
    plans = _run_recipe(rec, workdir, opts)
    outs = {step.id: plan.out for step, plan in zip(rec.steps, plans, strict=True)}
    for kind in ("joint", "limb"):
        previews = write_previews(outs[f"render_{kind}"], 3)
        console.print(f"{kind} volume previews: {previews[0].parent}")
    table = Table(title="synthetic test split")
    for col in ("stream", "top-1", "top-5", "mean class"):
        table.add_column(col)
    for name in ("test_joint", "test_limb", "fuse"):
        s = _summary(outs[name])
        cells = (f"{100 * s[k]:.1f}%" for k in ("top1", "top5", "mean_class_accuracy"))
        table.add_row(name.removeprefix("test_"), *cells)
    console.print(table)
    console.print(f"confusion matrix: {outs['fuse']}; everything: `skel status -w {workdir}`")


if __name__ == "__main__":
    app()
