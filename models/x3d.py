"""X3D backbone, as pyskl's ``X3D`` (PoseConv3D's "X3D-shallow": gamma_d 1, 3 stages, no SE, no swish)."""

import math
from collections.abc import Sequence

import torch
from torch import nn

from .layers import ConvModule, init_conv_bn, per_stage

__all__ = ["X3D", "BlockX3D"]


def _round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
    """Scale a channel count and round it to a multiple of ``divisor`` (pyskl/X3D rule)."""
    if not multiplier:
        return int(width)
    width *= multiplier
    new_width = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if new_width < 0.9 * width:
        new_width += divisor
    return int(new_width)


class SEModule(nn.Module):
    """Squeeze-and-excitation on a [N, C, T, H, W] tensor (1x1x1 convs with bias, as pyskl)."""

    def __init__(self, channels: int, reduction: float) -> None:
        super().__init__()
        bottleneck = _round_width(channels, reduction)
        self.fc1 = nn.Conv3d(channels, bottleneck, kernel_size=1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv3d(bottleneck, channels, kernel_size=1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean(dim=(2, 3, 4), keepdim=True)
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(w))))


class BlockX3D(nn.Module):
    """X3D block: 1x1x1 expand -> depth-wise 3x3x3 (carries the spatial stride) -> [SE] -> [swish]
    -> 1x1x1 project (no ReLU) -> + shortcut -> ReLU."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        outplanes: int,
        *,
        spatial_stride: int = 1,
        downsample: nn.Module | None = None,
        se_ratio: float | None = None,
        use_swish: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = ConvModule(inplanes, planes, 1)
        self.conv2 = ConvModule(
            planes, planes, 3, stride=(1, spatial_stride, spatial_stride), padding=1, groups=planes, act=False
        )
        self.se_module = SEModule(planes, se_ratio) if se_ratio is not None else None
        self.swish = nn.SiLU() if use_swish else nn.Identity()
        self.conv3 = ConvModule(planes, outplanes, 1, act=False)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.conv1(x))
        if self.se_module is not None:
            out = self.se_module(out)
        out = self.conv3(self.swish(out))
        return self.relu(out + identity)


class X3D(nn.Module):
    """X3D over pose heatmap volumes (pyskl ``X3D``; defaults = PoseConv3D's X3D-shallow config).

    Data flow with the defaults (base 24, gamma_b 2.25, blocks (2, 5, 3)) and a 17 x 48 x 56 x 56 clip::

        x [N, 17, 48, 56, 56]
          |  conv1_s  conv 1x3x3, stride (1,2,2), no BN/ReLU     -> [N,  24, 48, 28, 28]
          |  conv1_t  depth-wise 5x1x1 + BN + ReLU               -> [N,  24, 48, 28, 28]
          |  layer1   2 x BlockX3D  24 -( 54)->  24, s2          -> [N,  24, 48, 14, 14]
          |  layer2   5 x BlockX3D  48 -(108)->  48, s2          -> [N,  48, 48,  7,  7]
          |  layer3   3 x BlockX3D  96 -(216)->  96, s2          -> [N,  96, 48,  4,  4]
          |  conv5    1x1x1 96 -> 216 + BN + ReLU                -> [N, 216, 48,  4,  4]
          v
        features [N, out_channels=216, T, H', W']

    X3D never strides in time. ``se_ratio`` puts SE modules in every other block ('half' style) and
    ``use_swish`` adds swish after the depth-wise conv, as in the original X3D; PoseConv3D turns both off.
    """

    def __init__(
        self,
        *,
        # Width/depth scaling
        gamma_w: float = 1.0,
        gamma_b: float = 2.25,
        gamma_d: float = 1.0,
        # Stem configs
        in_channels: int = 17,
        base_channels: int = 24,
        # Stage configs
        num_stages: int = 3,
        stage_blocks: int | Sequence[int] = (2, 5, 3),
        spatial_strides: int | Sequence[int] = (2, 2, 2),
        se_ratio: float | None = None,
        use_swish: bool = False,
        # Init configs
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        base = _round_width(base_channels, gamma_w)
        stage_blocks = per_stage(stage_blocks, num_stages, "stage_blocks", at_least=1)
        stage_blocks = tuple(int(math.ceil(gamma_d * b)) if gamma_d else b for b in stage_blocks)
        spatial_strides = per_stage(spatial_strides, num_stages, "spatial_strides")

        self.conv1_s = ConvModule(
            in_channels, base, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), norm=False, act=False
        )
        self.conv1_t = ConvModule(base, base, (5, 1, 1), padding=(2, 0, 0), groups=base)

        layer_inplanes = base
        self.res_layers: list[str] = []
        for i in range(num_stages):
            inplanes = base * 2**i
            planes = int(inplanes * gamma_b)
            layer = self._make_res_layer(
                layer_inplanes,
                inplanes,
                planes,
                stage_blocks[i],
                spatial_stride=spatial_strides[i],
                se_ratio=se_ratio,
                use_swish=use_swish,
            )
            self.add_module(f"layer{i + 1}", layer)
            self.res_layers.append(f"layer{i + 1}")
            layer_inplanes = inplanes

        self.out_channels = int(layer_inplanes * gamma_b)
        self.conv5 = ConvModule(layer_inplanes, self.out_channels, 1)

        init_conv_bn(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BlockX3D):
                    nn.init.zeros_(m.conv3.bn.weight)

    @staticmethod
    def _make_res_layer(
        layer_inplanes: int,
        inplanes: int,
        planes: int,
        num_blocks: int,
        *,
        spatial_stride: int,
        se_ratio: float | None,
        use_swish: bool,
    ) -> nn.Sequential:
        """One X3D stage; SE (when enabled) sits in blocks 0, 2, 4, ... ('half' style)."""
        downsample = None
        if spatial_stride != 1 or layer_inplanes != inplanes:
            downsample = ConvModule(
                layer_inplanes, inplanes, 1, stride=(1, spatial_stride, spatial_stride), act=False
            )
        blocks = []
        for j in range(num_blocks):
            blocks.append(
                BlockX3D(
                    layer_inplanes if j == 0 else inplanes,
                    planes,
                    inplanes,
                    spatial_stride=spatial_stride if j == 0 else 1,
                    downsample=downsample if j == 0 else None,
                    se_ratio=se_ratio if j % 2 == 0 else None,
                    use_swish=use_swish,
                )
            )
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1_t(self.conv1_s(x))
        for name in self.res_layers:
            x = getattr(self, name)(x)
        return self.conv5(x)
