"""Benchmark `extract`: person detection on hand-checked frames, frames with people per video, and speed.

Three parts, each a table of bench/README.md (## extract):

- accuracy: every detector option on the frames of tests/data/person_boxes.json (29 frames of the six
  shared videos, 74 people boxed by hand). A detection is a true positive when it overlaps a free
  hand-drawn box with IoU ≥ 0.5 (greedy by score; detections on an 'ignore' region count neither way);
  recall = TP / boxes, precision = TP / detections. 'kp in box' = share of the confident keypoints
  (score ≥ 0.3) of the true positives that lie inside their hand-drawn box grown by 10% per side. Rows
  with 'pose check' keep the detections `extract` confirms (`confirm`: pose score ≥ 0.25 on the keypoints in
  the frame, one pose per person). 'probe' picks one detector per video: the one whose confirmed
  people over 8 frames of the video's first 80 have the larger summed score.
- coverage: frames in which `extract` with default settings finds at least one person, per video
  (whole videos), for this code and for a baseline checkout (`--baseline DIR`, e.g. the commit before
  the fused detector: `git worktree add /tmp/base <rev>`), run with that checkout's defaults.
- speed: frames/s end to end (decode, detect, pose, track) on the first `--frames` frames of three
  clips, with 1 and 2 workers. W workers = W processes, each extracting its own copy of the clip with
  cores / W onnxruntime threads; frames/s = all frames / wall time; decode / detect / pose = per-frame
  wall-clock milliseconds inside one worker; CPU ms = CPU time per frame of the workers.

    .venv/bin/python bench/bench_extract.py --models ../shared/models --media ../shared/media \\
        --baseline /tmp/base --write
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.paths import REPO, SHARED  # noqa: E402
from models.detector import PersonDetector, box_iou, make_detector  # noqa: E402
from models.pose import MoveNetPose  # noqa: E402
from stages.extract.core import confirm, detect_people, extract_video  # noqa: E402
from stages.extract.params import ExtractParams  # noqa: E402
from stages.extract.stage import ExtractStageParams  # noqa: E402

SECTION = "## extract"
CORES = len(os.sched_getaffinity(0))
BOXES = REPO / "tests" / "data" / "person_boxes.json"
DEFAULT = ExtractStageParams().detector
# option name → (detector spec, MultiPose long side)
OPTIONS = {
    "movenet-multipose 256 (old default detector)": ("movenet-multipose", 256),
    "movenet-multipose 512": ("movenet-multipose", 512),
    "mb3-centernet": ("mb3-centernet", 256),
    f"{DEFAULT} 256 (default)": (DEFAULT, 256),
    f"{DEFAULT} 512": (DEFAULT, 512),
}
POSES = ("movenet-thunder", "movenet-lightning")  # extract's default pose model first
PROBE = ("mb3-centernet", "movenet-multipose")
PROBE_FRAMES = range(0, 80, 10)


@functools.cache
def _detector(models: str, spec: str, long_side: int, threads: int) -> PersonDetector:
    return make_detector(spec, models, long_side=long_side, threads=threads, device="cpu")


@functools.cache
def _pose(models: str, threads: int, name: str = "movenet-thunder") -> MoveNetPose:
    return MoveNetPose(models, name=name, threads=threads, device="cpu")


def read_frames(video: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    """RGB frames of `video` at the wanted indices (decoded in order, as `extract` does)."""
    cap, out, i = cv2.VideoCapture(str(video)), {}, 0
    while len(out) < len(wanted) and cap.grab():
        if i in wanted:
            out[i] = cv2.cvtColor(cap.retrieve()[1], cv2.COLOR_BGR2RGB)
        i += 1
    cap.release()
    return out


def match(det: np.ndarray, truth: np.ndarray, ignore: np.ndarray, thr: float = 0.5) -> tuple[list, int]:
    """Greedy matching by score: ([(detection, truth box)] true positives, false positives)."""
    order = np.argsort(-det[:, 4], kind="stable")
    overlap = box_iou(det, truth) if len(truth) else np.zeros((len(det), 0))
    on_ignore = (box_iou(det, ignore) >= thr).any(axis=1) if len(ignore) else np.zeros(len(det), bool)
    taken, pairs, fp = set(), [], 0
    for i in order:
        free = [j for j in np.argsort(-overlap[i]) if j not in taken and overlap[i, j] >= thr]
        if free:
            taken.add(free[0])
            pairs.append((i, free[0]))
        elif not on_ignore[i]:
            fp += 1
    return pairs, fp


def inside(kps: np.ndarray, box: np.ndarray, grow: float = 0.1, min_score: float = 0.3) -> tuple[int, int]:
    """(confident keypoints inside the box grown by `grow` per side, confident keypoints)."""
    w, h = box[2] - box[0], box[3] - box[1]
    lo, hi = np.array([box[0] - grow * w, box[1] - grow * h]), np.array([box[2] + grow * w, box[3] + grow * h])
    good = kps[kps[:, 2] >= min_score, :2]
    return int(np.all((good >= lo) & (good <= hi), axis=1).sum()), len(good)


def accuracy(models: str, media: Path, threads: int) -> tuple[list[str], dict]:
    """Table rows per detector option (see the module docstring) and per-video recall of each option."""
    spec = json.loads(BOXES.read_text())
    by_video: dict[str, list[dict]] = {}
    for f in spec["frames"]:
        by_video.setdefault(f["video"], []).append(f)
    pose = _pose(models, threads)
    frames = {v: read_frames(media / v, {f["frame"] for f in fs} | set(PROBE_FRAMES)) for v, fs in by_video.items()}
    probe = {}
    for video, imgs in frames.items():
        totals = {}
        for name in PROBE:
            det = _detector(models, name, 256, threads)
            totals[name] = sum(float(detect_people(imgs[i], det, pose, ExtractParams())[0][:, 4].sum())
                               for i in PROBE_FRAMES)
        probe[video] = max(PROBE, key=lambda n: totals[n])
    options = {k: {v: v_spec for v in by_video} for k, v_spec in OPTIONS.items()}
    options["probe: mb3-centernet or movenet-multipose 256"] = {v: (probe[v], 256) for v in by_video}
    rows, per_video = [], {}
    for name, chosen in options.items():
        for check in (False, True):
            tp = n_det = n_true = kin = kall = 0
            ms, recall_v = [], {}
            for video, fs in by_video.items():
                det = _detector(models, *chosen[video], threads)
                vt = vn = 0
                for f in fs:
                    rgb = frames[video][f["frame"]]
                    t0 = time.perf_counter()
                    boxes = det(rgb)
                    ms.append(1e3 * (time.perf_counter() - t0))
                    if check:
                        boxes, kps = confirm(rgb, boxes, pose, ExtractParams())
                    else:
                        kps = pose(rgb, boxes) if len(boxes) else np.zeros((0, 17, 3), np.float32)
                    truth = np.array(f["boxes"], np.float32).reshape(-1, 4)
                    pairs, fp = match(boxes, truth, np.array(f.get("ignore", []), np.float32).reshape(-1, 4))
                    tp, n_det, n_true = tp + len(pairs), n_det + len(pairs) + fp, n_true + len(truth)
                    vt, vn = vt + len(pairs), vn + len(truth)
                    for i, j in pairs:
                        a, b = inside(kps[i], truth[j])
                        kin, kall = kin + a, kall + b
                recall_v[video] = f"{vt}/{vn}"
            label = f"{name}{' + pose check' if check else ''}"
            per_video[label] = recall_v
            cells = [label, f"{100 * tp / n_true:.1f}% ({tp}/{n_true})",
                     f"{100 * tp / max(n_det, 1):.1f}% ({tp}/{n_det})", f"{100 * kin / max(kall, 1):.1f}%",
                     f"{np.median(ms):.0f}"]  # fmt: skip
            rows.append("| " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    print(json.dumps({"probe": probe, "recall per video": per_video}, indent=1), flush=True)
    return rows, {"probe": probe, "per_video": per_video}


BASELINE_JOB = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from models.detector import MoveNetMultiPose
from models.pose import MoveNetPose
from stages.extract.core import extract_video
from stages.extract.params import ExtractParams
models, video, runs, threads = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
max_frames = int(sys.argv[6]) if sys.argv[6] != "None" else None
detector, pose = MoveNetMultiPose(models, threads=threads), MoveNetPose(models, threads=threads)
best = (0.0, 0.0)
for _ in range(runs):
    start, cpu = time.perf_counter(), time.process_time()
    params = ExtractParams(max_frames=max_frames)
    kp, score, box, meta = extract_video(video, detector=detector, pose=pose, params=params)
    run = (meta["n_frames"] / (time.perf_counter() - start), 1e3 * (time.process_time() - cpu) / meta["n_frames"])
    best = max(best, run)
print(json.dumps({"with_people": int((box[..., 4] > 0).any(axis=0).sum()), "fps": best[0], "cpu": best[1]}))
"""


