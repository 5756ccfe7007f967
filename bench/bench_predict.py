"""Benchmark `skel predict`: live latency and frame rate, per-person correctness, ONNX vs torch.

1. Live (`run_live`, Lightning, the ONNX classifier, 1 test clip + its mirror per decision, window 48,
   decision every 8 frames): a 1-person 640×480 file and a 2-person 1920×1080 file, both played at 30 fps
   for 10 s (the source clips are played forward then backward until 300 frames), whole scene and per
   person. Reported: frames processed and dropped, processing capacity (frames / busy seconds), median and
   p95 decision latency from the newest frame. Baseline (same run): offline `predict_video` on the file.
2. Per person: mannequin videos (`apps.predict.synthetic`) of two people doing two different actions side
   by side, every pair of the six classes, 96 frames, windows of 48 every 16; share of (track, window)
   whose top-1 is that person's own action, through real extraction (Lightning and Thunder) and from the exact
   skeletons (2 test clips + mirrors), by the model below and by one trained on Lightning's skeletons of
   single-person mannequin videos (`train_model_extracted`); the whole-scene label can be only one of the two
   actions.
3. ONNX vs torch: the shared media videos (first 150 frames, Lightning), windows of 48 every 24, 10 clips
   + mirrors: same top-1 per window, and the classifier's time per window for each backend.

The model is the synthetic demo recipe (workflows/demo.toml: SlowOnly, base 16, 32², clip 12) trained on
single-person synthetic clips (24 per class), made once in --workdir.

    nice -n 5 .venv/bin/python bench/bench_predict.py --models ../shared/models --media ../shared/media --write
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apps.predict.live import LiveParams, run_live  # noqa: E402
from apps.predict.model import load_classifier  # noqa: E402
from apps.predict.offline import predict_video  # noqa: E402
from apps.predict.synthetic import draw_figures, figures, write_video  # noqa: E402
from apps.predict.windows import classify, classify_people  # noqa: E402
from apps.synth import CLASSES, generate  # noqa: E402
from stages.extract.core import extract_video  # noqa: E402
from stages.extract.stage import ExtractStageParams, estimators  # noqa: E402
from stores.safepickle import dump_pickle  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECTION = "## predict"
SKEL = [sys.executable, "-m", "cli"]


def train_model(workdir: Path) -> Path:
    """The demo recipe on single-person synthetic clips; returns the ONNX export (made once)."""
    onnx = workdir / "classifier.onnx"
    if onnx.is_file():
        return onnx
    workdir.mkdir(parents=True, exist_ok=True)
    data = generate(24, seed=0)
    for a in data["annotations"]:
        a["keypoint"], a["keypoint_score"] = a["keypoint"][:1], a["keypoint_score"][:1]
    dump_pickle(data, workdir / "single.pkl")
    run = [*SKEL, "run", "workflows/demo.toml", "-w", str(workdir), "--set", f"import.source={workdir / 'single.pkl'}",
           "-j", "0", "-q"]
    subprocess.run(run, cwd=REPO, check=True)
    subprocess.run([*SKEL, "export", "--force", str(onnx), "-w", str(workdir), "--last"], cwd=REPO, check=True)
    return onnx


def train_model_extracted(workdir: Path, models: str, per_class: int = 10) -> Path:
    """The demo recipe's joint model trained on what the extractor (Lightning) makes of single-person mannequin
    videos (``per_class`` per action, every 5th one a test clip), so the per-person videos are classified from
    the skeletons the model was trained on; returns the ONNX export (made once)."""
    onnx = workdir / "classifier_extracted.onnx"
    if onnx.is_file():
        return onnx
    videos, shape, rows = workdir / "single_videos", (480, 640), ["video,label,split"]
    for n, (action, i) in enumerate(itertools.product(CLASSES, range(per_class))):
        (videos / action).mkdir(parents=True, exist_ok=True)
        kp, score = figures([action], 96, shape, seed=1000 + n)
        write_video(videos / action / f"{action}_{i}.mp4", draw_figures(kp, score, shape))
        rows.append(f"{action}/{action}_{i},{action},{'test' if i % 5 == 4 else 'train'}")
    (workdir / "single_labels.csv").write_text("\n".join(rows) + "\n")
    demo = (REPO / "workflows" / "demo.toml").read_text().split("[[step]]")
    train = next(step for step in demo if 'id = "train_joint"' in step)
    recipe = workdir / "extracted.toml"
    recipe.write_text(f"""[workflow]\nname = "extracted"\n[[step]]\nid = "extract"\nstage = "extract"
