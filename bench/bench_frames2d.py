"""Benchmark the pose SlowOnly's frames-as-batch 2D execution (``models/frames2d.py``) against Conv3d.

Seconds per training step (forward, cross-entropy, backward, SGD step) with 2 torch threads, for:

- ``conv3d``: the default Conv3d path, NCDHW input;
- ``conv3d_cl``: the same Conv3d path fed a ``channels_last_3d`` input (no code change; for reference);
- ``frames2d_nchw`` / ``frames2d``: the 2D path with NCHW / channels_last (its default) activations.

All variants share one model and one batch and run interleaved, round after round, so load drifts on a
shared machine hit them alike; the best of ``--rounds`` (after one warm-up step each) is reported, with
the speed-up over ``conv3d``. Configs: the CPU recipe (base 16, blocks (2, 3, 2), 16 x 32², 15 classes,
batch 16) and the paper config (base 32, blocks (4, 6, 3), 48 x 56², 60 classes, batch 4).

    .venv/bin/python -m bench.bench_frames2d                      # both configs, markdown table on stdout
    .venv/bin/python -m bench.bench_frames2d --config cpu_recipe --rounds 9
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import models.frames2d as frames2d
from models import build_model

CONFIGS = {  # name: (backbone overrides, num_classes, batch shape [N, K, T, H, W], default rounds)
    "cpu_recipe": (dict(base_channels=16, stage_blocks=(2, 3, 2)), 15, (16, 17, 16, 32, 32), 9),
    "paper": ({}, 60, (4, 17, 48, 56, 56), 4),
}
VARIANTS = {  # name: (frames2d, 2D memory format, input memory format)
    "conv3d": (False, torch.channels_last, torch.contiguous_format),
    "conv3d_cl": (False, torch.channels_last, torch.channels_last_3d),
    "frames2d_nchw": (True, torch.contiguous_format, torch.contiguous_format),
    "frames2d": (True, torch.channels_last, torch.contiguous_format),
}


def bench_config(name: str, rounds: int) -> dict[str, float]:
    """Best training-step seconds per variant for one config."""
    overrides, num_classes, shape, _ = CONFIGS[name]
    torch.manual_seed(0)
    model = build_model("slowonly", num_classes=num_classes, **overrides).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4)
    x = torch.rand(shape)
    labels = torch.randint(0, num_classes, (shape[0],))
    inputs = {fmt: x.contiguous(memory_format=fmt) for fmt in (torch.contiguous_format, torch.channels_last_3d)}

    def step(variant: str) -> float:
        on, fmt2d, fmt_in = VARIANTS[variant]
        model.backbone.frames2d = on
        frames2d.MEMORY_FORMAT = fmt2d
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs[fmt_in]), labels).backward()
        opt.step()
        return time.perf_counter() - start

    for variant in VARIANTS:
        step(variant)  # warm-up: oneDNN primitives, allocator
    best = dict.fromkeys(VARIANTS, float("inf"))
    for _ in range(rounds):
        for variant in VARIANTS:
            best[variant] = min(best[variant], step(variant))
    frames2d.MEMORY_FORMAT = torch.channels_last
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append", help="default: all")
    parser.add_argument("--rounds", type=int, help="timed rounds per variant (default: per config)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; seconds per training step, best of N\n")
    print("| config | batch | N | " + " | ".join(VARIANTS) + " | speed-up " + " / ".join(list(VARIANTS)[1:]) + " |")
    print("|---" * (len(VARIANTS) + 4) + "|")
    for name in args.config or list(CONFIGS):
        rounds = args.rounds or CONFIGS[name][3]
        best = bench_config(name, rounds)
        base = best["conv3d"]
        times = " | ".join(f"{best[v]:.3f}" for v in VARIANTS)
        ratios = " / ".join(f"{base / best[v]:.2f}x" for v in list(VARIANTS)[1:])
        print(f"| {name} | {CONFIGS[name][2][0]} | {rounds} | {times} | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
