"""Know the floor: how close a Penn training step comes to what this CPU can do (issue 25 item 5).

The shipped Penn model (``build_model("slowonly")``, base 16, blocks 2-3-2, 17 channels, 15 classes, 16×32²
clips, batch 16, channels_last_3d as the train stage runs it): (a) FLOPs per clip of a forward and of a training
step, counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls, 2 FLOPs per
multiply-add; BatchNorm, ReLU, pooling and the optimizer are not counted); (b) training-step throughput
(forward, cross-entropy, backward, SGD step) at 1 and 2 threads, hence achieved FLOP/s; (c) the machine's
peak on the same run: ``torch.mm`` 2048² and a conv3d forward of the model's largest layer shape, in the
step's precision; (d) the same step with every BatchNorm taken out (an upper bound on what any faster
BatchNorm could save); and where one step's time goes by op type (``torch.profiler``, self CPU time).
``--precision bf16`` runs the step under bf16 autocast as ``skel train --bf16`` does (on a CPU that computes
bf16 natively), against bf16 peaks. Timings are best of N (other jobs' load only makes a run slower).

    .venv/bin/python -m bench.bench_floor --precision fp32 bf16
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from inference.device import autocast, cpu_bf16
from models import build_model

BATCH, CLASSES, CHANNELS, CLIP, SIZE = 16, 15, 17, 16, 32
CL = torch.channels_last_3d


def penn_model() -> nn.Module:
    """The Penn recipe's SlowOnly (workflows/penn_action.toml) in training mode, channels_last_3d."""
    torch.manual_seed(0)
    model = build_model("slowonly", num_classes=CLASSES, in_channels=CHANNELS, base_channels=16,
                        stage_blocks=(2, 3, 2))
    return model.to(memory_format=CL).train()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(BATCH, CHANNELS, CLIP, SIZE, SIZE).contiguous(memory_format=CL)
    return x, torch.randint(0, CLASSES, (BATCH,))


def step_fn(model: nn.Module, bf16: bool) -> Callable[[], None]:
    """One training step as the train stage takes it: forward, cross-entropy, backward, SGD with momentum (the
    forward and loss under bf16 autocast with ``bf16``)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4)
    x, y = batch()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(torch.device("cpu"), bf16_on_cpu=bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def without_batchnorm(model: nn.Module) -> nn.Module:
    """A copy with every BatchNorm3d replaced by the identity: not a model to train, a bound on BatchNorm's cost."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm3d):
                setattr(parent, name, nn.Identity())
    return model


def flops(model: nn.Module) -> tuple[float, float]:
    """(forward, training step) FLOPs per clip."""
    x, y = batch()
    with FlopCounterMode(display=False) as fwd:
        model(x)
    with FlopCounterMode(display=False) as train:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return fwd.get_total_flops() / BATCH, train.get_total_flops() / BATCH


def best_s(fn: Callable[[], object], warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def largest_conv(model: nn.Module) -> tuple[nn.Conv3d, tuple[int, ...], float]:
    """The Conv3d with the most FLOPs in one forward, its input shape and its FLOPs."""
    seen: list[tuple[float, nn.Conv3d, tuple[int, ...]]] = []

    def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.kernel_size[2]
        seen.append((2.0 * out.numel() * mod.in_channels // mod.groups * k, mod, tuple(args[0].shape)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv3d)]
    with torch.no_grad():
        model(batch()[0])
    for h in handles:
        h.remove()
    f, conv, shape = max(seen, key=lambda s: s[0])
    return conv, shape, f


CATEGORIES = [("conv backward", ("convolution_backward",)), ("conv forward", ("conv",)),
              ("batchnorm", ("batch_norm",)), ("relu", ("relu", "threshold_backward")),
              ("optimizer", ("_foreach", "sgd")), ("pooling", ("pool",)), ("dtype casts", ("copy_", "_to_copy"))]


def profile_split(step: Callable[[], None]) -> dict[str, float]:
    """Self CPU ms of one training step by op type."""
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    split: dict[str, float] = {}
    for ev in prof.key_averages():
        name = ev.key.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "other")
        split[cat] = split.get(cat, 0.0) + ev.self_cpu_time_total / 1e3
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per thread count (best of)")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
                        help="bf16: the step under bf16 autocast against bf16 peaks (skipped where not native)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    model = penn_model()
    fwd, train = flops(model)
    conv, shape, conv_flops = largest_conv(model)
    print(f"FLOPs per clip: forward {fwd / 1e6:.1f} M, training step {train / 1e6:.1f} M ({train / fwd:.2f}× forward)")
    print(f"largest conv: {conv} on input {shape}, {conv_flops / BATCH / 1e6:.1f} MFLOP per clip")
    for precision in args.precision:
        if precision == "bf16" and not cpu_bf16():
            print("\nbf16: this CPU does not compute bf16 natively; skipped")
            continue
        floor_table(model, precision == "bf16", fwd, train, conv, shape, conv_flops, args.steps)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def floor_table(model: nn.Module, bf16: bool, fwd: float, train: float, conv: nn.Conv3d, shape: tuple[int, ...],
                conv_flops: float, steps: int) -> None:
    """The throughput rows and the op-type split of one precision."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.rand(2048, 2048, dtype=dtype), torch.rand(2048, 2048, dtype=dtype)
    cx = torch.rand(shape).contiguous(memory_format=CL)
    print(f"\n{'bf16 autocast' if bf16 else 'float32'}\n")
    print("| threads | train step best (ms) | clips/s | achieved GFLOP/s | mm 2048² GFLOP/s | largest conv3d fwd "
          "GFLOP/s | achieved / mm peak | achieved / conv peak | step without BatchNorm (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    splits = {}
    bare = without_batchnorm(model)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        step = step_fn(model, bf16)
        t_step = best_s(step, 3, steps)
        t_bare = best_s(step_fn(bare, bf16), 3, steps)
        mm = 2 * 2048**3 / best_s(lambda: torch.mm(a, b), 1, 5)
        with torch.no_grad(), autocast(torch.device("cpu"), bf16_on_cpu=bf16):
            cv = conv_flops / best_s(lambda: conv(cx), 2, 10)
        achieved = train * BATCH / t_step
        print(f"| {threads} | {t_step * 1e3:.0f} | {BATCH / t_step:.0f} | {achieved / 1e9:.1f} | {mm / 1e9:.1f} | "
              f"{cv / 1e9:.1f} | {achieved / mm:.0%} | {achieved / cv:.0%} | {t_bare * 1e3:.0f} |", flush=True)
        splits[threads] = profile_split(step)
    print("\n| op type | self CPU ms, 1 thread | share | GFLOP/s | 2 threads | share |")
    print("|---|---|---|---|---|---|")
    totals = {t: sum(s.values()) for t, s in splits.items()}
    counted = {"conv forward": fwd * BATCH, "conv backward": (train - fwd) * BATCH}  # FLOPs by the counter
    for cat in sorted(splits[1], key=splits[1].get, reverse=True):
        rate = f"{counted[cat] / splits[1][cat] / 1e6:.1f}" if cat in counted else "—"
        print(f"| {cat} | {splits[1][cat]:.0f} | {splits[1][cat] / totals[1]:.0%} | {rate} | "
              f"{splits[2].get(cat, 0):.0f} | {splits[2].get(cat, 0) / totals[2]:.0%} |")


if __name__ == "__main__":
    main()