sources = ["{videos}"]\nlabels = "{workdir / 'single_labels.csv'}"\nmodels = "{Path(models).resolve()}"
pose_model = "movenet-lightning"\nmax_persons = 1\n[[step]]\nid = "render_joint"\nstage = "render"
kind = "joint"\nsize = 32\n[[step]]{train}""")
    subprocess.run([*SKEL, "run", str(recipe), "-w", str(workdir / "extracted"), "-q"], cwd=REPO, check=True)
    subprocess.run([*SKEL, "export", "--force", str(onnx), "-w", str(workdir / "extracted"), "--last"], cwd=REPO,
                   check=True)
    return onnx


def looped_clip(src: Path, dst: Path, size: tuple[int, int] | None, frames: int = 300, fps: float = 30.0) -> Path:
    """``frames`` frames of ``src`` played forward then backward (no jumps), optionally resized, at ``fps``."""
    if dst.is_file():
        return dst
    cap, seq = cv2.VideoCapture(str(src)), []
    while (item := cap.read())[0]:
        seq.append(cv2.resize(item[1], size, interpolation=cv2.INTER_AREA) if size else item[1])
    cycle = seq + seq[-2:0:-1]
    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"MJPG"), fps, seq[0].shape[1::-1])
    for i in range(frames):
        writer.write(cycle[i % len(cycle)])
    writer.release()
    return dst


def bench_live(onnx: Path, models: str, media: Path, tmp: Path) -> list[dict]:
    clf = load_classifier(onnx=onnx, num_clips=1, flip=True, threads=1)
    rows = []
    clips = {"1 person 640×480": looped_clip(media / "mmaction2_ntu_S001C001P001R001A001_rgb.avi",
                                             tmp / "one_640.avi", (640, 480)),
             "2 persons 1920×1080": looped_clip(media / "mmaction2_demo_skeleton.mp4", tmp / "two_1080.avi", None)}
    for (name, clip), per_person in itertools.product(clips.items(), (False, True)):
        params = ExtractStageParams(models=models, pose_model="movenet-lightning", threads=1,
                                    max_persons=6 if per_person else 2)
        detector, pose = estimators(params)
        decisions: list[dict] = []
        s = run_live(str(clip), clf, detector=detector, pose=pose, params=params,
                     live=LiveParams(window=48, stride=8, per_person=per_person), emit=decisions.append).as_dict()
        t0 = time.perf_counter()
        predict_video(clip, clf, detector=detector, pose=pose, params=params, window=48, stride=8,
                      per_person=per_person)
        offline = 300 / (time.perf_counter() - t0)
        rows.append({"clip": name, "mode": "per person" if per_person else "whole scene", **s,
                     "tracks": len({d["track"] for d in decisions}), "offline_fps": offline})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_people(onnx: Path, models: str, tmp: Path, onnx_extracted: Path) -> dict:
    clf = load_classifier(onnx=onnx, num_clips=2, flip=True, threads=1)
    matched = load_classifier(onnx=onnx_extracted, num_clips=2, flip=True, threads=1)
    poses = {"movenet-lightning": "extracted (Lightning)", "movenet-thunder": "extracted (Thunder)"}
    models_by = {key: estimators(ExtractStageParams(models=models, pose_model=name, threads=1, max_persons=2))
                 for name, key in poses.items()}
    params = ExtractStageParams(models=models, threads=1, max_persons=2)
    shape = (480, 640)
    trained_on_extracted = "extracted (Lightning), model trained on extracted skeletons"
    hits = {key: [0, 0] for key in [*poses.values(), "exact", trained_on_extracted]}
    scene = {"one of the two": 0, "windows": 0}
    for seed, (a, b) in enumerate(itertools.combinations(CLASSES, 2)):
        kp, score = figures([a, b], 96, shape, seed=seed)
        video = write_video(tmp / f"{a}-{b}.mp4", draw_figures(kp, score, shape))
        box = np.zeros((*kp.shape[:2], 5), np.float32)
        box[..., :2], box[..., 2:4], box[..., 4] = kp.min(axis=2), kp.max(axis=2), 1.0
        skeletons = {"exact": (kp, score, box)}
        for key, (detector, pose) in models_by.items():
            skeletons[key] = extract_video(video, detector=detector, pose=pose, params=params)[:3]
        runs = [(key, clf, *sk) for key, sk in skeletons.items()]
        runs.append((trained_on_extracted, matched, *skeletons["extracted (Lightning)"]))
        for key, model, k, s, bx in runs:
            for w in classify_people(model, k, s, bx, shape, window=48, stride=16):
                truth = a if (w.box[0] + w.box[2]) / 2 < shape[1] / 2 else b
                hits[key][0] += _label(w, model.classes) == truth
                hits[key][1] += 1
        for w in classify(clf, kp, score, shape, window=48, stride=16):
            scene["one of the two"] += _label(w, clf.classes) in (a, b)
            scene["windows"] += 1
    out = {k: {"correct": c, "windows": n, "accuracy": c / n} for k, (c, n) in hits.items()}
    out["whole scene"] = scene
    print(json.dumps(out), flush=True)
    return out


def _label(window, classes: list[str]) -> str | None:
    """The window's top-1 class name; None for a window predict leaves unlabelled (too few skeletons)."""
    return classes[window.top(1)[0][0]] if window.labelled else None