def baseline_run(root: str, models: str, video: Path, runs: int, max_frames: int | None = None) -> dict:
    """`extract_video` of the checkout at `root` with its defaults, 1 process: frames with people, and frames/s
    and CPU ms per frame of the fastest run."""
    args = [sys.executable, "-c", BASELINE_JOB, root, models, str(video), str(runs), str(CORES), str(max_frames)]
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()[-1])


def coverage(models: str, media: Path, baseline: str | None, videos: list[str], max_frames: int | None) -> list[str]:
    """Per video: frames with ≥ 1 person (default settings) for this code and the baseline checkout."""
    rows = []
    p = ExtractStageParams()
    det, pose = _detector(models, p.detector, p.detector_size, CORES), _pose(models, CORES)
    for video in sorted(media.glob("*.[am][vp][i4]")):
        if videos and video.name not in videos:
            continue
        t0 = time.perf_counter()
        _, _, box, meta = extract_video(video, detector=det, pose=pose, params=ExtractParams(max_frames=max_frames))
        secs = time.perf_counter() - t0
        ours = int((box[..., 4] > 0).any(axis=0).sum())
        base = baseline_run(baseline, models, video, 1, max_frames)["with_people"] if baseline else "–"
        cells = [video.name, meta["n_frames"], base, ours, box.shape[0], f"{meta['n_frames'] / secs:.1f}"]
        rows.append("| " + " | ".join(map(str, cells)) + " |")
        print(rows[-1], flush=True)
    return rows


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


