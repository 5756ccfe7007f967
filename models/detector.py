"""Person detectors: an RGB frame in, person boxes (x0, y0, x1, y1, score) in frame pixels out.

One adapter class per model output format, registered by model name in `DETECTORS`:

- `MoveNetMultiPose`: MoveNet MultiPose as a detector (its own keypoints are coarse; the top-down pose model
  refines them on crops). A close-range model: good on people who fill the frame, even in low-resolution
  clips; blind to small, distant people at the usual input size.
- `CenterNet`: COCO-80 box detectors whose output is ``[1, N, 6]`` = (x1, y1, x2, y2, score, class) in input
  pixels, class 0 = person (``mb3-centernet``). Finds small and distant people; misses some low-resolution
  close-ups that MultiPose finds.
- `Fused`: several detectors on the same frame, their boxes joined (`fuse_boxes`), so that each covers the
  other's blind spots. A detector spec ``a+b`` names one (`make_detector`).
- `Padded`: a detector on the frame inside a larger black canvas, for people larger than the frame or cut
  by its edge (`make_detector(pad=...)` adds it to the others).

Another format (e.g. YOLO-style ``[1, 4 + classes, anchors]`` that needs NMS) is one more class with the
same `__call__` and an entry in `DETECTORS`. bench/README.md (## extract) measures the options on the
hand-checked frames of tests/data/person_boxes.json.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Protocol

import cv2
import numpy as np

from models import Device
from models.pose_onnx import ModelError, check_io, input_type, model_path, session

log = logging.getLogger("skel")

FUSE_IOU = 0.5


class PersonDetector(Protocol):
    """Detects people in one frame."""

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 [H, W, 3] → float32 [N, 5] boxes (x0, y0, x1, y1, score) in frame pixels."""
        ...


class MoveNetMultiPose:
    """MoveNet MultiPose Lightning (6 person slots) as a person detector.

    The frame is resized without padding so that both sides are multiples of 32 and the long side is
    `long_side` (256 for people that fill the frame, 512 for small, far people).
    """

    default_min_score = 0.2  # upstream suggests 0.2–0.3; small people score 0.2–0.5

    def __init__(
        self,
        models: str | os.PathLike | None = None,
        *,
        name: str = "movenet-multipose",
        long_side: int = 256,
        min_score: float | None = None,
        device: Device = "cpu",
        threads: int = 1,
    ):
        if long_side % 32:
            raise ValueError(f"long_side must be a multiple of 32, got {long_side}")
        self.path = str(model_path(name, models))
        self.sess = session(self.path, device, threads)
        check_io(self.sess, self.path, (1, None, None, 3), (1, 6, 56))
        self.long_side = long_side
        self.min_score = self.default_min_score if min_score is None else min_score

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """(H, W) fed to the model: aspect kept, long side `long_side`, both multiples of 32."""
        s = self.long_side / max(h, w)
        return max(32, round(h * s / 32) * 32), max(32, round(w * s / 32) * 32)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        ih, iw = self.input_size(h, w)
        inp = cv2.resize(rgb, (iw, ih), interpolation=cv2.INTER_AREA)[None].astype(np.int32)
        rows = self.sess.run(None, {"input": inp})[0][0]  # 6 × (17×(y, x, s), ymin, xmin, ymax, xmax, score)
        rows = rows[rows[:, 55] >= self.min_score]
        scale = np.array([w, h, w, h], np.float32)
        boxes = rows[:, [52, 51, 54, 53]] * scale  # normalised coordinates map straight back: no padding
        return np.concatenate([boxes, rows[:, 55:56]], axis=1).astype(np.float32)


