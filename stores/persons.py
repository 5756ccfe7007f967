"""Which persons of a skeleton sequence matter most: the one ranking that extract (which tracks a sample keeps)
and render (which persons a volume draws, `RenderParams.max_persons`) share.

Two rankings (`RANKINGS`):

- ``"salience"`` (skel's): per person, the sum over the frames where it has a pose of

      person score × sqrt(box area / frame area) × (1 − distance of the box centre from the frame centre
                                                     / (2 × half the frame diagonal))

  so a person counts more the longer it is seen (most present), the larger it is and the nearer the centre
  (the last factor runs from 1 at the centre to 0.5 in a corner): for action recognition the actors are
  usually the people in view the whole clip, near the camera and in the middle, not passers-by. It needs
  boxes (x0, y0, x1, y1, person score); without them (imported pickles) each frame's box is taken around
  the person's confident keypoints, with the mean keypoint score as the person score (`person_boxes`).
- ``"score"`` (pyskl's NTU ranking): the largest sum of keypoint scores over the video.

Ties keep the earlier person first, so person 0 stays the main actor.
"""

from __future__ import annotations

import numpy as np

RANKINGS = ("salience", "score")


def keypoint_boxes(
    xy: np.ndarray, score: np.ndarray, min_score: float = 0.2, grow: float = 1.2
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [..., 4] (x0, y0, x1, y1, float32) around the keypoints [..., 17, 2] scored ≥ `min_score`, grown
    by `grow` about their centre, and whether each had the 3 such keypoints it needs [...] (else zeros)."""
    ok = score >= min_score
    enough = ok.sum(axis=-1) >= 3
    mask = ok[..., None]
    lo = np.where(mask, xy, np.inf).min(axis=-2).astype(np.float32)
    hi = np.where(mask, xy, -np.inf).max(axis=-2).astype(np.float32)
    with np.errstate(invalid="ignore"):
        centre, half = (lo + hi) / 2, (hi - lo) / 2 * grow
    box = np.concatenate([centre - half, centre + half], axis=-1).astype(np.float32)
    box[~enough] = 0
    return box, enough


def person_boxes(keypoint: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Boxes [M, T, 5] of persons without detections: `keypoint_boxes` with the mean keypoint score as the
    person score; zeros where a frame has fewer than 3 confident keypoints."""
    box, ok = keypoint_boxes(keypoint, score)
    return np.concatenate([box, np.where(ok, score.mean(axis=-1), 0)[..., None]], axis=-1).astype(np.float32)


def salience(box: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """Per person, the summed score × relative size × centrality of its boxes [M, T, 5] (module docstring)."""
    h, w = frame_hw
    size = np.sqrt(np.clip(box[..., 2] - box[..., 0], 0, None) * np.clip(box[..., 3] - box[..., 1], 0, None) / (h * w))
    off = np.hypot((box[..., 0] + box[..., 2]) / 2 - w / 2, (box[..., 1] + box[..., 3]) / 2 - h / 2)
    centrality = 1 - np.clip(off / np.hypot(w, h), 0, 0.5)
    return (np.clip(box[..., 4], 0, None) * size * centrality).sum(axis=-1)


def rank_persons(
    keypoint: np.ndarray, score: np.ndarray, box: np.ndarray | None, frame_hw: tuple[int, int], by: str = "salience"
) -> np.ndarray:
    """Person indices, most important first by the ranking `by` (module docstring); ties: first person first."""
    if by == "score":
        value = score.sum(axis=(1, 2))
    elif by == "salience":
        value = salience(person_boxes(keypoint, score) if box is None else box, frame_hw)
    else:
        raise ValueError(f"rank must be one of {RANKINGS}, got {by!r}")
    return np.argsort(-value, kind="stable")


def keep_persons(
    keypoint: np.ndarray,
    score: np.ndarray,
    box: np.ndarray | None,
    max_persons: int,
    frame_hw: tuple[int, int],
    by: str = "salience",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Keypoints [M, T, 17, 2], scores [M, T, 17] and boxes [M, T, 5] (None stays None) of the `max_persons`
    (0: all) highest-ranked persons, in rank order."""
    order = rank_persons(keypoint, score, box, frame_hw, by)
    keep = order[:max_persons] if max_persons else order
    return keypoint[keep], score[keep], None if box is None else box[keep]
