"""Overlay videos of predictions: skeletons, boxes and track ids (as extraction previews draw them), each
person's label above their box in their track's colour, and a caption for whole-scene labels. They are
written by stages.extract.mp4's writer (complete or absent; a live recording stopped with Ctrl-C is closed, so
it is kept).
"""

from __future__ import annotations

import cv2
import numpy as np

from stages.extract.preview import PERSON_COLOURS, caption, draw


def draw_people(bgr: np.ndarray, ids: list[int], kp: np.ndarray, score: np.ndarray, box: np.ndarray,
                labels: dict[int, str] | None = None, text: str = "") -> None:
    """Draw tracks ``ids`` (kp [M, 17, 2], score [M, 17], box [M, 5]) coloured by id, their labels above
    their boxes and ``text`` as a caption, onto ``bgr`` in place."""
    if ids:
        slots = max(ids) + 1  # draw() colours and names a person by its index: place each track at its id
        pk, ps, pb = np.zeros((slots, 17, 2), np.float32), np.zeros((slots, 17), np.float32), np.zeros((slots, 5))
        pk[ids], ps[ids], pb[ids] = kp, score, box
        draw(bgr, pk, ps, pb)
    for m, track in enumerate(ids):
        label = (labels or {}).get(track)
        if not label or score[m].max() <= 0:
            continue
        x0, y0 = int(box[m, 0]), int(box[m, 1])
        colour = PERSON_COLOURS[track % len(PERSON_COLOURS)]
        (w, h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 2)
        top = max(0, y0 - 30 - h)
        cv2.rectangle(bgr, (x0, top), (x0 + w + 8, top + h + 10), (0, 0, 0), -1)
        cv2.putText(bgr, label, (x0 + 4, top + h + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 2, cv2.LINE_AA)
    if text:
        caption(bgr, text)