def _load(models: str, threads: int) -> None:
    """Worker initializer: load every session this benchmark uses before the clock starts."""
    for spec, side in OPTIONS.values():
        _detector(models, spec, side, threads)
    for name in POSES:
        _pose(models, threads, name)


def _job(video: str, models: str, spec: str, side: int, threads: int, every: int, pose: str) -> dict:
    cpu = time.process_time()
    params = ExtractParams(max_persons=0, detect_every=every)
    _, _, box, meta = extract_video(video, detector=_detector(models, spec, side, threads),
                                    pose=_pose(models, threads, pose), params=params)  # fmt: skip
    persons = float((box[..., 4] > 0).sum(axis=0).mean())
    return meta | {"cpu": time.process_time() - cpu, "persons": persons}


def run_case(pool: ProcessPoolExecutor, workers: int, args: tuple, repeat: int) -> dict:
    """Each worker extracts the clip; best of `repeat` runs (after a warm-up): frames/s and per-frame ms."""
    jobs = list(zip(*[args] * workers, strict=True))
    list(pool.map(_job, *jobs))  # warm-up
    best: dict = {"fps": 0.0}
    for _ in range(repeat):
        start = time.perf_counter()
        metas = list(pool.map(_job, *jobs))
        wall = time.perf_counter() - start
        frames = sum(m["n_frames"] for m in metas)
        if frames / wall > best["fps"]:
            per_frame = {k: 1e3 * sum(m["timing"][k] for m in metas) / frames for k in ("decode", "detect", "pose")}
            cpu = 1e3 * sum(m["cpu"] for m in metas) / frames
            best = {"fps": frames / wall, **per_frame, "cpu": cpu, "persons": metas[0]["persons"]}
    return best


