"""Parameters of the frames stage (light: the CLI reads their defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FramesParams:
    size: int = 224  # short side of the stored frames (pyskl RGBPose trains at 224 after a 256 resize)
    samples_per_shard: int = field(default=4, metadata={"fingerprint": False})

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"size must be >= 8, got {self.size}")
