"""Classification head (pyskl ``I3DHead``)."""

import torch
from torch import nn

from .layers import init_fc

__all__ = ["I3DHead"]


class I3DHead(nn.Module):
    """Global average pool over (T, H, W) -> dropout -> linear ``fc_cls``.

    ``[N, in_channels, T, H, W] -> [N, num_classes]`` logits. The loss is not here: it lives in the
    training stage. ``fc_cls`` is initialised N(0, init_std) with zero bias, as pyskl.
    """

    def __init__(
        self, *, in_channels: int, num_classes: int, dropout: float = 0.5, init_std: float = 0.01
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else None
        self.fc_cls = nn.Linear(in_channels, num_classes)
        init_fc(self.fc_cls, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(dim=(2, 3, 4))  # == AdaptiveAvgPool3d(1) + flatten
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc_cls(x)
