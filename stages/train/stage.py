"""`skel train`: fit a PoseConv3D model on the rendered volumes, one epoch per shard.

The stage is ``sequential``: the runner runs epochs in order in this process (or in every torchrun
rank), and each epoch commits its state (``epochs/NNN.pt``) before its shard marker, so a killed run resumes at
the last finished epoch and ends with the same optimizer steps and, with a fixed seed, the same weights.
Recipe as pyskl (docs/architecture.md, Training recipe): SGD momentum 0.9, wd 3e-4, lr 0.4 per 256 clips,
grad-norm clip 40, cosine annealing per iteration to 0, optional linear warm-up. The budget is ``epochs``
or, independent of the data size, ``steps`` (epochs are then derived from the training clips and the
batch). Model selection uses a validation split carved from the training split (seeded, stratified)
unless ``val_split`` names one; the test split is never used for it. ``init`` starts from pretrained
weights (stages.train.transfer).

This module declares the stage (what planning needs, no torch); the work is stages.train.fit's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping
from pathlib import Path

from inference.precision import bf16_in_float32
from inference.splits import Item, split_items, split_label, warn_unlabelled, warn_untrained
from models import uses_frames
from pipeline.checked import checked
from pipeline.digests import file_digest
from pipeline.errors import SkelError
from pipeline.stage import Context, Shard, Stage
from stages.train.params import TrainParams, check_model_args
from stages.train.split import carve
from stores.volumes import VolumeStore

METRICS = "metrics.jsonl"
EPOCHS = "epochs"  # each epoch's state and metric lines, never rewritten by a later epoch


def select(p: TrainParams, items: list[Item]) -> tuple[list[Item], list[Item]]:
    """(train, carved validation) items of the training split; no carving with ``val_split`` or fraction 0."""
    fraction = p.carve_fraction(len(items))
    if p.val_split or not fraction or len(items) < 2:
        return items, []
    train, val = carve([it.label for it in items], fraction)
    return [items[i] for i in train], [items[i] for i in val]


def newer_best(best: tuple[float, int], score: float | None, epoch: int) -> tuple[float, int]:
    """(top-1, epoch) of the checkpoint to keep as best after ``epoch`` scored ``score``.

    A tie goes to the later epoch: a small carved split saturates early, and keeping the first saturated
    epoch would keep a barely trained model (docs/small_data.md). Without validation
    the newest epoch is the best.
    """
    return (-1.0 if score is None else score, epoch) if score is None or score >= best[0] else best


def steps_per_epoch(p: TrainParams, n_train: int, world: int) -> int:
    """Optimizer steps of one epoch (DistributedSampler pads to a multiple of the world; last batch partial)."""
    return math.ceil(math.ceil(n_train * p.repeat / world) / (p.batch_size // world))


def epochs_for(p: TrainParams, n_train: int, world: int) -> int:
    """``epochs``, or enough whole epochs for ``steps`` and at least ``min_epochs``."""
    if p.steps is None:
        return p.epochs
    return max(p.min_epochs, math.ceil(p.steps / steps_per_epoch(p, n_train, world)))


def torchrun_world() -> int | None:
    """In a process torchrun started (one rank): the number of ranks; None elsewhere."""
    return int(os.environ["WORLD_SIZE"]) if "LOCAL_RANK" in os.environ else None


class TrainStage(Stage):
    name = "train"
    version = "3"
    Params = TrainParams
    inputs = {"volumes": ("render",)}
    optional_inputs = {"pretrained": ("train",)}  # an earlier training whose best.pt starts this one
    sequential = True
    shard_noun = "epochs"

    def inputs_for(self, params: TrainParams) -> dict[str, tuple[str, ...]]:
        """RGBPose also reads the RGB frames of the volumes (a frames output)."""
        return {**self.inputs, "frames": ("frames",)} if uses_frames(params.model) else dict(self.inputs)

    def check_inputs(self, names: Collection[str], params: TrainParams, described: Mapping[str, dict] | None = None
                     ) -> None:
        if "pretrained" in names and params.init:
            raise SkelError(f"init = {params.init!r} and a pretrained input: give one of them (both name the "
                            "weights the training starts from)")
        had, has = ((described or {}).get(name, {}).get("kind") for name in ("pretrained", "volumes"))
        if had and has and had != has:
            raise SkelError(f"input pretrained trains on {had} heatmaps, these volumes are {has}: start the {has} "
                            f"stream from a {has} training (its checkpoint would be refused when this one starts)")

    def describes(self, params: TrainParams, described: Mapping[str, dict]) -> dict:
        """The kind of the heatmaps it trains on."""
        return {"kind": described["volumes"]["kind"]} if "kind" in described.get("volumes", {}) else {}

    def external(self, params: TrainParams) -> dict:
        """The pretrained weights count by content, not by path; ``head`` marks that their head's rows follow the
        class names (since 2026-12-06; before, any head of the right size was kept), so that an ``init`` training
        made before is not a cache hit of one that would now start from other rows."""
        precision = bf16_in_float32(params.bf16, params.device)
        if not params.init:
            return precision
        if not Path(params.init).is_file():
            raise SkelError(f"{params.init}: no such checkpoint (--init)")
        # a checkpoint of an output (another training's best.pt) is read only as its manifest records it
        return {"init_sha256": file_digest(checked(Path(params.init))), "head": "rows by class name"} | precision

    def named_splits(self, params: TrainParams) -> dict[str, str]:
        return {k: v for k in ("train_split", "val_split") if (v := getattr(params, k))}

    def check_data(self, inputs: Mapping[str, Path], params: TrainParams) -> None:
        """The training runs in the processes it was planned for (checked before its output is touched: a repair
        or a recipe step runs one), the training split has samples of two classes or more, and a named validation
        split has samples."""
        if params.nproc != (world := torchrun_world() or 1):
            raise SkelError(f"nproc {params.nproc}: this training runs in {world} process(es); only `skel train "
                            f"--nproc {params.nproc}` starts them (a recipe step or `skel verify --repair` trains in "
                            "one): run that command to make or resume it")
        store = VolumeStore(inputs["volumes"])
        items = split_items(store, params.train_split, "--train-split")
        warn_unlabelled(store, params.train_split, "not trained on")
        labels = {item.label for item in items}
        warn_untrained(store, labels)
        if len(labels) < 2:
            names = store.attrs.get("classes") or []
            label = names[items[0].label] if items[0].label < len(names) else items[0].label
            raise SkelError(f"{store.path}: the training split ({split_label(params.train_split)}) holds one class "
                            f"({label}): a classifier learns nothing from it; label two classes or more")
        if params.val_split:
            split_items(store, params.val_split, "--val-split")
            warn_unlabelled(store, params.val_split, "not validated on")

    def check(self, params: TrainParams) -> None:
        """The model built as training will build it, on the meta device, and the device it will train on
        (imports torch)."""
        from inference.device import pick_device
        from stages.train.transfer import pretrained_weights

        check_model_args(params.model, params.model_args, params.dropout)
        pick_device(params.device)
        if params.init:  # not a checkpoint (an exported .onnx, say): said now, not in the first epoch
            pretrained_weights(checked(Path(params.init)))

    def shards(self, ctx: Context) -> list[Shard]:
        from stages.train.fit import epoch_shards

        return epoch_shards(ctx)

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        from stages.train.fit import run_epoch

        return run_epoch(ctx, shard)

    def finalize(self, ctx: Context, records: dict[str, dict]) -> dict:
        from stages.train.fit import finalize

        return finalize(ctx, records)
