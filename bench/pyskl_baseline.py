"""pyskl's GeneratePoseTarget heatmap loop in plain numpy: the baseline render_volume is measured against.

Follows pyskl's ``generate_a_heatmap`` / ``generate_a_limbmap`` line by line (including its float32
scalars, its int() window truncation and the float64 promotion of the limb patch), but returns the
volume as [K, T, H, W] like ``stages.render.render_volume``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EPS = 1e-3


def _heatmap(arr: np.ndarray, centers: np.ndarray, max_values: np.ndarray, sigma: float) -> None:
    img_h, img_w = arr.shape
    for center, max_value in zip(centers, max_values, strict=True):
        if max_value < EPS:
            continue
        mu_x, mu_y = center[0], center[1]
        st_x = max(int(mu_x - 3 * sigma), 0)
        ed_x = min(int(mu_x + 3 * sigma) + 1, img_w)
        st_y = max(int(mu_y - 3 * sigma), 0)
        ed_y = min(int(mu_y + 3 * sigma) + 1, img_h)
        x = np.arange(st_x, ed_x, 1, np.float32)
        y = np.arange(st_y, ed_y, 1, np.float32)
        if not (len(x) and len(y)):
            continue
        y = y[:, None]
        patch = np.exp(-((x - mu_x) ** 2 + (y - mu_y) ** 2) / 2 / sigma**2) * max_value
        arr[st_y:ed_y, st_x:ed_x] = np.maximum(arr[st_y:ed_y, st_x:ed_x], patch)


def _limbmap(
    arr: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    start_values: np.ndarray,
    end_values: np.ndarray,
    sigma: float,
) -> None:
    img_h, img_w = arr.shape
    for start, end, start_value, end_value in zip(starts, ends, start_values, end_values, strict=True):
        value_coeff = min(start_value, end_value)
        if value_coeff < EPS:
            continue
        min_x, max_x = min(start[0], end[0]), max(start[0], end[0])
        min_y, max_y = min(start[1], end[1]), max(start[1], end[1])
        min_x = max(int(min_x - 3 * sigma), 0)
        max_x = min(int(max_x + 3 * sigma) + 1, img_w)
        min_y = max(int(min_y - 3 * sigma), 0)
        max_y = min(int(max_y + 3 * sigma) + 1, img_h)
        x = np.arange(min_x, max_x, 1, np.float32)
        y = np.arange(min_y, max_y, 1, np.float32)
        if not (len(x) and len(y)):
            continue
        y = y[:, None]
        x_0 = np.zeros_like(x)
        y_0 = np.zeros_like(y)
        d2_start = (x - start[0]) ** 2 + (y - start[1]) ** 2
        d2_end = (x - end[0]) ** 2 + (y - end[1]) ** 2
        d2_ab = (start[0] - end[0]) ** 2 + (start[1] - end[1]) ** 2
        if d2_ab < 1:
            _heatmap(arr, start[None], start_value[None], sigma)
            continue
        coeff = (d2_start - d2_end + d2_ab) / 2.0 / d2_ab
        a_dominate = coeff <= 0
        b_dominate = coeff >= 1
        seg_dominate = 1 - a_dominate - b_dominate
        position = np.stack([x + y_0, y + x_0], axis=-1)
        projection = start + np.stack([coeff, coeff], axis=-1) * (end - start)
        d2_line = position - projection
        d2_line = d2_line[:, :, 0] ** 2 + d2_line[:, :, 1] ** 2
        d2_seg = a_dominate * d2_start + b_dominate * d2_end + seg_dominate * d2_line
        patch = np.exp(-d2_seg / 2.0 / sigma**2) * value_coeff
        arr[min_y:max_y, min_x:max_x] = np.maximum(arr[min_y:max_y, min_x:max_x], patch)


def pyskl_render(
    keypoint: np.ndarray,
    score: np.ndarray,
    img_shape: tuple[int, int],
    *,
    sigma: float = 0.6,
    limbs: Sequence[tuple[int, int]] | None = None,
    use_score: bool = True,
) -> np.ndarray:
    """pyskl's per-frame loop; returns float32 [K, T, H, W] (pyskl itself returns [T, K, H, W])."""
    kps = np.asarray(keypoint, dtype=np.float32)
    scores = np.asarray(score, dtype=np.float32) if use_score else np.ones(kps.shape[:3], np.float32)
    _, t_len, v_len, _ = kps.shape
    h, w = img_shape
    k_len = v_len if limbs is None else len(limbs)
    ret = np.zeros((t_len, k_len, h, w), dtype=np.float32)
    for t in range(t_len):
        if limbs is None:
            for k in range(v_len):
                _heatmap(ret[t, k], kps[:, t, k], scores[:, t, k], sigma)
        else:
            for i, (a, b) in enumerate(limbs):
                _limbmap(ret[t, i], kps[:, t, a], kps[:, t, b], scores[:, t, a], scores[:, t, b], sigma)
    return ret.transpose(1, 0, 2, 3)
