"""What a test or fuse output holds: ``scores.parquet`` (sample_id, label, scores), ``metrics.json`` (top-1,
top-5, mean class accuracy) and the confusion matrix as ``confusion.csv`` and ``confusion.png``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_path, write_json
from stages.test.metrics import confusion_matrix, metrics

SCORES = "scores.parquet"
METRICS = "metrics.json"
SCHEMA = pa.schema([("sample_id", pa.string()), ("label", pa.int32()), ("scores", pa.list_(pa.float32()))])


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
