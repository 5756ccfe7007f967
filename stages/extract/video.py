"""Video decoding with OpenCV: frame selection by stride or target fps, and clear errors for bad files.

The frame count comes from decoding, not from container metadata. Reaching the end of the stream well
before the announced frame count and duration means a truncated or corrupt file, which is an error, as is a
file that does not open or yields no frame at all. A variable-rate MKV or WebM announces its duration times
its nominal rate, more frames than it holds: its last frame's time reaching that duration makes it whole.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.errors import FileError


class VideoError(FileError):
    """A video that cannot be used: not a video, empty, corrupt or truncated."""


@dataclass(frozen=True)
class FrameSelection:
    """Which decoded frames to keep: every `stride`-th, or resampled to `fps` (then stride is ignored)."""

    stride: int = 1
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be ≥ 1, got {self.stride}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")

    def keep(self, i: int, src_fps: float | None) -> bool:
        """Whether source frame `i` is selected (with fps: the first frame of each 1/fps time slot)."""
        if self.fps is None:
            return i % self.stride == 0
        if not src_fps or self.fps >= src_fps:
            return True
        r = self.fps / src_fps
        return i == 0 or math.floor(i * r) != math.floor((i - 1) * r)

    def out_fps(self, src_fps: float | None) -> float | None:
        """Frame rate of the selected frames (None when the source does not say)."""
        if not src_fps:
            return None
        return min(self.fps, src_fps) if self.fps is not None else src_fps / self.stride


@dataclass
class VideoReader:
    """Decodes source frames [start, stop) of one video into RGB frames.

    `n_decoded` counts the source frames decoded so far (those before `start` included: they are
    decoded sequentially rather than seeked to, which is slower but exact for every codec).
    """

    path: str
    selection: FrameSelection = FrameSelection()
    start: int = 0
    stop: int | None = None
    truncation_tolerance: float = 0.02

    def __post_init__(self) -> None:
        if os.path.isdir(self.path):
            raise VideoError(self.path, "is a directory, not a video")
        if not os.path.isfile(self.path):
            raise VideoError(self.path, "file not found")
        cap = cv2.VideoCapture(str(self.path))
        try:
            if not cap.isOpened():
                raise VideoError(self.path, "not a readable video (OpenCV cannot open it)")
            self.src_fps = float(cap.get(cv2.CAP_PROP_FPS)) or None
            self.announced = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))  # metadata: a hint, never trusted
            self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        finally:
            cap.release()
        self.fps = self.selection.out_fps(self.src_fps)
        self.n_decoded = 0
        self.last_ms = 0.0  # the time of the last frame decoded

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (source frame index, RGB uint8 frame) for the selected frames."""
        cap = cv2.VideoCapture(str(self.path))
        try:
            while (self.stop is None or self.n_decoded < self.stop) and cap.grab():
                i = self.n_decoded
                self.n_decoded += 1
                self.last_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
                if i >= self.start and self.selection.keep(i, self.src_fps):
                    ok, bgr = cap.retrieve()
                    if not ok:
                        raise VideoError(self.path, f"frame {i} cannot be decoded")
                    yield i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()
        if self.stop is None or self.n_decoded < self.stop:  # the stream ended: is that all of it?
            self._check_complete()

    def _check_complete(self) -> None:
        if self.n_decoded == 0:
            raise VideoError(self.path, "no frame could be decoded (empty or corrupt video)")
        missing = self.announced - self.n_decoded
        if missing > max(2, self.truncation_tolerance * self.announced) and not self._lasts_as_announced():
            raise VideoError(self.path, f"truncated or corrupt: decoded {self.n_decoded} of {self.announced} frames")

    def _lasts_as_announced(self) -> bool:
        """The last frame decoded ends where the announced frames at the nominal rate would (within the tolerance,
        at least two frames): the stream is whole, its frames further apart than the nominal rate."""
        if not self.src_fps:
            return False
        frame_ms = 1000 / self.src_fps
        duration = self.announced * frame_ms
        return self.last_ms + frame_ms >= duration - max(2 * frame_ms, self.truncation_tolerance * duration)
