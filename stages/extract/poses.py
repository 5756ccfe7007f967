"""Rules on the poses of one frame: which keypoints count, and that no two poses share one person's joints.

- `extend_cut`, `in_frame`, `drop_outside`, `visible_score`: a person cut by the frame edge is posed on a
  crop that reaches past that edge (the out-of-frame part black), so the model places the joints it cannot
  see outside the frame instead of squeezing a whole skeleton onto the visible part; those joints are
  flagged (score 0) and a pose is judged on its best joints inside the frame (`confirm_joints` of them).
- `oks`: object keypoint similarity (COCO's formula and sigmas) between two poses: 1 for the same joints
  in the same places, near 0 for two different people, even touching ones whose boxes overlap.
- `pose_nms`, `fitting_boxes`: two poses of one frame with OKS ≥ a threshold are one person seen twice (two
  detector boxes on one body, or a crop holding two people that posed the other one); the higher-scoring
  pose stays, with the box of the group that fits its skeleton best. A box left over that way (its crop
  posed someone else, and it lies elsewhere) is posed again with the people found painted over (`hide`).
- `own_joints`: a joint of two touching people's poses that lies on the same joint of the other one (same
  type, within COCO's tolerance) is given to the pose that is surer of it, and zeroed in the other, so a
  skeleton does not take a forearm from its neighbour. (A joint-in-own-box rule was tried too: it cut the
  arms of people whose detector box is tight and lost people on the derived tuning clips, so it is not used.)
"""

from __future__ import annotations

import cv2
import numpy as np

from stores.coco import LIMBS, OKS_SIGMAS

CONFIDENT = 0.2  # a joint score that counts as seen (as `track.box_from_keypoints`)
TORSO = (5, 6, 11, 12)  # shoulders and hips
_K2 = (2 * np.asarray(OKS_SIGMAS)) ** 2  # COCO's kappa² per joint type


