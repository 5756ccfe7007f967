"""MP4 videos (``mp4v``) written frame by frame under pipeline.atomic's temporary name and renamed into place
when closed, so a video is complete or absent: extraction previews, prediction overlays, synthetic clips."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from pipeline.atomic import reclaim_temporaries, temp_name
from pipeline.errors import NOT_UTF8, SkelError, printable, utf8_name


class Mp4Writer:
    """An MP4 written frame by frame: ``close`` renames it into place, ``abort`` removes it. As a context
    manager it closes on success and aborts on an exception."""

    def __init__(self, out: Path, fps: float | None) -> None:
        self.out, self.fps = Path(out), fps or 25.0
        if not utf8_name(self.out):  # OpenCV ends the process on such a name
            raise SkelError(f"{printable(self.out)}: {NOT_UTF8}")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        reclaim_temporaries(self.out)  # a killed writer's, in a user's folder (predict's --out) no run cleans
        tmp = temp_name(self.out)  # OpenCV picks the container by the extension: the temporary keeps it
        self.tmp = tmp.with_name(tmp.name + self.out.suffix)
        self.writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, bgr: np.ndarray) -> None:
        if self.writer is None:
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                          (bgr.shape[1], bgr.shape[0]))
        self.writer.write(bgr)
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file and move it into place; None when no frame was written. OpenCV reports no failed write
        (a full disk leaves a damaged file and a warning it logs), so the file is read back first: one that does
        not hold every frame written is removed and raised as an error."""
        if self.writer is None:
            return None
        self.writer.release()
        self.writer = None
        if (held := _frames_held(self.tmp)) != self.frames:
            why = "no space left on device" if _full(self.tmp.parent) else f"it holds {held} of {self.frames} frames"
            self.tmp.unlink(missing_ok=True)
            raise SkelError(f"{self.out}: the video could not be written ({why})")
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close() if exc_type is None else self.abort()


def _frames_held(path: Path) -> int:
    """The frames an MP4's index announces (0: not a readable video)."""
    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()


def _full(folder: Path) -> bool:
    """Whether the file system of ``folder`` has (almost) no room left for this user."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize < 2**20
