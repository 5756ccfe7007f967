"""The train stage's work (stages.train.stage declares it): one epoch per shard, each resuming from the previous
epoch's state file, and finalize's best/last checkpoints, metrics and curves. Imports torch; the stage module
does not, so recipes parse and plan without it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from inference import checkpoint
from inference.clip_spec import clip_spec_config
from inference.data import eval_set
from inference.device import autocast, pick_device, to_device
from inference.splits import split_items, split_label
from inference.views import num_classes
from models import uses_frames
from pipeline.atomic import write_bytes
from pipeline.errors import SkelError
from pipeline.faults import crash_point
from pipeline.log import say
from pipeline.stage import Context, Shard
from pipeline.together import die_with
from stages.train import data, dist
from stages.train.checkpoint import save as save_checkpoint
from stages.train.curves import save_curves
from stages.train.dataset import PREFETCH, loader_sampler
from stages.train.extra_aug import ExtraAug, batch_augment
from stages.train.loop import Optim, cosine_with_warmup, top1, train_epoch
from stages.train.params import TrainParams
from stages.train.stage import EPOCHS, METRICS, epochs_for, newer_best, select
from stages.train.transfer import load_pretrained, log_report, pretrained_weights
from stores.volumes import VolumeStore

logger = logging.getLogger("skel")
_TOLD_THREADS: set[str] = set()  # runs (Context.run) told that they keep the thread count they began with
# kept in the shard records, not in the outputs a resume must equal
TIMINGS = ("clips_per_s", "train_seconds", "threads")


def epoch_shards(ctx: Context) -> list[Shard]:
    """One shard per epoch of the budget (the process count and the splits were checked before the output
    existed: ``TrainStage.check_data``)."""
    p: TrainParams = ctx.params
    train, _ = select(p, split_items(VolumeStore(ctx.inputs["volumes"]), p.train_split))
    return [Shard(f"epoch-{e:03d}", e) for e in range(epochs_for(p, len(train), dist.world_size()))]


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _epoch_file(epoch: int, suffix: str) -> str:
    """An epoch's own file, relative to the output: its state (``.pt``) or its metric lines (``.jsonl``)."""
    return f"{EPOCHS}/{epoch:03d}{suffix}"


def _worker_init(trainer: int, _worker_id: int) -> None:
    """A DataLoader worker's init: it dies with its trainer, so ``kill -9`` of a training leaves no process, and
    it ignores SIGINT, which it was born blocking (``_Loader``): a terminal's Ctrl-C is the trainer's to answer."""
    die_with(trainer)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # drops a Ctrl-C pending since the fork
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    crash_point("loader-worker")


class _Loader(DataLoader):
    """Workers start with SIGINT blocked. A terminal's Ctrl-C reaches the whole process group; one that came while
    an epoch's workers were forking interrupted a worker inside Python's at-fork hooks, before DataLoader's own
    handling: 'Exception ignored ... KeyboardInterrupt', or 'DataLoader worker exited unexpectedly' instead of the
    trainer's clean stop, or a trainer waiting for ever. Blocked here, the trainer takes a pending Ctrl-C once its
    workers are started, and a worker drops it (``_worker_init``)."""

    def __iter__(self) -> Any:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return _machine_told(super().__iter__())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _machine_told(batches: Iterator) -> Iterator:
    """The batches; a worker killed from outside (the OOM killer, ``kill``) raises a ChildProcessError, an OSError,
    so the run failed for the machine, not for its work (pipeline.runner): ``skel verify --repair`` reruns it. torch
    raises a RuntimeError, as it does for a fault of the dataset."""
    try:
        yield from batches
    except RuntimeError as exc:
        if not str(exc).startswith("DataLoader worker (pid"):
            raise
        raise ChildProcessError(f"{exc} (killed from outside, or out of memory)") from exc


def loader(dataset: Dataset, *, workers: int, **kwargs: Any) -> DataLoader:
    """A DataLoader whose ``workers`` are forked where the OS can (Linux), even in a process that was itself
    spawned (a side-by-side training under ``skel run``), whose default would spawn them: a spawned worker
    imports torch and the stage anew for every epoch. Each worker dies with its trainer and leaves Ctrl-C to it."""
    if not workers:
        return DataLoader(dataset, **kwargs)
    return _Loader(dataset, num_workers=workers, worker_init_fn=functools.partial(_worker_init, os.getpid()),
                   multiprocessing_context="fork" if sys.platform.startswith("linux") else None, **kwargs)