def in_frame(kps: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Whether each keypoint [..., 17, ≥2] lies inside a frame of size `hw` (h, w)."""
    x, y = kps[..., 0], kps[..., 1]
    return (x >= 0) & (x < hw[1]) & (y >= 0) & (y < hw[0])


def drop_outside(kps: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Keypoints [..., 17, 3] with the score of those outside the frame set to 0 (their place is kept)."""
    out = kps.copy()
    out[..., 2] *= in_frame(kps, hw)
    return out


def visible_score(kps: np.ndarray, hw: tuple[int, int], joints: int) -> np.ndarray:
    """Per pose [..., 17, 3]: the mean of its `joints` best keypoint scores inside the frame (those outside
    count as 0). A body cut by the frame, or half hidden, is judged on the joints it shows; 17 = all joints."""
    score = np.sort(kps[..., 2] * in_frame(kps, hw), axis=-1)
    return score[..., -joints:].mean(axis=-1)


def _area(kps: np.ndarray) -> np.ndarray:
    """Per pose [N, 17, 3]: the area of the box around its confident joints (≥ 1)."""
    ok = kps[..., 2] >= CONFIDENT
    big, small = np.where(ok[..., None], kps[..., :2], np.inf), np.where(ok[..., None], kps[..., :2], -np.inf)
    wh = np.clip(small.max(axis=1) - big.min(axis=1), 0, None)
    return np.maximum(np.nan_to_num(wh[:, 0] * wh[:, 1], nan=0.0, posinf=0.0), 1.0)


def joint_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pair of poses a [N, 17, 3] and b [M, 17, 3] and joint: COCO's exp(-d² / (2 s² κ²)) → [N, M, 17];
    s² = the mean area of the two poses' joint boxes; 0 where either joint is not confident."""
    d2 = ((a[:, None, :, :2] - b[None, :, :, :2]) ** 2).sum(axis=-1)
    s2 = (_area(a)[:, None] + _area(b)[None, :]) / 2
    sim = np.exp(-d2 / (2 * s2[..., None] * _K2))
    return sim * ((a[:, None, :, 2] >= CONFIDENT) & (b[None, :, :, 2] >= CONFIDENT))


def oks(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Object keypoint similarity [N, M] of poses a [N, 17, 3] and b [M, 17, 3] over the joints confident in
    both (0 when they share none)."""
    both = (a[:, None, :, 2] >= CONFIDENT) & (b[None, :, :, 2] >= CONFIDENT)
    return joint_similarity(a, b).sum(axis=-1) / np.maximum(both.sum(axis=-1), 1)


def pose_nms(sim: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the poses to keep, given their OKS with each other `sim` [N, N] (`oks`), best `scores` first:
    a pose with OKS ≥ `threshold` to a kept one is the same person again and is dropped."""
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for i in order:
        if not kept or sim[i, kept].max() < threshold:
            kept.append(int(i))
    return np.array(sorted(kept), np.int64)


def fitting_boxes(boxes: np.ndarray, kps: np.ndarray, sim: np.ndarray, kept: np.ndarray, threshold: float
                  ) -> np.ndarray:
    """For each kept pose (`pose_nms` on the same OKS matrix `sim`), the index of the box, among the boxes whose
    poses are that same person (OKS ≥ `threshold`), whose centre is nearest the pose's torso (its confident
    shoulders and hips, else all its confident joints; limbs may reach onto a neighbour). A crop that holds two
    people may pose the other one: that skeleton then goes with its own person's box."""
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
    out = []
    for i in kept:
        group = np.flatnonzero(sim[i] >= threshold)
        ok = kps[i, :, 2] >= CONFIDENT
        torso = ok & np.isin(np.arange(len(ok)), TORSO)
        core = kps[i, torso if torso.any() else ok, :2]
        if len(group) < 2 or not len(core):
            out.append(int(i))
            continue
        out.append(int(group[np.hypot(*(centres[group] - core.mean(axis=0)).T).argmin()]))
    return np.array(out, np.int64)


def hide(rgb: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """A copy of the frame with the people of `kps` [N, 17, 3] painted over in the frame's mean colour (thick
    limbs through their confident joints), so that a crop holding one of them and someone else poses the other."""
    out = rgb.copy()
    colour = tuple(float(c) for c in rgb.reshape(-1, rgb.shape[-1]).mean(axis=0))
    for k in kps:
        ok = k[:, 2] >= CONFIDENT
        if ok.sum() < 2:
            continue
        thick = max(2, int(0.15 * np.ptp(k[ok, :2], axis=0).max()))
        for a, b in LIMBS:
            if ok[a] and ok[b]:
                cv2.line(out, tuple(int(v) for v in k[a, :2]), tuple(int(v) for v in k[b, :2]), colour, thick)
    return out


def own_joints(kps: np.ndarray, same: float = 0.5) -> np.ndarray:
    """The poses [N, 17, 3] with each joint kept by one person only: where two poses place the same joint
    type at one spot (similarity ≥ `same`, `joint_similarity`), the pose less sure of it loses it (score 0)."""
    out = kps.copy()
    if len(out) > 1:
        sim = joint_similarity(out, out)
        sim[np.arange(len(out)), np.arange(len(out))] = 0
        score = out[..., 2]
        weaker = (sim >= same) & (score[:, None, :] < score[None, :, :])
        out[..., 2] *= ~weaker.any(axis=1)
    return out


def extend_cut(boxes: np.ndarray, hw: tuple[int, int], extend: float, margin: float = 2.0) -> np.ndarray:
    """Boxes [N, ≥4] whose side ends at a frame edge (within `margin` px: the detector saw only the visible
    part of a cut body) moved past that edge by `extend` × the box's size, so that the pose crop leaves room
    for the body outside the frame instead of squeezing a whole skeleton onto the visible part."""
    out = np.array(boxes, np.float32, copy=True)
    if not len(out) or extend <= 0:
        return out
    w, h = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    for side, size, edge in ((0, w, 0.0), (1, h, 0.0), (2, w, hw[1]), (3, h, hw[0])):
        cut = np.abs(out[:, side] - edge) <= margin
        out[cut, side] += (1 if side >= 2 else -1) * extend * size[cut]
    return out
