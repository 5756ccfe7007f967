"""The SlowOnly stem's max pool, with a C kernel for bf16 channels_last_3d tensors under CPU autocast
(``_maxpool.c``).

Autocast runs ``max_pool3d`` in float32: in a bf16 training step of the Penn model (batch 16, one thread) the
casts and PyTorch's float32 channels-last pool take ~35 of 355 ms, the largest op after the stem conv. The
kernel reads the bf16 input and gives what autocast gives, to the bit: the float32 output, and the gradient
summed in float32 in PyTorch's order and cast to bf16. A training or a test computes the same numbers with it
as without, sooner (the Penn recipe's trainings 21.4 instead of 22.8 min; bench/README.md, "Training step on
the CPU"). Every other case (no autocast, float32, CUDA, other layouts or temporal strides, tracing and ONNX
export) is ``nn.MaxPool3d``'s.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.native import load_kernel

CL = torch.channels_last_3d


def _kernel():
    return load_kernel("models._maxpool", "the max-pool kernel")


def _shape(x: torch.Tensor, stride: int) -> tuple[int, ...]:
    """The kernel's (P, H, W, C, s, OH, OW) for input ``x`` [N, C, D, H, W]."""
    n, c, d, h, w = x.shape
    return n * d, h, w, c, stride, (h - 1) // stride + 1, (w - 1) // stride + 1


def _memory(x: torch.Tensor, as_int16: bool = False):
    """A channels_last_3d tensor's memory as an array [N, D, H, W, C], no copy (bf16 as its int16 bits)."""
    x = x.detach().permute(0, 2, 3, 4, 1)
    return (x.view(torch.int16) if as_int16 else x).numpy()


class _Pool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, stride: int) -> torch.Tensor:
        shape = _shape(x, stride)
        n, c, d = x.shape[:3]
        y = torch.empty((n, c, d, shape[5], shape[6]), dtype=torch.float32, memory_format=CL)
        taps = torch.empty((n, d, shape[5], shape[6], c), dtype=torch.uint8) if ctx.needs_input_grad[0] else None
        _kernel().forward(_memory(x, True), _memory(y), None if taps is None else taps.numpy(), *shape)
        ctx.save_for_backward(taps)
        ctx.stride, ctx.in_shape = stride, x.shape
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor, None]:
        (taps,) = ctx.saved_tensors
        grad_y = grad_y.float().contiguous(memory_format=CL)
        grad_x = torch.empty(ctx.in_shape, dtype=torch.bfloat16, memory_format=CL)
        _kernel().backward(_memory(grad_y), taps.numpy(), _memory(grad_x, True), *_shape(grad_x, ctx.stride))
        return grad_x, None


class StemPool(nn.MaxPool3d):
    """pyskl's stem pool, ``MaxPool3d((1, 3, 3), stride=(st, ss, ss), padding=(0, 1, 1))``; a bf16 channels_last_3d
    CPU input under bf16 autocast with a temporal stride of 1 goes through the C kernel, anything else through
    PyTorch."""

    def __init__(self, stride: tuple[int, int]):
        super().__init__((1, 3, 3), stride=(stride[0], stride[1], stride[1]), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.dim() == 5 and self.stride[0] == 1
                and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
                and x.is_contiguous(memory_format=CL) and not torch.jit.is_tracing()
                and not torch.onnx.is_in_onnx_export()):
            return _Pool.apply(x, self.stride[1])
        return super().forward(x)
