"""RGBPose clip lengths and sizes (``ClipSpec``) and how a config gives them; torch-free, so that training
parameters check them when a run is configured without loading torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from models import uses_frames

RGB_SCALE = 4  # RGBPose: RGB side / pose side (the RGB stem downsamples 4x more than the pose stem)


@dataclass(frozen=True)
class ClipSpec:
    """Clip lengths and output sizes of both modalities, and the training augmentation (pyskl's config)."""

    rgb_len: int = 8
    pose_len: int = 32
    rgb_size: int = 224
    pose_size: int = 56
    area: tuple[float, float] = (0.56, 1.0)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)
    flip_ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.rgb_len < 1 or self.pose_len % self.rgb_len:
            raise ValueError(f"pose_len ({self.pose_len}) must be a multiple of rgb_len ({self.rgb_len})")


def clip_spec_config(model: str, model_args: dict, clip_len: int, size: int, flip_ratio: float) -> dict:
    """Extra config of a frames model: its ClipSpec (pose clip_len x size, RGB 1/speed_ratio x 4 size)."""
    if not uses_frames(model):
        return {}
    ratio = int(model_args.get("speed_ratio", 4))
    if clip_len % ratio:
        raise ValueError(f"rgbpose: clip_len {clip_len} must be a multiple of speed_ratio {ratio}")
    spec = ClipSpec(rgb_len=clip_len // ratio, pose_len=clip_len, rgb_size=RGB_SCALE * size, pose_size=size,
                    flip_ratio=flip_ratio)
    return {"clip_spec": asdict(spec)}


def clip_spec_of(config: dict, size: int | None = None) -> ClipSpec:
    """A frames model's ClipSpec from its config; ``size`` overrides the pose side (the RGB side is 4x it)."""
    spec = ClipSpec(**config["clip_spec"])
    return spec if size is None else replace(spec, rgb_size=RGB_SCALE * size, pose_size=size)
