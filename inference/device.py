"""Where a network runs and how its input gets there: the device, CUDA autocast, the channels_last_3d layout."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from functools import cache

import torch

from models import check_device


def pick_device(device: str) -> torch.device:
    """'auto' -> this rank's GPU when CUDA is available, else the CPU; 'cuda' means this rank's GPU (ValueError
    where there is none, so that a stage's ``check`` refuses it before anything runs)."""
    check_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda: no CUDA device here (this torch build or machine has none); use auto or cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


@cache
def cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN: AVX512-BF16 or AMX), where bf16 convolutions are
    faster than float32 ones; elsewhere oneDNN emulates them, slower."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast(device: torch.device, *, bf16_on_cpu: bool = False) -> AbstractContextManager:
    """bf16 (or fp16 where bf16 is missing) autocast on CUDA; on the CPU bf16 only when asked and native
    (``cpu_bf16``), else nothing."""
    if device.type != "cuda":
        if bf16_on_cpu and device.type == "cpu" and cpu_bf16():
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


Batch = torch.Tensor | tuple[torch.Tensor, ...]  # one clip tensor, or one per modality (RGBPose: imgs, heatmaps)


def to_device(x: Batch, device: torch.device) -> Batch:
    """Move a clip batch (or each tensor of a tuple) in channels_last_3d, as the model: cuDNN's fast layout,
    and faster Conv3d steps on CPU too (oneDNN; bench/README.md, Memory format)."""
    if isinstance(x, tuple | list):
        return tuple(to_device(v, device) for v in x)
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last_3d) if x.dim() == 5 else x
