"""Sliding windows over a skeleton sequence, classified for the whole scene or for each person alone.

Whole scene: every person of a window goes into one heatmap canvas (as PoseC3D was trained). Per person:
each track's window is cropped around that person only and rendered from their skeleton only, so two
people doing different things get their own labels. A track is classified in a window when it has a pose
in at least ``min_presence`` of the window's frames; its volume spans its own first to last posed frame.

A window where fewer than ``MIN_POSED`` (half) of the frames have anyone's skeleton is not labelled, in
either mode: it comes back without probabilities (``Window.labelled`` false) and says so (``Window.note``),
instead of a label guessed from a few poses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apps.predict.model import Classifier

MIN_POSED = 0.5  # share of a window's frames that must have a skeleton (anyone's) for it to be labelled


def windows(n_frames: int, window: int | None, stride: int | None) -> list[tuple[int, int]]:
    """[start, stop) frame ranges: the whole video, or sliding windows that cover it to the end."""
    if not window or n_frames <= window:
        return [(0, n_frames)]
    stride = stride or max(1, window // 2)
    starts = list(range(0, n_frames - window + 1, stride))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    return [(s, s + window) for s in starts]


@dataclass(frozen=True)
class Window:
    """Class probabilities of frames [start, stop): of the whole scene (track None) or of one track,
    with that track's box (x0, y0, x1, y1) around all its poses in the window; ``posed`` frames of the
    window have a skeleton (the track's, or anyone's for the scene). ``probs`` None: not labelled."""

    start: int
    stop: int
    probs: np.ndarray | None
    track: int | None = None
    box: tuple[float, float, float, float] | None = None
    posed: int = 0

    @property
    def labelled(self) -> bool:
        return self.probs is not None

    def note(self) -> str:
        """Why the window is not labelled ("" when it is)."""
        n = self.stop - self.start
        return "" if self.labelled else f"no skeleton in {n - self.posed} of {n} frames: not labelled"

    def top(self, k: int) -> list[tuple[int, float]]:
        if self.probs is None:
            return []
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(int(i), float(self.probs[i])) for i in order]

    def label(self, classes: tuple[str, ...]) -> str:
        """"top-1 class score", as overlays show it ("no skeleton" when not labelled)."""
        if self.probs is None:
            return "no skeleton"
        i, s = self.top(1)[0]
        return f"{classes[i]} {s:.2f}"


def _posed(score: np.ndarray) -> np.ndarray:
    """[M, T] whether person m has a pose in frame t."""
    return (score > 0).any(axis=-1)


def enough(posed: int, n_frames: int, share: float) -> bool:
    """Whether ``posed`` of ``n_frames`` frames (at least one) reach ``share`` of them."""
    return posed >= max(1, share * n_frames)


def _scene_posed(score: np.ndarray) -> np.ndarray:
    """[T] whether anyone has a pose in frame t (a video without people: no frame, so no window is labelled)."""
    return _posed(score).any(axis=0)


def classify(
    clf: Classifier, keypoint: np.ndarray, score: np.ndarray, img_shape: tuple[int, int],
    *, window: int | None = None, stride: int | None = None,
) -> list[Window]:
    """Whole-scene probabilities per window (one window covering everything unless ``window`` is set); a
    window with a skeleton in fewer than ``MIN_POSED`` of its frames is returned unlabelled."""
    seen = _scene_posed(score)
    out = []
    for a, b in windows(keypoint.shape[1], window, stride):
        posed = int(seen[a:b].sum())
        probs = clf.probs(keypoint[:, a:b], score[:, a:b], img_shape) if enough(posed, b - a, MIN_POSED) else None
        out.append(Window(a, b, probs, posed=posed))
    return out


def union_box(box: np.ndarray, posed: np.ndarray) -> tuple[float, float, float, float]:
    """The box around a track's boxes [T, 5] on its posed frames."""
    b = box[posed]
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


def classify_people(
    clf: Classifier, keypoint: np.ndarray, score: np.ndarray, box: np.ndarray, img_shape: tuple[int, int],
    *, window: int | None = None, stride: int | None = None, tracks: list[int] | None = None,
    min_presence: float = 0.5,
) -> list[Window]:
    """Probabilities per (track, window) for tracks [M, T, ...] (ids ``tracks``, default 0..M-1), in
    window order and, within a window, track order. A window with anyone's skeleton in fewer than
    ``MIN_POSED`` of its frames gives one unlabelled scene window (track None) instead."""
    scene = _scene_posed(score)
    ids = list(range(keypoint.shape[0])) if tracks is None else tracks
    posed = _posed(score)
    out = []
    for a, b in windows(keypoint.shape[1], window, stride):
        if not enough(n := int(scene[a:b].sum()), b - a, MIN_POSED):
            out.append(Window(a, b, None, posed=n))
            continue
        for m, track in enumerate(ids):
            seen = np.flatnonzero(posed[m, a:b])
            if not enough(len(seen), b - a, min_presence):
                continue
            lo, hi = a + seen[0], a + seen[-1] + 1
            probs = clf.probs(keypoint[m : m + 1, lo:hi], score[m : m + 1, lo:hi], img_shape)
            out.append(Window(a, b, probs, track, union_box(box[m, lo:hi], posed[m, lo:hi]), len(seen)))
    return out
