"""Pose heatmap volumes with pyskl's GeneratePoseTarget semantics (docs/architecture.md, Heatmaps), by a C kernel.

pyskl draws every (frame, channel, person) window with a dozen numpy calls, which makes rendering most of its
data-loading time (bench/README.md, Upstream baseline). The kernel in ``_heatmap.c`` repeats pyskl's
arithmetic pixel by pixel in one pass, straight into the output dtype (numpy's float32 → float16 cast of a
volume costs more than the render), so a call costs little more than allocating the output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import ModuleType

import numpy as np

from pipeline.native import load_kernel


def kernel() -> ModuleType:
    """The compiled render kernel (pipeline/native.py: imported on first use, checked against its source)."""
    return load_kernel("stages.render._heatmap", "the heatmap kernel")


_KINDS = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.uint8): 2}
LAYOUTS = ("kthw", "tkhw")  # the contract's [K, T, H, W]; the stored [T, K, H, W] (one frame = one chunk)


def render_volume(
    keypoint: np.ndarray,
    score: np.ndarray,
    img_shape: tuple[int, int],
    *,
    sigma: float = 0.6,
    limbs: Sequence[tuple[int, int]] | None = None,
    use_score: bool = True,
    dtype: np.dtype | type = np.float32,
    layout: str = "kthw",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Render joint (``limbs=None``, K = V) or limb (K = len(limbs)) heatmaps as a [K, T, H, W] volume
    (``layout="tkhw"``: [T, K, H, W]).

    ``keypoint`` is [M, T, V, 2] (x, y) in pixels, ``score`` [M, T, V]; both real and finite. The float32
    result equals pyskl's within an ulp or two of exp; float16 equals numpy's cast of it, uint8 is
    ``clip(rint(value * 255), 0, 255)``. ``out``: a C-contiguous array of that shape and dtype to render
    into (it is zeroed first), so a caller that renders many volumes reuses one buffer.
    """
    for name, arr in (("keypoint", keypoint), ("score", score)):
        if np.asarray(arr).dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a real numeric array, got dtype {np.asarray(arr).dtype}")
    kp = np.ascontiguousarray(keypoint, dtype=np.float32)
    sc = np.ascontiguousarray(score, dtype=np.float32)
    if kp.ndim != 4 or kp.shape[-1] != 2:
        raise ValueError(f"keypoint must be [M, T, V, 2], got shape {kp.shape}")
    if sc.shape != kp.shape[:3]:
        raise ValueError(f"score must be [M, T, V] = {kp.shape[:3]}, got shape {sc.shape}")
    if not (np.isfinite(kp).all() and np.isfinite(sc).all()):
        raise ValueError("keypoint and score must be finite")
    if len(img_shape) != 2:
        raise ValueError(f"img_shape must be (H, W), got {img_shape}")
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
        pairs = np.ascontiguousarray(limbs, dtype=np.int64)
        if pairs.size == 0:
            pairs = pairs.reshape(0, 2)
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"limbs must be a sequence of (a, b) pairs, got shape {pairs.shape}")
        if pairs.size and (pairs.min() < 0 or pairs.max() >= v):
            raise ValueError(f"limbs must index joints 0..{v - 1}")
        k = len(pairs)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    shape = (k, t, h, w) if layout == "kthw" else (t, k, h, w)
    if out is None:
        out = np.zeros(shape, dtype=out_dtype)
    elif out.shape != shape or out.dtype != out_dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {out_dtype} array of shape {shape}")
    else:
        out.fill(0)
    kernel().render(out, kp, sc if use_score else None, pairs, m, t, v, h, w, sigma, _KINDS[out_dtype],
                    LAYOUTS.index(layout))
    return out
