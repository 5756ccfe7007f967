"""Benchmark the persons `extract` keeps: track fragments before and after joining, persons kept, frames with ≥ 2.

Per video, one `extract_video` run with `max_persons=0, merge_gap=0` gives every track as the tracker leaves
it; `stages.extract.track.finish` then applies the old settings (`max_persons=2`, no joining: the code before
issue 24) and the new defaults (every person, fragments joined within `merge_gap` frames) to those same
tracks. Columns: tracks = tracks the tracker made; joined = after joining fragments; short = tracks seen
fewer than `SHORT_TRACK` frames, before → after joining; kept = persons a sample holds, old → new; ≥ 2 persons
= share of the frames in which at least two kept persons have a pose, old → new. Writes its own section of
bench/README.md, right after ## extract (bench_extract.py rewrites that one).

    .venv/bin/python bench/bench_persons.py --write
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.paths import REPO, SHARED  # noqa: E402
from stages.extract.core import extract_video  # noqa: E402
from stages.extract.params import ExtractParams  # noqa: E402
from stages.extract.stage import ExtractStageParams, estimators  # noqa: E402
from stages.extract.track import SHORT_TRACK, finish  # noqa: E402

SECTION = "## extract: persons kept and track fragments"
VIDEOS = ("mmaction2_demo_skeleton.mp4", "mmaction2_test_video_structuralize.mp4", "opencv_vtest.avi")


def two_or_more(box: np.ndarray) -> float:
    """Share of the frames in which at least two persons of boxes [M, T, 5] have a pose."""
    return float(((box[..., 4] > 0).sum(axis=0) >= 2).mean()) if box.shape[1] else 0.0


def measure(video: Path, models: str, max_frames: int | None) -> str:
    """One table row for `video`."""
    p = ExtractStageParams(models=models, device="cpu", threads=1)
    detector, pose = estimators(p)
    t0 = time.perf_counter()
    kp, score, box, meta = extract_video(video, detector=detector, pose=pose,
                                         params=ExtractParams(max_frames=max_frames, max_persons=0, merge_gap=0))
    fps = meta["n_frames"] / (time.perf_counter() - t0)
    hw, new = (meta["img_h"], meta["img_w"]), ExtractParams()
    *_, old_box, before = finish((kp, score, box), 2, hw, 0)
    *_, new_box, after = finish((kp, score, box), new.max_persons, hw, new.merge_gap)
    cells = [video.name, meta["n_frames"], before["tracks"], after["tracks"],
             f"{before['short_tracks']} → {after['short_tracks']}", f"{len(old_box)} → {len(new_box)}",
             f"{two_or_more(old_box):.1%} → {two_or_more(new_box):.1%}", f"{fps:.1f}"]
    return "| " + " | ".join(map(str, cells)) + " |"


def write_section(readme: Path, text: str) -> None:
    """Replace this benchmark's section of bench/README.md, or put it right after ## extract."""
    old = readme.read_text()
    own = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if own.search(old):
        readme.write_text(own.sub(lambda _: text, old))
        return
    after = re.search(r"^## extract\n.*?(?=^## |\Z)", old, re.S | re.M)
    at = after.end() if after else len(old)
    readme.write_text(old[:at].rstrip("\n") + "\n\n" + text + old[at:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=os.environ.get("SKEL_MODELS", str(SHARED / "models")))
    ap.add_argument("--media", default=str(SHARED / "media"))
    ap.add_argument("--videos", nargs="+", default=list(VIDEOS))
    ap.add_argument("--max-frames", type=int, help="only the first frames of each video")
    ap.add_argument("--write", action="store_true", help="write the table into bench/README.md")
    a = ap.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for name in a.videos:
        rows.append(measure(Path(a.media) / name, a.models, a.max_frames))
        print(rows[-1], flush=True)
    d = ExtractParams()
    text = "\n".join([
        SECTION, "",
        f"`skel extract` keeps every confirmed person (`max_persons` {d.max_persons} = all; `skel render "
        f"--max-persons N --rank salience|score` chooses at render time) and joins track fragments lost for at "
        f"most `merge_gap` = {d.merge_gap} frames. Command: `.venv/bin/python bench/bench_persons.py --write` "
        "(the module docstring defines the columns); whole videos unless a frame count says otherwise, default "
        "detector and Thunder, one process with one thread.", "",
        f"| video | frames | tracks | joined | short (< {SHORT_TRACK} frames) | kept, old → new | frames with ≥ 2 "
        "persons, old → new | frames/s |", "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows, "",
        f"1-min load average {load:.1f} before, {os.getloadavg()[0]:.1f} after ({time.strftime('%F %H:%M')}).", "",
    ])  # fmt: skip
    print(text)
    if a.write:
        write_section(REPO / "bench" / "README.md", text)


if __name__ == "__main__":
    main()
