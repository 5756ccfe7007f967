"""Decoding the frame ranges of a long video (`skel extract --chunk-frames`): seeked to, against decoded from frame 0.

Before seeking (`stages.extract.video`, `VideoReader._open`), the range starting at frame s decoded the s frames
before it, so the ranges of a video of n frames decoded about n²/(2 × chunk) frames in all. Each range is read
here both ways in one process, one after the other (the decode-from-0 way is the same reader with its seek turned
off, the loop that read every range before), and the frames of both are compared by their SHA-256.

    .venv/bin/python -m bench.bench_ranges                       # a 9,000-frame 720p MPEG-4 copy of sports2d, 900
    .venv/bin/python -m bench.bench_ranges --video V.mp4 --chunk 60
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import cv2

import stages.extract.video as video
from bench.paths import SHARED
from stages.extract.video import VideoReader


def long_video(path: Path, frames: int) -> Path:
    """sports2d_demo's frames at 1280×720, forwards then backwards, to `frames` frames (MPEG-4 part 2 in MP4:
    the codec OpenCV's wheels write; a key frame every 12 frames)."""
    cap = cv2.VideoCapture(str(SHARED / "media" / "sports2d_demo.mp4"))
    clip = []
    while (ok_frame := cap.read())[0]:
        clip.append(cv2.resize(ok_frame[1], (1280, 720), interpolation=cv2.INTER_AREA))
    cap.release()
    loop = clip + clip[::-1]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (1280, 720))
    for i in range(frames):
        writer.write(loop[i % len(loop)])
    writer.release()
    return path


_timed = video._timed_container


def read(path: Path, start: int, stop: int | None, seek: bool) -> tuple[float, str, int]:
    """(seconds, SHA-256 of the range's frames, frame decoding resumed from) of one range."""
    video._timed_container = _timed if seek else (lambda p: False)
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    reader = VideoReader(str(path), start=start, stop=stop)
    for i, rgb in reader:
        digest.update(i.to_bytes(8, "little") + rgb.tobytes())
    return time.perf_counter() - t0, digest.hexdigest(), reader.seeked_to


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, help="a video (default: a long copy of sports2d made in a temp folder)")
    ap.add_argument("--frames", type=int, default=9000, help="length of the made video")
    ap.add_argument("--chunk", type=int, default=900, help="--chunk-frames")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.video or long_video(Path(tmp) / "long.mp4", args.frames)
        n = int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT))
        ranges = [(s, s + args.chunk if s + args.chunk < n else None) for s in range(0, n, args.chunk)]
        print(f"{path.name}: {n} frames, {len(ranges)} ranges of {args.chunk}; load average "
              f"{os.getloadavg()[0]:.1f}")
        print("| range | seeked: s (resumed at) | from frame 0: s | same frames |\n|---|---|---|---|")
        total = [0.0, 0.0]
        for start, stop in ranges:
            (a, ha, at), (b, hb, _) = read(path, start, stop, True), read(path, start, stop, False)
            total[0] += a
            total[1] += b
            print(f"| {start}–{stop or n} | {a:.2f} ({at}) | {b:.2f} | {ha == hb} |")
        print(f"| all | **{total[0]:.1f}** | **{total[1]:.1f}** ({total[1] / total[0]:.1f}×) | |")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
