"""Two-stage pose extraction of one video: person detector → top-down pose on crops → tracks.

Every detected person is posed (`detect_people`); a detection whose pose has a mean keypoint score under
`lost_score` is dropped (the pose model confirms that the box holds a person: this removes most of the
detector's false boxes, bench/README.md ## extract). All people are tracked; which ones a sample keeps is
decided at the end over the whole video (`max_persons`, `stages.extract.track.keep_persons`).

The detector runs on frame 0, then every `detect_every` frames, and whenever a followed person is lost
(mean keypoint score under `lost_score`) or two followed crops lock onto the same person. On the frames
between, each person is cropped around its previous keypoints, as the MoveNet authors suggest, which
saves the detector's cost on most frames. A person of the previous frame whom the detector misses
(motion blur, occlusion) is followed the same way, for at most `max_age` frames without a detection.
`detect_every=1` runs the detector on every frame; bench/README.md (## extract) measures the speed.

Box column: on detector frames the detector's box and score; on followed frames the box cropped around
the previous keypoints, with the mean keypoint score as the person score.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from models.detector import PersonDetector, box_iou
from models.pose import PoseEstimator
from stages.extract.params import ExtractParams
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
    rgb: np.ndarray, detector: PersonDetector, pose: PoseEstimator, lost_score: float, tm: Timing | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [N, 5] and poses [N, 17, 3] of the detections whose mean keypoint score is ≥ `lost_score`."""
    return confirm(rgb, detect(rgb, detector, tm), pose, lost_score, tm)


def detect(rgb: np.ndarray, detector: PersonDetector, tm: Timing | None = None) -> np.ndarray:
    """The detector's boxes [N, 5] in `rgb`, its time added to `tm`."""
    t0 = time.perf_counter()
    boxes = detector(rgb)
    if tm is not None:
        tm.detect += time.perf_counter() - t0
    return boxes


def confirm(
    rgb: np.ndarray, boxes: np.ndarray, pose: PoseEstimator, lost_score: float, tm: Timing | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The detector's `boxes` [N, 5] posed in `rgb`, without those whose mean keypoint score is < `lost_score`."""
    t0 = time.perf_counter()
    kps = pose(rgb, boxes) if len(boxes) else np.zeros((0, 17, 3), np.float32)
    if tm is not None:
        tm.pose += time.perf_counter() - t0
    ok = kps[:, :, 2].mean(axis=1) >= lost_score
    return boxes[ok], kps[ok]


def _collapsed(kps: np.ndarray, max_iou: float = 0.5) -> bool:
    """Whether two followed crops locked onto the same person (their poses' boxes overlap a lot)."""
    boxes = [box_from_keypoints(k) for k in kps]
    if len(boxes) < 2 or any(b is None for b in boxes):
        return len(boxes) >= 2
    overlap = box_iou(np.stack(boxes), np.stack(boxes))
    return bool((np.triu(overlap, k=1) > max_iou).any())


def _pose_around(rgb: np.ndarray, tracks: list[Track], pose: PoseEstimator, tm: Timing) -> tuple[list, np.ndarray]:
    """Poses [N, 17, 3] of `tracks` cropped around their last keypoints, and the boxes cropped (None: too few
    confident keypoints to crop around)."""
    boxes = [box_from_keypoints(tr.kps) for tr in tracks]
    t0 = time.perf_counter()
    kps = pose(rgb, np.stack([b for b in boxes if b is not None])) if any(b is not None for b in boxes) else None
    tm.pose += time.perf_counter() - t0
    out, it = np.zeros((len(tracks), 17, 3), np.float32), iter(kps if kps is not None else ())
    for i, b in enumerate(boxes):
        if b is not None:
            out[i] = next(it)
    return boxes, out


def _follow(rgb: np.ndarray, tracker: Tracker, t: int, pose: PoseEstimator, p: ExtractParams, tm: Timing
            ) -> tuple[bool, list[Track], list, np.ndarray]:
    """Pose the people seen in frame t-1 around their last keypoints and, when every one stayed (a crop, a
    confident pose, no two crops on one person), add them to frame t. Returns (stayed, tracks, crops, poses):
    when one was lost nothing is added, and a caller may keep the others from these poses."""
    tracks = tracker.recent(t, max_age=1)
    if not tracks:
        return False, [], [], np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
    boxes, kps = _pose_around(rgb, tracks, pose, tm)
    person = kps[:, :, 2].mean(axis=1)
    if any(b is None for b in boxes) or (person < p.lost_score).any() or _collapsed(kps):
        return False, tracks, boxes, kps
    for tr, b, k, s in zip(tracks, boxes, kps, person, strict=True):
        tr.add(t, np.append(b, np.float32(s)), k, detected=False)
    return True, tracks, boxes, kps


def _keep(tracker: Tracker, t: int, p: ExtractParams, tracks: list[Track], boxes: list, kps: np.ndarray) -> None:
    """Add the followed poses of ``tracks`` to frame t when they stay confident, do not overlap a person already
    placed, and a detector saw them in the last `max_age` frames."""
    placed = [tr.box for tr in tracker.tracks if tr.last_frame == t]
    for tr, b, k in zip(tracks, boxes, kps, strict=True):
        score = float(k[:, 2].mean())
        if (t - tr.detected > p.max_age or b is None or score < p.lost_score
                or (placed and box_iou(b[None], np.stack(placed)).max() >= 0.5)):
            continue
        box = np.append(b, np.float32(score))
        tr.add(t, box, k, detected=False)
        placed.append(box)


def _keep_missed(rgb: np.ndarray, tracker: Tracker, t: int, pose: PoseEstimator, p: ExtractParams, tm: Timing) -> None:
    """After a detector run on frame t: follow the people of frame t-1 that it missed (motion blur, occlusion)."""
    missed = [tr for tr in tracker.recent(t, max_age=1) if t - tr.detected <= p.max_age]
    if missed:
        _keep(tracker, t, p, missed, *_pose_around(rgb, missed, pose, tm))


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
    tracker.update(t, *confirm(rgb, boxes, pose, params.lost_score, tm))
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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Keypoints [M, T, 17, 2], scores [M, T, 17], boxes [M, T, 5] (float32) and meta of one video.

    `frames` = (start, stop) limits decoding to that range of source frames (for long videos).
    M = `params.max_persons` (fewer if fewer were seen; all tracks when 0), most salient first.
    meta: img_h, img_w, n_frames (= T, selected frames), fps (of the selected frames, None if unknown),
    n_decoded (source frames decoded) and timing {decode, detect, pose} in seconds.
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
    decoded.close()
    kp, score, box = tracker.result(t, params.max_persons, shape)
    meta = {
        "img_h": int(shape[0]), "img_w": int(shape[1]), "n_frames": t, "fps": reader.fps,
        "n_decoded": reader.n_decoded, "timing": {"decode": tm.decode, "detect": tm.detect, "pose": tm.pose},
    }  # fmt: skip
    return kp, score, box, meta
