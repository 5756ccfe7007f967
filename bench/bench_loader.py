"""Benchmark the training data path: clips streamed from rendered Zarr volumes vs rendered on the fly.

Streamed (skel): ``TrainClips`` reads the 48 sampled frames of a stored 64×64 float16 volume, crops,
resizes to 56×56 and flips the tensor. On the fly (pyskl's way): the skeleton is held in memory and
every clip is sampled, cropped around the subject, resized, randomly cropped, resized to 56, flipped
and rendered at load time: once with skel's C renderer (``render_volume``) and once with pyskl's numpy
loop (``bench/pyskl_baseline.py``). One process, one thread, so clips/s = clips/s per core.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_loader
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.pyskl_baseline import pyskl_render  # noqa: E402
from pipeline.cluster import Cluster  # noqa: E402
from pipeline.coco import LEFT_KP, LIMBS, RIGHT_KP  # noqa: E402
from pipeline.runner import run_stage  # noqa: E402
from pipeline.triplets import TripletStore  # noqa: E402
from stages.import_pkl import ImportParams, ImportStage  # noqa: E402
from stages.render import render_volume  # noqa: E402
from stages.render.compact import pose_compact, resize  # noqa: E402
from stages.render.stage import RenderParams, RenderStage  # noqa: E402
from stages.synth import generate, write_pickle  # noqa: E402
from stages.train.dataset import TrainClips  # noqa: E402
from stages.train.sampling import sample_train  # noqa: E402
from stages.train.transforms import crop_box  # noqa: E402

CLIP_LEN, STORED, SIZE = 48, 64, 56
SWAP = np.arange(17)
SWAP[list(LEFT_KP) + list(RIGHT_KP)] = list(RIGHT_KP) + list(LEFT_KP)


def on_the_fly(kp: np.ndarray, score: np.ndarray, img_shape: tuple[int, int], rng: np.random.RandomState,
               render: Callable, limbs: list | None) -> torch.Tensor:
    """pyskl's training pipeline on keypoints, then render: UniformSample -> PoseCompact -> Resize 64 ->
    RandomResizedCrop -> Resize 56 -> Flip -> GeneratePoseTarget."""
    frames = sample_train(kp.shape[1], CLIP_LEN, rng)
    k, sc = kp[:, frames], score[:, frames]
    k, shape, _ = pose_compact(k, img_shape)
    k = resize(k, shape, (STORED, STORED))
    top, left, h, w = crop_box(STORED, STORED, rng)
    k = resize(k - np.array([left, top], np.float32), (h, w), (SIZE, SIZE))
    if rng.rand() < 0.5:
        k = k[:, :, SWAP]
        sc = sc[:, :, SWAP]
        k[..., 0] = np.where(k[..., 0] != 0, SIZE - k[..., 0], 0)
    return torch.from_numpy(render(k, sc, (SIZE, SIZE), sigma=0.6, limbs=limbs))


def clips_per_s(fn: Callable[[int], torch.Tensor], n: int, seconds: float) -> float:
    """Best rate over repeated passes of ``n`` clips within about ``seconds``. Each clip is copied into a
    batch slot, as the DataLoader's collate does: a freshly rendered volume's zero pages are only
    materialised when touched, so not consuming it would leave most of on-the-fly rendering's cost out."""
    slot = torch.empty(17, CLIP_LEN, SIZE, SIZE)
    best, spent = 0.0, 0.0
    while spent < seconds:
        start = time.perf_counter()
        for i in range(n):
            x = fn(i)
            slot[: x.shape[0]].copy_(x)
        elapsed = time.perf_counter() - start
        spent += elapsed
        best = max(best, n / elapsed)
    return best


def measure(ds: TrainClips, people: list, shapes: list, limbs: list | None, seconds: float) -> list[float]:
    """Clips/s streamed, on the fly with the C renderer, on the fly with pyskl's numpy renderer."""
    rng = np.random.RandomState(0)

    def fly(render: Callable) -> Callable[[int], torch.Tensor]:
        return lambda i: on_the_fly(people[i].keypoint, people[i].score, shapes[i], rng, render, limbs)

    return [clips_per_s(lambda i: ds[i][0], len(ds), seconds),
            clips_per_s(fly(render_volume), len(people), seconds),
            clips_per_s(fly(pyskl_render), len(people), seconds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=4, help="synthetic clips per class")
    parser.add_argument("--seconds", type=float, default=6.0, help="time budget per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_pickle(generate(args.per_class, seed=0), workdir / "synth.pkl")
        imported = run_stage(ImportStage(), workdir, ImportParams(source=str(workdir / "synth.pkl")),
                             Cluster(workers=0), quiet=True)
        triplets = TripletStore(imported)
        ids = triplets.ids()
        people = [triplets.read(s) for s in ids]
        shapes = [(triplets.meta(s)["img_h"], triplets.meta(s)["img_w"]) for s in ids]
        n_frames = [p.keypoint.shape[1] for p in people]
        print(f"{len(ids)} synthetic clips, {min(n_frames)}-{max(n_frames)} frames (mean {np.mean(n_frames):.0f}); "
              f"clips {CLIP_LEN}x{SIZE}x{SIZE}; one thread\n")
        print("| volumes | streamed from Zarr (clips/s) | on the fly, C renderer (clips/s) | "
              "on the fly, pyskl numpy (clips/s) | ratio vs C / vs pyskl |")
        print("|---|---|---|---|---|")
        for kind in ("joint", "limb"):
            out = run_stage(RenderStage(), workdir, RenderParams(kind=kind, size=STORED), Cluster(workers=0),
                            quiet=True)
            streamed, fly_c, fly_numpy = measure(TrainClips(out, None, clip_len=CLIP_LEN, size=SIZE), people, shapes,
                                                 [tuple(lb) for lb in LIMBS] if kind == "limb" else None, args.seconds)
            print(f"| {kind} | {streamed:.1f} | {fly_c:.1f} | {fly_numpy:.1f} | "
                  f"{streamed / fly_c:.1f}× / {streamed / fly_numpy:.1f}× |")

if __name__ == "__main__":
    main()
