"""Benchmark the training data path: clips streamed from rendered Zarr vs upstream's pipeline on the fly.

skel: ``TrainClips`` batches (48 sampled frames of each clip decoded from the stored 64×64 uint8 frames
straight into the batch buffer, plus each clip's crop box and flip) — everything the loader's CPU does
until the batch is handed to the device — and, reported separately, ``stages.train.augment`` (crop,
resize to 56×56, mirror with channel swap, float conversion, channels_last_3d), which runs on the
training device (on a CPU, the two-tap C kernel), and the two together as training on a CPU runs them.
Baseline: mmaction2 1.2.0's PoseC3D pipeline (pyskl's
transforms: sampling, PoseCompact, resizes, RandomResizedCrop, Flip, GeneratePoseTarget, FormatShape) on
the same skeletons, in its own venv (``bash bench/baseline_venv.sh``). Also skel's C renderer on the fly
(the same geometry on keypoints), for reference. One process, one thread each; rates are clips per
second of CPU time (``process_time``), which a loaded machine distorts less than wall time, and wall
time beside it.

    .venv/bin/python -m bench.bench_loader [--penn 200] [--seconds 6]
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

from apps.synth import generate  # noqa: E402
from bench import baseline  # noqa: E402
from bench.paths import SHARED  # noqa: E402
from inference.sampling import sample_train  # noqa: E402
from inference.transforms import crop_box  # noqa: E402
from pipeline.cluster import Cluster  # noqa: E402
from pipeline.runner import run_stage  # noqa: E402
from stages.import_pkl import ImportParams, ImportStage  # noqa: E402
from stages.render.compact import pose_compact, resize  # noqa: E402
from stages.render.heatmap import render_volume  # noqa: E402
from stages.render.stage import RenderParams, RenderStage  # noqa: E402
from stages.train.dataset import TrainClips  # noqa: E402
from stores.coco import KP_FLIP, LIMBS  # noqa: E402
from stores.safepickle import dump_pickle, load_pickle  # noqa: E402
from stores.triplets import TripletStore  # noqa: E402

CLIP_LEN, STORED, SIZE, BATCH = 48, 64, 56, 16


def rate(fn: Callable[[], int], seconds: float) -> tuple[float, float]:
    """Best (CPU-time, wall-time) clips/s over repeated calls of ``fn`` (returns clips made) in ~``seconds``."""
    best_cpu = best_wall = 0.0
    spent = 0.0
    while spent < seconds:
        c0, w0 = time.process_time(), time.perf_counter()
        n = fn()
        c1, w1 = time.process_time(), time.perf_counter()
        spent += w1 - w0
        best_cpu, best_wall = max(best_cpu, n / max(c1 - c0, 1e-9)), max(best_wall, n / (w1 - w0))
    return best_cpu, best_wall


def loader_rate(ds: TrainClips, seconds: float, *, augment: bool = False) -> tuple[float, float]:
    """Batches of BATCH clips over the whole set, as a DataLoader worker makes them; with ``augment`` each also
    turned into the float32 model input on the CPU, as training on a CPU runs them (what upstream's pipeline
    hands over)."""
    batches = [list(range(i, min(i + BATCH, len(ds)))) for i in range(0, len(ds), BATCH)]
    cpu = torch.device("cpu")

    def one_pass() -> int:
        ds.set_epoch(ds.epoch + 1)
        if augment:
            return sum(len(ds.on_device(ds[b], cpu)[1]) for b in batches)
        return sum(len(ds[b].labels) for b in batches)

    return rate(one_pass, seconds)


def augment_rate(ds: TrainClips, seconds: float) -> tuple[float, float]:
    """The device-side part, timed on the CPU (one thread), on one prepared batch."""
    batch = ds[list(range(min(BATCH, len(ds))))]
    cpu = torch.device("cpu")
    return rate(lambda: len(ds.on_device(batch, cpu)[1]), seconds)


def on_the_fly_rate(people: list, shapes: list, limbs: list | None, seconds: float) -> tuple[float, float]:
    """skel's C renderer on the fly: pyskl's geometry on keypoints, rendered into a float32 batch slot."""
    rng = np.random.RandomState(0)
    slot = np.empty((BATCH, 17 if limbs is None else len(limbs), CLIP_LEN, SIZE, SIZE), np.float32)

    def clip(i: int) -> None:
        kp, sc = people[i]
        frames = sample_train(kp.shape[1], CLIP_LEN, rng)
        k, shape, _ = pose_compact(kp[:, frames], shapes[i])
        k = resize(k, shape, (STORED, STORED))
        top, left, h, w = crop_box(STORED, STORED, rng)
        k = resize(k - np.array([left, top], np.float32), (h, w), (SIZE, SIZE))
        s = sc[:, frames]
        if rng.rand() < 0.5:
            k, s = k[:, :, KP_FLIP], s[:, :, KP_FLIP]
            k[..., 0] = np.where(k[..., 0] != 0, SIZE - k[..., 0], 0)
        render_volume(k, s, (SIZE, SIZE), limbs=limbs, out=slot[i % BATCH])

    def one_pass() -> int:
        for i in range(len(people)):
            clip(i)
        return len(people)

    return rate(one_pass, seconds)


def penn_subset(path: Path, n: int) -> None:
    """``n`` Penn Action clips spread evenly over the set, as a pyskl pickle at ``path``."""
    data = load_pickle(SHARED / "data/penn_action/penn_action_coco17.pkl")
    anns = data["annotations"][:: max(1, len(data["annotations"]) // n)][:n]
    names = {a["frame_dir"] for a in anns}
    dump_pickle({"split": {k: [v for v in vs if v in names] for k, vs in data["split"].items()},
                 "classes": data["classes"], "annotations": anns}, path)


def dataset(workdir: Path, source: Path, name: str) -> tuple[Path, list, list, list]:
    """Import ``source`` into ``workdir/name``: the triplet output, skeletons, image shapes, labels."""
    imported = run_stage(ImportStage(), workdir / name, ImportParams(source=str(source)), Cluster(workers=0),
                         quiet=True)
    store = TripletStore(imported)
    ids = store.ids()
    people = [(store.read(s).keypoint, store.read(s).score) for s in ids]
    shapes = [(store.meta(s)["img_h"], store.meta(s)["img_w"]) for s in ids]
    labels = [store.meta(s)["label"] or 0 for s in ids]
    return imported, people, shapes, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=4, help="synthetic clips per class")
    parser.add_argument("--penn", type=int, default=200, help="real Penn Action clips (0: none)")
    parser.add_argument("--seconds", type=float, default=6.0, help="time budget per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average before: {os.getloadavg()[0]:.1f}; {os.cpu_count()} cores; torch {torch.__version__}")
    print("| data | volumes | skel loader CPU (clips/s) | device part on CPU (clips/s) | skel loader + augmentation on "
          "the CPU (clips/s) | upstream mmaction2 (clips/s) | skel C renderer on the fly (clips/s) | skel loader / "
          "upstream | skel loader + augmentation / upstream |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        dump_pickle(generate(args.per_class, seed=0), workdir / "synth.pkl")
        sets = [("synthetic", workdir / "synth.pkl")]
        if args.penn:
            pkl = workdir / "penn.pkl"
            penn_subset(pkl, args.penn)
            sets.append((f"Penn Action ({args.penn} clips)", pkl))
        for label, source in sets:
            name = label.split()[0].lower()
            _, people, shapes, labels = dataset(workdir, source, name)
            npz = workdir / f"{name}.npz"
            baseline.write_samples(npz, [(kp, sc, shape, lab) for (kp, sc), shape, lab in
                                         zip(people, shapes, labels, strict=True)])
            for kind in ("joint", "limb"):
                limbs = [tuple(lb) for lb in LIMBS] if kind == "limb" else None
                out = run_stage(RenderStage(), workdir / name, RenderParams(kind=kind, size=STORED),
                                Cluster(workers=0), quiet=True)
                ds = TrainClips(out, None, clip_len=CLIP_LEN, size=SIZE)
                ours, ours_wall = loader_rate(ds, args.seconds)
                aug, _ = augment_rate(ds, args.seconds / 2)
                both, both_wall = loader_rate(ds, args.seconds, augment=True)
                fly, _ = on_the_fly_rate(people, shapes, limbs, args.seconds / 2)
                try:
                    up = baseline.run_baseline("loader", npz, "--kind", kind, "--seconds", str(args.seconds))
                    theirs = f"{up['clips_per_cpu_s']:.1f} (wall {up['clips_per_s']:.1f})"
                    ratio = f"{ours / up['clips_per_cpu_s']:.1f}×"
                    ratio_both = f"{both / up['clips_per_cpu_s']:.1f}×"
                except baseline.BaselineMissing as exc:
                    theirs, ratio, ratio_both = f"skipped: {exc}", "—", "—"
                print(f"| {label} | {kind} | {ours:.0f} (wall {ours_wall:.0f}) | {aug:.1f} | {both:.0f} (wall "
                      f"{both_wall:.0f}) | {theirs} | {fly:.0f} | {ratio} | {ratio_both} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
