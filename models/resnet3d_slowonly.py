"""SlowOnly ResNet3d backbone, as pyskl's ``ResNet3dSlowOnly`` (PoseConv3D's default pose network).

Its blocks (``ConvModule``, ``Bottleneck3d``, ``make_res_layer``) are in ``models.layers``.
"""

from collections.abc import Sequence

import torch
from torch import nn

from .layers import Bottleneck3d, add_slowonly_stages, init_conv_bn, per_stage

__all__ = ["ResNet3dSlowOnly"]


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
    ) -> None:
        super().__init__()
        stage_blocks = per_stage(stage_blocks, num_stages, "stage_blocks", at_least=1)
        inflate = per_stage(inflate, num_stages, "inflate")
        spatial_strides = per_stage(spatial_strides, num_stages, "spatial_strides")
        temporal_strides = per_stage(temporal_strides, num_stages, "temporal_strides")
        dilations = per_stage(dilations, num_stages, "dilations")

        self.out_channels = add_slowonly_stages(
            self, in_channels=in_channels, base_channels=base_channels, conv1_kernel=conv1_kernel,
            conv1_stride=conv1_stride, pool1_stride=pool1_stride, stage_blocks=stage_blocks, inflate=inflate,
            spatial_strides=spatial_strides, temporal_strides=temporal_strides, dilations=dilations,
        )  # fmt: skip
        self.res_layers = [f"layer{i + 1}" for i in range(num_stages)]
        # the stem and the leading layers without a temporal kernel or stride work frame by frame
        self.frame_wise = conv1_kernel[0] == 1 and conv1_stride[0] == 1 and pool1_stride[0] == 1
        self.frame_layers = next((i for i in range(num_stages) if inflate[i] or temporal_strides[i] != 1), num_stages)

        init_conv_bn(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck3d):
                    nn.init.zeros_(m.conv3.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_clips(self.forward_frames(x))

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        """The stem and the first ``frame_layers`` layers. When ``frame_wise``, each output frame depends on
        its input frame alone (no temporal kernel or stride), so clips that share frames can share this part."""
        x = self.maxpool(self.conv1(x))
        for name in self.res_layers[: self.frame_layers]:
            x = getattr(self, name)(x)
        return x

    def forward_clips(self, x: torch.Tensor) -> torch.Tensor:
        """The layers after ``forward_frames``."""
        for name in self.res_layers[self.frame_layers :]:
            x = getattr(self, name)(x)
        return x
