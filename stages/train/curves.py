"""Training curves as a PNG (matplotlib): loss and learning rate per logged step, and the validation top-1
per epoch when there is a validation split."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.atomic import atomic_path


def save_curves(metrics_jsonl: Path, path: Path) -> Path:
    """Stack loss, lr and (if any) val top-1 panels from a train output's metrics.jsonl into one PNG."""
    from matplotlib.figure import Figure  # object API: no pyplot state, no GUI backend

    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if r.get("kind") != "epoch"]
    epochs = [r for r in rows if r.get("kind") == "epoch" and r.get("val_top1") is not None]
    panels = [
        ([r["step"] for r in steps], [r["loss"] for r in steps], "step", "training loss", "tab:orange"),
        ([r["step"] for r in steps], [r["lr"] for r in steps], "step", "learning rate", "tab:green"),
    ]
    if epochs:
        panels.append(([r["epoch"] + 1 for r in epochs], [r["val_top1"] for r in epochs], "epoch",
                       "validation top-1", "tab:blue"))
    fig = Figure(figsize=(7, 2.2 * len(panels)), layout="constrained")
    for ax, (xs, ys, xlabel, ylabel, colour) in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels,
                                                    strict=True):
        ax.plot(xs, ys, color=colour, marker="o" if xlabel == "epoch" else None)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if epochs:
        fig.axes[-1].set_ylim(0, 1)
    fig.suptitle(f"training: {metrics_jsonl.parent.name}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