class CenterNet:
    """Box detector with output (x1, y1, x2, y2, score, class) per detection; keeps class `person_class`.

    Input: float32 NHWC RGB 0..255 of the model's fixed size; the whole frame is resized to it (no padding),
    so boxes scale straight back.
    """

    default_min_score = 0.3  # mb3-centernet: people 0.4–0.8 on the shared clips, other objects up to ~0.3

    def __init__(
        self,
        models: str | os.PathLike | None = None,
        *,
        name: str = "mb3-centernet",
        min_score: float | None = None,
        person_class: int = 0,
        device: Device = "cpu",
        threads: int = 1,
    ):
        self.path = str(model_path(name, models))
        self.sess = session(self.path, device, threads)
        check_io(self.sess, self.path, (1, None, None, 3), (1, None, 6))
        if input_type(self.sess) != "tensor(float)":
            raise ModelError(self.path, f"input must be float32, got {input_type(self.sess)}")
        _, ih, iw, _ = self.sess.get_inputs()[0].shape
        if not (isinstance(ih, int) and isinstance(iw, int)):
            raise ModelError(self.path, f"input size must be fixed, got {self.sess.get_inputs()[0].shape}")
        self.size = (iw, ih)
        self.input = self.sess.get_inputs()[0].name
        self.min_score = self.default_min_score if min_score is None else min_score
        self.person_class = person_class

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        inp = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)[None].astype(np.float32)
        rows = self.sess.run(None, {self.input: inp})[0][0]
        rows = rows[(rows[:, 5] == self.person_class) & (rows[:, 4] >= self.min_score)]
        scale = np.array([w / self.size[0], h / self.size[1]] * 2, np.float32)
        return np.concatenate([rows[:, :4] * scale, rows[:, 4:5]], axis=1).astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a [N, ≥4] and b [M, ≥4] (x0, y0, x1, y1) → [N, M]."""
    a, b = np.asarray(a, np.float64)[:, None, :4], np.asarray(b, np.float64)[None, :, :4]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def fuse_boxes(groups: list[np.ndarray], iou_threshold: float = FUSE_IOU) -> np.ndarray:
    """Join the boxes [N, 5] of several detectors: one box per person.

    Boxes are taken by descending score; a box that overlaps an already kept box (IoU ≥ `iou_threshold`)
    is the same person seen by another detector and is dropped, the rest are kept.
    """
    boxes = np.concatenate([g.reshape(-1, 5) for g in groups]).astype(np.float32)
    boxes = boxes[np.argsort(-boxes[:, 4], kind="stable")]
    kept: list[int] = []
    if len(boxes):
        overlap = box_iou(boxes, boxes)
        for i in range(len(boxes)):
            if not kept or overlap[i, kept].max() < iou_threshold:
                kept.append(i)
    return boxes[kept]


class Fused:
    """Several detectors on every frame, their boxes joined by `fuse_boxes`."""

    def __init__(self, detectors: list[PersonDetector], iou_threshold: float = FUSE_IOU):
        self.detectors = detectors
        self.iou_threshold = iou_threshold

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return fuse_boxes([d(rgb) for d in self.detectors], self.iou_threshold)


class Padded:
    """A detector run on the frame placed in the middle of a larger black canvas (`pad` × the frame's size
    added on each side), its boxes mapped back to frame pixels and not clipped: a person too large for the
    frame, or cut by its edge, appears whole-sized to the detector, and its box keeps its true extent. Only
    boxes that reach the frame's edge (within `edge` × its size) are kept: the people inside the frame are
    the plain pass's, seen there at a higher resolution."""

    def __init__(self, detector: PersonDetector, pad: float, edge: float = 0.02):
        self.detector, self.pad, self.edge = detector, pad, edge

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        dy, dx = round(self.pad * h), round(self.pad * w)
        canvas = cv2.copyMakeBorder(rgb, dy, dy, dx, dx, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        boxes = self.detector(canvas) - np.array([dx, dy, dx, dy, 0], np.float32)
        mx, my = self.edge * w, self.edge * h
        at_edge = (boxes[:, 0] <= mx) | (boxes[:, 1] <= my) | (boxes[:, 2] >= w - mx) | (boxes[:, 3] >= h - my)
        return boxes[at_edge].astype(np.float32)


DETECTORS = {"movenet-multipose": MoveNetMultiPose, "mb3-centernet": CenterNet}


@functools.cache
def available_detectors(spec: str, models: str | None = None, warn: bool = True) -> tuple[str, ...]:
    """The model names of a detector spec (``a`` or ``a+b``) to use: all of them when their files exist.

    A fused spec degrades to the models that are present, with a warning (once per process, unless `warn` is
    off: a shard worker whose stage already warned), because not every model may be shipped (``mb3-centernet``
    is not bundled); a single missing model is an error.
    """
    names = tuple(spec.split("+"))
    unknown = [n for n in names if n not in DETECTORS]
    if unknown or not names:
        named = ", ".join(map(repr, unknown or [spec]))
        raise ModelError(spec, f"unknown detector {named} (known: {', '.join(DETECTORS)}, or several joined by +)")
    present, missing = [], []
    for name in names:
        try:
            model_path(name, models)
            present.append(name)
        except ModelError as exc:
            if exc.problem != "model file not found" or len(names) == 1:
                raise
            missing.append(exc)
    if not present:
        raise missing[0]
    for exc in missing if warn else ():
        log.warning(
            "%s: not found, so people are detected with %s only, which misses %s. Put the model there "
            "(or pick another with --detector) to detect all people.", exc.path, "+".join(present),
            "small, distant people" if "movenet-multipose" in present else "some low-resolution close-ups",
        )  # fmt: skip
    return tuple(present)


def make_detector(
    spec: str,
    models: str | os.PathLike | None = None,
    *,
    long_side: int = 256,
    min_score: float | None = None,
    pad: float = 0.0,
    fuse_iou: float = FUSE_IOU,
    device: Device = "cpu",
    threads: int = 1,
    warn: bool = True,
) -> PersonDetector:
    """The detector for a spec: one model name of `DETECTORS`, or several joined by ``+`` (fused).

    `long_side` is MultiPose's input size; `min_score` (None: each model's default) the person score to keep;
    `pad` > 0 adds a pass of the spec's first close-range model (MultiPose if present, else the first) on the
    padded frame (`Padded`) for people larger than the frame; the boxes of several are fused at `fuse_iou`.
    `warn`: whether a missing model of a fused spec is warned of (`available_detectors`).
    """
    names = available_detectors(spec, None if models is None else str(models), warn)
    made: list[PersonDetector] = []
    for name in names:
        cls = DETECTORS[name]
        extra = {"long_side": long_side} if cls is MoveNetMultiPose else {}
        made.append(cls(models, name=name, min_score=min_score, device=device, threads=threads, **extra))
    if pad > 0:
        close = next((d for d in made if isinstance(d, MoveNetMultiPose)), made[0])
        made.append(Padded(close, pad))
    return made[0] if len(made) == 1 else Fused(made, fuse_iou)
