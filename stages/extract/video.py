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

A range that starts later in the file (`start`: chunked extraction of long videos) is seeked to rather than decoded
from frame 0, where the frames' times say exactly which frame a seek landed on (`VideoReader._open`); it then
decodes what decoding from frame 0 would have, frame for frame.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.errors import NOT_UTF8, FileError, printable, utf8_name

SEEK_BACK = 16  # frames before `start` a seek aims at (more where it lands past `start`)
EVEN = 0.01  # an MP4's frames are evenly spaced where their gaps differ by at most this share of the median


class VideoError(FileError):
    """A video that cannot be used: not a video, empty, corrupt or truncated."""


def capture(path: str, *args: object) -> cv2.VideoCapture:
    """``cv2.VideoCapture`` of a file, refusing a name that is not UTF-8 (OpenCV ends the process on one)."""
    if not utf8_name(path):
        raise VideoError(printable(path), NOT_UTF8)
    return cv2.VideoCapture(path, *args)


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

    `n_decoded` counts the source frames passed so far, those before `start` included (seeked past where
    `_open` can, else decoded sequentially); `seeked_to` is the frame decoding resumed from after a seek (0: none).
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
        cap = capture(str(self.path))
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
        self._reset()

    def _reset(self) -> None:
        self.n_decoded = 0
        self.last_ms = 0.0  # the time of the last frame passed
        self.timed = False  # the fps selection went by the frames' times: the stream left its nominal grid
        self.seeked_to = 0
        self._origin = 0.0  # the first frame's time
        self._kept = -1  # the slot of the last frame kept (or passed before start)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (source frame index, RGB uint8 frame) for the selected frames."""
        cap = self._open()
        try:
            while (self.stop is None or self.n_decoded < self.stop) and cap.grab():
                i = self.n_decoded
                slot = self._pass(i, cap.get(cv2.CAP_PROP_POS_MSEC))
                if slot > self._kept and i >= self.start:
                    ok, bgr = cap.retrieve()
                    if not ok:
                        raise VideoError(self.path, f"frame {i} cannot be decoded")
                    yield i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                self._kept = max(self._kept, slot)
        finally:
            cap.release()
        if self.stop is None or self.n_decoded < self.stop:  # the stream ended: is that all of it?
            self._check_complete()

    def _pass(self, i: int, ms: float) -> int:
        """Account for source frame `i` at `ms` (decoded, or seeked past): the state the frames after it are
        selected by. Returns its slot."""
        self.n_decoded = i + 1
        previous, self.last_ms = self.last_ms, ms
        self._origin = ms if i == 0 else self._origin
        self.timed = self.timed or (i > 0 and ms > previous and self._off_grid(i, ms - self._origin))
        return self.selection.slot(i, self.src_fps, ms - self._origin if self.timed else None)

    def _open(self) -> cv2.VideoCapture:
        """A capture whose next grab is source frame `n_decoded`, with the selection's state as if every frame
        before had been decoded.

        Decoding the frames before `start` costs as much as decoding the range itself, so a range of a long video
        paid for every range before it. In an MP4/MOV or Matroska/WebM file every frame has its own time, and a
        demux without decoding (`_frame_times`) lists them: a frame's index is its rank among them. A seek to a
        time shortly before `start` lands on a frame whose time names its index; the frames from there to `start`
        are decoded and must have the times their indices say. Anything else (another container, a listing
        `_frame_times` refuses, a first decoded frame that is not the first listed, a landing at or past `start`)
        decodes from frame 0 as before.
        """
        self._reset()
        cap = capture(str(self.path))
        container = _timed_container(self.path) if self.start else None
        times = _frame_times(self.path, self.start, container) if container else None
        if not times or len(times) <= self.start or not cap.grab() or cap.get(cv2.CAP_PROP_POS_MSEC) != times[0]:
            cap.release()
            return capture(str(self.path))
        index = {ms: i for i, ms in enumerate(times)}
        back = SEEK_BACK
        while back < 4 * self.start:
            cap.set(cv2.CAP_PROP_POS_MSEC, times[max(self.start - back, 1)])
            landed = index.get(cap.get(cv2.CAP_PROP_POS_MSEC)) if cap.grab() else None
            if landed is not None and landed < self.start and self._catch_up(cap, times, landed):
                return cap
            self._reset()
            back *= 4
        cap.release()
        return capture(str(self.path))

    def _catch_up(self, cap: cv2.VideoCapture, times: list[float], landed: int) -> bool:
        """Account for the frames before `landed` by their listed times, then decode from it to `start`, each
        frame at its listed time (False where one is not: the listing does not describe what the decoder gives)."""
        for i in range(landed):
            self._kept = max(self._kept, self._pass(i, times[i]))
        self.seeked_to = landed
        for i in range(landed, self.start):
            if i > landed and not cap.grab():
                return False
            ms = cap.get(cv2.CAP_PROP_POS_MSEC)
            if ms != times[i]:
                return False
            self._kept = max(self._kept, self._pass(i, ms))
        return True

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


def _timed_container(path: str) -> str | None:
    """"mp4" for an MP4/MOV (an `ftyp` box first), "matroska" for Matroska/WebM (EBML): containers that give each
    frame its own presentation time (AVI's index and MPEG streams' packets need not); None for any other file."""
    with open(path, "rb") as fh:
        head = fh.read(12)
    return "mp4" if head[4:8] == b"ftyp" else "matroska" if head[:4] == b"\x1a\x45\xdf\xa3" else None


def _frame_times(path: str, upto: int, container: str) -> list[float] | None:
    """The times (ms, as OpenCV gives a decoded frame's) of the video's first frames in presentation order, from a
    demux that decodes nothing: at least the first `upto` + 1, and every frame whose time is below theirs (the
    packets up to the second key frame after `upto` in decode order). None where they may not name the frames the
    decoder gives: the demuxer cannot list packets; two have one time; every packet is a key frame (a missing or
    damaged sync-sample table says so of every frame, and a seek would then land on one that needs those before
    it); in an MP4, frames not evenly spaced (the leading frames an edit list drops, as a stream-copy cut leaves,
    are listed too, and where the rate changes their ranks stop matching the decoder's indices)."""
    raw = capture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
    try:
        if not raw.isOpened() or raw.get(cv2.CAP_PROP_FORMAT) != -1:
            return None
        times: list[float] = []
        keys = key_frames = 0
        while keys < 2 and raw.grab():
            times.append(raw.get(cv2.CAP_PROP_POS_MSEC))
            key = bool(raw.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME))
            keys += len(times) > upto + 1 and key
            key_frames += key
    finally:
        raw.release()
    times.sort()
    gaps = np.diff(times)
    if len(set(times)) < len(times) or key_frames == len(times) or len(gaps) == 0:
        return None
    if container == "mp4" and gaps.max() - gaps.min() > EVEN * np.median(gaps):
        return None
    return times
