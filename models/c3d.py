"""C3D backbone, as pyskl's ``C3D`` (PoseConv3D's "C3D-light" uses ``num_stages=3``, no temporal pooling)."""

import torch
from torch import nn

from .layers import ConvModule, init_conv_bn

__all__ = ["C3D"]


class C3D(nn.Module):
    """C3D without the flatten/fc layers; every conv is a 3x3x3 ``ConvModule`` (conv -> BN -> ReLU).

    Data flow with the C3D-light defaults (``base_channels=32, num_stages=3, temporal_downsample=False``)
    and a 17 x 48 x 56 x 56 clip::

        x [N, 17, 48, 56, 56]
          |  conv1a  17->32                          -> [N,  32, 48, 56, 56]
          |  pool1   AvgPool 1x2x2                   -> [N,  32, 48, 28, 28]
          |  conv2a  32->64                          -> [N,  64, 48, 28, 28]
          |  pool2   AvgPool 1x2x2 (2x2x2 if temporal_downsample)
          |  conv3a, conv3b  64->128->128            -> [N, 128, 48, 14, 14]
          |  pool3   AvgPool 1x2x2 (2x2x2 if temporal_downsample)
          |  conv4a, conv4b  128->256->256           -> [N, 256, 48,  7,  7]
          |  (num_stages=4 only: pool4, conv5a, conv5b  256->256->256)
          v
        features [N, out_channels=256, T', H', W']
    """

    def __init__(
        self,
        *,
        in_channels: int = 17,
        base_channels: int = 32,
        num_stages: int = 3,
        temporal_downsample: bool = False,
    ) -> None:
        super().__init__()
        if num_stages not in (3, 4):
            raise ValueError(f"C3D supports num_stages 3 or 4, got {num_stages}")
        self.num_stages = num_stages
        pool = (2, 2, 2) if temporal_downsample else (1, 2, 2)
        c = base_channels

        self.conv1a = ConvModule(in_channels, c, 3, padding=1)
        self.pool1 = nn.AvgPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.conv2a = ConvModule(c, c * 2, 3, padding=1)
        self.pool2 = nn.AvgPool3d(kernel_size=pool, stride=pool)
        self.conv3a = ConvModule(c * 2, c * 4, 3, padding=1)
        self.conv3b = ConvModule(c * 4, c * 4, 3, padding=1)
        self.pool3 = nn.AvgPool3d(kernel_size=pool, stride=pool)
        self.conv4a = ConvModule(c * 4, c * 8, 3, padding=1)
        self.conv4b = ConvModule(c * 8, c * 8, 3, padding=1)
        if num_stages == 4:
            self.pool4 = nn.AvgPool3d(kernel_size=pool, stride=pool)
            self.conv5a = ConvModule(c * 8, c * 8, 3, padding=1)
            self.conv5b = ConvModule(c * 8, c * 8, 3, padding=1)
        self.out_channels = c * 8

        init_conv_bn(self)  # pyskl's C3D.init_weights: the convs (BN keeps torch's 1/0 defaults, which this sets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1a(x))
        x = self.pool2(self.conv2a(x))
        x = self.pool3(self.conv3b(self.conv3a(x)))
        x = self.conv4b(self.conv4a(x))
        if self.num_stages == 4:
            x = self.conv5b(self.conv5a(self.pool4(x)))
        return x
