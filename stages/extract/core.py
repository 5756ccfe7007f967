"""Two-stage pose extraction of one video: person detector → top-down pose on crops → tracks.

Every detected person is posed (`detect_people`); a detection whose person score (the mean of its best
`confirm_joints` keypoint scores inside the frame) is under `lost_score` is dropped (the pose model confirms
that the box holds a person: this removes most of the detector's false boxes, bench/README.md ## extract).
A person cut by the frame edge is posed on a crop that reaches past the edge, its joints outside the frame
flagged (score 0); the poses of one frame are then made one per person (pose NMS) and each joint is left to
one person (`stages.extract.poses`), so touching people do not share joints. All people are tracked; which
ones a sample keeps is decided at the end over the whole video (`max_persons`, `stages.extract.track.finish`).

The detector runs on frame 0, then every `detect_every` frames, and whenever a followed person is lost
(person score under `lost_score`, or a pose that is not the person's last pose again: OKS under `pose_nms`,
the crop slid onto someone it touches) or two followed crops lock onto the same person. On the frames
between, each person is cropped around its previous keypoints, as the MoveNet authors suggest, which
saves the detector's cost on most frames. A person of the previous frame whom the detector misses
(motion blur, occlusion) is followed the same way, for at most `max_age` frames without a detection.
`detect_every=1` runs the detector on every frame; bench/README.md (## extract) measures the speed.

Box column: on detector frames the detector's box and score; on followed frames the box cropped around
the previous keypoints, with the person score. A box may reach past the frame (the padded detector pass,
`models.detector.Padded`, gives a cut person's true extent).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.detector import PersonDetector, box_iou
from models.pose import PoseEstimator
from stages.extract.params import ExtractParams
from stages.extract.poses import drop_outside, extend_cut, fitting_boxes, hide, oks, own_joints, pose_nms, visible_score
from stages.extract.track import Track, Tracker, box_from_keypoints
from stages.extract.video import FrameSelection, VideoReader
from stores.coco import NUM_KEYPOINTS


@dataclass
class Timing:
    """Seconds spent decoding, detecting and posing."""

    decode: float = 0.0
    detect: float = 0.0
    pose: float = 0.0


def detect_people(
    rgb: np.ndarray, detector: PersonDetector, pose: PoseEstimator, params: ExtractParams, tm: Timing | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [N, 5] and poses [N, 17, 3] of the people the detector finds and their poses confirm (`confirm`)."""
    return confirm(rgb, detect(rgb, detector, tm), pose, params, tm)


def detect(rgb: np.ndarray, detector: PersonDetector, tm: Timing | None = None) -> np.ndarray:
    """The detector's boxes [N, 5] in `rgb`, its time added to `tm`."""
    t0 = time.perf_counter()
    boxes = detector(rgb)
    if tm is not None:
        tm.detect += time.perf_counter() - t0
    return boxes


