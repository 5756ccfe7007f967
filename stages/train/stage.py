"""`skel train`: fit a PoseConv3D model on the rendered volumes, one epoch per shard.

The stage is ``sequential``: the runner runs epochs in order in this process (or in every torchrun
rank), and each epoch commits ``last.pt`` before its shard marker, so a killed run resumes at the last
finished epoch and ends with the same optimizer steps and, with a fixed seed, the same weights.
Recipe as pyskl (docs/architecture.md, Training recipe): SGD momentum 0.9, wd 3e-4, lr 0.4 per 256 clips,
grad-norm clip 40, cosine annealing per iteration to 0, optional linear warm-up.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from models import MODELS
from pipeline.atomic import write_bytes
from pipeline.errors import SkelError
from pipeline.stage import Context, Shard, Stage
from pipeline.volumes import VolumeStore
from stages.train import checkpoint, data, dist
from stages.train.curves import save_curves
from stages.train.dataset import PREFETCH, loader_sampler, num_classes
from stages.train.loop import Optim, cosine_with_warmup, top1, train_epoch

METRICS = "metrics.jsonl"
_RUNTIME = {"fingerprint": False}  # changes how fast, not what is computed


@dataclass(frozen=True)
class TrainParams:
    model: str = "slowonly"
    model_args: dict = field(default_factory=dict)  # backbone overrides, e.g. base_channels, stage_blocks
    dropout: float = 0.5
    clip_len: int = 48
    input_size: int = 56
    epochs: int = 24
    batch_size: int = 32  # global: split over the DDP ranks
    lr: float | None = None  # None: 0.4 x batch_size / 256 (pyskl's linear scaling)
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 40.0
    warmup_steps: int = 0
    repeat: int = 1  # passes over the training split per epoch (pyskl RepeatDataset)
    flip_ratio: float = 0.5
    seed: int = 0
    train_split: str | None = "train"  # None: every labelled sample
    val_split: str | None = "test"  # None: no validation, best.pt is the last epoch
    workers: int = field(default=2, metadata=_RUNTIME)  # DataLoader processes per rank
    device: str = field(default="auto", metadata=_RUNTIME)
    threads: int | None = field(default=None, metadata=_RUNTIME)  # None: cores / ranks
    log_every: int = field(default=10, metadata=_RUNTIME)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose from {sorted(MODELS)}")
        if min(self.clip_len, self.input_size, self.epochs, self.batch_size, self.repeat) < 1:
            raise ValueError("clip_len, input_size, epochs, batch_size and repeat must be >= 1")
        data.clip_spec(self.model, self.model_args, self.clip_len, self.input_size, self.flip_ratio)  # checks

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else 0.4 * self.batch_size / 256


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _log_to(path: Path, epoch: int) -> Callable[[dict], None]:
    """A JSONL appender for this epoch; lines of this and later epochs (from a killed run) are dropped first."""
    if dist.rank() != 0:
        return lambda row: None
    kept = [ln for ln in (path.read_text().splitlines() if path.exists() else []) if json.loads(ln)["epoch"] < epoch]
    write_bytes(path, "".join(f"{ln}\n" for ln in kept).encode())

    def log(row: dict) -> None:
        with open(path, "a") as f:
            f.write(json.dumps({"epoch": epoch, **row}) + "\n")

    return log


def _resume_state(out: Path, epoch: int, world: int) -> dict | None:
    """``last.pt`` if this run has one, checked to continue at ``epoch`` (or to have just finished it)."""
    path = out / checkpoint.LAST
    state = checkpoint.load(path) if path.exists() else None
    done = state["epoch"] if state else 0
    if done not in (epoch, epoch + 1):
        raise SkelError(f"{out}: checkpoint is at epoch {done}, cannot run epoch {epoch}")
    if state and state["world_size"] != world:
        raise SkelError(f"{out}: started with {state['world_size']} process(es); resume with --nproc "
                        f"{state['world_size']}")
    return state


def _build(p: TrainParams, config: dict, device: torch.device, total_steps: int) -> tuple[torch.nn.Module, Optim]:
    """A fresh model on ``device`` and its SGD / per-iteration cosine / grad-scaler optimizer."""
    model = checkpoint.model_from_config(config).to(device, memory_format=torch.channels_last_3d)
    optimizer = torch.optim.SGD(model.parameters(), lr=p.base_lr, momentum=p.momentum, weight_decay=p.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, p.warmup_steps))
    fp16 = device.type == "cuda" and not torch.cuda.is_bf16_supported()  # bf16 autocast needs no scaling
    return model, Optim(optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=fp16), p.grad_clip)


def _restore(state: dict, model: torch.nn.Module, opt: Optim, device: torch.device) -> tuple[float, int]:
    """Load a ``last.pt`` state (weights, optimizer, schedule, scaler, RNG); return (best top-1, its epoch)."""
    model.load_state_dict(state["model"])
    opt.optimizer.load_state_dict(state["optimizer"])
    opt.scheduler.load_state_dict(state["scheduler"])
    opt.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if device.type == "cuda" and state["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    return state["best_top1"], state["best_epoch"]


def _save(out: Path, model: torch.nn.Module, opt: Optim, device: torch.device, *, config: dict, record: dict,
          best: tuple[float, int], world: int) -> None:
    """Rank 0: ``best.pt`` when this epoch is the best, then ``last.pt`` (the epoch's commit point)."""
    epoch = record["epoch"]
    weights = {k: v.cpu() for k, v in model.state_dict().items()}
    if best[1] == epoch:
        checkpoint.save(out / checkpoint.BEST, {"model": weights, "config": config, "epoch": epoch + 1,
                                                "val_top1": record.get("val_top1")})
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    checkpoint.save(out / checkpoint.LAST, {
        "model": weights, "optimizer": opt.optimizer.state_dict(), "scheduler": opt.scheduler.state_dict(),
        "scaler": opt.scaler.state_dict(), "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng},
        "epoch": epoch + 1, "step": record["step"], "best_top1": best[0], "best_epoch": best[1],
        "world_size": world, "config": config, "record": record,
    })  # fmt: skip


class TrainStage(Stage):
    name = "train"
    version = "1"
    Params = TrainParams
    inputs = {"volumes": ("render",)}
    sequential = True

    def inputs_for(self, params: TrainParams) -> dict[str, tuple[str, ...]]:
        """RGBPose also reads the RGB frames of the volumes (a frames output)."""
        return {**self.inputs, "frames": ("frames",)} if data.uses_frames(params.model) else dict(self.inputs)

    def shards(self, ctx: Context) -> list[Shard]:
        return [Shard(f"epoch-{e:03d}", e) for e in range(ctx.params.epochs)]

    def config(self, p: TrainParams, store: VolumeStore) -> dict:
        """What test/export need to rebuild the model and feed it (saved in every checkpoint)."""
        return {
            "model": p.model, "model_args": dict(p.model_args), "dropout": p.dropout,
            "num_classes": num_classes(store), "in_channels": int(store.attrs["channels"]),
            "clip_len": p.clip_len, "input_size": p.input_size, "test_size": int(store.attrs["size"]),
            "kind": store.attrs["kind"], "flip_perm": list(store.attrs["flip_perm"]),
            "classes": store.attrs.get("classes"),
            **data.clip_spec(p.model, p.model_args, p.clip_len, p.input_size, p.flip_ratio),
        }  # fmt: skip

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        p: TrainParams = ctx.params
        epoch, rank, world = shard.payload, dist.rank(), dist.world_size()
        state = _resume_state(ctx.out, epoch, world)
        if state is not None and state["epoch"] == epoch + 1:  # killed after the checkpoint, before the marker
            return state["record"]
        if p.batch_size % world:
            raise SkelError(f"batch size {p.batch_size} does not split over {world} processes")
        device = dist.pick_device(p.device)
        torch.set_num_threads(p.threads or max(1, len(os.sched_getaffinity(0)) // world))
        torch.manual_seed(p.seed)  # identical initial weights on every rank

        config = self.config(p, VolumeStore(ctx.inputs["volumes"]))
        train = data.train_set(config, ctx.inputs, p.train_split, seed=p.seed, repeat=p.repeat,
                               flip_ratio=p.flip_ratio)
        train.set_epoch(epoch)
        sampler = loader_sampler(train, p.batch_size // world, rank=rank, world=world, seed=p.seed, epoch=epoch)
        loader = DataLoader(train, sampler=sampler, batch_size=None, num_workers=p.workers,
                            pin_memory=device.type == "cuda", prefetch_factor=PREFETCH if p.workers else None)
        model, opt = _build(p, config, device, total_steps=p.epochs * len(loader))
        best = _restore(state, model, opt, device) if state else (-1.0, -1)
        net = model if world == 1 else DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

        log = _log_to(ctx.out / METRICS, epoch)
        record = train_epoch(net, loader, len(loader), opt, device, description=f"epoch {epoch + 1}/{p.epochs}",
                             log=log, log_every=p.log_every, prepare=train.on_device,
                             criterion=data.criterion(config))
        dist.broadcast_buffers(model)  # BN statistics: every replica = rank 0 = the checkpoint
        record.update(epoch=epoch, step=opt.scheduler.last_epoch, train_samples=len(train))
        if p.val_split:
            val = data.eval_set(config, ctx.inputs, p.val_split, num_clips=1)
            part = Subset(val, range(rank, len(val), world))
            record["val_top1"], record["val_samples"] = top1(
                model, DataLoader(part, batch_size=max(1, p.batch_size // world), num_workers=p.workers), device)
        if world > 1:
            record["weight_digests"] = dist.all_gather(_digest(model))
        score = record.get("val_top1")
        if score is None or score > best[0]:  # without validation the newest epoch is the best
            best = (-1.0 if score is None else score, epoch)
        if rank == 0:
            _save(ctx.out, model, opt, device, config=config, record=record, best=best, world=world)
            log({"kind": "epoch", **{k: v for k, v in record.items() if k != "weight_digests"}})
        dist.barrier()
        return record

    def finalize(self, ctx: Context, records: dict[str, dict]) -> dict:
        save_curves(ctx.out / METRICS, ctx.out / "curves.png")
        recs = [records[k] for k in sorted(records)]
        scored = [r for r in recs if r.get("val_top1") is not None]
        best = max(scored, key=lambda r: r["val_top1"]) if scored else recs[-1]
        return {
            "epochs": len(recs), "steps": recs[-1]["step"], "loss": recs[-1]["loss"],
            "best_top1": best.get("val_top1"), "best_epoch": best["epoch"] + 1,
            "last_top1": recs[-1].get("val_top1"), "train_samples": recs[-1]["train_samples"],
        }  # fmt: skip
