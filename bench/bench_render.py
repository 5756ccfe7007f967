"""Benchmark render_volume against pyskl's numpy loop on one core.

2 persons × 17 COCO joints walking and waving inside a 64×64 frame, σ 0.6, joint and limb volumes at
T=48 and T=300. Checks that both agree (max abs err ≤ 1e-5) before timing, then prints best-of-N
milliseconds, speed-ups and the allocation floor (writing a fresh volume of that size once) as a
markdown table.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_render
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402

import numpy as np  # noqa: E402

from bench.pyskl_baseline import pyskl_render  # noqa: E402
from pipeline.coco import LIMBS  # noqa: E402
from stages.render import render_volume  # noqa: E402

SIZE = 64
SIGMA = 0.6

# COCO-17 standing pose, x right / y down, in units of body height (top of head -0.5, feet +0.5).
POSE = np.array(
    [
        [0.00, -0.42], [0.03, -0.45], [-0.03, -0.45], [0.07, -0.43], [-0.07, -0.43],
        [0.13, -0.28], [-0.13, -0.28], [0.17, -0.10], [-0.17, -0.10], [0.19, 0.06], [-0.19, 0.06],
        [0.09, 0.05], [-0.09, 0.05], [0.10, 0.27], [-0.10, 0.27], [0.10, 0.48], [-0.10, 0.48],
    ],
    dtype=np.float64,
)  # fmt: skip
ARMS = [7, 8, 9, 10]
LEGS = [13, 14, 15, 16]


def make_sequence(t_len: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two people ~44 px tall swinging arms and legs while drifting sideways; returns kp, score."""
    rng = np.random.default_rng(seed)
    kps, scores = [], []
    for person, (cx, cy, height) in enumerate([(20.0, 32.0, 44.0), (44.0, 30.0, 40.0)]):
        phase = np.arange(t_len)[:, None] * 0.25 + person
        pose = np.broadcast_to(POSE, (t_len, 17, 2)).copy()
        swing = np.sin(phase)
        pose[:, ARMS, 1] -= 0.12 * swing * np.array([1, -1, 1, -1])
        pose[:, ARMS, 0] += 0.06 * swing * np.array([1, 1, 2, 2])
        pose[:, LEGS, 0] += 0.05 * swing * np.array([1, -1, 2, -2])
        drift = 6.0 * np.sin(np.arange(t_len) * 0.03 + person)[:, None]
        xy = pose * height + np.stack([cx + drift, np.full_like(drift, cy)], axis=-1)
        kps.append(xy + rng.normal(0, 0.4, xy.shape))
        scores.append(rng.uniform(0.4, 1.0, (t_len, 17)))
    return np.stack(kps).astype(np.float32), np.stack(scores).astype(np.float32)


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of `repeat` calls, in ms (best-of filters out the other tenants of the machine)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _alloc_floor(shape: tuple[int, ...], dtype: type) -> None:
    """Allocate and write every byte once: the cost any freshly rendered volume pays at least."""
    np.empty(shape, dtype).fill(0)


def main() -> None:
    rows = []
    for t_len in (48, 300):
        kp, score = make_sequence(t_len)
        for kind, limbs in (("joint", None), ("limb", LIMBS)):
            args = (kp, score, (SIZE, SIZE))
            ref = pyskl_render(*args, sigma=SIGMA, limbs=limbs)
            err = np.abs(render_volume(*args, sigma=SIGMA, limbs=limbs) - ref).max()
            if err > 1e-5:
                raise SystemExit(f"{kind} T={t_len}: max abs err {err:.3g} > 1e-5")
            base = best_ms(partial(pyskl_render, *args, sigma=SIGMA, limbs=limbs), 3 if t_len > 48 else 7)
            ours, floor = {}, {}
            for dt in (np.float32, np.float16):
                ours[dt] = best_ms(partial(render_volume, *args, sigma=SIGMA, limbs=limbs, dtype=dt), 30)
                floor[dt] = best_ms(partial(_alloc_floor, (len(limbs or kp[0, 0]), t_len, SIZE, SIZE), dt), 30)
            rows.append((kind, t_len, base, ours, floor, err))
    print(
        "| volume | T | pyskl numpy (ms) | ours float32 (ms) | ours float16 (ms) | speed-up f32 / f16 "
        "| alloc floor f32 / f16 (ms) | max abs err |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind, t_len, base, ours, floor, err in rows:
        f32, f16 = ours[np.float32], ours[np.float16]
        print(
            f"| {kind} | {t_len} | {base:.1f} | {f32:.2f} | {f16:.2f} | {base / f32:.0f}× / {base / f16:.0f}× "
            f"| {floor[np.float32]:.2f} / {floor[np.float16]:.2f} | {err:.1e} |"
        )


if __name__ == "__main__":
    main()
