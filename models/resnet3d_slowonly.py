"""SlowOnly ResNet3d backbone, as pyskl's ``ResNet3dSlowOnly`` (PoseConv3D's default pose network).

Also holds the two pieces the other backbones share: ``ConvModule`` (conv -> BN -> ReLU, keyed like mmcv's
``ConvModule`` so pyskl checkpoints map onto it) and ``per_stage`` (broadcast a per-stage setting).
"""

from collections.abc import Sequence

import torch
from torch import nn

from .frames2d import forward_frames2d

__all__ = ["Bottleneck3d", "ConvModule", "ResNet3dSlowOnly", "init_conv_bn", "per_stage"]

IntOr3 = int | tuple[int, int, int]


def per_stage(value: int | Sequence[int], num_stages: int, name: str) -> tuple[int, ...]:
    """Return ``value`` as one entry per stage; a single int is broadcast to every stage."""
    values = (value,) * num_stages if isinstance(value, int) else tuple(value)
    if len(values) != num_stages:
        raise ValueError(f"{name} has {len(values)} entries but num_stages is {num_stages}: {values}")
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


def _make_res_layer(
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


def init_conv_bn(module: nn.Module) -> None:
    """pyskl/mmcv init: kaiming-normal (fan_out, relu) for every Conv3d, BN weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet3dSlowOnly(nn.Module):
    """SlowOnly ResNet3d over pose heatmap volumes (pyskl ``ResNet3dSlowOnly``; defaults = PoseConv3D config).

    Data flow with the defaults and a 17 x 48 x 56 x 56 clip (shapes are [N, C, T, H, W])::

        x [N, 17, 48, 56, 56]
          |  conv1    ConvModule 1x7x7, stride 1              -> [N,  32, 48, 56, 56]
          |  maxpool  MaxPool 1x3x3, stride 1 (pool1_stride)  -> [N,  32, 48, 56, 56]
          |  layer1   4 x Bottleneck  32->128, s2, 1x1x1      -> [N, 128, 48, 28, 28]
          |  layer2   6 x Bottleneck  64->256, s2, 3x1x1      -> [N, 256, 48, 14, 14]
          |  layer3   3 x Bottleneck 128->512, s2 t2, 3x1x1   -> [N, 512, 24,  7,  7]
          v
        features [N, out_channels=512, T', H', W']

    pyskl keeps its 3x3 stem max-pool even at stride 1 (a 3x3 max filter, not an identity), so we do too:
    that is what pyskl checkpoints were trained with. Only the last stage's output is returned (pyskl's
    ``out_indices=(num_stages - 1,)``). Per-stage settings are tuples; a single int is broadcast.

    ``frames2d=True`` (or setting the attribute later) runs the same function with the same parameters as
    2D ops over frames folded into the batch (``models.frames2d``, which has the CPU timings); same state dict.
    """

    def __init__(
        self,
        *,
        # Stem configs
        in_channels: int = 17,
        base_channels: int = 32,
        conv1_kernel: tuple[int, int, int] = (1, 7, 7),
        conv1_stride: tuple[int, int] = (1, 1),
        pool1_stride: tuple[int, int] = (1, 1),
        # Stage configs
        num_stages: int = 3,
        stage_blocks: int | Sequence[int] = (4, 6, 3),
        inflate: int | Sequence[int] = (0, 1, 1),
        spatial_strides: int | Sequence[int] = (2, 2, 2),
        temporal_strides: int | Sequence[int] = (1, 1, 2),
        dilations: int | Sequence[int] = (1, 1, 1),
        # Init configs
        zero_init_residual: bool = True,
        # Execution
        frames2d: bool = False,
    ) -> None:
        super().__init__()
        stage_blocks = per_stage(stage_blocks, num_stages, "stage_blocks")
        inflate = per_stage(inflate, num_stages, "inflate")
        spatial_strides = per_stage(spatial_strides, num_stages, "spatial_strides")
        temporal_strides = per_stage(temporal_strides, num_stages, "temporal_strides")
        dilations = per_stage(dilations, num_stages, "dilations")

        # conv1_stride / pool1_stride are (temporal, spatial) pairs, as in pyskl.
        self.conv1 = ConvModule(
            in_channels,
            base_channels,
            conv1_kernel,
            stride=(conv1_stride[0], conv1_stride[1], conv1_stride[1]),
            padding=tuple((k - 1) // 2 for k in conv1_kernel),
        )
        self.maxpool = nn.MaxPool3d(
            kernel_size=(1, 3, 3),
            stride=(pool1_stride[0], pool1_stride[1], pool1_stride[1]),
            padding=(0, 1, 1),
        )

        inplanes = base_channels
        self.res_layers: list[str] = []
        for i in range(num_stages):
            planes = base_channels * 2**i
            layer = _make_res_layer(
                inplanes,
                planes,
                stage_blocks[i],
                spatial_stride=spatial_strides[i],
                temporal_stride=temporal_strides[i],
                dilation=dilations[i],
                inflate=bool(inflate[i]),
            )
            self.add_module(f"layer{i + 1}", layer)
            self.res_layers.append(f"layer{i + 1}")
            inplanes = planes * Bottleneck3d.expansion
        self.out_channels = inplanes
        self.frames2d = frames2d

        init_conv_bn(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck3d):
                    nn.init.zeros_(m.conv3.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frames2d:
            return forward_frames2d(self, x)
        x = self.maxpool(self.conv1(x))
        for name in self.res_layers:
            x = getattr(self, name)(x)
        return x
