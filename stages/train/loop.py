"""The inner loops: one training epoch (AMP, grad clipping, per-iteration LR) and a top-1 evaluation.

Both work the same with or without DDP; counts are summed over ranks. Progress (loss, lr, clips/s,
ETA) is drawn on stderr by the primary rank only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn

from inference.device import Batch, autocast, to_device
from pipeline.errors import SkelError
from pipeline.faults import crash_point
from pipeline.progress import Heartbeat, stage_progress
from stages.train import dist
from stages.train.extra_aug import BatchAugment

logger = logging.getLogger("skel")


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR factor per optimizer step: linear warm-up, then cosine annealing to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))

    return factor


@dataclass
class Optim:
    """What one optimizer step needs."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    grad_clip: float


def _progress(description: str, total: int, quiet: bool) -> tuple[Progress, int]:
    fields = "loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[rate]:.1f} clips/s"
    progress = stage_progress(quiet=quiet or dist.rank() != 0, fields=fields, transient=True)
    return progress, progress.add_task(description, total=total, loss=float("nan"), lr=0.0, rate=0.0)


Criterion = Callable[[Any, torch.Tensor], torch.Tensor]  # (model outputs, labels) -> scalar loss
OnDevice = Callable[[Any, torch.device], tuple[Batch, torch.Tensor]]  # loader batch -> (model input, labels)


def _check_finite(loss: torch.Tensor, device: torch.device, where: str, lr: float) -> None:
    """Stop on a non-finite loss before it reaches the weights; every DDP rank stops at the same step."""
    bad = not torch.isfinite(loss.detach()).item()
    if dist.world_size() > 1:
        bad = dist.all_sum([float(bad)], device)[0] > 0
    if bad:
        raise SkelError(f"{where}: loss is {loss.item()} (lr {lr:.4g}); nothing of this epoch is kept")


def train_epoch(model: nn.Module, batches: Iterable, n_batches: int, opt: Optim, device: torch.device, *,
                description: str, log: Callable[[dict], None], log_every: int, on_device: OnDevice,
                criterion: Criterion = F.cross_entropy, augment: BatchAugment | None = None,
                bf16_on_cpu: bool = False, quiet: bool = False) -> dict:
    """One pass over ``batches``; ``on_device`` moves and augments each on the device, then ``augment`` (if
    any) maps the clips and labels to augmented clips and (soft) targets for ``criterion``; ``bf16_on_cpu``:
    bf16 autocast on a CPU that computes bf16 natively (``inference.device.autocast``); ``quiet``: no
    progress bar. Returns mean loss, last lr, global clips/s and optimizer steps taken."""
    model.train()
    world = dist.world_size()
    loss_sum = clips = steps = 0.0
    start = time.perf_counter()
    progress, task = _progress(description, n_batches, quiet)
    heartbeat = Heartbeat(quiet=quiet or dist.rank() != 0)
    with progress:
        for batch in batches:
            x, y = on_device(batch, device)
            target = y
            if augment is not None:
                x, target = augment(x, y)
                x = to_device(x, device)
            with autocast(device, bf16_on_cpu=bf16_on_cpu):
                loss = criterion(model(x), target)
            lr = opt.optimizer.param_groups[0]["lr"]
            _check_finite(loss, device, f"{description} step {opt.scheduler.last_epoch + 1}", lr)
            opt.optimizer.zero_grad(set_to_none=True)
            opt.scaler.scale(loss).backward()
            opt.scaler.unscale_(opt.optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
            opt.scaler.step(opt.optimizer)
            opt.scaler.update()
            opt.scheduler.step()
            steps += 1
            loss_sum += loss.item()
            clips += len(y) * world
            rate = clips / (time.perf_counter() - start)
            progress.update(task, advance=1, loss=loss.item(), lr=lr, rate=rate)
            if heartbeat.due():
                logger.info("%s: step %d of %d, loss %.4f, lr %.2e, %.1f clips/s", description, steps, n_batches,
                            loss.item(), lr, rate)
            crash_point(f"step:{opt.scheduler.last_epoch}")
            if steps % log_every == 0:  # no timings: a resumed run logs the same bytes
                log({"step": opt.scheduler.last_epoch, "loss": round(loss.item(), 5), "lr": lr})
    seconds = time.perf_counter() - start
    return {"loss": loss_sum / max(steps, 1), "lr": lr if steps else None, "steps": int(steps),
            "clips_per_s": round(clips / seconds, 2), "train_seconds": round(seconds, 2)}


@torch.no_grad()
def top1(model: nn.Module, batches: Iterable, device: torch.device) -> tuple[float, int]:
    """Top-1 accuracy and sample count over all ranks' batches (items [N, clips, K, T, H, W], or a tuple of
    such tensors for RGBPose)."""
    model.eval()
    correct = total = 0
    for x, y in batches:
        with autocast(device):
            probs = model.predict_proba(to_device(x, device))
        correct += int((probs.argmax(1).cpu() == y).sum())
        total += len(y)
    correct, total = dist.all_sum([correct, total], device)
    return (correct / total if total else float("nan")), int(total)
