"""Videos of synthetic stick figures doing known actions side by side: ground truth for per-person labels.

The figures move as `apps.synth` animates them (same actions, proportions and noise); they are drawn as
thick limbs with a filled head on a plain background, and the exact keypoints come back with the video.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from apps.synth import ACTIONS, BODY_HEIGHT, CLASSES, Placement, person
from stages.extract.mp4 import Mp4Writer


def figures(actions: list[str], n_frames: int, img_shape: tuple[int, int], seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints [M, T, 17, 2] and scores [M, T, 17] of one figure per action, left to right in equal columns."""
    h, w = img_shape
    t = np.arange(n_frames, dtype=np.float64)
    kps, scores = [], []
    for m, name in enumerate(actions):
        if name not in ACTIONS:
            raise ValueError(f"unknown action {name!r} (known: {', '.join(CLASSES)})")
        rng = np.random.default_rng([seed, m])
        motion = ACTIONS[name](rng, t)
        unit = h * 0.6 / BODY_HEIGHT
        column = w / len(actions)
        motion.shift *= 0.0  # walkers walk on the spot: each figure stays in its own column
        place = Placement(x=column * (m + 0.5), ground=h * 0.9, unit=unit)
        kp, sc = person(rng, motion, place, quality=1.0)
        kps.append(kp)
        scores.append(sc)
    return np.stack(kps), np.stack(scores)


HAIR = (30, 30, 40)
SKIN, SHIRTS, TROUSERS = (120, 160, 215), ((40, 40, 160), (150, 90, 30), (40, 120, 40), (120, 40, 120)), (90, 60, 40)
BONES = {(5, 7): "shirt", (6, 8): "shirt", (7, 9): "skin", (8, 10): "skin", (11, 13): "legs", (12, 14): "legs",
         (13, 15): "legs", (14, 16): "legs"}  # fmt: skip


def draw_figures(kp: np.ndarray, score: np.ndarray, img_shape: tuple[int, int]) -> list[np.ndarray]:
    """BGR frames with every figure of kp [M, T, 17, 2] drawn as a dressed mannequin: a filled torso, thick
    limbs and a head, in a shirt colour per figure (limbs whose joints have score 0 are left out, and a
    figure whose scores are all 0 in a frame is absent from it)."""
    h, w = img_shape
    rng = np.random.default_rng(0)
    backdrop = np.linspace(215, 165, h)[:, None, None].repeat(w, 1).repeat(3, 2)  # a wall lit from above
    frames = []
    for t in range(kp.shape[1]):
        img = backdrop.copy()
        for m in range(kp.shape[0]):
            pts, ok = np.round(kp[m, t]).astype(np.int32), score[m, t] > 0
            if not ok.any():
                continue
            torso = np.linalg.norm((kp[m, t, 5] + kp[m, t, 6] - kp[m, t, 11] - kp[m, t, 12]) / 2)
            thick = max(2, int(torso * 0.28))
            colours = {"shirt": SHIRTS[m % len(SHIRTS)], "skin": SKIN, "legs": TROUSERS}
            cv2.fillConvexPoly(img, pts[[5, 6, 12, 11]], colours["shirt"], cv2.LINE_AA)
            for (a, b), part in BONES.items():
                if ok[a] and ok[b]:
                    cv2.line(img, tuple(pts[a]), tuple(pts[b]), colours[part], thick, cv2.LINE_AA)
            neck = (pts[5] + pts[6]) // 2
            cv2.line(img, tuple(neck), tuple(pts[0]), SKIN, thick, cv2.LINE_AA)
            head = max(3, int(torso * 0.3))
            cv2.ellipse(img, tuple(pts[0]), (head, int(head * 1.2)), 0, 0, 360, SKIN, -1, cv2.LINE_AA)
            cv2.ellipse(img, tuple(pts[0]), (head, int(head * 1.2)), 0, 180, 360, HAIR, -1, cv2.LINE_AA)
            for eye in (1, 2):
                if ok[eye]:
                    cv2.circle(img, tuple(pts[eye]), max(1, head // 6), HAIR, -1, cv2.LINE_AA)
            for j in (9, 10):
                if ok[j]:
                    cv2.circle(img, tuple(pts[j]), int(thick * 0.6), SKIN, -1, cv2.LINE_AA)
            for j in (15, 16):
                if ok[j]:
                    cv2.ellipse(img, tuple(pts[j]), (int(thick * 0.9), int(thick * 0.5)), 0, 0, 360, HAIR, -1)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        frames.append(img)
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    """Write BGR frames as an mp4v MP4."""
    with Mp4Writer(path, fps) as writer:
        for f in frames:
            writer.write(f)
    return path
