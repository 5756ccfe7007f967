"""Synthetic skeleton clips in pyskl annotation format, for `skel demo` and the test-suite.

Each clip is a procedurally animated COCO-17 stick figure facing the camera (person's left = image right)
doing one of a few clearly different actions, with random length, tempo, amplitude, body proportions,
position, scale, handedness, camera roll, coordinate noise, detector-like scores, occluded joints and
sometimes a second person. Deterministic for a seed; every clip has its own random stream, so clip i of a
class does not depend on `n_per_class`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stores.coco import NUM_KEYPOINTS

__all__ = ["ACTIONS", "BODY_HEIGHT", "CLASSES", "Motion", "Placement", "generate", "person"]

# Segment lengths in torso units (shoulder centre to hip centre = 1); y points up in the body frame.
SHOULDER_HALF, HIP_HALF, NECK = 0.42, 0.24, 0.42
UPPER_ARM, FOREARM, THIGH, SHIN = 0.62, 0.55, 0.92, 0.88
BODY_HEIGHT = THIGH + SHIN + 1.0 + NECK + 0.1  # ankle to top of head, standing
REST_ARM, REST_LEG = 0.12, 0.05  # relaxed outward angles (rad)

LEFT, RIGHT = 0, 1
SIDE_SIGN = np.array([1.0, -1.0])  # outward = +x for the left limbs (image right), -x for the right


@dataclass
class Motion:
    """Per-frame joint angles of one person; arrays of shape [2 sides, T] unless noted.

    Angles are measured from straight down, positive = away from the body's midline (outward), so the
    same value on both sides is a mirror-symmetric pose. `*_len` scale a segment's projected length
    (a limb pointing at the camera looks shorter).
    """

    arm_up: np.ndarray
    arm_lo: np.ndarray
    leg_up: np.ndarray
    leg_lo: np.ndarray
    arm_up_len: np.ndarray
    arm_lo_len: np.ndarray
    leg_up_len: np.ndarray
    torso_len: np.ndarray  # [T]
    lean: np.ndarray  # [T] upper-body roll about the hips (rad, positive = counter-clockwise)
    lift: np.ndarray  # [T] feet above the ground (jumps), torso units
    shift: np.ndarray  # [T] horizontal displacement, torso units
    width: float = 1.0  # shoulder/hip width factor (<1: body turned away from the camera)


def _rest(t: np.ndarray) -> Motion:
    ones, zeros = np.ones((2, t.size)), np.zeros(t.size)
    return Motion(
        arm_up=REST_ARM * ones, arm_lo=REST_ARM * 0.7 * ones, leg_up=REST_LEG * ones,
        leg_lo=REST_LEG * 0.6 * ones, arm_up_len=ones.copy(), arm_lo_len=ones.copy(),
        leg_up_len=ones.copy(), torso_len=np.ones(t.size), lean=zeros.copy(), lift=zeros.copy(),
        shift=zeros.copy(),
    )  # fmt: skip


def _phase(rng: np.random.Generator, t: np.ndarray, period: tuple[float, float]) -> np.ndarray:
    return 2 * np.pi * t / rng.uniform(*period) + rng.uniform(0, 2 * np.pi)


def _idle(rng: np.random.Generator, t: np.ndarray) -> Motion:
    """Standing, slight sway: what a bystander does."""
    m, ph = _rest(t), _phase(rng, t, (40, 90))
    m.arm_up += 0.06 * np.sin(ph)
    m.lean += 0.03 * np.sin(ph + 1.0)
    return m


def _wave(rng: np.random.Generator, t: np.ndarray) -> Motion:
    """One raised arm (either side), forearm swinging left-right above the shoulder."""
    m, ph, amp = _rest(t), _phase(rng, t, (8, 16)), rng.uniform(0.8, 1.2)
    arm = rng.integers(2)
    m.arm_up[arm] = rng.uniform(1.7, 2.1) + 0.08 * np.sin(ph)
    m.arm_lo[arm] = np.pi - 0.1 + 0.45 * amp * np.sin(ph)
    return m


def _jumping_jacks(rng: np.random.Generator, t: np.ndarray) -> Motion:
    """Arms from the sides to overhead while the legs spread, hopping twice per cycle."""
    m, ph, amp = _rest(t), _phase(rng, t, (14, 26)), rng.uniform(0.85, 1.1)
    s = (1 - np.cos(ph)) / 2
    m.arm_up[:] = 0.15 + 2.55 * amp * s
    m.arm_lo[:] = m.arm_up + 0.15 * s
    m.leg_up[:] = 0.05 + 0.32 * amp * s
    m.leg_lo[:] = 0.9 * m.leg_up
    m.lift = 0.3 * amp * np.abs(np.sin(ph))
    return m


def _squat(rng: np.random.Generator, t: np.ndarray) -> Motion:
    """Knees bend towards the camera and apart, body sinks, arms raised forward."""
    m, ph, amp = _rest(t), _phase(rng, t, (22, 40)), rng.uniform(0.85, 1.1)
    s = amp * (1 - np.cos(ph)) / 2
    m.leg_up[:] = 0.08 + 0.45 * s
    m.leg_up_len[:] = 1 - 0.7 * s
    m.leg_lo[:] = -0.05
    m.torso_len = 1 - 0.12 * s
    m.arm_up[:] = 0.15 + 0.3 * s
    m.arm_lo[:] = m.arm_up
    m.arm_up_len[:] = 1 - 0.75 * s
    m.arm_lo_len[:] = 1 - 0.8 * s
    return m


def _walk(rng: np.random.Generator, t: np.ndarray) -> Motion:
    """Three-quarter view walking left or right across the image: legs and opposite arms swing."""
    m, ph, amp = _rest(t), _phase(rng, t, (16, 28)), rng.uniform(0.85, 1.15)
    direction = rng.choice([-1.0, 1.0])
    side_ph = np.stack([ph, ph + np.pi])
    thigh = direction * 0.45 * amp * np.sin(side_ph)  # signed image-x angles, converted to outward below
    shin = thigh - direction * 0.55 * np.maximum(0.0, np.sin(side_ph - np.pi / 3))
    arm = -direction * 0.35 * amp * np.sin(side_ph)
    sign = SIDE_SIGN[:, None]
    m.leg_up, m.leg_lo = thigh * sign, shin * sign
    m.arm_up, m.arm_lo = arm * sign, (arm + direction * 0.25) * sign
    m.width = rng.uniform(0.45, 0.65)
    m.shift = direction * 1.5 * amp * (ph - ph[0]) / (2 * np.pi)
    return m


def _boxing(rng: np.random.Generator, t: np.ndarray) -> Motion:
    """Guard with both fists up, alternating straight punches that end in front of the chest."""
    m, ph = _rest(t), _phase(rng, t, (10, 16))
    lead = rng.integers(2)
    punch = np.maximum(0.0, np.sin(np.stack([ph, ph + np.pi])[[lead, 1 - lead]])) ** 2
    m.arm_up = 0.05 + (-1.3 - 0.05) * punch
    m.arm_up_len = 0.8 + (0.35 - 0.8) * punch
    m.arm_lo = np.pi + 0.35 + (2 * np.pi - 1.3 - np.pi - 0.35) * punch
    m.arm_lo_len = 1 - 0.65 * punch
    m.leg_up[:], m.leg_lo[:] = 0.18, 0.12
    m.lift = 0.04 * np.abs(np.sin(2 * ph))
    m.lean = 0.05 * np.sin(ph)
    return m


def _arm_circles(rng: np.random.Generator, t: np.ndarray) -> Motion:
    """Straight arms held out sideways, hands tracing small circles."""
    m, ph, amp = _rest(t), _phase(rng, t, (8, 14)), rng.uniform(0.8, 1.2)
    m.arm_up[:] = np.pi / 2 + 0.35 * amp * np.sin(ph)
    m.arm_lo[:] = m.arm_up + 0.05
    m.arm_up_len[:] = 1 - 0.12 * amp * (1 + np.cos(ph))
    m.arm_lo_len[:] = m.arm_up_len
    return m


ACTIONS: dict[str, Callable[[np.random.Generator, np.ndarray], Motion]] = {
    "wave": _wave,
    "jumping_jacks": _jumping_jacks,
    "squat": _squat,
    "walk": _walk,
    "boxing": _boxing,
    "arm_circles": _arm_circles,
}
CLASSES: tuple[str, ...] = tuple(ACTIONS)


def _direction(side: int, angle: np.ndarray) -> np.ndarray:
    """Unit vectors [..., 2] (x, y-up) of a limb on `side` at outward angle `angle` from straight down."""
    return np.stack([SIDE_SIGN[side] * np.sin(angle), -np.cos(angle)], axis=-1)


def _rotate(v: np.ndarray, angle: np.ndarray | float) -> np.ndarray:
    """Rotate points v [..., 2] counter-clockwise (y up) by `angle` (broadcast against v[..., 0])."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], -1)


