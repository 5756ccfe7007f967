"""Person detectors: an RGB frame in, person boxes in frame pixels out.

`MoveNetMultiPose` uses MoveNet MultiPose as a detector (its own keypoints are coarse; the top-down
pose model refines them on crops). The frame is resized without padding so that both sides are multiples
of 32 and the long side is `long_side` (256 for people that fill the frame, 512 for small, far people).
"""

from __future__ import annotations

import os
from typing import Protocol

import cv2
import numpy as np

from models.pose_onnx import Device, check_io, model_path, session


class PersonDetector(Protocol):
    """Detects people in one frame."""

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 [H, W, 3] → float32 [N, 5] boxes (x0, y0, x1, y1, score) in frame pixels."""
        ...


class MoveNetMultiPose:
    """MoveNet MultiPose Lightning (6 person slots) as a person detector."""

    def __init__(
        self,
        models: str | os.PathLike | None = None,
        *,
        name: str = "movenet-multipose",
        long_side: int = 256,
        min_score: float = 0.2,
        device: Device = "cpu",
        threads: int = 1,
    ):
        if long_side % 32:
            raise ValueError(f"long_side must be a multiple of 32, got {long_side}")
        self.path = str(model_path(name, models))
        self.sess = session(self.path, device, threads)
        check_io(self.sess, self.path, (1, None, None, 3), (1, 6, 56))
        self.long_side = long_side
        self.min_score = min_score

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """(H, W) fed to the model: aspect kept, long side `long_side`, both multiples of 32."""
        s = self.long_side / max(h, w)
        return max(32, round(h * s / 32) * 32), max(32, round(w * s / 32) * 32)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        ih, iw = self.input_size(h, w)
        inp = cv2.resize(rgb, (iw, ih), interpolation=cv2.INTER_AREA)[None].astype(np.int32)
        rows = self.sess.run(None, {"input": inp})[0][0]  # 6 × (17×(y, x, s), ymin, xmin, ymax, xmax, score)
        rows = rows[rows[:, 55] >= self.min_score]
        scale = np.array([w, h, w, h], np.float32)
        boxes = rows[:, [52, 51, 54, 53]] * scale  # normalised coordinates map straight back: no padding
        return np.concatenate([boxes, rows[:, 55:56]], axis=1).astype(np.float32)
