"""Building blocks shared by the backbones (SlowOnly, X3D, C3D, RGBPose-Conv3D), keyed like pyskl/mmcv.

``ConvModule`` is conv -> BN -> ReLU with mmcv's submodule names (``conv``, ``bn``), ``Bottleneck3d`` and
``make_res_layer`` are pyskl's ResNet3d block and stage, ``init_conv_bn`` is pyskl's weight init and
``per_stage`` broadcasts a per-stage setting. Keeping pyskl's names keeps pyskl checkpoints loadable
(docs/architecture.md, Models).
"""

from collections.abc import Sequence

import torch
from torch import nn

from .maxpool import StemPool

__all__ = ["Bottleneck3d", "ConvModule", "fold_batch_norms", "init_conv_bn", "init_fc", "make_res_layer", "per_stage"]

IntOr3 = int | tuple[int, int, int]


def per_stage(value: int | Sequence[int], num_stages: int, name: str, at_least: int | None = None) -> tuple[int, ...]:
    """Return ``value`` as one entry per stage; a single int is broadcast to every stage."""
    values = (value,) * num_stages if isinstance(value, int) else tuple(value)
    if len(values) != num_stages:
        raise ValueError(f"{name} has {len(values)} entries but num_stages is {num_stages}: {values}")
    if at_least is not None and min(values) < at_least:
        raise ValueError(f"{name} must be >= {at_least} in every stage, got {values}")
    return values


class ConvModule(nn.Module):
    """``Conv3d`` (no bias) -> optional ``BatchNorm3d`` -> optional ReLU.

    The submodule names ``conv`` and ``bn`` follow mmcv's ``ConvModule``, so a pyskl key such as
    ``backbone.layer1.0.conv1.bn.running_mean`` has the same name here.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOr3,
        *,
        stride: IntOr3 = 1,
        padding: IntOr3 = 0,
        dilation: IntOr3 = 1,
        groups: int = 1,
        norm: bool = True,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm3d(out_channels) if norm else None
        self.activate = nn.ReLU(inplace=True) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


@torch.no_grad()
def fold_batch_norms(model: nn.Module) -> nn.Module:
    """For inference only: each ``ConvModule``'s BatchNorm (its running statistics) folded into its conv, in
    place; the same function as the eval-mode network up to float rounding, one pass per activation less."""
    for module in model.modules():
        if isinstance(module, ConvModule) and module.bn is not None:
            conv, bn = module.conv, module.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * scale
            conv.weight.mul_(scale.reshape(-1, *[1] * (conv.weight.dim() - 1)))
            conv.bias = nn.Parameter(shift if conv.bias is None else conv.bias * scale + shift)
            module.bn = None
    return model


class Bottleneck3d(nn.Module):
    """ResNet bottleneck with pyskl's '3x1x1' inflation (expansion 4).

    ``conv1`` is 3x1x1 (temporal) when ``inflate`` else 1x1x1; ``conv2`` is 1x3x3 and carries the stride;
    ``conv3`` is 1x1x1 to ``planes * 4`` with no ReLU; ReLU after the residual sum.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        spatial_stride: int = 1,
        temporal_stride: int = 1,
        dilation: int = 1,
        inflate: bool = True,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if inflate:
            self.conv1 = ConvModule(inplanes, planes, (3, 1, 1), padding=(1, 0, 0))
        else:
            self.conv1 = ConvModule(inplanes, planes, 1)
        self.conv2 = ConvModule(
            planes,
            planes,
            (1, 3, 3),
            stride=(temporal_stride, spatial_stride, spatial_stride),
            padding=(0, dilation, dilation),
            dilation=(1, dilation, dilation),
        )
        self.conv3 = ConvModule(planes, planes * self.expansion, 1, act=False)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv3(self.conv2(self.conv1(x)))
        return self.relu(out + identity)


def make_res_layer(
    inplanes: int,
    planes: int,
    num_blocks: int,
    *,
    spatial_stride: int,
    temporal_stride: int,
    dilation: int,
    inflate: bool,
) -> nn.Sequential:
    """One ResNet3d stage: the first block strides (and projects the shortcut), the rest keep the shape."""
    outplanes = planes * Bottleneck3d.expansion
    downsample = None
    if spatial_stride != 1 or temporal_stride != 1 or inplanes != outplanes:
        downsample = ConvModule(
            inplanes, outplanes, 1, stride=(temporal_stride, spatial_stride, spatial_stride), act=False
        )
    blocks = [
        Bottleneck3d(
            inplanes,
            planes,
            spatial_stride=spatial_stride,
            temporal_stride=temporal_stride,
            dilation=dilation,
            inflate=inflate,
            downsample=downsample,
        )
    ]
    blocks += [
        Bottleneck3d(outplanes, planes, dilation=dilation, inflate=inflate) for _ in range(1, num_blocks)
    ]
    return nn.Sequential(*blocks)


def add_slowonly_stages(
    module: nn.Module,
    *,
    in_channels: int,
    base_channels: int,
    conv1_kernel: tuple[int, int, int],
    conv1_stride: tuple[int, int],
    pool1_stride: tuple[int, int],
    stage_blocks: Sequence[int],
    inflate: Sequence[int],
    spatial_strides: Sequence[int],
    temporal_strides: Sequence[int],
    dilations: Sequence[int],
    extra: Sequence[int] | None = None,
) -> int:
    """Add pyskl's SlowOnly stem (``conv1``, ``maxpool``) and stages (``layer1`` ...) to ``module``, under pyskl's
    state-dict names; ``extra[i]``: lateral channels concatenated to stage i's input. Returns the output
    channels. ``conv1_stride`` and ``pool1_stride`` are (temporal, spatial) pairs, as in pyskl."""
    module.add_module("conv1", ConvModule(
        in_channels, base_channels, conv1_kernel, stride=(conv1_stride[0], conv1_stride[1], conv1_stride[1]),
        padding=tuple((k - 1) // 2 for k in conv1_kernel),
    ))  # fmt: skip
    module.add_module("maxpool", StemPool(pool1_stride))
    inplanes = base_channels
    for i, blocks in enumerate(stage_blocks):
        planes = base_channels * 2**i
        module.add_module(f"layer{i + 1}", make_res_layer(
            inplanes + (extra[i] if extra else 0), planes, blocks, spatial_stride=spatial_strides[i],
            temporal_stride=temporal_strides[i], dilation=dilations[i], inflate=bool(inflate[i]),
        ))  # fmt: skip
        inplanes = planes * Bottleneck3d.expansion
    return inplanes


def init_conv_bn(module: nn.Module) -> None:
    """pyskl/mmcv init: kaiming-normal (fan_out, relu) for every Conv3d, BN weight 1 and bias 0."""
    if _on_meta(module):
        return
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_fc(fc: nn.Linear, std: float) -> None:
    """pyskl's classifier init: weight N(0, std), bias 0."""
    if _on_meta(fc):
        return
    nn.init.normal_(fc.weight, mean=0.0, std=std)
    nn.init.zeros_(fc.bias)


def _on_meta(module: nn.Module) -> bool:
    """Built on the meta device (to check its arguments, not to train): there are no values to set, and a normal
    draw on meta imports torch's compiler (1.3 s of every `skel run` that checks a training step)."""
    return next(module.parameters()).is_meta