def _log_to(out: Path, epoch: int) -> Callable[[dict], None]:
    """A JSONL appender for the epoch's own metrics file, emptied first (a killed run may have begun it)."""
    if dist.rank() != 0:
        return lambda row: None
    path = out / _epoch_file(epoch, ".jsonl")
    write_bytes(path, b"")

    def log(row: dict) -> None:
        with open(path, "a") as f:
            f.write(json.dumps({"epoch": epoch, **row}) + "\n")

    return log


def _resume_state(out: Path, epoch: int, world: int) -> dict | None:
    """The state ``epoch`` starts from: the previous epoch's state file (checked against its record by the
    runner before this shard runs), or None for the first epoch."""
    if epoch == 0:
        return None
    state = checkpoint.load(out / _epoch_file(epoch - 1, ".pt"))
    if state["epoch"] != epoch:
        raise SkelError(f"{out / _epoch_file(epoch - 1, '.pt')}: holds epoch {state['epoch']}, not {epoch}")
    if state["world_size"] != world:
        raise SkelError(f"{out}: started with {state['world_size']} process(es); resume with --nproc "
                        f"{state['world_size']}")
    return state


def _build(p: TrainParams, config: dict, device: torch.device, total_steps: int) -> tuple[torch.nn.Module, Optim]:
    """A fresh model on ``device`` and its SGD / per-iteration cosine / grad-scaler optimizer; the backbone's
    lr is scaled by ``backbone_lr_mult`` (0: frozen, left out of the optimizer)."""
    model = checkpoint.model_from_config(config).to(device, memory_format=torch.channels_last_3d)
    backbone = [q for n, q in model.named_parameters() if n.startswith("backbone.")]
    rest = [q for n, q in model.named_parameters() if not n.startswith("backbone.")]
    groups = [{"params": rest}]
    if p.backbone_lr_mult:
        groups.append({"params": backbone, "lr": p.base_lr * p.backbone_lr_mult})
    else:
        for q in backbone:
            q.requires_grad_(False)
    optimizer = torch.optim.SGD(groups, lr=p.base_lr, momentum=p.momentum, weight_decay=p.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, p.warmup_steps))
    fp16 = device.type == "cuda" and not torch.cuda.is_bf16_supported()  # bf16 autocast needs no scaling
    return model, Optim(optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=fp16), p.grad_clip)


def _init_path(p: TrainParams, ctx: Context) -> Path | None:
    """The weights to start from: ``init``, or the best.pt of an upstream train output given as input
    ``pretrained`` (how a workflow chains pretraining and fine-tuning)."""
    up = ctx.inputs.get("pretrained")  # not both: TrainStage.check_inputs
    return Path(p.init) if p.init else up / checkpoint.BEST if up else None