def posed(rgb: np.ndarray, boxes: np.ndarray, pose: PoseEstimator, params: ExtractParams, tm: Timing | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """Poses [N, 17, 3] of `boxes` [N, ≥4] in `rgb`, each on a crop extended past the frame edge where the box
    is cut by it (`extend_cut`), keypoints outside the frame flagged (score 0); and their person scores [N]:
    the mean of the best `confirm_joints` keypoint scores inside the frame (`visible_score`)."""
    if not len(boxes):
        return np.zeros((0, NUM_KEYPOINTS, 3), np.float32), np.zeros(0, np.float32)
    hw = rgb.shape[:2]
    t0 = time.perf_counter()
    kps = pose(rgb, extend_cut(boxes, hw, params.cut_extend))
    if tm is not None:
        tm.pose += time.perf_counter() - t0
    return drop_outside(kps, hw), visible_score(kps, hw, params.confirm_joints).astype(np.float32)


def confirm(
    rgb: np.ndarray, boxes: np.ndarray, pose: PoseEstimator, params: ExtractParams, tm: Timing | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The detector's `boxes` [N, 5] posed in `rgb` (`posed`): without those whose person score is under
    `lost_score`, then one pose per person (`pose_nms`) with the box that fits it (`fitting_boxes`); a box
    elsewhere whose crop posed someone already found is posed again with them hidden (`hide`); each joint is
    owned by one person (`own_joints`)."""
    kps, score = posed(rgb, boxes, pose, params, tm)
    ok = np.flatnonzero(score >= params.lost_score)
    sim = oks(kps[ok], kps[ok])
    kept = pose_nms(sim, score[ok], params.pose_nms)
    found, kps = boxes[ok[fitting_boxes(boxes[ok], kps[ok], sim, kept, params.pose_nms)]], kps[ok[kept]]
    left = [i for i in ok if box_iou(boxes[i : i + 1], found).max() < 0.5]
    if left:  # their crops posed someone already found: pose them again with those people hidden
        again, score = posed(hide(rgb, kps), boxes[left], pose, params, tm)
        new = (score >= params.lost_score) & (oks(again, kps).max(axis=1) < params.pose_nms)
        found, kps = np.concatenate([found, boxes[left][new]]), np.concatenate([kps, again[new]])
    return found, own_joints(kps)


def _collapsed(kps: np.ndarray, max_iou: float = 0.5) -> bool:
    """Whether two followed crops locked onto the same person (their poses' boxes overlap a lot)."""
    boxes = [box_from_keypoints(k) for k in kps]
    if len(boxes) < 2 or any(b is None for b in boxes):
        return len(boxes) >= 2
    overlap = box_iou(np.stack(boxes), np.stack(boxes))
    return bool((np.triu(overlap, k=1) > max_iou).any())


def _pose_around(rgb: np.ndarray, tracks: list[Track], pose: PoseEstimator, p: ExtractParams, tm: Timing
                 ) -> tuple[list, np.ndarray, np.ndarray]:
    """Poses [N, 17, 3] of `tracks` cropped around their last keypoints (`posed`; joints owned by one person),
    the boxes cropped (None: too few confident keypoints to crop around) and the person scores [N]."""
    boxes = [box_from_keypoints(tr.kps) for tr in tracks]
    found = [b for b in boxes if b is not None]
    kps, score = posed(rgb, np.stack(found) if found else np.zeros((0, 4), np.float32), pose, p, tm)
    out, person = np.zeros((len(tracks), NUM_KEYPOINTS, 3), np.float32), np.zeros(len(tracks), np.float32)
    where = [i for i, b in enumerate(boxes) if b is not None]
    out[where], person[where] = own_joints(kps), score
    return boxes, out, person


def _follow(rgb: np.ndarray, tracker: Tracker, t: int, pose: PoseEstimator, p: ExtractParams, tm: Timing
            ) -> tuple[bool, list[Track], list, np.ndarray, np.ndarray, np.ndarray]:
    """Pose the people seen in frame t-1 around their last keypoints and, when every one stayed (a crop, a
    confident pose, no two crops on one person), add them to frame t. Returns (stayed, tracks, crops, poses,
    person scores, lost (`_lost`)): when one was lost nothing is added, and a caller may keep the others from
    these poses."""
    tracks = tracker.recent(t, max_age=1)
    if not tracks:
        return False, [], [], np.zeros((0, NUM_KEYPOINTS, 3), np.float32), np.zeros(0, np.float32), np.zeros(0, bool)
    boxes, kps, person = _pose_around(rgb, tracks, pose, p, tm)
    lost = _lost(tracks, boxes, kps, person, p)
    if lost.any() or _collapsed(kps):
        return False, tracks, boxes, kps, person, lost
    for tr, b, k, s in zip(tracks, boxes, kps, person, strict=True):
        tr.add(t, np.append(b, np.float32(s)), k, detected=False)
    return True, tracks, boxes, kps, person, lost


def _lost(tracks: list[Track], boxes: list, kps: np.ndarray, person: np.ndarray, p: ExtractParams) -> np.ndarray:
    """Per followed track [N]: whether its person was lost: no crop, a person score under `lost_score`, or a pose
    that is not the track's last pose again (OKS < `pose_nms`, the one-person rule of pose NMS): in contact the
    crop around one person also holds the other, and the pose model may pose the other one instead."""
    same = np.diagonal(oks(kps, np.stack([tr.kps for tr in tracks]))) if tracks else np.zeros(0)
    return np.array([b is None for b in boxes], bool) | (person < p.lost_score) | (same < p.pose_nms)


def _keep(tracker: Tracker, t: int, p: ExtractParams, tracks: list[Track], boxes: list, kps: np.ndarray,
          person: np.ndarray, lost: np.ndarray) -> None:
    """Add the followed poses of ``tracks`` to frame t when their person was not ``lost`` (`_lost`), they do not
    overlap a person already placed, and a detector saw them in the last `max_age` frames."""
    placed = [tr.box for tr in tracker.tracks if tr.last_frame == t]
    for tr, b, k, score, gone in zip(tracks, boxes, kps, person.tolist(), lost, strict=True):
        if gone or t - tr.detected > p.max_age or (placed and box_iou(b[None], np.stack(placed)).max() >= 0.5):
            continue
        box = np.append(b, np.float32(score))
        tr.add(t, box, k, detected=False)
        placed.append(box)


def _keep_missed(rgb: np.ndarray, tracker: Tracker, t: int, pose: PoseEstimator, p: ExtractParams, tm: Timing) -> None:
    """After a detector run on frame t: follow the people of frame t-1 that it missed (motion blur, occlusion)."""
    missed = [tr for tr in tracker.recent(t, max_age=1) if t - tr.detected <= p.max_age]
    if missed:
        posed = _pose_around(rgb, missed, pose, p, tm)
        _keep(tracker, t, p, missed, *posed, _lost(missed, *posed, p))


def step(rgb: np.ndarray, t: int, tracker: Tracker, detector: PersonDetector, pose: PoseEstimator,
         params: ExtractParams, tm: Timing) -> None:
    """Frame t of a video into ``tracker``: follow the people of frame t-1 around their last poses, or (every
    ``detect_every`` frames, or when someone was lost) detect and pose everyone, then keep following the
    people the detector missed. Used frame by frame by ``extract_video`` and by live prediction."""
    if t % params.detect_every == 0 or not _follow(rgb, tracker, t, pose, params, tm)[0]:
        place(rgb, t, tracker, detect(rgb, detector, tm), pose, params, tm)


def place(rgb: np.ndarray, t: int, tracker: Tracker, boxes: np.ndarray, pose: PoseEstimator, params: ExtractParams,
          tm: Timing) -> None:
    """A detector's `boxes` into frame t of ``tracker``: confirmed by their poses in `rgb`, matched to the
    tracks, then the people the detector missed are followed."""
    tracker.update(t, *confirm(rgb, boxes, pose, params, tm))
    _keep_missed(rgb, tracker, t, pose, params, tm)


def follow(rgb: np.ndarray, t: int, tracker: Tracker, pose: PoseEstimator, params: ExtractParams,
           tm: Timing) -> bool:
    """Frame t of ``tracker`` without a detector: the people of frame t-1 posed around their last keypoints;
    when one is lost, those still confidently posed are kept (for at most ``max_age`` frames without a
    detection), from the same poses. False when anyone was lost or nobody was there: a detector run is due."""
    stayed, *followed = _follow(rgb, tracker, t, pose, params, tm)
    if not stayed:
        _keep(tracker, t, params, *followed)
    return stayed


def extract_video(
    path: str | os.PathLike,
    *,
    detector: PersonDetector,
    pose: PoseEstimator,
    params: ExtractParams,
    frames: tuple[int, int | None] = (0, None),
    on_frame: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Keypoints [M, T, 17, 2], scores [M, T, 17], boxes [M, T, 5] (float32) and meta of one video.

    `frames` = (start, stop) limits decoding to that range of source frames (for long videos). `on_frame`
    (progress) gets the source frames decoded and the count the file announces after each selected frame.
    M = `params.max_persons` (fewer if fewer were seen; all tracks when 0), most salient first, after joining
    the fragments of tracks lost for at most `params.merge_gap` frames (`stages.extract.track.finish`).
    meta: img_h, img_w, n_frames (= T, selected frames), fps (of the selected frames, None if unknown), timed
    (the fps selection went by the frames' times: `stages.extract.video`), n_decoded (source frames decoded),
    timing {decode, detect, pose} in seconds and fragments (statistics).
    Raises `VideoError` for files that are not usable videos.
    """
    selection = FrameSelection(params.stride, params.fps)
    reader = VideoReader(str(path), selection, start=frames[0], stop=frames[1])
    tracker = Tracker(params.iou_threshold, params.max_age)
    tm = Timing()
    decoded = iter(reader)
    t, shape = 0, (reader.height, reader.width)
    while params.max_frames is None or t < params.max_frames:
        t0 = time.perf_counter()
        item = next(decoded, None)
        tm.decode += time.perf_counter() - t0
        if item is None:
            break
        rgb = item[1]
        shape = rgb.shape[:2]
        step(rgb, t, tracker, detector, pose, params, tm)
        t += 1
        if on_frame is not None:
            on_frame(reader.n_decoded, reader.announced)
    decoded.close()
    kp, score, box, fragments = tracker.result(t, params.max_persons, shape, params.merge_gap)
    meta = {
        "img_h": int(shape[0]), "img_w": int(shape[1]), "n_frames": t, "fps": reader.fps, "timed": reader.timed,
        "n_decoded": reader.n_decoded, "timing": {"decode": tm.decode, "detect": tm.detect, "pose": tm.pose},
        "fragments": fragments,
    }  # fmt: skip
    return kp, score, box, meta
