"""Benchmark one CPU training step (forward, cross-entropy, backward, grad clip, SGD) per model config.

Each configuration runs in its own process so its peak RSS (``ru_maxrss``) is its own; random heatmap
clips in channels_last_3d, as the trainer lays them out, batch ``--batch`` (8), 60 classes, ``--threads`` torch threads
(default: all cores); best and median of ``--steps`` steps after one warm-up; each ``--precision``: float32,
and bf16 autocast as ``skel train --bf16`` runs it (where the CPU computes bf16 natively; else float32); each
``--stem-pool``: the SlowOnly stem's pool as the models build it (``kernel``: models/maxpool.py, its C kernel
under bf16 autocast) or PyTorch's ``nn.MaxPool3d`` (``torch``), to measure the kernel against it.

    .venv/bin/python -m bench.bench_train --steps 3 --threads 1 [--precision fp32 bf16] [--stem-pool kernel torch]
        [--configs NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from inference.device import autocast, cpu_bf16
from models import build_model
from models.maxpool import StemPool

# name -> (model, backbone overrides, clip_len, size)
CONFIGS: dict[str, tuple[str, dict, int, int]] = {
    "slowonly (paper)": ("slowonly", {}, 48, 56),
    "c3d_light (paper)": ("c3d_light", {}, 48, 56),
    "x3d_shallow (paper)": ("x3d_shallow", {}, 48, 56),
    "slowonly small, 48x56": ("slowonly", {"base_channels": 16, "stage_blocks": (2, 3, 2)}, 48, 56),
    "slowonly small, 16x32": ("slowonly", {"base_channels": 16, "stage_blocks": (2, 3, 2)}, 16, 32),
}
CLASSES = 60


def one(name: str, steps: int, threads: int, batch: int, bf16: bool, torch_pool: bool) -> dict:
    """Time ``steps`` training steps of one configuration in this process (``torch_pool``: the stem pool as
    PyTorch's ``nn.MaxPool3d``)."""
    torch.set_num_threads(threads)
    model_name, overrides, clip_len, size = CONFIGS[name]
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=CLASSES, **overrides).train()
    pool = getattr(model.backbone, "maxpool", None)
    if torch_pool and isinstance(pool, StemPool):
        model.backbone.maxpool = torch.nn.MaxPool3d(pool.kernel_size, pool.stride, pool.padding)
    model = model.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4)
    x = torch.rand(batch, 17, clip_len, size, size).contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(0, CLASSES, (batch,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with autocast(torch.device("cpu"), bf16_on_cpu=bf16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 40.0)
        optimizer.step()
        times.append(time.perf_counter() - start)
    times = times[1:]
    return {
        "name": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "best_s": min(times), "median_s": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    parser.add_argument("--stem-pool", nargs="+", choices=["kernel", "torch"], default=["kernel"])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--one", choices=list(CONFIGS), help="measure one configuration (internal)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps, args.threads, args.batch, args.precision == ["bf16"],
                             args.stem_pool == ["torch"])))
        return
    print(f"batch {args.batch}, {CLASSES} classes, {args.threads} thread(s), torch {torch.__version__}, native bf16: "
          f"{cpu_bf16()}, load average {os.getloadavg()[0]:.1f}\n")
    print("| config | precision | stem pool | params (M) | clip | step best / median (s) | clips/s (best) | peak RSS "
          "(MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        _, _, clip_len, size = CONFIGS[name]
        for precision in args.precision:
            for pool in args.stem_pool:
                out = subprocess.run([sys.executable, "-m", "bench.bench_train", "--one", name, "--steps",
                                      str(args.steps), "--threads", str(args.threads), "--batch", str(args.batch),
                                      "--precision", precision,
                                      "--stem-pool", pool], check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                print(f"| {name} | {precision} | {pool} | {r['params_m']:.2f} | {clip_len}x{size}² | "
                      f"{r['best_s']:.3f} / {r['median_s']:.3f} | {args.batch / r['best_s']:.1f} | "
                      f"{r['peak_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
