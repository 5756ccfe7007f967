"""Count multiply-accumulates (MACs) of one forward pass with forward hooks on conv and linear layers.

Norms, activations, pooling and additions are not counted (the usual convention, as fvcore/mmcv). Works on
the ``meta`` device, so a paper-size model can be measured without computing anything.
"""

import math

import torch
from torch import nn

__all__ = ["count_macs", "count_params"]


def _conv_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    # Every output element costs (in_channels / groups) * prod(kernel) multiply-adds.
    return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def _linear_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    return output.numel() * module.in_features


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of ``model(x)`` summed over the whole batch in ``x`` (divide by N for per-clip numbers)."""
    total = 0

    def hook(fn):
        def _hook(module, inputs, output):
            nonlocal total
            total += fn(module, inputs, output)

        return _hook

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            handles.append(m.register_forward_hook(hook(_conv_macs)))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(hook(_linear_macs)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; BN running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())
