"""Person tracking so that `person` index m means the same individual in every frame of a sample.

Detections are matched to the tracks seen recently by greedy box IoU + pose OKS (`affinity`: boxes of
touching people overlap, their joints do not); unmatched detections start new tracks. Between detector
runs a track is followed by cropping around its previous keypoints (`box_from_keypoints`).

Tracks that the tracker loses and starts again after a short occlusion are joined afterwards
(`join_fragments`): a track that starts after another ended, at most `merge_gap` frames unseen in between,
with its first box near the other's last box (within half a box height plus `MOTION` heights per frame of
gap, or overlapping it), continues that track; closest pairs first, each track continuing at most one other.

Which persons a sample keeps (`finish`): the `max_persons` joined tracks ranked first by salience
(`stores.persons`), in that order (person 0 = the main actor); `max_persons=0` keeps every track. Frames
where a kept track has no pose are zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.detector import box_iou
from stages.extract.poses import oks
from stores.coco import NUM_KEYPOINTS
from stores.persons import keep_persons, keypoint_boxes
from stores.triplets import pose_arrays

MOTION = 0.05  # box heights a person unseen may move per frame (a brisk walk at 25-30 fps is about 0.03)
NEAR_IOU = 0.1  # boxes overlapping this much are near whatever their centres
SHORT_TRACK = 10  # frames: a track seen less is counted as short in the fragment statistics

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]  # keypoints [M, T, 17, 2], scores [M, T, 17], boxes [M, T, 5]
Kept = tuple[np.ndarray, np.ndarray, np.ndarray, dict]  # the kept persons' arrays and the fragment statistics


def box_from_keypoints(kps: np.ndarray, min_score: float = 0.2, grow: float = 1.2) -> np.ndarray | None:
    """Box (x0, y0, x1, y1) around the confident keypoints [17, 3], grown about its centre; None if < 3."""
    box, ok = keypoint_boxes(kps[:, :2], kps[:, 2], min_score, grow)
    return box if ok else None


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


def affinity(boxes: np.ndarray, kps: np.ndarray, last_boxes: np.ndarray, last_kps: np.ndarray, threshold: float
             ) -> np.ndarray:
    """Detections × tracks: box IoU + pose OKS (`stages.extract.poses.oks`) where the IoU reaches `threshold`,
    -1 elsewhere. Two people in contact have overlapping boxes; the pose term prefers the track whose last pose
    the detection continues (bench/README.md ## extract: no measurable change in ID switches on derived clips)."""
    iou = box_iou(boxes, last_boxes)
    return np.where(iou >= threshold, iou + oks(kps, last_kps), -1.0)


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
            last = np.stack([tr.box for tr in live]), np.stack([tr.kps for tr in live])
            matched = greedy_match(affinity(boxes, kps, *last, self.iou_threshold), self.iou_threshold)
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

    def result(self, n_frames: int, max_persons: int, frame_hw: tuple[int, int], merge_gap: int = 0) -> Kept:
        """Keypoints [M, T, 17, 2], scores [M, T, 17], boxes [M, T, 5] of the kept tracks and the fragment
        statistics (`finish`)."""
        rows = ((m, t, k[:, :2], k[:, 2], b) for m, tr in enumerate(self.tracks) for t, (k, b) in tr.poses.items())
        return finish(pose_arrays(len(self.tracks), n_frames, rows), max_persons, frame_hw, merge_gap)


def join_fragments(box: np.ndarray, max_gap: int) -> list[list[int]]:
    """Groups of track indices (boxes [M, T, 5]; a person score > 0 marks a pose), each a chain of fragments of
    one person in time order (module docstring); groups ordered by their first fragment's index."""
    present = box[..., 4] > 0
    seen = present.any(axis=1)
    first = np.argmax(present, axis=1)
    last = box.shape[1] - 1 - np.argmax(present[:, ::-1], axis=1)
    idx = np.arange(len(box))
    end, start = box[idx, last, :4], box[idx, first, :4]  # [M, 4]: each track's last and first box
    gap = first[None, :] - last[:, None]  # [A, B]: frames from A's last pose to B's first
    height = np.maximum((end[:, 3] - end[:, 1])[:, None], (start[:, 3] - start[:, 1])[None, :])
    centre_end, centre_start = (end[:, :2] + end[:, 2:]) / 2, (start[:, :2] + start[:, 2:]) / 2
    distance = np.linalg.norm(centre_end[:, None] - centre_start[None], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = distance / (np.maximum(height, 1e-6) * (0.5 + MOTION * gap))
    near = (cost <= 1) | (box_iou(end, start) > NEAR_IOU)
    ok = near & (gap >= 1) & (gap - 1 <= max_gap) & seen[:, None] & seen[None, :]  # gap - 1 frames unseen
    after: dict[int, int] = {}
    before: set[int] = set()
    for a, b in sorted(zip(*np.nonzero(ok), strict=True), key=lambda ab: (cost[ab], gap[ab], ab)):
        if a not in after and b not in before:
            after[int(a)] = int(b)
            before.add(int(b))
    groups = []
    for head in (m for m in range(len(box)) if m not in before):
        chain = [head]
        while chain[-1] in after:
            chain.append(after[chain[-1]])
        groups.append(chain)
    return groups


def finish(arrays: Arrays, max_persons: int, frame_hw: tuple[int, int], merge_gap: int) -> Kept:
    """All the tracks of one video → the persons a sample keeps: fragments joined (`join_fragments`, none when
    `merge_gap` is 0), then the `max_persons` (0: all) most salient, in that order; and the fragment statistics
    {tracks_before_merge, tracks, short_tracks (seen fewer than `SHORT_TRACK` frames)}."""
    kp, score, box = arrays
    groups = join_fragments(box, merge_gap) if merge_gap else [[m] for m in range(len(box))]
    joined = [np.zeros((len(groups), *a.shape[1:]), a.dtype) for a in arrays]
    for g, chain in enumerate(groups):
        for m in chain:  # the fragments of a chain never overlap in time: each fills its own frames
            frames = np.flatnonzero(box[m, :, 4] > 0)
            span = slice(frames[0], frames[-1] + 1) if len(chain) > 1 else slice(None)
            for out, a in zip(joined, arrays, strict=True):
                out[g, span] = a[m, span]
    seen = (joined[2][..., 4] > 0).sum(axis=1)
    stats = {"tracks_before_merge": len(box), "tracks": len(groups), "short_tracks": int((seen < SHORT_TRACK).sum())}
    return *keep_persons(*joined, max_persons, frame_hw), stats


def merge_chunks(
    chunks: list[Arrays], max_persons: int, frame_hw: tuple[int, int], iou_threshold: float = 0.3, merge_gap: int = 0
) -> Kept:
    """Join consecutive frame ranges of one video, each (kp [M, T, 17, 2], score, box [M, T, 5]).

    A person of a range continues the person of the previous range whose box on the last frame overlaps
    its box on the first frame (greedy IoU); the others become new persons. Then, as in `Tracker.result`,
    fragments are joined and persons kept by `finish`.
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
    return finish(pose_arrays(len(people), offsets[-1], rows), max_persons, frame_hw, merge_gap)
