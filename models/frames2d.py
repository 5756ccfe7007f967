"""Frames-as-batch 2D execution of ``ResNet3dSlowOnly``: same function, same parameters, faster on CPU.

Every SlowOnly conv is either spatial-only (kernel ``1 x kh x kw``) or temporal-only (``kt x 1 x 1``), so
with the frames folded into the batch (``[N, C, T, H, W] -> [N * T, C, H, W]``) the network runs as 2D ops:

- a ``1 x kh x kw`` conv is ``F.conv2d`` with the squeezed weight; a temporal stride slices frames first;
- a ``kt x 1 x 1`` conv is one ``F.conv2d`` whose output channels stack the ``kt`` taps, then each tap's
  frames are shifted in time and summed (zero padding in time = a tap reads nothing past either end).
  Stacking the taps on the output side moves ``kt * C_out`` channels instead of the ``kt * C_in`` that
  concatenating shifted inputs would (``C_in = 4 * C_out`` in a bottleneck's first conv);
- BN runs the module's own ``BatchNorm3d`` on a ``[N * T, C, 1, H, W]`` view: per-channel statistics over
  the same values, and the same running-stat updates, as in the 3D layout;
- the ``1 x 3 x 3`` stem max-pool is ``F.max_pool2d`` (its temporal stride slices frames).

The layout changes only at the backbone's entry and exit. The frames are channels_last by default
(``MEMORY_FORMAT``), whose memory is exactly a channels_last_3d ``[N, C, T, H, W]`` volume, so the output is
returned as that view, without a copy. ``bench/bench_frames2d.py`` (torch 2.13, 2 threads): training steps
1.1-1.6x faster than the default NCDHW Conv3d, but Conv3d fed a channels_last_3d input is faster still
(1.55-1.85x): with oneDNN, the memory format is the lever, not 2D vs 3D. The Conv3d modules are not called,
so hooks on them (as ``models.flops.count_macs``) do not fire: count MACs with ``frames2d`` off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _triple

if TYPE_CHECKING:
    from .layers import Bottleneck3d, ConvModule
    from .resnet3d_slowonly import ResNet3dSlowOnly

__all__ = ["MEMORY_FORMAT", "forward_frames2d"]

# Memory format of the [N * T, C, H, W] activations. channels_last (NHWC) makes BN 5-10x and the
# stem conv ~2x faster on CPU than NCHW; NCHW is kept selectable for the benchmark.
MEMORY_FORMAT: torch.memory_format = torch.channels_last


def _slice_frames(x: torch.Tensor, n: int, stride: int) -> torch.Tensor:
    """Keep every ``stride``-th frame of ``[N * T, ...]`` (per clip, starting at frame 0)."""
    if stride == 1:
        return x
    return x.unflatten(0, (n, -1))[:, ::stride].flatten(0, 1)


def _tap_ranges(t: int, kt: int, padding: int, dilation: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Output length and, per tap ``k``, the output frames ``[lo, hi)`` it reaches and its time ``shift``.

    Output frame ``t`` gets tap ``k`` of input frame ``t + k * dilation - padding``; frames past either end
    are zero padding and add nothing.
    """
    t_out = t + 2 * padding - dilation * (kt - 1)
    ranges = []
    for k in range(kt):
        shift = k * dilation - padding
        ranges.append((max(0, -shift), min(t_out, t - shift), shift))
    return t_out, ranges


def _zeros(shape: tuple[int, ...], like: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """Zeros of ``shape`` with ``like``'s dtype and device in memory format ``fmt``."""
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt).zero_()


