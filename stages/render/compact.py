"""Geometry before rendering, with pyskl's exact semantics: PoseCompact, Resize, frame capping.

pyskl (and mmaction2's port) run on NumPy 1, where a float32 scalar combined with a python number gives
float64: PoseCompact's centre and half sizes are float64 from float32 extremes; Resize is float32.
"""

from __future__ import annotations

import numpy as np


def pose_compact(
    keypoint: np.ndarray,
    img_shape: tuple[int, int],
    *,
    padding: float = 0.25,
    threshold: int = 10,
    hw_ratio: float = 1.0,
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int, int, int] | None]:
    """pyskl PoseCompact (allow_imgpad=True): the subject-centred box; returns (keypoint, shape, box).

    NaN becomes 0; the box holds every non-zero x and y over all persons and frames; under ``threshold``
    pixels nothing changes (box None); else it grows by ``padding`` about its centre, is made square,
    its corners are truncated with int() (not clamped), and only non-zero coordinates are shifted.
    """
    kp = np.nan_to_num(keypoint.astype(np.float32, copy=True), nan=0.0)
    kx, ky = kp[..., 0], kp[..., 1]
    nzx, nzy = kx != 0, ky != 0
    if not nzx.any() or not nzy.any():
        return kp, tuple(img_shape), None
    min_x, max_x = kx[nzx].min(), kx[nzx].max()
    min_y, max_y = ky[nzy].min(), ky[nzy].max()
    if max_x - min_x < threshold or max_y - min_y < threshold:
        return kp, tuple(img_shape), None
    cx, cy = float(max_x + min_x) / 2, float(max_y + min_y) / 2  # float32 sums, float64 from here on
    half_w = float(max_x - min_x) / 2 * (1 + padding)
    half_h = float(max_y - min_y) / 2 * (1 + padding)
    half_h = max(hw_ratio * half_w, half_h)
    half_w = max(1 / hw_ratio * half_h, half_w)
    x0, x1 = int(cx - half_w), int(cx + half_w)
    y0, y1 = int(cy - half_h), int(cy + half_h)
    kx[nzx] -= x0
    ky[nzy] -= y0
    return kp, (y1 - y0, x1 - x0), (x0, y0, x1, y1)


def resize(keypoint: np.ndarray, img_shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """pyskl Resize on keypoints: multiply by float32 [new_w / W, new_h / H]."""
    h, w = img_shape
    new_h, new_w = size
    return keypoint * np.array([new_w / w, new_h / h], dtype=np.float32)


def cap_frames(n_frames: int, max_frames: int) -> np.ndarray:
    """All frame indices up to ``max_frames``; beyond, ``max_frames`` indices spread uniformly."""
    if n_frames <= max_frames:
        return np.arange(n_frames)
    return (np.arange(max_frames) * n_frames) // max_frames