def speed(
    models: str,
    media: Path,
    n_frames: int,
    repeat: int,
    options: list[str],
    every: list[int],
    worker_counts: list[int],
    baseline: str | None,
    poses: list[str],
) -> list[str]:
    out = REPO / "bench" / "out"
    clips = {
        "1 person 640×480": make_clip(media / "mmaction2_ntu_S001C001P001R001A001_rgb.avi",
                                      out / f"ntu_640x480_{n_frames}.avi", n_frames, (640, 480)),
        "2 persons 1920×1080": make_clip(media / "mmaction2_demo_skeleton.mp4",
                                         out / f"demo_skeleton_{n_frames}.avi", n_frames, None),
        "4–7 far persons 768×576": make_clip(media / "opencv_vtest.avi", out / f"vtest_{n_frames}.avi",
                                             n_frames, None),
        "4–7 persons, 768×576 scaled to 1280×720": make_clip(media / "opencv_vtest.avi",
                                                             out / f"vtest_720p_{n_frames}.avi", n_frames, (1280, 720)),
    }  # fmt: skip
    rows = []
    for clip, video in clips.items() if baseline else ():
        r = baseline_run(baseline, models, video, repeat + 1)  # the first run is the warm-up
        rows.append(f"| {clip} | baseline checkout's defaults (MultiPose 256, 2 persons) | 5 | 1 | – | {r['fps']:.1f} "
                    f"| | | | {r['cpu']:.1f} |")  # fmt: skip
        print(rows[-1], flush=True)
    ctx = multiprocessing.get_context("spawn")
    for workers in worker_counts:
        threads = max(1, CORES // workers)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_load, initargs=(models, threads)) as pool:
            for clip, video in clips.items():
                for name, n, pose in itertools.product(options, every, poses):
                    r = run_case(pool, workers, (str(video), models, *OPTIONS[name], threads, n, pose), repeat)
                    label = name if pose == POSES[0] else f"{name}, pose {pose}"
                    cells = [clip, label, n, workers, f"{r['persons']:.1f}"]
                    cells += [f"{r[k]:.1f}" for k in ("fps", "decode", "detect", "pose", "cpu")]
                    rows.append("| " + " | ".join(map(str, cells)) + " |")
                    print(rows[-1], flush=True)
    return rows


def write_section(readme: Path, intro: str, parts: dict[str, str]) -> None:
    """Write the `## extract` section of bench/README.md: the intro and the subsections (`### ...`) measured
    now; subsections of parts not run now are kept as they are. Other sections are left alone."""
    old = readme.read_text() if readme.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^{SECTION}\n.*?(?=^## |\Z)", re.S | re.M)
    found = pattern.search(old)
    kept = dict.fromkeys(HEADINGS.values(), "")
    for block in re.split(r"(?m)^(?=### )", found.group(0) if found else "")[1:]:
        key = next((h for h in HEADINGS.values() if block.startswith(h)), None)
        if key:
            kept[key] = block.rstrip("\n") + "\n\n"
    kept |= {HEADINGS[name]: text.rstrip("\n") + "\n\n" for name, text in parts.items()}
    text = intro.rstrip("\n") + "\n\n" + "".join(kept.values())
    new = pattern.sub(lambda _: text, old) if found else old.rstrip("\n") + "\n\n" + text
    readme.write_text(new)


# "derived" is written by hand from tools/extract_eval.py's output; listed so that --write keeps it
HEADINGS = {"accuracy": "### Person detection", "coverage": "### Frames with people", "speed": "### Speed",
            "derived": "### Close-ups, cut bodies and touching people"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=os.environ.get("SKEL_MODELS", str(SHARED / "models")))
    ap.add_argument("--media", default=str(SHARED / "media"))
    ap.add_argument("--parts", nargs="+", default=["accuracy", "coverage", "speed"])
    ap.add_argument("--baseline", help="checkout of an earlier revision to compare frames with people against")
    ap.add_argument("--videos", nargs="+", default=[], help="coverage: only these media files (default: all)")
    ap.add_argument("--max-frames", type=int, help="coverage: only the first frames of each video")
    ap.add_argument("--frames", type=int, default=60, help="frames per clip for the speed part")
    ap.add_argument("--options", nargs="+", default=[n for n in OPTIONS if "512" not in n],
                    choices=list(OPTIONS), help="detector options timed in the speed part")  # fmt: skip
    ap.add_argument("--every", type=int, nargs="+", default=[5], help="detector intervals timed in the speed part")
    ap.add_argument("--poses", nargs="+", default=[POSES[0]], choices=POSES, help="pose models timed in the speed part")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts timed in the speed part")
    ap.add_argument("--repeat", type=int, default=3, help="runs per speed case; the fastest is reported")
    ap.add_argument("--write", action="store_true", help="write the tables into bench/README.md")
    a = ap.parse_args()
    media = Path(a.media)
    texts = {}
    for part in a.parts:
        load = os.getloadavg()[0]
        if part == "accuracy":
            rows = accuracy(a.models, media, CORES)[0]
            texts[part] = "\n".join([
                f"{HEADINGS[part]} on hand-checked frames", "",
                f"{BOXES.relative_to(REPO)}: 29 frames of the six videos of the shared media, 74 people boxed by "
                "hand. IoU ≥ 0.5; 'pose check' = the detections `extract` confirms by their Thunder poses "
                "(`confirm`) kept; det ms = median detector milliseconds per frame (2 threads).", "",
                "| detector | recall | precision | kp in box | det ms |", "| --- | --- | --- | --- | --- |", *rows,
            ])  # fmt: skip
        elif part == "coverage":
            rows = coverage(a.models, media, a.baseline, a.videos, a.max_frames)
            span = f"first {a.max_frames} frames" if a.max_frames else "whole videos"
            texts[part] = "\n".join([
                f"{HEADINGS[part]}, default settings, {span}", "",
                "'before' = the baseline checkout's `extract_video` with its defaults (MultiPose at 256, the two "
                "highest-scoring detections); 'now' = this code's defaults. frames/s now: one process, 2 threads.",
                "", "| video | frames | with people, before | with people, now | persons kept | frames/s now |",
                "| --- | --- | --- | --- | --- | --- |", *rows,
            ])  # fmt: skip
        elif part == "speed":
            rows = speed(a.models, media, a.frames, a.repeat, a.options, a.every, a.workers, a.baseline, a.poses)
            texts[part] = "\n".join([
                f"{HEADINGS[part]} (first {a.frames} frames, Thunder, all persons posed, best of {a.repeat} runs)", "",
                "'detector every' N = the detector on every N-th frame (and whenever a person is lost), crops "
                "around the previous pose between; persons/frame = persons with a pose per frame; the baseline "
                "row is the baseline checkout's defaults in one process.", "",
                "| clip | detector | detector every | workers | persons/frame | frames/s | decode ms | detect ms "
                "| pose ms | CPU ms |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows,
            ])  # fmt: skip
        after = os.getloadavg()[0]
        texts[part] += f"\n\n1-min load average {load:.1f} before, {after:.1f} after ({time.strftime('%F')})."
        print(texts[part], flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
    intro = "\n".join([
        SECTION, "",
        f"`skel extract`: person detector → MoveNet Thunder on every person's crop → tracks (onnxruntime "
        f"{__import__('onnxruntime').__version__} CPUExecutionProvider). Machine: shared VM ({cpu}, {CORES} "
        "cores) used by other jobs at the same time (load given per table). Command: "
        "`.venv/bin/python bench/bench_extract.py --baseline DIR --write` (`--parts` runs some of the tables; "
        "the module docstring defines every column).", "",
        "Default detector: CenterNet and MultiPose (256) on every detector frame, boxes fused, each box confirmed "
        "by its pose. On the hand-checked frames the two detectors miss different people (CenterNet the "
        "low-resolution close-ups, MultiPose the small, distant people); fused, recall rises above either, and "
        "the pose check removes CenterNet's false boxes (a sign post, traffic cones, a rock). A per-video probe "
        "(one detector per video, chosen on its first frames) scores the same on these frames at about half the "
        "detector cost, but it bets the whole video on its first seconds and cannot serve a video with both a close-up "
        "actor and distant people; the fused default costs one more detector run every `detect_every` frames.",
    ])  # fmt: skip
    if a.write:
        write_section(REPO / "bench" / "README.md", intro, texts)


if __name__ == "__main__":
    main()
