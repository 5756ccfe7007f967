"""Person tracking so that `person` index m means the same individual in every frame of a sample.

Detections are matched to the tracks seen recently by greedy box IoU; unmatched detections start new
tracks. Between detector runs a track is followed by cropping around its previous keypoints
(`box_from_keypoints`).

Which persons a sample keeps (`keep_persons`): the `max_persons` tracks with the largest *salience*, the
sum over the frames where the track has a pose of

    person score × sqrt(box area / frame area) × (1 − distance of the box centre from the frame centre
                                                   / (2 × half the frame diagonal))

so a person counts more the longer it is seen (most present), the larger it is and the nearer the centre
(the last factor runs from 1 at the centre to 0.5 in a corner): for action recognition the actors are
usually the people in view the whole clip, near the camera and in the middle, not passers-by. Persons are
ordered by salience (person 0 = the main actor); `max_persons=0` keeps every track (per-person use).
Frames where a kept track has no pose are zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.detector import box_iou
from stores.coco import NUM_KEYPOINTS
from stores.triplets import pose_arrays


def box_from_keypoints(kps: np.ndarray, min_score: float = 0.2, grow: float = 1.2) -> np.ndarray | None:
    """Box (x0, y0, x1, y1) around the confident keypoints [17, 3], grown about its centre; None if < 3."""
    pts = kps[kps[:, 2] >= min_score, :2]
    if len(pts) < 3:
        return None
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * grow
    return np.concatenate([centre - half, centre + half]).astype(np.float32)


@dataclass
class Track:
    """One individual: its poses by frame index and the running score used for ranking."""

    id: int
    last_frame: int = -1
    box: np.ndarray = field(default_factory=lambda: np.zeros(5, np.float32))
    kps: np.ndarray = field(default_factory=lambda: np.zeros((NUM_KEYPOINTS, 3), np.float32))
    poses: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    total_score: float = 0.0
    detected: int = -1  # the last frame where a detector box (not a followed crop) gave the pose

    def add(self, t: int, box: np.ndarray, kps: np.ndarray, detected: bool = True) -> None:
        """Record the pose [17, 3] and box [5] (x0, y0, x1, y1, person score) of frame t."""
        self.last_frame, self.box, self.kps = t, box, kps
        self.poses[t] = (kps, box)
        self.total_score += float(box[4])
        if detected:
            self.detected = t


def greedy_match(overlap: np.ndarray, threshold: float) -> list[int]:
    """For each row of an IoU matrix, its matched column or -1: pairs taken in order of falling IoU (ties:
    first in row-major order), each row and column at most once, none under ``threshold``."""
    match = [-1] * overlap.shape[0]
    taken: set[int] = set()
    for flat in np.argsort(-overlap, axis=None, kind="stable"):
        i, j = divmod(int(flat), overlap.shape[1])
        if overlap[i, j] < threshold:
            break
        if match[i] < 0 and j not in taken:
            match[i] = j
            taken.add(j)
    return match


class Tracker:
    """Greedy IoU tracker over the frames of one video."""

    def __init__(self, iou_threshold: float = 0.3, max_age: int = 15):
        self.iou_threshold = iou_threshold
        self.max_age = max_age
        self.tracks: list[Track] = []

    def recent(self, t: int, max_age: int | None = None) -> list[Track]:
        """Tracks seen within `max_age` frames before t, most recently seen first, then by score."""
        age = self.max_age if max_age is None else max_age
        live = [tr for tr in self.tracks if 0 < t - tr.last_frame <= age]
        return sorted(live, key=lambda tr: (-tr.last_frame, -tr.total_score, tr.id))

    def update(self, t: int, boxes: np.ndarray, kps: np.ndarray) -> list[int]:
        """Assign the detections of frame t (boxes [N, 5], kps [N, 17, 3]) to tracks; returns track ids."""
        live = self.recent(t)
        ids = [-1] * len(boxes)
        if live and len(boxes):
            matched = greedy_match(box_iou(boxes, np.stack([tr.box for tr in live])), self.iou_threshold)
            for i, j in enumerate(matched):
                if j >= 0:
                    live[j].add(t, boxes[i], kps[i])
                    ids[i] = live[j].id
        for i in range(len(boxes)):
            if ids[i] < 0:
                track = Track(id=len(self.tracks))
                track.add(t, boxes[i], kps[i])
                self.tracks.append(track)
                ids[i] = track.id
        return ids

    def result(
        self, n_frames: int, max_persons: int, frame_hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keypoints [M, T, 17, 2], scores [M, T, 17], boxes [M, T, 5] of the kept tracks (`keep_persons`)."""
        rows = ((m, t, k[:, :2], k[:, 2], b) for m, tr in enumerate(self.tracks) for t, (k, b) in tr.poses.items())
        return keep_persons(*pose_arrays(len(self.tracks), n_frames, rows), max_persons, frame_hw)


def salience(box: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """Per person, the summed score × relative size × centrality over frames (see the module docstring)."""
    h, w = frame_hw
    size = np.sqrt(np.clip(box[..., 2] - box[..., 0], 0, None) * np.clip(box[..., 3] - box[..., 1], 0, None) / (h * w))
    off = np.hypot((box[..., 0] + box[..., 2]) / 2 - w / 2, (box[..., 1] + box[..., 3]) / 2 - h / 2)
    centrality = 1 - np.clip(off / np.hypot(w, h), 0, 0.5)
    return (np.clip(box[..., 4], 0, None) * size * centrality).sum(axis=-1)


def keep_persons(
    kp: np.ndarray, score: np.ndarray, box: np.ndarray, max_persons: int, frame_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `max_persons` (0: all) persons with the largest `salience`, in that order (ties: first seen)."""
    order = np.argsort(-salience(box, frame_hw), kind="stable")
    keep = order[:max_persons] if max_persons else order
    return kp[keep], score[keep], box[keep]


def merge_chunks(
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    max_persons: int,
    frame_hw: tuple[int, int],
    iou_threshold: float = 0.3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join consecutive frame ranges of one video, each (kp [M, T, 17, 2], score, box [M, T, 5]).

    A person of a range continues the person of the previous range whose box on the last frame overlaps
    its box on the first frame (greedy IoU); the others become new persons. Persons are kept by
    `keep_persons`, as in `Tracker.result`.
    """
    offsets = np.cumsum([0] + [c[0].shape[1] for c in chunks])
    people: list[list[tuple[int, int]]] = []  # person → [(chunk, index in chunk)]
    for k, (_, _, box) in enumerate(chunks):
        ids = [-1] * len(box)
        if k and len(box) and people:
            prev = chunks[k - 1][2]
            last = [prev[p[-1][1], -1] if p[-1][0] == k - 1 and prev.shape[1] else np.zeros(5) for p in people]
            overlap = box_iou(box[:, 0], np.stack(last)) if box.shape[1] else np.zeros((len(box), len(people)))
            overlap[box[:, 0, 4] <= 0] = 0
            ids = greedy_match(overlap, iou_threshold)
        for i in range(len(box)):
            if ids[i] < 0:
                people.append([])
                ids[i] = len(people) - 1
            people[ids[i]].append((k, i))
    rows = ((g, slice(offsets[k], offsets[k + 1]), *(part[i] for part in chunks[k]))
            for g, parts in enumerate(people) for k, i in parts)
    return keep_persons(*pose_arrays(len(people), offsets[-1], rows), max_persons, frame_hw)
