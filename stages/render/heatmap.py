"""Pose heatmap volumes with pyskl's GeneratePoseTarget semantics (DESIGN §4), rendered by a C kernel.

pyskl draws every (frame, channel, person) window with a handful of numpy calls, which makes rendering
95% of its data-loading time. The kernel in ``_heatmap.c`` does the same float32 arithmetic pixel by
pixel in one pass, straight into the output dtype, so the cost is close to allocating the output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from stages.render import _heatmap

_KINDS = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.uint8): 2}


def render_volume(
    keypoint: np.ndarray,
    score: np.ndarray,
    img_shape: tuple[int, int],
    *,
    sigma: float = 0.6,
    limbs: Sequence[tuple[int, int]] | None = None,
    use_score: bool = True,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Render joint (``limbs=None``, K = V) or limb (K = len(limbs)) heatmaps as a [K, T, H, W] volume.

    ``keypoint`` is [M, T, V, 2] (x, y) in pixels, ``score`` [M, T, V]; both must be finite. Matches
    pyskl's float32 output to within float32 rounding of exp. ``dtype`` float16 is numpy's
    round-to-nearest-even cast of that output; uint8 is ``clip(rint(value * 255), 0, 255)``.
    """
    kp = np.ascontiguousarray(keypoint, dtype=np.float32)
    sc = np.ascontiguousarray(score, dtype=np.float32)
    if kp.ndim != 4 or kp.shape[-1] != 2:
        raise ValueError(f"keypoint must be [M, T, V, 2], got shape {kp.shape}")
    if sc.shape != kp.shape[:3]:
        raise ValueError(f"score must be [M, T, V] = {kp.shape[:3]}, got shape {sc.shape}")
    if not (np.isfinite(kp).all() and np.isfinite(sc).all()):
        raise ValueError("keypoint and score must be finite")
    h, w = (int(n) for n in img_shape)
    if h <= 0 or w <= 0:
        raise ValueError(f"img_shape must be positive (H, W), got {img_shape}")
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be positive, got {sigma}")
    out_dtype = np.dtype(dtype)
    if out_dtype not in _KINDS:
        raise ValueError(f"dtype must be float32, float16 or uint8, got {out_dtype}")
    m, t, v, _ = kp.shape
    if limbs is None:
        pairs = None
        k = v
    else:
        pairs = np.ascontiguousarray(np.asarray(limbs, dtype=np.int64).reshape(-1, 2))
        if pairs.size and (pairs.min() < 0 or pairs.max() >= v):
            raise ValueError(f"limbs must index joints 0..{v - 1}")
        k = len(pairs)
    out = np.zeros((k, t, h, w), dtype=out_dtype)
    _heatmap.render(out, kp, sc if use_score else None, pairs, m, t, v, h, w, sigma, _KINDS[out_dtype])
    return out
