"""Render-stage scale: many NTU-like samples through `skel import` + `skel render`, files and bytes per sample.

Samples: 2 persons each, 80-120 frames, 1920×1080 frames, COCO-17 with sway, walking drift and detector-
like noise and scores (generated here; storage and throughput do not depend on the action). Both stages
run as `skel` CLI processes with a local Dask cluster of ``--workers`` processes, joint volumes at 64×64
uint8 (the defaults). Reports wall seconds, CPU seconds of the workers per sample (from the shard
timings in the manifest), bytes and files per sample, and writes the extrapolation table for the
README (NTU60, NTU120, Kinetics-400 skeletons).

    .venv/bin/python -m bench.bench_scale --samples 20000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.bench_render import POSE
from stores.safepickle import dump_pickle

REPO = Path(__file__).resolve().parents[1]
# name: (clips, mean frames per clip as stored by skel: T capped at 300)
SAMPLES_PER_SHARD = 64  # RenderParams' default
DATASETS = {"NTU60": (56_880, 100), "NTU120": (114_480, 100), "Kinetics-400 skeletons": (240_000, 300)}


def ntu_like(n: int, seed: int = 0) -> dict:
    """A pyskl annotation dict of ``n`` two-person clips (60 classes, 80-120 frames)."""
    rng = np.random.default_rng(seed)
    anns = []
    for i in range(n):
        t = int(rng.integers(80, 121))
        kps, scores = [], []
        for person in range(2):
            height = rng.uniform(350, 650)
            centre = np.array([rng.uniform(500, 1400), rng.uniform(450, 650)])
            phase = np.arange(t)[:, None] * rng.uniform(0.1, 0.3) + person
            pose = np.broadcast_to(POSE, (t, 17, 2)).copy()
            pose[:, 7:11, 1] -= 0.1 * np.sin(phase) * np.array([1, -1, 1, -1])
            drift = np.cumsum(rng.normal(0, 2.0, (t, 1, 2)), axis=0)
            kps.append(pose * height + centre + drift + rng.normal(0, 3.0, (t, 17, 2)))
            scores.append(rng.uniform(0.3, 1.0, (t, 17)))
        anns.append({"frame_dir": f"S{i:06d}", "label": i % 60, "img_shape": (1080, 1920),
                     "original_shape": (1080, 1920), "total_frames": t,
                     "keypoint": np.stack(kps).astype(np.float32),
                     "keypoint_score": np.stack(scores).astype(np.float32)})
    names = [a["frame_dir"] for a in anns]
    return {"split": {"train": names}, "annotations": anns}


def skel(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", *args, "-q"], cwd=REPO, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loader-clips-per-core", type=float, default=1000.0,
                        help="measured skel loader rate (bench_loader) for the loader-cores column")
    parser.add_argument("--gpu-clips-per-s", type=float, default=400.0,
                        help="training clips/s of one GPU at the paper's model size (assumed, see README)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=REPO.parent) as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        dump_pickle(ntu_like(args.samples), work / "ntu_like.pkl")
        print(f"generated {args.samples} samples in {time.perf_counter() - start:.0f} s")
        t_import = skel("import", str(work / "ntu_like.pkl"), "-w", str(work), "-j", str(args.workers))
        t_render = skel("render", "-w", str(work), "-j", str(args.workers))
        (out,) = (work / "render").iterdir()
        n = json.loads((out / "manifest.json").read_text())["summary"]["samples"]
        frames = int(pq.read_table(out / "index.parquet", columns=["n_frames"]).column("n_frames").to_numpy().sum())
        files = sum(1 for _ in out.rglob("*"))
        nbytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shards = -(-n // SAMPLES_PER_SHARD)
    print(f"load average before: {load:.1f}, after: {os.getloadavg()[0]:.1f}")
    print(f"import {t_import:.1f} s, render {t_render:.1f} s wall for {n} samples / {frames} frames "
          f"({args.workers} workers): {n / t_render:.0f} samples/s, {t_render * args.workers / n * 1e3:.2f} "
          f"core-ms/sample")
    print(f"{nbytes / n / 1e3:.1f} kB/sample, {nbytes / frames / 1e3:.2f} kB/frame; {files} files+dirs in the "
          f"output = {files / shards:.1f} per shard of {SAMPLES_PER_SHARD} ({files / n:.3f} per sample)")
    core_s_per_frame = t_render * args.workers / frames  # an upper bound: includes cluster start-up
    print("\n| dataset | clips | frames stored | disk | files + dirs | render core-hours | hours on 16 / 64 cores "
          "| loader cores per GPU |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (clips, mean_t) in DATASETS.items():
        total = clips * mean_t
        core_h = core_s_per_frame * total / 3600
        print(f"| {name} | {clips:,} | {total / 1e6:.1f} M | {nbytes / frames * total / 1e9:.0f} GB | "
              f"{files / shards * clips / SAMPLES_PER_SHARD:,.0f} | {core_h:.1f} | {core_h / 16:.2f} / "
              f"{core_h / 64:.2f} | {args.gpu_clips_per_s / args.loader_clips_per_core:.2f} |")


if __name__ == "__main__":
    main()