def _pose(m: Motion, seg: np.ndarray) -> np.ndarray:
    """Forward kinematics: [T, 17, 2] body-frame coordinates (torso units, y up, feet on y = lift)."""
    n = m.lean.size
    upper_arm, forearm, thigh, shin = seg
    kp = np.zeros((n, NUM_KEYPOINTS, 2))
    neck = _rotate(np.stack([np.zeros(n), m.torso_len], -1), m.lean)

    def up(dx: float, dy: float) -> np.ndarray:  # a point fixed to the upper body, relative to the neck
        return neck + _rotate(np.tile([dx, dy], (n, 1)), m.lean)

    kp[:, 0] = up(0.0, NECK)
    kp[:, 1], kp[:, 2] = up(0.08 * m.width, NECK + 0.07), up(-0.08 * m.width, NECK + 0.07)
    kp[:, 3], kp[:, 4] = up(0.17 * m.width, NECK + 0.02), up(-0.17 * m.width, NECK + 0.02)
    for side, (sh, el, wr, hip, kn, an) in enumerate([(5, 7, 9, 11, 13, 15), (6, 8, 10, 12, 14, 16)]):
        kp[:, sh] = up(SIDE_SIGN[side] * SHOULDER_HALF * m.width, 0.0)
        kp[:, el] = kp[:, sh] + _rotate(
            upper_arm * m.arm_up_len[side, :, None] * _direction(side, m.arm_up[side]), m.lean)
        kp[:, wr] = kp[:, el] + _rotate(
            forearm * m.arm_lo_len[side, :, None] * _direction(side, m.arm_lo[side]), m.lean)
        kp[:, hip, 0] = SIDE_SIGN[side] * HIP_HALF * m.width
        kp[:, kn] = kp[:, hip] + thigh * m.leg_up_len[side, :, None] * _direction(side, m.leg_up[side])
        kp[:, an] = kp[:, kn] + shin * _direction(side, m.leg_lo[side])
    kp[..., 1] += (m.lift - kp[:, 15:17, 1].min(axis=1))[:, None]  # lowest ankle on the ground
    kp[..., 0] += m.shift[:, None]
    return kp


