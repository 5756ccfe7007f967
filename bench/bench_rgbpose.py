"""Benchmark RGBPose-Conv3D against the pose-only SlowOnly, and the frames stage's storage per video.

Part 1 (CPU, one thread, batch 2): seconds per training step (forward, both losses, backward, SGD step;
best and median of ``--steps`` after one warm-up) and peak RSS, each configuration in its own process.
The RGB input must be 4x the pose input spatially (the pathways meet at the same H x W), so two sizes:
paper (RGB 8 x 224², pose 32 x 56²) and small (RGB 8 x 112², pose 32 x 28²); the pose-only SlowOnly
(pyskl PoseC3D config) gets the same pose clip.

Part 2: ``skel frames`` (size 224) on every clip in ../shared/media, with a centred subject box standing in
for extracted poses (render and frames only look at the box and the frame count): MB per video, bytes
per frame, and seconds per video (decode + crop + write, one process).

    .venv/bin/python -m bench.bench_rgbpose            # both parts, markdown tables on stdout
    .venv/bin/python -m bench.bench_rgbpose --part train --steps 3
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench.paths import REPO, SHARED  # noqa: E402

NUM_CLASSES = 60
BATCH = 2
CONFIGS = {  # name: (model, RGB clip [3, T, H, W] or None, pose clip [17, T, H, W])
    "rgbpose paper": ("rgbpose", (3, 8, 224, 224), (17, 32, 56, 56)),
    "slowonly paper pose": ("slowonly", None, (17, 32, 56, 56)),
    "rgbpose small": ("rgbpose", (3, 8, 112, 112), (17, 32, 28, 28)),
    "slowonly small pose": ("slowonly", None, (17, 32, 28, 28)),
}


def train_one(name: str, steps: int) -> dict:
    """Time training steps of one configuration (run in a fresh process for a clean peak RSS)."""
    import torch

    from models import build_model
    from models.flops import count_params
    from models.rgbpose import loss

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model_name, rgb_shape, pose_shape = CONFIGS[name]
    model = build_model(model_name, num_classes=NUM_CLASSES).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    heat = torch.rand(BATCH, *pose_shape)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,))
    inputs = heat if rgb_shape is None else (torch.randn(BATCH, *rgb_shape), heat)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        out = model(inputs)
        total = torch.nn.functional.cross_entropy(out, labels) if rgb_shape is None else loss(out, labels).total
        opt.zero_grad()
        total.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": name, "params": count_params(model), "best_s": min(times[1:]),
            "median_s": float(np.median(times[1:])), "peak_rss_mb": rss_mb}


def bench_train(steps: int) -> None:
    print("| config | RGB clip | pose clip | params | step best (s) | step median (s) | peak RSS (MB) |")
    print(f"|{'---|' * 7}")
    for name, (_, rgb, pose) in CONFIGS.items():
        proc = subprocess.run([sys.executable, "-m", "bench.bench_rgbpose", "--one", name, "--steps", str(steps)],
                              cwd=REPO, capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        clip = "—" if rgb is None else f"{rgb[1]}×{rgb[2]}²"
        print(f"| {name} | {clip} | {pose[1]}×{pose[2]}² | {r['params'] / 1e6:.2f}M | {r['best_s']:.2f} | "
              f"{r['median_s']:.2f} | {r['peak_rss_mb']:.0f} |", flush=True)


def _frame_info(video: Path) -> tuple[int, int, int]:
    """(decoded frames, height, width)."""
    cap = cv2.VideoCapture(str(video))
    n, shape = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, shape = n + 1, frame.shape
    cap.release()
    return n, shape[0], shape[1]


def bench_frames() -> None:
    import pyarrow.parquet as pq

    from pipeline.cluster import Cluster
    from pipeline.runner import run_stage
    from stages.frames.params import FramesParams
    from stages.frames.stage import FramesStage
    from stages.render.stage import RenderParams, RenderStage
    from stores.triplets import Skeleton
    from tests.support import extract_output

    videos = sorted((SHARED / "media").glob("*.[am][vp][i4]"))
    wd = Path(tempfile.mkdtemp(prefix="bench_rgbpose_"))
    samples, info = {}, {}
    for i, video in enumerate(videos):
        n, h, w = _frame_info(video)
        info[video.stem] = (n, h, w)
        rng = np.random.RandomState(i)  # a subject filling the middle half of the frame
        kp = np.stack([rng.uniform(w / 4, 3 * w / 4, (1, n, 17)), rng.uniform(h / 4, 3 * h / 4, (1, n, 17))], -1)
        samples[video.stem] = ({"label": 0, "split": "test", "img_h": h, "img_w": w, "fps": None,
                                "source": str(video)},
                               Skeleton(kp.astype(np.float32), np.ones((1, n, 17), np.float32)))
    extract_output(wd, samples)
    with Cluster(workers=0) as cluster:
        run_stage(RenderStage(), wd, RenderParams(), cluster, quiet=True)
        frames = run_stage(FramesStage(), wd, FramesParams(size=224, samples_per_shard=1), cluster, quiet=True)
    index = {r["sample_id"]: r for r in pq.read_table(frames / "index.parquet").to_pylist()}
    seconds = {}
    for rec in (frames / "_shards").glob("*.json"):
        data = json.loads(rec.read_text())
        for row in data["rows"]:
            seconds[row["sample_id"]] = data["seconds"]
    print("| video | source W×H | frames (stored) | stored W×H | MB per video | KB per frame | s per video |\n"
          f"|{'---|' * 7}")
    for stem, (n, h, w) in info.items():
        r = index[stem]
        print(f"| {stem} | {w}×{h} | {n} ({r['n_frames']}) | 224×224 | {r['nbytes'] / 1e6:.1f} | "
              f"{r['nbytes'] / r['n_frames'] / 1e3:.0f} | {seconds[stem]:.1f} |")
    print(f"\nraw uint8 224×224×3 = {224 * 224 * 3 / 1e3:.0f} KB per frame; workdir {wd}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("train", "frames", "all"), default="all")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--one", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(train_one(args.one, args.steps)))
        return
    if args.part in ("train", "all"):
        bench_train(args.steps)
    if args.part in ("frames", "all"):
        bench_frames()


if __name__ == "__main__":
    main()
