"""The test stage's work (stages.test.stage declares it): the scores of each group of samples, joined and
reported by finalize. Imports torch; the stage module does not."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from inference import checkpoint
from inference.data import eval_set
from inference.device import Batch, autocast, pick_device, to_device
from inference.splits import split_items, split_label
from inference.views import EvalClips
from pipeline.errors import SkelError
from pipeline.fingerprint import param_default
from pipeline.inputs import inputs_of
from pipeline.stage import Context, Shard, split_shards
from pipeline.workdir import load_output
from stages.test.params import TestParams
from stages.test.report import SCORES, read_scores, write_report, write_scores
from stages.train.params import TrainParams
from stores.volumes import VolumeStore

PARTS = "scores"

log = logging.getLogger("skel")


def _split_clips(x: Batch, n: int) -> list[Batch]:
    """A sample's clips [clips, ...] (or a tuple of such, one per modality) in chunks of ``n`` clips."""
    return list(zip(*(t.split(n) for t in x), strict=True)) if isinstance(x, tuple) else list(x.split(n))


def _n_clips(x: Batch) -> int:
    return len(x[0]) if isinstance(x, tuple) else len(x)


@cache
def _model(path: str, mtime_ns: int, device: str) -> tuple[torch.nn.Module, dict]:
    model, config = checkpoint.load_model(Path(path))
    return checkpoint.for_inference(model, device), config


def _clips(ctx: Context, config: dict) -> Dataset:
    p: TestParams = ctx.params
    # the outputs the model was fitted on (render volumes, RGBPose frames)
    return eval_set(config, inputs_of(ctx.inputs["model"]), p.split, num_clips=p.num_clips, flip=p.flip,
                    size=p.input_size)


def _checkpoint(ctx: Context) -> Path:
    return checkpoint.of(ctx.inputs["model"], ctx.params.checkpoint)


def sample_shards(ctx: Context) -> list[Shard]:
    """Groups of ``samples_per_shard`` samples of the split (warning first when the model trained on some)."""
    clips = _clips(ctx, checkpoint.load(_checkpoint(ctx))["config"])
    _warn_if_trained_on(ctx, [item.sample_id for item in clips.items])
    return split_shards(len(clips), ctx.params.samples_per_shard)


def _warn_if_trained_on(ctx: Context, ids: list[str]) -> None:
    """A split that shares samples with the model's training split (a pickle that lists a name in both, or
    two samples of one name, or the training split itself: class folders without splits train and test on every
    clip) scores them as if held out: say so."""
    manifest = load_output(ctx.inputs["model"]).manifest
    params = manifest.get("params", {})
    trained_on = params.get("train_split", param_default(TrainParams, "train_split"))
    if split_label(trained_on) == split_label(ctx.params.split):
        carved = 0 if params.get("val_split") else manifest.get("summary", {}).get("val_samples", 0)
        but = f"; only the {carved} clips carved from it for validation were not trained on" if carved else ""
        log.warning("the model trained on %s, the split scored here: its scores are not held out (a training "
                    "accuracy%s)", split_label(trained_on), but)
        return
    store = VolumeStore(inputs_of(ctx.inputs["model"])["volumes"])
    seen = {item.sample_id for item in split_items(store, trained_on)}
    both = [sid for sid in ids if sid in seen]
    if both:
        log.warning("%d of the %d samples of split %r are in the training split (%s) too, e.g. %s: their scores "
                    "are not held out", len(both), len(ids), ctx.params.split, split_label(trained_on),
                    ", ".join(both[:3]))


@torch.no_grad()
def score_shard(ctx: Context, shard: Shard) -> dict:
    """Mean softmax of each sample's views in the shard, written as one part of the scores."""
    p: TestParams = ctx.params
    # Default: torch's own count, which honours the OMP_NUM_THREADS=1 that Dask's nannies set for
    # worker processes (one thread per worker, no oversubscription) and uses every core in-process.
    if p.threads:
        torch.set_num_threads(p.threads)
    device = pick_device(p.device)
    path = _checkpoint(ctx)
    model, config = _model(str(path), path.stat().st_mtime_ns, str(device))
    clips = _clips(ctx, config)
    lo, hi = shard.payload
    rows = []
    for i in range(lo, hi):
        with autocast(device, bf16_on_cpu=p.bf16):  # mean of the views' softmax
            if isinstance(clips, EvalClips):  # pose models: each distinct frame once (frame-wise layers)
                views, label = clips.views(i), clips.items[i].label
                probs = model.predict_views(views.frames.to(device), views.index.to(device)).float().mean(0)
            else:  # RGBPose: both heads fused 1:1, batch_clips clips at a time
                x, label = clips[i]
                probs = sum(
                    model.predict_proba(to_device(chunk, device)).float().sum(0)
                    for chunk in _split_clips(x, p.batch_clips)
                ) / _n_clips(x)  # fmt: skip
        if not torch.isfinite(probs).all():  # a diverged model: refuse rather than score NaN as a class
            raise SkelError(f"{path}: non-finite scores for sample {clips.items[i].sample_id} "
                            "(the model's weights are not finite; retrain it)")
        rows.append((clips.items[i].sample_id, label, probs.cpu().numpy()))
    write_scores(ctx.out / PARTS / f"part-{shard.id}.parquet", [r[0] for r in rows],
                 np.array([r[1] for r in rows]), np.stack([r[2] for r in rows]))
    return {"samples": len(rows)}


def finalize(ctx: Context, records: dict[str, dict]) -> dict:
    """The parts joined into one scores table, and the report."""
    parts = [read_scores(ctx.out / PARTS / f"part-{sid}.parquet") for sid in sorted(records)]
    ids = [s for part in parts for s in part[0]]
    labels, scores = np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
    write_scores(ctx.out / SCORES, ids, labels, scores)
    config = checkpoint.load(_checkpoint(ctx))["config"]
    return write_report(ctx.out, labels, scores, config.get("classes"))