@dataclass
class Placement:
    """Where one person stands in the image: ground-centre pixel, pixels per torso unit, camera roll."""

    x: float
    ground: float
    unit: float
    roll: float = 0.0


def person(
    rng: np.random.Generator, motion: Motion, place: Placement, quality: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel keypoints [T, 17, 2] and scores [T, 17] for one animated person."""
    n = motion.lean.size
    seg = np.array([UPPER_ARM, FOREARM, THIGH, SHIN]) * rng.uniform(0.92, 1.08, 4)
    body = _pose(motion, seg)
    body += rng.normal(0.0, 0.025, body.shape)
    joint_quality = rng.uniform(0.6, 1.0, NUM_KEYPOINTS) * quality
    joint_quality[1:5] *= rng.uniform(0.6, 0.95)  # eyes and ears are detected less confidently
    score = np.clip(joint_quality - np.abs(rng.normal(0.0, 0.07, (n, NUM_KEYPOINTS))), 0.31, 1.0)
    for _ in range(rng.binomial(2, 0.3)):  # occlusions: a limb end or ear drops out for a few frames
        joint = rng.choice([3, 4, 7, 8, 9, 10, 13, 14, 15, 16])
        start = rng.integers(n)
        span = slice(start, start + rng.integers(2, 11))
        score[span, joint] = 0.0 if rng.random() < 0.5 else rng.uniform(0.0, 9e-4)
        body[span, joint] += rng.normal(0.0, 0.15, body[span, joint].shape)
    body = _rotate(body, place.roll)
    xy = np.stack([place.x + place.unit * body[..., 0], place.ground - place.unit * body[..., 1]], -1)
    return xy.astype(np.float32), score.astype(np.float32)


def _fit_travel(motion: Motion, unit: float, width: int) -> float:
    """Limit a walker's horizontal travel to half the image width (feet slide a little); return it in px."""
    travel = unit * (motion.shift[-1] - motion.shift[0])
    if abs(travel) > width / 2:
        motion.shift *= width / 2 / abs(travel)
        travel = np.copysign(width / 2, travel)
    return float(travel)


def _clip(rng: np.random.Generator, label: int, img_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints [M, T, 17, 2] and scores [M, T, 17] of one clip; person 0 does the action."""
    h, w = img_shape
    n = int(rng.integers(24, 81))
    t = np.arange(n, dtype=np.float64)
    motion = ACTIONS[CLASSES[label]](rng, t)
    unit = h * rng.uniform(0.45, 0.75) / BODY_HEIGHT
    centre = w * rng.uniform(0.3, 0.7)  # of the path, for walkers
    place = Placement(
        x=centre - _fit_travel(motion, unit, w) / 2, ground=h * rng.uniform(0.82, 1.0), unit=unit,
        roll=rng.normal(0.0, 0.03),
    )  # fmt: skip
    people = [person(rng, motion, place, quality=1.0)]
    if rng.random() < 0.25:
        other = ACTIONS[CLASSES[label]](rng, t) if rng.random() < 0.4 else _idle(rng, t)
        away = 1.0 if centre < w / 2 else -1.0
        unit2 = unit * rng.uniform(0.7, 1.0)
        centre2 = np.clip(centre + away * w * rng.uniform(0.3, 0.45), 0.1 * w, 0.9 * w)
        second = Placement(
            x=centre2 - _fit_travel(other, unit2, w) / 2, ground=place.ground - h * rng.uniform(0.0, 0.1),
            unit=unit2, roll=place.roll,
        )  # fmt: skip
        kp, sc = person(rng, other, second, quality=rng.uniform(0.7, 0.95))
        if rng.random() < 0.3:  # walks into / out of view: absent frames are zero, as in pyskl
            cut = int(rng.integers(n // 4, n // 2))
            absent = slice(0, cut) if rng.random() < 0.5 else slice(n - cut, n)
            kp[absent], sc[absent] = 0.0, 0.0
        people.append((kp, sc))
    return np.stack([p[0] for p in people]), np.stack([p[1] for p in people])


def generate(n_per_class: int, *, seed: int = 0, img_shape: tuple[int, int] = (240, 320)) -> dict:
    """A pyskl-format annotation dict with `n_per_class` synthetic clips per class of `CLASSES`.

    About a quarter of each class (at least one clip once a class has two) goes to the test split.
    """
    h, w = int(img_shape[0]), int(img_shape[1])
    annotations, train, test = [], [], []
    for label, name in enumerate(CLASSES):
        n_test = min(max(round(n_per_class / 4), 1), n_per_class - 1) if n_per_class > 1 else 0
        test_idx = set(np.random.default_rng([seed, label]).permutation(n_per_class)[:n_test].tolist())
        for i in range(n_per_class):
            keypoint, score = _clip(np.random.default_rng([seed, label, i]), label, (h, w))
            frame_dir = f"{name}_{i:03d}"
            annotations.append({
                "frame_dir": frame_dir, "label": label, "img_shape": (h, w), "original_shape": (h, w),
                "total_frames": int(keypoint.shape[1]), "keypoint": keypoint, "keypoint_score": score,
            })  # fmt: skip
            (test if i in test_idx else train).append(frame_dir)
    return {"split": {"train": train, "test": test}, "classes": list(CLASSES), "annotations": annotations}
