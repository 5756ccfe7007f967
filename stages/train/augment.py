"""Batched training augmentation on the device: stored clips -> model input, in one pass per axis.

The loader hands over raw stored frames (uint8 [N, T, K, H, W], a quarter of float32 at the stored size)
with each clip's crop box and mirror flag; here, on the training device, a batch is cropped, resized
to ``size`` x ``size`` (bilinear, as ``F.interpolate(align_corners=False)`` on the cropped clip),
mirrored with its left/right channels exchanged, scaled to [0, 1] and laid out as the model wants it
([N, K, T, S, S] in channels_last_3d memory). Crop + resize + mirror along one axis is a linear map, so
each clip gets a [S, H] row matrix and an [S, W] column matrix with two non-zero taps per row, and the
whole batch is two large batched matmuls (every frame and channel of a clip shares its matrices):
exactly the per-clip path's arithmetic (``transforms.resize`` of the cropped, mirrored tensor) up to
float rounding, and cheap on a GPU. On a CPU a C kernel with two taps per output pixel runs instead.
"""

from __future__ import annotations

import torch

from pipeline.native import load_kernel


def interp_matrix(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                  mirror: torch.Tensor | None = None) -> torch.Tensor:
    """[N, out_size, in_size] matrices of bilinear taps: row i samples the crop [start, start + length)
    at ``(i + 0.5) * length / out_size - 0.5`` (clamped to the crop, as PyTorch's upsample), reversed
    where ``mirror``."""
    n = start.shape[0]
    device = start.device
    scale = length.float() / out_size  # PyTorch computes the scale in float for float inputs
    i = torch.arange(out_size, device=device, dtype=torch.float32)
    src = ((i[None] + 0.5) * scale[:, None] - 0.5).clamp_min(0.0)
    i0 = src.floor()
    lam = src - i0
    i0 = i0.long()
    i1 = torch.minimum(i0 + 1, length[:, None].long() - 1)
    m = torch.zeros(n, out_size, in_size, device=device, dtype=torch.float32)
    base = start[:, None].long()
    m.scatter_add_(2, (base + i0)[..., None], (1.0 - lam)[..., None])
    m.scatter_add_(2, (base + i1)[..., None], lam[..., None])
    if mirror is not None:
        m = torch.where(mirror[:, None, None], m.flip(1), m)
    return m


def augment(x: torch.Tensor, boxes: torch.Tensor, mirror: torch.Tensor, size: int, perm: torch.Tensor,
            scale: float = 1.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """Stored clips [N, T, K, H, W] (any dtype) -> float32 [N, K, T, size, size], channels_last_3d.

    ``boxes`` [N, 4] are (top, left, height, width) in stored pixels, ``mirror`` [N] bool, ``perm`` the
    left/right channel permutation, ``scale`` the stored dtype's factor to heatmap values. ``out`` (CPU only:
    a float32 [N, K, T, size, size] channels_last_3d tensor) receives the result.
    """
    if x.device.type == "cpu":
        return two_taps(x, boxes, mirror, size, perm, scale, out)
    return matmuls(x, boxes, mirror, size, perm, scale)


def matmuls(x: torch.Tensor, boxes: torch.Tensor, mirror: torch.Tensor, size: int, perm: torch.Tensor,
            scale: float = 1.0) -> torch.Tensor:
    """The device path of ``augment``: two batched matmuls for the whole batch."""
    n, t, k, h, w = x.shape
    rows = interp_matrix(boxes[:, 0], boxes[:, 2], h, size) * scale  # [N, S, H]
    cols = interp_matrix(boxes[:, 1], boxes[:, 3], w, size, mirror)  # [N, S, W]
    channels = torch.where(mirror[:, None], perm[None], torch.arange(k, device=x.device)[None])
    x = x.gather(2, channels[:, None, :, None, None].expand_as(x))  # mirrored clips swap left/right
    y = torch.bmm(x.reshape(n, t * k * h, w).float(), cols.transpose(1, 2))  # [N, T*K*H, S]
    y = y.view(n, t * k, h, size).transpose(1, 2).reshape(n, h, t * k * size)
    y = torch.bmm(rows, y).view(n, size, t, k, size)  # [N, Sy, T, K, Sx]
    return y.permute(0, 3, 2, 1, 4).contiguous(memory_format=torch.channels_last_3d)


def two_taps(x: torch.Tensor, boxes: torch.Tensor, mirror: torch.Tensor, size: int, perm: torch.Tensor,
             scale: float = 1.0, out: torch.Tensor | None = None, isa: int = 2) -> torch.Tensor:
    """The CPU path of ``augment``: the same arithmetic as two taps per output pixel in a C kernel
    (``_augment.c``), one pass per clip writing the channels_last_3d output directly. A matmul reads every
    stored pixel once per output pixel of its row (2 of H taps are non-zero); this reads each a few times
    (bench/README.md, Augmentation on a CPU). ``isa`` caps the kernel's vector path (0 portable, 1 AVX2,
    2 AVX-512; each is used only where the CPU has it): the vector paths agree to the bit, the portable one
    within float rounding."""
    n, t, k, h, w = x.shape
    if x.dtype != torch.uint8:
        x = x.float()
    if out is None:
        out = torch.empty((n, k, t, size, size), memory_format=torch.channels_last_3d)
    layout = out.permute(0, 2, 3, 4, 1)  # [N, T, S, S, K]: the kernel's output order
    if out.shape != (n, k, t, size, size) or out.dtype != torch.float32 or not layout.is_contiguous():
        raise ValueError(f"out: expected float32 {(n, k, t, size, size)} in channels_last_3d, got {tuple(out.shape)}")
    load_kernel("stages.train._augment", "the augmentation kernel").augment(
        layout.numpy(), x.contiguous().numpy(), boxes.to(torch.int64).contiguous().numpy(),
        mirror.to(torch.uint8).contiguous().numpy(), perm.to(torch.int64).contiguous().numpy(),
        n, t, k, h, w, size, scale, x.dtype == torch.uint8, isa)
    return out
