"""Training curves as a PNG (cv2, no matplotlib): loss and learning rate per logged step, and the
validation top-1 per epoch when there is a validation split."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from pipeline.atomic import write_bytes

W, H, PAD = 640, 200, 40
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _panel(xs: np.ndarray, ys: np.ndarray, title: str, colour: tuple[int, int, int], y_max: float | None = None):
    img = np.full((H, W, 3), 255, np.uint8)
    cv2.putText(img, title, (PAD, 20), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(img, (PAD, PAD // 2 + 10), (W - 10, H - PAD // 2), (200, 200, 200), 1)
    if len(xs) == 0:
        return img
    top = y_max if y_max is not None else float(ys.max()) or 1.0
    x0, x1, y0, y1 = PAD, W - 10, H - PAD // 2, PAD // 2 + 10
    px = x0 + (xs - xs.min()) / max(float(xs.max() - xs.min()), 1e-9) * (x1 - x0)
    py = y0 - np.clip(ys / top, 0, 1) * (y0 - y1)
    cv2.polylines(img, [np.stack([px, py], 1).astype(np.int32)], False, colour, 2, cv2.LINE_AA)
    for value in (0.0, top):
        y = int(y0 - (value / top) * (y0 - y1))
        cv2.putText(img, f"{value:.3g}", (2, y + 4), FONT, 0.35, (80, 80, 80), 1, cv2.LINE_AA)
    cv2.putText(img, f"{xs.max():.0f}", (x1 - 30, H - 4), FONT, 0.35, (80, 80, 80), 1, cv2.LINE_AA)
    return img


def save_curves(metrics_jsonl: Path, path: Path) -> Path:
    """Stack loss, lr and (if any) val top-1 panels from a train output's metrics.jsonl into one PNG."""
    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if r.get("kind") != "epoch"]
    epochs = [r for r in rows if r.get("kind") == "epoch" and r.get("val_top1") is not None]
    step = np.array([r["step"] for r in steps], float)
    panels = [
        _panel(step, np.array([r["loss"] for r in steps], float), "training loss / step", (200, 80, 0)),
        _panel(step, np.array([r["lr"] for r in steps], float), "learning rate / step", (0, 140, 0)),
    ]
    if epochs:
        panels.append(_panel(np.array([r["epoch"] + 1 for r in epochs], float),
                             np.array([r["val_top1"] for r in epochs], float), "val top-1 / epoch", (0, 0, 200), 1.0))
    ok, data = cv2.imencode(".png", np.vstack(panels))
    write_bytes(path, data.tobytes())
    return path