class _TemporalTapSum(torch.autograd.Function):
    """``y [N * T, kt * C, H, W] -> [N * T', C, H, W]``: the time-shifted sum of the ``kt`` taps stacked on
    the channels (a stride-1 temporal convolution with zero padding), in ``y``'s memory format.

    One op because autograd through the slicing would allocate and fill a full-size gradient per slice.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, n: int, kt: int, padding: int, dilation: int) -> torch.Tensor:
        t = y.shape[0] // n
        t_out, ranges = _tap_ranges(t, kt, padding, dilation)
        fmt = torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = _zeros((n * t_out, y.shape[1] // kt, *y.shape[2:]), y, fmt)
        taps, frames = y.unflatten(0, (n, t)).unflatten(2, (kt, -1)), out.unflatten(0, (n, t_out))
        for k, (lo, hi, shift) in enumerate(ranges):
            frames[:, lo:hi] += taps[:, lo + shift : hi + shift, k]
        ctx.shape, ctx.fmt, ctx.n, ctx.kt, ctx.ranges = y.shape, fmt, n, kt, ranges
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_y = _zeros(ctx.shape, grad, ctx.fmt)
        taps, frames = grad_y.unflatten(0, (ctx.n, -1)).unflatten(2, (ctx.kt, -1)), grad.unflatten(0, (ctx.n, -1))
        for k, (lo, hi, shift) in enumerate(ctx.ranges):
            taps[:, lo + shift : hi + shift, k] = frames[:, lo:hi]
        return grad_y, None, None, None, None


def _conv_module(m: ConvModule, x: torch.Tensor, n: int) -> torch.Tensor:
    """``ConvModule`` (conv -> BN -> ReLU) on ``[N * T, C, H, W]``; SlowOnly convs are ungrouped."""
    conv = m.conv
    kt, kh, kw = conv.kernel_size
    st, sh, sw = conv.stride
    pt, ph, pw = conv.padding
    dt, dh, dw = conv.dilation
    if kt == 1 and pt == 0:
        x = F.conv2d(_slice_frames(x, n, st), conv.weight.squeeze(2), None, (sh, sw), (ph, pw), (dh, dw))
    else:
        # [C_out, C_in, kt, kh, kw] -> [kt * C_out, C_in, kh, kw]: tap k's filters are output block k.
        weight = conv.weight.permute(2, 0, 1, 3, 4).flatten(0, 1)
        y = F.conv2d(x, weight, None, (sh, sw), (ph, pw), (dh, dw))
        x = _slice_frames(_TemporalTapSum.apply(y, n, kt, pt, dt), n, st)
    if m.bn is not None:
        x = m.bn(x.unsqueeze(2)).squeeze(2)  # channels_last stays channels_last_3d in the view
    if m.activate is not None:
        x = m.activate(x)
    return x


def _bottleneck(b: Bottleneck3d, x: torch.Tensor, n: int) -> torch.Tensor:
    """``Bottleneck3d.forward`` on ``[N * T, C, H, W]``."""
    identity = x if b.downsample is None else _conv_module(b.downsample, x, n)
    out = _conv_module(b.conv3, _conv_module(b.conv2, _conv_module(b.conv1, x, n), n), n)
    return b.relu(out + identity)


def forward_frames2d(backbone: ResNet3dSlowOnly, x: torch.Tensor) -> torch.Tensor:
    """``ResNet3dSlowOnly.forward`` in the frames-as-batch layout: ``[N, C, T, H, W]`` in and out."""
    n, c, t, h, w = x.shape
    frames = torch.empty((n * t, c, h, w), dtype=x.dtype, device=x.device, memory_format=MEMORY_FORMAT)
    frames.unflatten(0, (n, t)).copy_(x.transpose(1, 2))
    x = _conv_module(backbone.conv1, frames, n)
    pool = backbone.maxpool  # MaxPool3d 1 x 3 x 3, no temporal padding
    kernel, stride, padding, dilation = map(_triple, (pool.kernel_size, pool.stride, pool.padding, pool.dilation))
    x = F.max_pool2d(
        _slice_frames(x, n, stride[0]), kernel[1:], stride[1:], padding[1:], dilation[1:], ceil_mode=pool.ceil_mode
    )
    for name in backbone.res_layers:
        for block in getattr(backbone, name):
            x = _bottleneck(block, x, n)
    # A view, not a copy: a contiguous copy here would hand NCHW gradients back to the channels_last net.
    return x.unflatten(0, (n, -1)).transpose(1, 2)
