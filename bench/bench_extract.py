"""Benchmark `extract`: frames/s of the two-stage ONNX pipeline on real clips, with 1 and 2 workers.

Cases: a single-person clip (the first frames of the NTU sample, scaled to 640×480) and a two-person
1920×1080 clip; Thunder and Lightning; the detector every 1, 5 or 10 frames. W workers are W processes
each extracting its own copy of the clip with cores / W onnxruntime threads; frames/s = all frames / wall
time. The decode / detect / pose columns are per-frame milliseconds inside one worker.

    .venv/bin/python bench/bench_extract.py --models ../shared/models --media ../shared/media --write
"""

from __future__ import annotations

import argparse
import functools
import itertools
import multiprocessing
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.detector import MoveNetMultiPose  # noqa: E402
from models.pose import MoveNetPose  # noqa: E402
from stages.extract.core import ExtractParams, extract_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECTION = "## extract"
CORES = len(os.sched_getaffinity(0))


def make_clip(src: Path, dst: Path, frames: int, size: tuple[int, int] | None) -> Path:
    """The first `frames` frames of `src` (optionally resized) as an MJPG AVI, made once."""
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    cap, writer = cv2.VideoCapture(str(src)), None
    for _ in range(frames):
        ok, bgr = cap.read()
        if not ok:
            break
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA) if size else bgr
        if writer is None:
            fourcc = cv2.VideoWriter_fourcc(*"MJPG")
            writer = cv2.VideoWriter(str(dst), fourcc, cap.get(cv2.CAP_PROP_FPS), bgr.shape[1::-1])
        writer.write(bgr)
    writer.release()
    cap.release()
    return dst


@functools.cache
def _estimators(models: str, pose: str, threads: int) -> tuple[MoveNetMultiPose, MoveNetPose]:
    return MoveNetMultiPose(models, threads=threads), MoveNetPose(models, name=pose, threads=threads)


def _load(models: str, threads: int) -> None:
    """Worker initializer: load every session this benchmark uses before the clock starts."""
    for pose in ("movenet-thunder", "movenet-lightning"):
        _estimators(models, pose, threads)


def _job(video: str, models: str, pose: str, threads: int, detect_every: int) -> dict:
    detector, estimator = _estimators(models, pose, threads)
    params = ExtractParams(detect_every=detect_every)
    cpu = time.process_time()
    kp, score, _, meta = extract_video(video, detector=detector, pose=estimator, params=params)
    return meta | {"cpu": time.process_time() - cpu, "kp": kp, "score": score}


def run_case(
    pool: ProcessPoolExecutor, workers: int, video: Path, models: str, pose: str, every: int, repeat: int
) -> dict:
    """Each worker extracts the clip; best of `repeat` runs (after a warm-up): frames/s and per-frame ms."""
    args = (str(video), models, pose, CORES // workers, every)
    list(pool.map(_job, *zip(*[args] * workers, strict=True)))  # warm-up
    best: dict = {"fps": 0.0}
    for _ in range(repeat):
        start = time.perf_counter()
        metas = list(pool.map(_job, *zip(*[args] * workers, strict=True)))
        wall = time.perf_counter() - start
        frames = sum(m["n_frames"] for m in metas)
        if frames / wall > best["fps"]:
            per_frame = {k: 1e3 * sum(m["timing"][k] for m in metas) / frames for k in ("decode", "detect", "pose")}
            cpu = 1e3 * sum(m["cpu"] for m in metas) / frames
            best = {"fps": frames / wall, **per_frame, "cpu": cpu, "kp": metas[0]["kp"], "score": metas[0]["score"]}
    return best


def deviation(r: dict, ref: dict) -> str:
    """Median distance (px) of confident keypoints to the reference result of the same clip, persons matched
    (their order is by summed score, which may differ between two runs when two people score alike)."""
    if r["kp"].shape != ref["kp"].shape:
        return "persons differ"
    medians = []
    for order in itertools.permutations(range(len(r["kp"]))):
        kp, score = r["kp"][list(order)], r["score"][list(order)]
        good = (score > 0.3) & (ref["score"] > 0.3)
        medians.append(np.median(np.linalg.norm(kp - ref["kp"], axis=-1)[good]))
    return f"{min(medians):.1f}"


def write_section(readme: Path, text: str) -> None:
    """Replace (or append) the `## extract` section of bench/README.md, leaving the others alone."""
    old = readme.read_text() if readme.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^{SECTION}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    readme.write_text(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("SKEL_SHARED", REPO.parent / "shared"))
    ap.add_argument("--models", default=os.environ.get("SKEL_MODELS", str(shared / "models")))
    ap.add_argument("--media", default=str(shared / "media"))
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--every", type=int, nargs="+", default=[1, 5, 10], help="detector intervals")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the fastest is reported")
    ap.add_argument("--write", action="store_true", help="write the table into bench/README.md")
    a = ap.parse_args()
    out = REPO / "bench" / "out"
    media = Path(a.media)
    clips = {
        "1 person 640×480": make_clip(media / "mmaction2_ntu_S001C001P001R001A001_rgb.avi",
                                      out / f"ntu_640x480_{a.frames}.avi", a.frames, (640, 480)),
        "2 persons 1920×1080": make_clip(media / "mmaction2_demo_skeleton.mp4",
                                         out / f"demo_skeleton_{a.frames}.avi", a.frames, None),
    }  # fmt: skip
    rows, refs = [], {}
    load_before = os.getloadavg()[0]
    ctx = multiprocessing.get_context("spawn")
    for workers in (1, 2):
        threads = max(1, CORES // workers)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_load, initargs=(a.models, threads)) as pool:
            for clip, video in clips.items():
                for pose in ("movenet-thunder", "movenet-lightning"):
                    for every in a.every:
                        r = run_case(pool, workers, video, a.models, pose, every, a.repeat)
                        ref = refs.setdefault((clip, pose), r)  # the first interval measured is the reference
                        cells = [clip, pose.split("-")[1], every, workers]
                        cells += [f"{r[k]:.1f}" for k in ("fps", "decode", "detect", "pose", "cpu")]
                        cells.append(deviation(r, ref))
                        row = "| " + " | ".join(map(str, cells)) + " |"
                        print(row, flush=True)
                        rows.append(row)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
    text = "\n".join([
        SECTION, "",
        f"`skel extract` pipeline (MoveNet MultiPose detector at long side 256 → MoveNet Thunder/Lightning on "
        f"crops, onnxruntime {__import__('onnxruntime').__version__} CPUExecutionProvider), first {a.frames} "
        f"frames of each clip, best of {a.repeat} runs. Machine: shared VM ({cpu}, {CORES} cores) used by "
        f"others at the same time: 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "Command: `.venv/bin/python bench/bench_extract.py --write`. frames/s = frames of all workers / wall "
        "time; W workers = W processes with cores / W intra-op threads per session each; decode / detect / pose = "
        "wall-clock milliseconds per frame inside a worker (with 2 workers both share the 2 cores); CPU ms = "
        "CPU time of the workers per frame (all threads), less sensitive to the other users of the machine. "
        "'detector every' N = MultiPose on every N-th frame (and whenever a person is lost), crops around the "
        "previous pose between. Δ px = median distance of confident keypoints (score > 0.3) to the result with "
        f"the detector every {a.every[0]} frame(s) (same clip and model).",
        "",
        "| clip | pose | detector every | workers | frames/s | decode ms | detect ms | pose ms | CPU ms | Δ px |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows, "",
    ])  # fmt: skip
    if a.write:
        write_section(REPO / "bench" / "README.md", text)
    print(text)


if __name__ == "__main__":
    main()
