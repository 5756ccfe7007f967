"""Top-down pose estimators: an RGB frame plus person boxes in, COCO-17 keypoints in image pixels out.

Each box is turned into a crop region with the model's aspect ratio, grown by `padding` (1.25) about
its centre, cut out with `cv2.warpAffine` (zero outside the frame) and resized to the model input;
the model's keypoints are then mapped back through the same affine transform.

- `MoveNetPose`: MoveNet SinglePose Thunder (256²) / Lightning (192²), int32 NHWC RGB input with a fixed
  batch of 1 (checked: batch 2 is rejected), output (y, x, score) normalised to the crop.
- `HeatmapPose`: HRNet/RTMPose-style heatmap models, float32 NCHW input normalised by mean/std, output
  [N, 17, h', w']; a joint is the heatmap's argmax (score = its value), crops are batched when the
  model's batch dimension is dynamic.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np

from models import IMAGENET_MEAN, IMAGENET_STD, Device
from models.pose_onnx import ModelError, check_io, input_type, model_path, session
from stores.coco import NUM_KEYPOINTS

MOVENET_SIZES = {"movenet-thunder": 256, "movenet-lightning": 192}


class PoseEstimator(Protocol):
    """Estimates one person's keypoints per box."""

    def __call__(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """RGB uint8 [H, W, 3] + boxes [N, ≥4] (x0, y0, x1, y1, …) → float32 [N, 17, 3] (x, y, score)."""
        ...


def crop_regions(boxes: np.ndarray, aspect: float, padding: float = 1.25) -> np.ndarray:
    """Regions [N, 4] (cx, cy, w, h) around boxes: the box grown to `aspect` (w / h), then × padding."""
    b = np.asarray(boxes, np.float64)[:, :4].reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    bw, bh = np.maximum(b[:, 2] - b[:, 0], 1.0), np.maximum(b[:, 3] - b[:, 1], 1.0)
    w = np.maximum(bw, bh * aspect) * padding
    return np.stack([cx, cy, w, w / aspect], axis=1)


def warp_crop(rgb: np.ndarray, region: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Cut `region` (cx, cy, w, h) out of the frame, zero-padded, resized to `size` (w, h)."""
    cx, cy, rw, _ = region
    s = size[0] / rw
    m = np.float32([[s, 0, (rw / 2 - cx) * s], [0, s, (region[3] / 2 - cy) * s]])
    return cv2.warpAffine(rgb, m, size, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def to_image(xy: np.ndarray, regions: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Map points [N, K, 2] in crop-input pixels back to image pixels (inverse of `warp_crop`)."""
    scale = (regions[:, 2] / size[0])[:, None, None]
    origin = (regions[:, :2] - regions[:, 2:] / 2)[:, None, :]
    return xy * scale + origin


class MoveNetPose:
    """MoveNet SinglePose (Thunder or Lightning) on person crops."""

    def __init__(
        self,
        models: str | os.PathLike | None = None,
        *,
        name: str = "movenet-thunder",
        padding: float = 1.25,
        device: Device = "cpu",
        threads: int = 1,
    ):
        self.path = str(model_path(name, models))
        self.sess = session(self.path, device, threads)
        size = self.sess.get_inputs()[0].shape[1]
        if not isinstance(size, int):
            raise ModelError(self.path, f"input size must be fixed, got {self.sess.get_inputs()[0].shape}")
        check_io(self.sess, self.path, (1, size, size, 3), (1, 1, NUM_KEYPOINTS, 3))
        self.size = size
        self.padding = padding

    def __call__(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        regions = crop_regions(boxes, 1.0, self.padding)
        out = np.empty((len(regions), NUM_KEYPOINTS, 3), np.float32)
        for i, region in enumerate(regions):  # the model's batch is fixed at 1
            crop = warp_crop(rgb, region, (self.size, self.size))[None].astype(np.int32)
            out[i] = self.sess.run(None, {"input": crop})[0][0, 0]  # 17 × (y, x, score) in [0, 1]
        xy = to_image(out[:, :, [1, 0]] * self.size, regions, (self.size, self.size))
        return np.concatenate([xy, out[:, :, 2:]], axis=2).astype(np.float32)


class HeatmapPose:
    """Top-down models with heatmap output (HRNet-style): joint = argmax per heatmap, score = its value."""

    def __init__(
        self,
        models: str | os.PathLike | None = None,
        *,
        name: str,
        input_size: tuple[int, int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        padding: float = 1.25,
        device: Device = "cpu",
        threads: int = 1,
    ):
        self.path = str(model_path(name, models))
        self.sess = session(self.path, device, threads)
        if input_type(self.sess) != "tensor(float)":
            raise ModelError(self.path, f"input must be float32, got {input_type(self.sess)}")
        check_io(self.sess, self.path, (None, 3, None, None), (None, NUM_KEYPOINTS, None, None))
        batch, _, h, w = self.sess.get_inputs()[0].shape
        if input_size is None:
            if not (isinstance(h, int) and isinstance(w, int)):
                raise ModelError(self.path, "dynamic input size: pass input_size=(w, h)")
            input_size = (w, h)
        self.size = input_size
        self.batched = not isinstance(batch, int)
        self.mean = np.asarray(mean, np.float32)
        self.inv_std = 1.0 / np.asarray(std, np.float32)
        self.padding = padding

    def __call__(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        regions = crop_regions(boxes, self.size[0] / self.size[1], self.padding)
        if len(regions) == 0:
            return np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
        crops = np.stack([warp_crop(rgb, r, self.size) for r in regions]).astype(np.float32)
        x = ((crops - self.mean) * self.inv_std).transpose(0, 3, 1, 2)
        if self.batched:
            heat = self.sess.run(None, {self.sess.get_inputs()[0].name: x})[0]
        else:
            heat = np.concatenate([self.sess.run(None, {self.sess.get_inputs()[0].name: xi[None]})[0] for xi in x])
        n, k, hh, hw = heat.shape
        flat = heat.reshape(n, k, -1)
        idx = flat.argmax(axis=2)
        score = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0]
        # heatmap pixel j ↔ input pixel j · (input / heatmap size), as mmpose's MSRA heatmap decoding
        xy = np.stack([idx % hw * (self.size[0] / hw), idx // hw * (self.size[1] / hh)], axis=2)
        xy = to_image(xy, regions, self.size)
        return np.concatenate([xy, score[..., None]], axis=2).astype(np.float32)
