"""Benchmark render_volume against upstream's GeneratePoseTarget (mmaction2 1.2.0 = pyskl's) on one core.

Three workloads at 64×64, T = 48, σ 0.6, joint and limb (skel's COCO limbs, passed to both):
2 plausible moving people (walking, waving); real Penn Action poses after PoseCompact + resize to 64
(20 clips, 48 frames each); 2 persons with keypoints uniform over the frame (long limbs). skel is
timed the way the render stage calls it — stored dtype (uint8), stored layout [T, K, H, W], into a
reused buffer — and, for reference, as the float32 [K, T, H, W] contract with a fresh output. Outputs
must agree with upstream's float32 within 1e-5 (max abs err) before anything is timed. Best of N per
sample, in CPU time of the calling process (one thread), so other load on the machine does not inflate
either side; the upstream side runs in its own venv (``bash bench/baseline_venv.sh``).

    .venv/bin/python -m bench.bench_render
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bench import baseline  # noqa: E402
from inference.sampling import sample_test  # noqa: E402
from stages.render.heatmap import render_volume  # noqa: E402
from stages.render.stage import RenderParams, prepare  # noqa: E402
from stores.coco import LIMBS  # noqa: E402
from stores.triplets import Skeleton  # noqa: E402

SIZE, T, SIGMA = 64, 48, 0.6

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

Sample = tuple[np.ndarray, np.ndarray]


def two_people(seed: int = 0) -> Sample:
    """Two people ~44 px tall swinging arms and legs while drifting sideways; returns kp, score."""
    rng = np.random.default_rng(seed)
    kps, scores = [], []
    for person, (cx, cy, height) in enumerate([(20.0, 32.0, 44.0), (44.0, 30.0, 40.0)]):
        phase = np.arange(T)[:, None] * 0.25 + person
        pose = np.broadcast_to(POSE, (T, 17, 2)).copy()
        swing = np.sin(phase)
        pose[:, ARMS, 1] -= 0.12 * swing * np.array([1, -1, 1, -1])
        pose[:, ARMS, 0] += 0.06 * swing * np.array([1, 1, 2, 2])
        pose[:, LEGS, 0] += 0.05 * swing * np.array([1, -1, 2, -2])
        drift = 6.0 * np.sin(np.arange(T) * 0.03 + person)[:, None]
        xy = pose * height + np.stack([cx + drift, np.full_like(drift, cy)], axis=-1)
        kps.append(xy + rng.normal(0, 0.4, xy.shape))
        scores.append(rng.uniform(0.4, 1.0, (T, 17)))
    return np.stack(kps).astype(np.float32), np.stack(scores).astype(np.float32)


def uniform(seed: int = 0) -> Sample:
    """2 persons whose keypoints are uniform over the frame: limbs as long as the frame."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, SIZE, (2, T, 17, 2)).astype(np.float32),
            rng.uniform(0.3, 1.0, (2, T, 17)).astype(np.float32))


def penn(n: int, tmp: Path) -> list[Sample]:
    """``n`` real Penn Action clips after PoseCompact + resize to 64, 48 uniformly sampled frames each."""
    out = []
    for kp, sc, shape, _ in baseline.penn_samples(n, tmp):
        k, s, frames, _ = prepare(Skeleton(kp, sc), shape, RenderParams(size=SIZE))
        pick = sample_test(len(frames), T, 1)[0]
        out.append((k[:, pick], s[:, pick]))
    return out


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):  # CPU time of this process: what a call costs one core, whatever else runs
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best * 1e3


def ours_ms(samples: list[Sample], limbs: list | None, repeat: int) -> tuple[float, float]:
    """Mean over samples of best-of-``repeat`` ms: (stage call: uint8 [T, K, H, W] into a reused buffer,
    contract call: fresh float32 [K, T, H, W])."""
    k = 17 if limbs is None else len(limbs)
    buf = np.empty((T, k, SIZE, SIZE), np.uint8)
    stage, contract = [], []
    for kp, sc in samples:
        stage.append(best_ms(lambda kp=kp, sc=sc: render_volume(kp, sc, (SIZE, SIZE), sigma=SIGMA, limbs=limbs,
                                                                 dtype=np.uint8, layout="tkhw", out=buf), repeat))
        contract.append(best_ms(lambda kp=kp, sc=sc: render_volume(kp, sc, (SIZE, SIZE), sigma=SIGMA, limbs=limbs),
                                repeat))
    return float(np.mean(stage)), float(np.mean(contract))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--penn", type=int, default=20, help="Penn Action clips in the real-pose workload")
    parser.add_argument("--repeat", type=int, default=5, help="runs per sample (best of)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print("| workload | volume | upstream GeneratePoseTarget (ms) | skel stage call, uint8 (ms) | speed-up | "
          "skel float32 fresh (ms) | speed-up | max abs err |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        workloads = [("2 moving people", [two_people(s) for s in range(4)]),
                     (f"Penn Action poses ({args.penn} clips)", penn(args.penn, Path(tmp))),
                     ("uniform keypoints (long limbs)", [uniform(s) for s in range(4)])]
        for name, samples in workloads:
            for kind, limbs in (("joint", None), ("limb", [tuple(lb) for lb in LIMBS])):
                shaped = [(kp, sc, (SIZE, SIZE)) for kp, sc in samples]
                theirs, ms = baseline.render_baseline(shaped, limbs=limbs is not None, repeat=args.repeat)
                err = max(float(np.abs(render_volume(kp, sc, (SIZE, SIZE), sigma=SIGMA, limbs=limbs) - ref).max())
                          for (kp, sc), ref in zip(samples, theirs, strict=True))
                if err > 1e-5:
                    raise SystemExit(f"{name} {kind}: max abs err {err:.3g} > 1e-5")
                base = float(np.mean(ms))
                stage, contract = ours_ms(samples, limbs, args.repeat * 6)
                print(f"| {name} | {kind} | {base:.1f} | {stage:.3f} | {base / stage:.0f}× | {contract:.3f} | "
                      f"{base / contract:.0f}× | {err:.1e} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
