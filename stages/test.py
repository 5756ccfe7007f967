"""`skel test` and `skel fuse`: multi-clip, flip-averaged scores on a split, metrics, late fusion.

Test: each sample gives ``num_clips`` fixed clips (pyskl's seeded uniform sampling) and, with ``flip``,
their mirrors (W reversed, left/right channels swapped); the softmax of all of them is averaged (pyskl
``average_clips='prob'``; docs/architecture.md, Test views). Shards are groups of samples, so testing runs on Dask.
Fuse adds several test outputs' scores with weights (joint + limb, 1:1 in the paper).
Every output holds ``scores.parquet`` (sample_id, label, scores), ``metrics.json`` (top-1, top-5,
mean class accuracy) and the confusion matrix as ``confusion.csv`` and ``confusion.png``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from pipeline.atomic import atomic_path, read_json, write_json
from pipeline.errors import SkelError
from pipeline.inputs import inputs_of
from pipeline.stage import Context, Shard, Stage
from stages.train import checkpoint, data
from stages.train.dist import pick_device
from stages.train.loop import Batch, autocast, to_device

SCORES = "scores.parquet"
PARTS = "scores"
METRICS = "metrics.json"
SCHEMA = pa.schema([("sample_id", pa.string()), ("label", pa.int32()), ("scores", pa.list_(pa.float32()))])
_RUNTIME = {"fingerprint": False}


# --- metrics (pyskl's definitions) -------------------------------------------------------------------------

def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of samples whose label is among the k highest scores (k capped at the class count)."""
    k = min(k, scores.shape[1])
    top = np.argsort(scores, axis=1)[:, -k:]
    return float((top == labels[:, None]).any(axis=1).mean())


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    return np.bincount(labels * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class recall over the classes that occur as label or prediction (pyskl: a class that is
    predicted but never the label counts as 0)."""
    pred = scores.argmax(axis=1)
    cm = confusion_matrix(pred, labels, scores.shape[1])
    present = np.union1d(pred, labels)
    counts, hits = cm.sum(axis=1)[present], np.diag(cm)[present]
    return float(np.mean(np.where(counts > 0, hits / np.maximum(counts, 1), 0.0)))


def metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "top1": top_k_accuracy(scores, labels, 1),
        "top5": top_k_accuracy(scores, labels, 5),
        "mean_class_accuracy": mean_class_accuracy(scores, labels),
        "samples": len(labels),
    }


# --- outputs -----------------------------------------------------------------------------------------------

def write_scores(path: Path, sample_ids: list[str], labels: np.ndarray, scores: np.ndarray) -> None:
    flat = pa.array(scores.astype(np.float32).ravel())
    table = pa.table([pa.array(sample_ids, pa.string()), pa.array(labels, pa.int32()),
                      pa.FixedSizeListArray.from_arrays(flat, scores.shape[1]).cast(pa.list_(pa.float32()))],
                     schema=SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_scores(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(sample_ids, labels [N], scores [N, C]) of a scores table."""
    table = pq.read_table(path)
    n = table.num_rows
    scores = table.column("scores").combine_chunks().flatten().to_numpy().reshape(n, -1) if n else np.zeros((0, 0))
    return table.column("sample_id").to_pylist(), table.column("label").to_numpy(), scores.astype(np.float32)


def _confusion_png(cm: np.ndarray, names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix (rows: true class, columns: predicted) with counts, class names on
    both axes (matplotlib)."""
    from matplotlib.figure import Figure  # object API: no pyplot state, no GUI backend

    n = len(cm)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.45 * n + 2.5), 40.0)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    ax.set_xticks(range(n), names, rotation=60, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion matrix ({int(cm.sum())} samples)")
    if n <= 40:
        for i, j in zip(*np.nonzero(cm), strict=True):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if rows[i, j] > 0.5 else "black")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def write_report(out: Path, labels: np.ndarray, scores: np.ndarray, classes: list[str] | None) -> dict:
    """metrics.json, confusion.csv and confusion.png for a score table; returns the metrics."""
    result = metrics(scores, labels)
    names = list(classes) if classes else [str(i) for i in range(scores.shape[1])]
    cm = confusion_matrix(scores.argmax(axis=1), labels, scores.shape[1])
    with atomic_path(out / "confusion.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *names])
        writer.writerows([name, *row] for name, row in zip(names, cm.tolist(), strict=True))
    _confusion_png(cm, names, out / "confusion.png")
    write_json(out / METRICS, {**result, "classes": names})
    return result


# --- test stage --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TestParams:
    split: str = "test"
    num_clips: int = 10
    flip: bool = True
    checkpoint: str = "best"  # best | last
    input_size: int | None = None  # None: as rendered (pyskl tests at 64 x 64)
    samples_per_shard: int = field(default=32, metadata=_RUNTIME)
    batch_clips: int = field(default=20, metadata=_RUNTIME)  # clips per forward pass
    device: str = field(default="auto", metadata=_RUNTIME)
    threads: int | None = field(default=None, metadata=_RUNTIME)

    def __post_init__(self) -> None:
        if self.checkpoint not in ("best", "last"):
            raise ValueError(f"checkpoint must be best or last, got {self.checkpoint!r}")
        if self.num_clips < 1:
            raise ValueError("num_clips must be >= 1")


def _split_clips(x: Batch, n: int) -> list[Batch]:
    """A sample's clips [clips, ...] (or a tuple of such, one per modality) in chunks of ``n`` clips."""
    return list(zip(*(t.split(n) for t in x), strict=True)) if isinstance(x, tuple) else list(x.split(n))


def _batch1(x: Batch) -> Batch:
    return tuple(t[None] for t in x) if isinstance(x, tuple) else x[None]


def _n_clips(x: Batch) -> int:
    return len(x[0]) if isinstance(x, tuple) else len(x)


@cache
def _model(path: str, mtime_ns: int, device: str) -> tuple[torch.nn.Module, dict]:
    model, config = checkpoint.load_model(Path(path))
    return model.to(device), config


class TestStage(Stage):
    name = "test"
    version = "1"
    Params = TestParams
    inputs = {"model": ("train",)}

    def _clips(self, ctx: Context, config: dict) -> Dataset:
        p: TestParams = ctx.params
        # the outputs the model was fitted on (render volumes, RGBPose frames)
        return data.eval_set(config, inputs_of(ctx.inputs["model"]), p.split, num_clips=p.num_clips, flip=p.flip,
                             size=p.input_size)

    def _checkpoint(self, ctx: Context) -> Path:
        return ctx.inputs["model"] / (checkpoint.BEST if ctx.params.checkpoint == "best" else checkpoint.LAST)

    def shards(self, ctx: Context) -> list[Shard]:
        n = len(self._clips(ctx, checkpoint.load(self._checkpoint(ctx))["config"]))
        size = ctx.params.samples_per_shard
        return [Shard(f"{i // size:05d}", (i, min(i + size, n))) for i in range(0, n, size)]

    @torch.no_grad()
    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        p: TestParams = ctx.params
        # Default: torch's own count, which honours the OMP_NUM_THREADS=1 that Dask's nannies set for
        # worker processes (one thread per worker, no oversubscription) and uses every core in-process.
        if p.threads:
            torch.set_num_threads(p.threads)
        device = pick_device(p.device)
        path = self._checkpoint(ctx)
        model, config = _model(str(path), path.stat().st_mtime_ns, str(device))
        clips = self._clips(ctx, config)
        lo, hi = shard.payload
        rows = []
        for i in range(lo, hi):
            x, label = clips[i]
            with autocast(device):  # mean of the clips' softmax (RGBPose: fused 1:1), batch_clips clips at a time
                probs = sum(
                    model.predict_proba(to_device(_batch1(chunk), device)).float()[0] * _n_clips(chunk)
                    for chunk in _split_clips(x, p.batch_clips)
                ) / _n_clips(x)  # fmt: skip
            if not torch.isfinite(probs).all():  # a diverged model: refuse rather than score NaN as a class
                raise SkelError(f"{path}: non-finite scores for sample {clips.items[i].sample_id} "
                                "(the model's weights are not finite; retrain it)")
            rows.append((clips.items[i].sample_id, label, probs.cpu().numpy()))
        write_scores(ctx.out / PARTS / f"part-{shard.id}.parquet", [r[0] for r in rows],
                     np.array([r[1] for r in rows]), np.stack([r[2] for r in rows]))
        return {"samples": len(rows)}

    def finalize(self, ctx: Context, records: dict[str, dict]) -> dict:
        parts = [read_scores(ctx.out / PARTS / f"part-{sid}.parquet") for sid in sorted(records)]
        ids = [s for part in parts for s in part[0]]
        labels, scores = np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
        write_scores(ctx.out / SCORES, ids, labels, scores)
        config = checkpoint.load(self._checkpoint(ctx))["config"]
        return write_report(ctx.out, labels, scores, config.get("classes"))


# --- fuse stage --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FuseParams:
    weights: tuple[float, ...] = ()  # one per input, in input order; empty: all 1


class FuseStage(Stage):
    """Weighted sum of the scores of test (or fuse) outputs given as inputs ``scores0``, ``scores1``, ..."""

    name = "fuse"
    version = "1"
    Params = FuseParams

    def shards(self, ctx: Context) -> list[Shard]:
        return [Shard("fuse")]

    def _inputs(self, ctx: Context) -> list[Path]:
        return [ctx.inputs[k] for k in sorted(ctx.inputs, key=lambda k: int(k.removeprefix("scores")))]

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        paths = self._inputs(ctx)
        weights = ctx.params.weights or (1.0,) * len(paths)
        if len(weights) != len(paths):
            raise SkelError(f"{len(weights)} weights for {len(paths)} score tables")
        ids, labels, total = read_scores(paths[0] / SCORES)
        total = total * weights[0]
        order = {s: i for i, s in enumerate(ids)}
        for path, w in zip(paths[1:], weights[1:], strict=True):
            other_ids, other_labels, scores = read_scores(path / SCORES)
            if sorted(other_ids) != sorted(ids):
                raise SkelError(f"{path}: scores cover other samples than {paths[0]}")
            idx = np.array([order[s] for s in other_ids])
            if (labels[idx] != other_labels).any() or scores.shape[1] != total.shape[1]:
                raise SkelError(f"{path}: labels or classes differ from {paths[0]}")
            total[idx] += w * scores
        write_scores(ctx.out / SCORES, ids, labels, total)
        return {"samples": len(ids)}

    def finalize(self, ctx: Context, records: dict[str, dict]) -> dict:
        _, labels, scores = read_scores(ctx.out / SCORES)
        classes = (read_json(self._inputs(ctx)[0] / METRICS) or {}).get("classes")
        return write_report(ctx.out, labels, scores, classes)
