"""Parameters of the render stage (light: the CLI reads their defaults without loading the renderer)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.fingerprint import UNLESS_DEFAULT
from stores.coco import LIMBS, NUM_KEYPOINTS
from stores.persons import RANKINGS

KINDS = ("joint", "limb")
DTYPES = {"float16": np.float16, "float32": np.float32, "uint8": np.uint8}


@dataclass(frozen=True)
class RenderParams:
    kind: str = "joint"
    sigma: float = 0.6
    size: int = 64
    max_frames: int = 300
    dtype: str = "uint8"
    use_score: bool = True
    crop_padding: float = 0.25
    crop_threshold: int = 10
    # draw only the max_persons (0: all) persons ranked first by `rank` (stores.persons); hashed only when set,
    # so the outputs rendered before these options existed keep their fingerprints
    max_persons: int = field(default=0, metadata={"fingerprint": UNLESS_DEFAULT})
    rank: str = field(default="salience", metadata={"fingerprint": UNLESS_DEFAULT})
    samples_per_shard: int = field(default=64, metadata={"fingerprint": False})  # one array per shard

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.size < 8:
            raise ValueError(f"size must be >= 8, got {self.size}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.max_persons < 0:
            raise ValueError(f"max_persons must be >= 0, got {self.max_persons}")
        if self.rank not in RANKINGS:
            raise ValueError(f"rank must be one of {RANKINGS}, got {self.rank!r}")

    @property
    def limbs(self) -> list[tuple[int, int]] | None:
        return [tuple(limb) for limb in LIMBS] if self.kind == "limb" else None

    @property
    def channels(self) -> int:
        """K: one heatmap per joint, or per limb."""
        return len(LIMBS) if self.kind == "limb" else NUM_KEYPOINTS
