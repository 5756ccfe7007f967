"""Overlay videos for checking an extraction by eye: boxes, skeletons and person ids on the frames.

Colours: each person id has its own colour for box, id and bones; joints are blue on the person's left,
red on the right, green for the nose. Written with the ``mp4v`` fourcc under a temporary name in the same
folder and renamed into place, so a preview is either complete or absent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from stages.extract.mp4 import Mp4Writer
from stages.extract.params import ExtractStageParams
from stages.extract.video import FrameSelection, VideoReader
from stores.triplets import TripletStore

BONES = ((0, 1), (0, 2), (1, 3), (2, 4), (5, 7), (7, 9), (6, 8), (8, 10), (5, 6), (5, 11), (6, 12),
         (11, 12), (11, 13), (13, 15), (12, 14), (14, 16))  # fmt: skip
PERSON_COLOURS = ((0, 220, 255), (255, 0, 255), (255, 255, 0), (0, 255, 0), (0, 128, 255), (255, 128, 128))
LEFT, RIGHT, CENTRE = (255, 150, 0), (0, 60, 255), (0, 200, 0)  # BGR


def draw(bgr: np.ndarray, kp: np.ndarray, score: np.ndarray, box: np.ndarray, min_score: float = 0.2) -> None:
    """Draw the persons of one frame (kp [M, 17, 2], score [M, 17], box [M, 5]) onto `bgr` in place."""
    for m in range(len(kp)):
        if score[m].max() <= 0:
            continue
        colour = PERSON_COLOURS[m % len(PERSON_COLOURS)]
        x0, y0, x1, y1 = (int(v) for v in box[m, :4])
        cv2.rectangle(bgr, (x0, y0), (x1, y1), colour, 2)
        cv2.putText(bgr, f"id {m}", (x0, max(16, y0 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 2, cv2.LINE_AA)
        pts = [(int(x), int(y)) for x, y in kp[m]]
        for a, b in BONES:
            if score[m, a] >= min_score and score[m, b] >= min_score:
                cv2.line(bgr, pts[a], pts[b], colour, 2, cv2.LINE_AA)
        for j, p in enumerate(pts):
            if score[m, j] >= min_score:
                cv2.circle(bgr, p, 4, CENTRE if j == 0 else (LEFT if j % 2 else RIGHT), -1, cv2.LINE_AA)


def caption(bgr: np.ndarray, text: str) -> None:
    """White text on a black band in the top-left corner."""
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.7, 2)
    cv2.rectangle(bgr, (0, 0), (w + 16, h + 16), (0, 0, 0), -1)
    cv2.putText(bgr, text, (8, h + 8), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)


def write_preview(
    video: str | os.PathLike,
    out: Path,
    kp: np.ndarray,
    score: np.ndarray,
    box: np.ndarray,
    selection: FrameSelection | None = None,
    captions: Sequence[str] | None = None,
) -> Path:
    """Decode the same frames the extraction used and write them with its results (and a caption per
    frame, e.g. the predicted action) drawn on."""
    reader = VideoReader(str(video), selection or FrameSelection())
    with Mp4Writer(out, reader.fps) as writer:
        for t, (_, rgb) in enumerate(reader):
            if t >= kp.shape[1]:
                break
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            draw(bgr, kp[:, t], score[:, t], box[:, t])
            if captions and captions[t]:
                caption(bgr, captions[t])
            writer.write(bgr)
    return out


PREVIEWS = "previews"  # the folder of an extract output that holds its overlay videos, by sample id


def write_previews(out: Path, params: ExtractStageParams, limit: int | None = None) -> list[Path]:
    """Overlay videos ``<out>/previews/<sample_id>.mp4`` for the first `limit` samples (driver)."""
    store = TripletStore(out)
    selection = FrameSelection(params.stride, params.fps)
    written = []
    for sid in store.ids()[:limit]:
        skel = store.read(sid)
        box = skel.box if skel.box is not None else np.zeros((*skel.score.shape[:2], 5), np.float32)
        target = out / PREVIEWS / f"{sid}.mp4"
        written.append(write_preview(store.meta(sid)["source"], target, skel.keypoint, skel.score, box, selection))
    return written