def bench_backends(onnx: Path, workdir: Path, models: str, media: Path) -> list[dict]:
    backends = {"onnx": load_classifier(onnx=onnx, threads=1),  # the export is of last.pt
                "torch": load_classifier(run=workdir, threads=1, last=True)}
    params = ExtractStageParams(models=models, pose_model="movenet-lightning", threads=1, max_frames=150)
    detector, pose = estimators(params)
    rows = []
    for video in sorted(media.glob("*.mp4")) + sorted(media.glob("*.avi")):
        kp, score, _, meta = extract_video(video, detector=detector, pose=pose, params=params)
        shape = (meta["img_h"], meta["img_w"])
        top1, secs = {}, {}
        for name, clf in backends.items():
            t0 = time.perf_counter()
            wins = classify(clf, kp, score, shape, window=48, stride=24)
            secs[name] = (time.perf_counter() - t0) / len(wins)
            top1[name] = [w.top(1)[0][0] if w.labelled else None for w in wins]
        rows.append({"video": video.stem, "windows": len(top1["onnx"]),
                     "same_top1": sum(x == y for x, y in zip(top1["onnx"], top1["torch"], strict=True)),
                     "onnx_ms": 1000 * secs["onnx"], "torch_ms": 1000 * secs["torch"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(parts: dict[str, dict], cores: int) -> str:
    live, people, backends = (parts[p]["result"] for p in ("live", "people", "backends"))
    lines = [SECTION, "", "`nice -n 5 .venv/bin/python bench/bench_predict.py --models ../shared/models --media "
             f"../shared/media --write` on {cores} shared cores (1-minute load average before -> after each part: "
             + ", ".join(f"{p} {parts[p]['load']}" for p in parts) + ")", "",
             "Live, played at 30 fps for 10 s (Lightning, window 48, a decision every 8 frames on 1 clip + its "
             "mirror, ONNX classifier, one thread per model):", "",
             "| clip | mode | processed / dropped | capacity (frames/s) | latency median / p95 (ms) | tracks | "
             "baseline: offline predict (frames/s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in live:
        lat = r["latency_ms"] or {"median": float("nan"), "p95": float("nan")}
        lines.append(f"| {r['clip']} | {r['mode']} | {r['frames']} / {r['dropped']} | {r['capacity_fps']:.1f} | "
                     f"{lat['median']:.0f} / {lat['p95']:.0f} | {r['tracks']} | {r['offline_fps']:.1f} |")
    lines += ["", "Per person, two mannequins doing different actions (15 pairs of the 6 classes, windows of 48 "
              "every 16, 2 clips + mirrors): share of (track, window) labelled with that person's own action.", "",
              "| skeletons | correct / windows | accuracy |", "| --- | --- | --- |"]
    for key in [k for k in people if k != "whole scene"]:
        p = people[key]
        lines.append(f"| {key} | {p['correct']} / {p['windows']} | {100 * p['accuracy']:.1f}% |")
    s = people["whole scene"]
    lines += ["", f"Whole scene on the same videos: one label per window for both people ({s['one of the two']} of "
              f"{s['windows']} windows name one of the two actions, so at most half the people are right).", "",
              "ONNX (onnxruntime, no torch in the process) vs torch on the shared media (first 150 frames, windows "
              "of 48 every 24, 10 clips + mirrors):", "",
              "| video | windows | same top-1 | ONNX ms / window | torch ms / window |",
              "| --- | --- | --- | --- | --- |"]
    for r in backends:
        lines.append(f"| {r['video']} | {r['windows']} | {r['same_top1']} | {r['onnx_ms']:.0f} | {r['torch_ms']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=os.environ.get("SKEL_MODELS", "../shared/models"))
    ap.add_argument("--media", type=Path, default=Path("../shared/media"))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/skel-bench-predict"))
    ap.add_argument("--classifier", type=Path, help="ONNX classifier for the live and per-person parts "
                    "(default: train the single-person demo model in --workdir).")
    ap.add_argument("--run", type=Path, help="Workdir of the train output for ONNX vs torch (default: --workdir).")
    ap.add_argument("--parts", default="live,people,backends")
    ap.add_argument("--write", action="store_true", help=f"Replace the {SECTION} section of bench/README.md "
                    "with the results of every part found in --workdir.")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    tmp = args.workdir / "videos"
    tmp.mkdir(exist_ok=True)
    for part in filter(None, args.parts.split(",")):
        load = f"load {os.getloadavg()[0]:.1f}"
        if part == "backends":
            run = args.run or args.workdir
            onnx = args.workdir / "backends.onnx"
            if not onnx.is_file():
                subprocess.run([*SKEL, "export", "--force", str(onnx), "-w", str(run), "--last"], cwd=REPO, check=True)
            result = bench_backends(onnx, run, args.models, args.media)
        else:
            onnx = args.classifier or train_model(args.workdir)
            result = bench_live(onnx, args.models, args.media, tmp) if part == "live" else bench_people(
                onnx, args.models, tmp, train_model_extracted(args.workdir, args.models))
        load += f" -> {os.getloadavg()[0]:.1f}"
        (args.workdir / f"{part}.json").write_text(json.dumps({"result": result, "load": load}))
    if args.write:
        parts = {p: json.loads((args.workdir / f"{p}.json").read_text()) for p in ("live", "people", "backends")}
        text = table(parts, len(os.sched_getaffinity(0)))
        print(text)
        readme = REPO / "bench" / "README.md"
        old = readme.read_text()
        pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
        readme.write_text(pattern.sub(text + "\n", old) if pattern.search(old) else old.rstrip() + "\n\n" + text)


if __name__ == "__main__":
    main()
