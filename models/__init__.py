"""Networks (torch backbones, heads, recognizers; see ``models.registry``) and ONNX pose adapters.

``from models import build_model`` works as usual, but torch is imported only when a network is asked
for, so processes that only run the ONNX pose models (extract workers) do not load it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

# ImageNet pixel mean and std, RGB order, 0-255 (MoveNet/heatmap pose inputs; pyskl RGBPose img_norm_cfg)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
Device = Literal["auto", "cpu", "cuda"]  # where a model runs (auto: CUDA when available)
# the names models.registry.MODELS builds, known without importing torch (recipes and Params check against them)
MODEL_NAMES = ("slowonly", "c3d_light", "x3d_shallow", "rgbpose")


def check_device(device: str) -> None:
    """A ValueError unless ``device`` is one of ``Device``'s names."""
    if device not in get_args(Device):
        raise ValueError(f"device must be one of {', '.join(get_args(Device))}, got {device!r}")


def uses_frames(model: str) -> bool:
    """Whether the model also needs the RGB frames stage output as input ``frames``."""
    return model == "rgbpose"


_LAZY = {"MODELS", "Recognizer3D", "I3DHead", "ResNet3dSlowOnly", "C3D", "X3D", "build_model", "slowonly",
         "c3d_light", "x3d_shallow"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
