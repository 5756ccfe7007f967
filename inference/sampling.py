"""Uniform frame sampling (pyskl ``UniformSampleFrames``): one frame from each of ``clip_len`` segments.

Three regimes, as pyskl: T < clip_len loops the video from a start frame; clip_len <= T < 2 clip_len
inserts T - clip_len single-frame skips at random places; otherwise one frame at random from each of
clip_len equal segments. Test clips use a RandomState seeded with 255 (pyskl's default), so the same
video always gives the same ``num_clips`` clips, and the indices equal pyskl's.
"""

from __future__ import annotations

import threading

import numpy as np

TEST_SEED = 255
_GENERATORS = threading.local()


def seeded(key: int | list[int]) -> np.random.RandomState:
    """The stream of ``np.random.RandomState(key)`` from this thread's generator, reseeded in place: a new
    RandomState costs ~90 µs (a tenth of a 48-frame clip's loading), reseeding ~8. Valid until the next call in
    the same thread."""
    rng = getattr(_GENERATORS, "rng", None)
    if rng is None:
        rng = _GENERATORS.rng = np.random.RandomState()
    rng.seed(key)
    return rng


def _clip(n_frames: int, clip_len: int, rng: np.random.RandomState, short_start: int | None) -> np.ndarray:
    """One clip of frame indices in [0, n_frames); ``short_start`` fixes the start of a looped short clip."""
    if n_frames < clip_len:
        start = rng.randint(0, n_frames) if short_start is None else short_start
        inds = np.arange(start, start + clip_len)
    elif n_frames < 2 * clip_len:
        skips = rng.choice(clip_len + 1, n_frames - clip_len, replace=False)
        offset = np.zeros(clip_len + 1, dtype=np.int64)
        offset[skips] = 1
        inds = np.arange(clip_len) + np.cumsum(offset)[:-1]
    else:
        bounds = np.arange(clip_len + 1) * n_frames // clip_len
        inds = bounds[:-1] + rng.randint(np.diff(bounds))
    return inds % n_frames


def sample_train(n_frames: int, clip_len: int, rng: np.random.RandomState) -> np.ndarray:
    """Random training clip: ``clip_len`` frame indices (int64)."""
    if n_frames < 1:
        raise ValueError("cannot sample from a video with no frames")
    return _clip(n_frames, clip_len, rng, None)


def sample_test(n_frames: int, clip_len: int, num_clips: int, seed: int = TEST_SEED) -> np.ndarray:
    """Deterministic test clips: [num_clips, clip_len] frame indices, identical to pyskl's for the same seed."""
    if n_frames < 1:
        raise ValueError("cannot sample from a video with no frames")
    rng = seeded(seed)
    clips = []
    for i in range(num_clips):
        rng.rand()  # pyskl draws its (here unused) p_interval ratio first; keep the stream identical
        start = i if n_frames < num_clips else i * n_frames // num_clips
        clips.append(_clip(n_frames, clip_len, rng, start))
    return np.stack(clips)