def _step_seconds(model: torch.nn.Module, p: TrainParams, config: dict, device: torch.device) -> float:
    """Seconds of one training step (forward, backward, SGD) on a random batch in the trainer's precision, timed
    on a throwaway copy after one warm-up step; the run's weights and random streams are untouched."""
    net = copy.deepcopy(model).train()
    opt = torch.optim.SGD([q for q in net.parameters() if q.requires_grad] or net.parameters(), lr=0.0)
    shape = (p.batch_size // dist.world_size(), config["in_channels"], p.clip_len, p.input_size, p.input_size)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x = to_device(torch.rand(shape), device)
        y = torch.zeros(shape[0], dtype=torch.long, device=device)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            opt.zero_grad()
            with autocast(device, bf16_on_cpu=p.bf16):
                loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    return times[-1]


def _print_plan(p: TrainParams, n_train: int, n_val: int, per_epoch: int, epochs: int, step_s: float | None) -> None:
    """What the run will do, before it does it: clips, steps, epochs and an estimate of the training time."""
    source = p.val_split or f"carved from {split_label(p.train_split)}: {_share(p, n_train, n_val)}"
    val = f"{n_val} validation clips ({source})" if n_val else "no validation"
    est = f", about {per_epoch * epochs * step_s / 60:.1f} min of training steps here" if step_s else ""
    say(f"plan: {n_train} training clips x {p.repeat} / batch {p.batch_size} = {per_epoch} steps per epoch, "
        f"{epochs} epochs = {per_epoch * epochs} steps; {val}{est}")


def _share(p: TrainParams, n_train: int, n_val: int) -> str:
    """The carved share, and why when it is well above the one asked (``split.carve``: one clip of each class with
    two or more at least)."""
    n = n_train + n_val
    share = f"{n_val / n:.0%} of {n}"
    return share + (", one clip of each class with two or more at least" if n_val > 1.5 * p.carve_fraction(n) * n
                    else "")


def _restore(state: dict, model: torch.nn.Module, opt: Optim, device: torch.device) -> tuple[float, int]:
    """Load an epoch's state (``epochs/NNN.pt``: weights, optimizer, schedule, scaler, RNG); return (best top-1,
    its epoch)."""
    model.load_state_dict(state["model"])
    opt.optimizer.load_state_dict(state["optimizer"])
    opt.scheduler.load_state_dict(state["scheduler"])
    opt.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if device.type == "cuda" and state["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    return state["best_top1"], state["best_epoch"]


def _save(out: Path, model: torch.nn.Module, opt: Optim, device: torch.device, *, config: dict, record: dict,
          best: tuple[float, int], world: int, log_every: int) -> None:
    """Rank 0: the state after this epoch (weights, optimizer, schedule, scaler, RNG, best so far) in the
    epoch's own file: later epochs never rewrite it, so every record stays true (docs/architecture.md,
    Atomic shards and resume)."""
    epoch = record["epoch"]
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    save_checkpoint(out / _epoch_file(epoch, ".pt"), {
        "model": {k: v.cpu() for k, v in model.state_dict().items()}, "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(), "scaler": opt.scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng}, "epoch": epoch + 1, "step": record["step"],
        "best_top1": best[0], "best_epoch": best[1], "world_size": world, "config": config,
        "threads": torch.get_num_threads(), "log_every": log_every,
    })  # fmt: skip


def train_config(p: TrainParams, store: VolumeStore) -> dict:
    """What test/export need to rebuild the model and feed it (saved in every checkpoint)."""
    return {
        "model": p.model, "model_args": dict(p.model_args), "dropout": p.dropout,
        "num_classes": num_classes(store), "in_channels": int(store.attrs["channels"]),
        "clip_len": p.clip_len, "input_size": p.input_size, "test_size": int(store.attrs["size"]),
        "kind": store.attrs["kind"], "flip_perm": list(store.attrs["flip_perm"]),
        "classes": store.attrs.get("classes"),
        **clip_spec_config(p.model, p.model_args, p.clip_len, p.input_size, p.flip_ratio),
    }  # fmt: skip


@dist.lost_ranks_told()
def run_epoch(ctx: Context, shard: Shard) -> dict:
    """Train one epoch (the shard), from the previous epoch's state; its record (loss, validation top-1, the
    files it released)."""
    p: TrainParams = ctx.params
    epoch, rank, world = shard.payload, dist.rank(), dist.world_size()
    state = _resume_state(ctx.out, epoch, world)
    device = pick_device(p.device)
    cores = len(os.sched_getaffinity(0))
    # a run keeps its first epoch's thread count, --threads given again or not: float sums depend on it, and a
    # resume must give the bytes of an uninterrupted run (e.g. one started side by side on one core, resumed alone
    # on two); and its logging interval, which metrics.jsonl shows
    began = state.get("threads") if state else None
    threads = began or p.threads or dist.asked_threads() or max(1, cores // world)
    if began and p.threads and p.threads != began and rank == 0 and ctx.run not in _TOLD_THREADS:
        _TOLD_THREADS.add(ctx.run)  # once per run, not at each epoch it resumes
        logger.warning("resuming on %d threads, as the run began (threads %d applies to a new run: the weights "
                       "depend on it)", began, p.threads)
    log_every = state.get("log_every", p.log_every) if state else p.log_every
    torch.set_num_threads(threads)
    workers = min(p.workers, cores)  # no more loader processes than cores (a step run side by side has one)
    torch.manual_seed(p.seed)  # identical initial weights on every rank

    store = VolumeStore(ctx.inputs["volumes"])
    config = train_config(p, store)
    train = data.train_set(config, ctx.inputs, p.train_split, seed=p.seed, repeat=p.repeat,
                           flip_ratio=p.flip_ratio)
    train.items, val_items = select(p, train.items)
    train.set_epoch(epoch)
    sampler = loader_sampler(train, p.batch_size // world, rank=rank, world=world, seed=p.seed, epoch=epoch)
    batches = loader(train, workers=workers, sampler=sampler, batch_size=None, pin_memory=device.type == "cuda",
                     prefetch_factor=PREFETCH if workers else None)
    epochs = epochs_for(p, len(train.items), world)
    model, opt = _build(p, config, device, total_steps=epochs * len(batches))
    if state:
        best = _restore(state, model, opt, device)
    else:
        best = (-1.0, -1)
        init = _init_path(p, ctx)
        if init:
            planned = ctx.external.get("init_sha256") if p.init else None  # an upstream best.pt: checked as input
            report = load_pretrained(model, pretrained_weights(init, config.get("kind"), config.get("classes"),
                                                               sha256=planned))
            if rank == 0:
                log_report(init, report, named=bool(config.get("classes")))
        if rank == 0:
            step_s = None if uses_frames(p.model) else _step_seconds(model, p, config, device)
            n_val = len(split_items(store, p.val_split)) if p.val_split else len(val_items)
            _print_plan(p, len(train.items), n_val, len(batches), epochs, step_s)
    net = model if world == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)

    log = _log_to(ctx.out, epoch)
    aug = p.extra_aug
    extra = None if aug == ExtraAug() else batch_augment(aug, config["num_classes"])
    record = train_epoch(net, batches, len(batches), opt, device, description=f"epoch {epoch + 1}/{epochs}",
                         log=log, log_every=log_every, on_device=train.on_device,
                         criterion=data.criterion(config), augment=extra, bf16_on_cpu=p.bf16, quiet=ctx.quiet)
    dist.broadcast_buffers(model)  # BN statistics: every replica = rank 0 = the checkpoint
    record.update(epoch=epoch, step=opt.scheduler.last_epoch, train_samples=len(train), threads=threads)
    if p.val_split or val_items:
        # at the training input size, the scale the network learned (docs/small_data.md, "Validation at the
        # training input size", under the recipe); the test stage's size is set by its recipe
        val = eval_set(config, ctx.inputs, p.val_split or p.train_split, num_clips=1, size=p.input_size)
        if not p.val_split:
            val.items = val_items
        part = Subset(val, range(rank, len(val), world))
        record["val_top1"], record["val_samples"] = top1(
            model, loader(part, workers=workers, batch_size=max(1, p.batch_size // world)), device)
    if world > 1:
        record["weight_digests"] = dist.all_gather(_digest(model))
    before, best = best, newer_best(best, record.get("val_top1"), epoch)
    if rank == 0:
        _save(ctx.out, model, opt, device, config=config, record=record, best=best, world=world, log_every=log_every)
        log({"kind": "epoch", **{k: v for k, v in record.items() if k not in ("weight_digests", *TIMINGS)}})
        val = f", val top-1 {record['val_top1']:.2%}" if "val_top1" in record else ""
        logger.info("epoch %d/%d: loss %.4f%s, %.1f clips/s, %.0f s", epoch + 1, epochs, record["loss"], val,
                    record["clips_per_s"], record["train_seconds"])  # a bar leaves no line; a log file gets this
    dist.barrier()
    # states no later epoch starts from and that are not the best: deleted once this epoch is committed
    record["released"] = [_epoch_file(e, ".pt") for e in sorted({epoch - 1, before[1]} - {-1, epoch, best[1]})]
    return record


def finalize(ctx: Context, records: dict[str, dict]) -> dict:
    """``last.pt`` (the newest epoch's state), ``best.pt`` (the best epoch's weights), ``metrics.jsonl`` (every
    epoch's lines) and ``curves.png``, each rebuilt from the epochs' own files."""
    out = ctx.out
    recs = [records[k] for k in sorted(records)]
    last = recs[-1]["epoch"]
    write_bytes(out / checkpoint.LAST, (out / _epoch_file(last, ".pt")).read_bytes())
    best_epoch = functools.reduce(lambda b, r: newer_best(b, r.get("val_top1"), r["epoch"]), recs, (-1.0, -1))[1]
    best = next(r for r in recs if r["epoch"] == best_epoch)  # the rule best.pt was kept by
    state = checkpoint.load(out / _epoch_file(best_epoch, ".pt"))
    save_checkpoint(out / checkpoint.BEST, {"model": state["model"], "config": state["config"],
                                            "epoch": best_epoch + 1, "val_top1": best.get("val_top1")})
    lines = b"".join((out / _epoch_file(r["epoch"], ".jsonl")).read_bytes() for r in recs)
    write_bytes(out / METRICS, lines)
    save_curves(out / METRICS, out / "curves.png")
    return {
        "epochs": len(recs), "steps": recs[-1]["step"], "loss": recs[-1]["loss"],
        "best_top1": best.get("val_top1"), "best_epoch": best_epoch + 1,
        "last_top1": recs[-1].get("val_top1"), "train_samples": recs[-1]["train_samples"],
        "val_samples": recs[-1].get("val_samples", 0),
        "clips_per_s": round(sum(r["clips_per_s"] for r in recs) / len(recs), 2),
    }  # fmt: skip
