"""`skel train`: fit a model on rendered volumes (DDP with --nproc)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cli.common import Common, command, from_option, number_list, summary
from cli.fields import Opt, field_values
from pipeline.log import console
from stages.train.params import TrainParams, backbone_args

OPTIONS = [
    Opt("model", "slowonly, c3d_light, x3d_shallow or rgbpose (RGB + pose: needs `skel frames`).", "Model"),
    Opt("base_channels", "Backbone width (pyskl: 32).", "Model", type=int | None, default=None, extra={"min": 1}),
    Opt("stage_blocks", "Blocks per stage, e.g. 2,3,2 (SlowOnly: 4,6,3).", "Model", type=str | None, default=None),
    Opt("rgb_base_channels", "rgbpose: RGB pathway width (pyskl: 64); --base-channels/--stage-blocks set the pose "
        "pathway.", "Model", type=int | None, default=None, extra={"min": 1}),
    Opt("rgb_stage_blocks", "rgbpose: RGB blocks per stage (R50: 3,4,6,3).", "Model", type=str | None, default=None),
    Opt("dropout", "Head dropout.", "Model"),
    Opt("limb", "Train on the newest limb volumes (default: joint; --from alone: the volumes it names).", "Data",
        ("--limb",), type=bool, default=False),
    from_option("render"),
    Opt("clip_len", "Frames per clip.", "Data"),
    Opt("input_size", "Training crop size (H = W).", "Data"),
    Opt("train_split", "Split to train on ('' = every labelled sample, e.g. a pickle without splits).", "Data"),
    Opt("val_split", "A split to validate on ('' = carve --val-fraction from the training split; never the test "
        "split by default).", "Data"),
    Opt("val_fraction", "Share of the training split carved (seeded, stratified) for validation and best.pt; "
        "default 10%, at most 500 clips; 0 = none. Every class with two clips or more gives one at least, so a "
        "small set gives more (the plan line says how many).", "Data"),
    Opt("repeat", "Passes over the training split per epoch.", "Data"),
    Opt("epochs", "Epochs (ignored with --steps).", "Optimiser"),
    Opt("steps", "Optimizer steps in all, rounded up to whole epochs: the same budget at any data size.",
        "Optimiser"),
    Opt("min_epochs", "With --steps: at least this many epochs (a recipe for any data size: small sets get the "
        "steps, large ones the passes).", "Optimiser"),
    Opt("batch_size", "Global batch (split over --nproc).", "Optimiser", ("--batch-size", "-b")),
    Opt("lr", "Peak learning rate (default 0.4 x batch / 256).", "Optimiser"),
    Opt("weight_decay", "SGD weight decay.", "Optimiser"),
    Opt("warmup_steps", "Linear warm-up steps.", "Optimiser"),
    Opt("seed", "Seed of weights, order and augmentation.", "Optimiser"),
    Opt("init", "Start from these weights: skel's best.pt/last.pt, a pyskl .pth, or a shipped model by name "
        "(penn-joint-s16: models/pretrained). The head's rows follow the class names (reordered, or picked for a "
        "subset of the checkpoint's classes); a class it never saw gets a fresh head; without names, a fresh head "
        "when the class count differs.", "Transfer",
        type=Path | None, extra={"exists": False}),
    Opt("backbone_lr_mult", "Backbone lr = lr x this (0 = frozen backbone).", "Transfer"),
    Opt("aug_rotate", "Random rotation per clip, +- degrees.", "Augmentation"),
    Opt("aug_scale", "Random zoom per clip in [1-s, 1+s].", "Augmentation"),
    Opt("aug_shear", "Random shear per clip, +- degrees.", "Augmentation"),
    Opt("mixup", "Mixup Beta(a, a) (0 = off).", "Augmentation"),
    Opt("label_smoothing", "Label smoothing.", "Augmentation"),
    Opt("nproc", "Training processes (DDP via torchrun: gloo on CPU, nccl on GPU). Part of the output's "
        "fingerprint (the ranks split each batch): a killed run resumes with the same --nproc; another makes a new "
        "output.", "Cluster", extra={"min": 1}),
    Opt("workers", "DataLoader worker processes per training process (0 = load in the training process).",
        "Cluster", ("--loader-workers",)),
    Opt("threads", "Torch threads per process (default: OMP_NUM_THREADS where set, else cores / nproc).",
        "Cluster"),
    Opt("device", "auto (CUDA when available), cpu or cuda.", "Cluster"),
    Opt("bf16", "Training steps in bf16 on a CPU that computes it natively (AVX512-BF16/AMX; ~1.6x faster; a "
        "no-op elsewhere, CUDA always uses mixed precision). Validation stays float32 (`skel test --bf16` scores "
        "in bf16).", "Cluster",
        ("--bf16",), type=bool, default=False),
]


@command("train", shared=("workdir", "quiet", "verbose"), options=(TrainParams, OPTIONS))
def train_cmd(opts: Common, **o: Any) -> None:
    """Train a PoseConv3D model on rendered volumes; a killed run resumes at its last finished epoch."""
    import sys

    from stages.train.launch import relaunched, train
    from stages.train.stage import torchrun_world

    model_args = backbone_args(o["model"], o["base_channels"], number_list(o["stage_blocks"], int, "--stage-blocks"),
                               o["rgb_base_channels"], number_list(o["rgb_stage_blocks"], int, "--rgb-stage-blocks"))
    nproc = torchrun_world() or o["nproc"]  # in a rank, the ranks torchrun started
    params = TrainParams(**{**field_values(TrainParams, o), "model_args": model_args, "nproc": nproc,
                            "train_split": o["train_split"] or None, "val_split": o["val_split"] or None,
                            "init": str(o["init"]) if o["init"] else None})
    # --limb with --from must name limb volumes; --from alone takes the volumes it names, joint or limb
    kind = "limb" if o["limb"] else None if o["source"] else "joint"
    code = relaunched(sys.argv[1:], opts.workdir, params, source=o["source"], kind=kind)
    if code is not None:
        raise typer.Exit(code)
    out = train(opts.workdir, params, source=o["source"], kind=kind, quiet=opts.quiet)
    if out is not None:
        s = summary(out)
        best = ("no validation clips" if s["best_top1"] is None
                else f"best val top-1 {s['best_top1']:.2%} (epoch {s['best_epoch']})")
        console.print(f"trained {s['epochs']} epochs ({s['steps']} steps), {best} -> {out}")
