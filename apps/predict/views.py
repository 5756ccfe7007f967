"""The test-time views of an in-memory volume in numpy: `inference.views.eval_views` without torch.

Same frames (pyskl's seeded test sampling), the same bilinear resize (align_corners=False, no antialias,
as ``torch.nn.functional.interpolate``) and the same mirror with left/right channels exchanged, so the
torch-free predict path feeds the network what `skel test` feeds it (tests/test_predict.py compares them).
"""

from __future__ import annotations

import numpy as np

from inference.sampling import sample_test


def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lo, hi) and weight of hi for a half-pixel-centre linear resize of one axis."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of the last two dims of x to size x size."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    lo, hi, a = _axis(h, size)
    x = x[..., lo, :] * (1 - a)[:, None] + x[..., hi, :] * a[:, None]
    lo, hi, a = _axis(w, size)
    return (x[..., lo] * (1 - a) + x[..., hi] * a).astype(np.float32)


def eval_views(volume: np.ndarray, clip_len: int, num_clips: int, *, size: int | None = None, flip: bool = False,
               perm: list[int] | None = None) -> np.ndarray:
    """[clips (x2 with flip), K, clip_len, size, size] float32 views of a volume [K, T, H, W]."""
    if flip and perm is None:
        raise ValueError("flip needs the channel permutation perm")
    frames = sample_test(volume.shape[1], clip_len, num_clips)
    x = volume[:, frames.ravel()].reshape(volume.shape[0], *frames.shape, *volume.shape[2:]).swapaxes(0, 1)
    x = resize(np.ascontiguousarray(x, dtype=np.float32), size or volume.shape[-1])
    return np.concatenate([x, x[..., ::-1][:, perm]]) if flip else x
