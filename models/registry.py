"""The model registry: PoseConv3D's three pyskl backbones behind one ``Recognizer3D``, and RGBPose-Conv3D.

``build_model(name, num_classes=..., **overrides)`` looks the name up in ``MODELS`` (a plain dict, no
decorators). Each builder is keyword-only; ``dropout`` goes to the head and every other override to the
backbone, e.g. ``build_model("slowonly", num_classes=15, base_channels=16, stage_blocks=(2, 3, 2))``.

State-dict keys follow pyskl (``backbone.conv1.conv.weight``, ``backbone.layer1.0.conv1.bn.weight``,
``cls_head.fc_cls.weight``), so pyskl checkpoints load after stripping mmcv's wrapping, if any.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from models.c3d import C3D
from models.heads import I3DHead
from models.recognizer import Recognizer3D
from models.resnet3d_slowonly import ResNet3dSlowOnly
from models.x3d import X3D

if TYPE_CHECKING:  # the RGBPose module loads only when its model is built
    from typing import TypeAlias

    from models.rgbpose import RGBPoseRecognizer

    Recognizer: TypeAlias = Recognizer3D | RGBPoseRecognizer  # what build_model returns

__all__ = [
    "C3D",
    "I3DHead",
    "MODELS",
    "Recognizer3D",
    "ResNet3dSlowOnly",
    "X3D",
    "build_model",
    "c3d_light",
    "slowonly",
    "x3d_shallow",
]


def _recognizer(backbone: nn.Module, *, num_classes: int, dropout: float) -> Recognizer3D:
    head = I3DHead(in_channels=backbone.out_channels, num_classes=num_classes, dropout=dropout)
    return Recognizer3D(backbone=backbone, cls_head=head)


def slowonly(
    *, num_classes: int, in_channels: int = 17, dropout: float = 0.5, **backbone: Any
) -> Recognizer3D:
    """PoseConv3D SlowOnly (pyskl ``slowonly_r50_*``): ~2.0M params, 512 features."""
    return _recognizer(
        ResNet3dSlowOnly(in_channels=in_channels, **backbone), num_classes=num_classes, dropout=dropout
    )


def c3d_light(
    *, num_classes: int, in_channels: int = 17, dropout: float = 0.5, **backbone: Any
) -> Recognizer3D:
    """PoseConv3D C3D-light (pyskl ``c3d_light_*``): ~3.4M params, 256 features."""
    return _recognizer(C3D(in_channels=in_channels, **backbone), num_classes=num_classes, dropout=dropout)


def x3d_shallow(
    *, num_classes: int, in_channels: int = 17, dropout: float = 0.5, **backbone: Any
) -> Recognizer3D:
    """PoseConv3D X3D-shallow (pyskl ``x3d_shallow_*``): ~0.25M params, 216 features."""
    return _recognizer(X3D(in_channels=in_channels, **backbone), num_classes=num_classes, dropout=dropout)


def rgbpose(*, num_classes: int, in_channels: int = 17, dropout: float = 0.5, **overrides: Any
            ) -> RGBPoseRecognizer:
    """RGBPose-Conv3D (pyskl ``rgbpose_conv3d``): ~36.1M params; forward takes (imgs, heatmaps) -> two logits.

    ``in_channels`` is the pose pathway's; other overrides go to ``models.rgbpose.build_rgbpose``.
    """
    from models.rgbpose import build_rgbpose

    return build_rgbpose(num_classes=num_classes, pose_in_channels=in_channels, dropout=dropout, **overrides)


MODELS: dict[str, Callable[..., Recognizer]] = {
    "slowonly": slowonly,
    "c3d_light": c3d_light,
    "x3d_shallow": x3d_shallow,
    "rgbpose": rgbpose,
}


def build_model(
    name: str = "slowonly", *, num_classes: int, in_channels: int = 17, **overrides: Any
) -> Recognizer:
    """Build a registered model; unknown names raise ``KeyError`` listing the registered ones."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(MODELS)}") from None
    return builder(num_classes=num_classes, in_channels=in_channels, **overrides)
