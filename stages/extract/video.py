"""Video decoding with OpenCV: frame selection by stride or target fps, and clear errors for bad files.

The frame count comes from decoding, not from container metadata. Reaching the end of the stream well
before the announced frame count and duration means a truncated or corrupt file, which is an error, as is a
file that does not open or yields no frame at all. A variable-rate MKV or WebM announces its duration times
its nominal rate, more frames than it holds: its last frame's time reaching that duration makes it whole.

`--fps` keeps the first frame of each 1/fps time slot. A frame's slot comes from its index at the nominal rate
while the frames' times keep to that grid, and from its time once they leave it (a variable-rate stream, a phone's
video in low light): selecting by index there left gaps of 0.4 s where 0.2 s was asked. A constant-rate stream
never leaves the grid, so its selection is the index one it always was; MPEG-PS, whose frames OpenCV gives no
times (all 0), stays on it too.
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
    """Which decoded frames to keep: every `stride`-th, or resampled to `fps` (then stride is ignored).

    `times`: with fps, a stream that leaves its nominal grid is selected by its frames' times (False: by index
    throughout, as extractions before that rule did; `skel frames` reads which from each sample's extra)."""

    stride: int = 1
    fps: float | None = None
    times: bool = True

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be ≥ 1, got {self.stride}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")

    def slot(self, i: int, src_fps: float | None, ms: float | None = None) -> int:
        """The slot of source frame `i`, of which the first frame is kept: i // stride, or with fps its 1/fps time
        slot, by its time `ms` from the first frame where given, else by its index at the nominal rate."""
        if self.fps is None:
            return i // self.stride
        if not src_fps or self.fps >= src_fps:
            return i
        return math.floor(i * self.fps / src_fps if ms is None else ms * self.fps / 1000)

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
        self.timed = False  # the fps selection went by the frames' times: the stream left its nominal grid

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (source frame index, RGB uint8 frame) for the selected frames."""
        cap = cv2.VideoCapture(str(self.path))
        kept, origin = -1, 0.0  # the slot of the last frame kept, the first frame's time
        try:
            while (self.stop is None or self.n_decoded < self.stop) and cap.grab():
                i = self.n_decoded
                self.n_decoded += 1
                ms, previous = cap.get(cv2.CAP_PROP_POS_MSEC), self.last_ms
                origin = ms if i == 0 else origin
                self.last_ms = ms
                self.timed = self.timed or (i > 0 and ms > previous and self._off_grid(i, ms - origin))
                slot = self.selection.slot(i, self.src_fps, ms - origin if self.timed else None)
                if slot > kept and i >= self.start:
                    ok, bgr = cap.retrieve()
                    if not ok:
                        raise VideoError(self.path, f"frame {i} cannot be decoded")
                    yield i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                kept = max(kept, slot)
        finally:
            cap.release()
        if self.stop is None or self.n_decoded < self.stop:  # the stream ended: is that all of it?
            self._check_complete()

    def _off_grid(self, i: int, ms: float) -> bool:
        """Whether frame `i`, at `ms` from the first, lies half a nominal frame or more off its place at the nominal
        rate (only where an fps selection asks for times)."""
        if self.selection.fps is None or not self.selection.times or not self.src_fps:
            return False
        return abs(ms - i * 1000 / self.src_fps) >= 500 / self.src_fps

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
