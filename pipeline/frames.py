"""The store of a frames output: one uint8 RGB array [T, H, W, 3] per sample (docs/architecture.md, Volumes).

``frames.zarr/<sample name>`` holds the frames behind a pose volume, cropped like it; ``index.parquet``
lists the arrays. Written by `skel frames` (stages.frames), read by RGBPose training and testing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from pipeline.volumes import ArrayStore

GROUP = "frames.zarr"
INDEX_SCHEMA = pa.schema([("sample_id", pa.string()), ("array", pa.string()), ("label", pa.int32()),
                          ("split", pa.string()), ("n_frames", pa.int32()), ("nbytes", pa.int64())])


@dataclass
class FrameStore(ArrayStore):
    """Read side of a frames output: uint8 RGB frames of one sample."""

    group: ClassVar[str] = GROUP

    def read(self, name: str, frames: np.ndarray | None = None) -> np.ndarray:
        """uint8 [T', H, W, 3] for the given frame indices (all frames when None)."""
        arr = self.array(name)
        return arr[...] if frames is None else arr.oindex[np.asarray(frames, dtype=np.int64)]
