"""Whole Penn Action (2326 clips) through `skel import` + `skel render` (joint, limb) with N workers.

Measures wall time per command (fresh workdir, Dask LocalCluster included) and bytes per sample, and,
as the baseline in the same run, the same per-sample work (crop, resize, render, store) with pyskl's
loop renderer on a subset, extrapolated to the whole set on the same number of workers.

    .venv/bin/python bench/bench_penn_render.py [--workers 2] [--baseline-samples 150]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKEL_SHARED", REPO.parent / "shared"))
PKL = SHARED / "data" / "penn_action" / "penn_action_coco17.pkl"


def _skel(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", *args, "--quiet"], cwd=REPO, check=True)
    return time.perf_counter() - start


def _summary(workdir: Path, stage: str, kind: str | None = None) -> dict:
    for manifest in sorted((workdir / stage).glob("*/manifest.json")):
        m = json.loads(manifest.read_text())
        if kind is None or m["params"].get("kind") == kind:
            return m["summary"] | {"path": str(manifest.parent)}
    raise FileNotFoundError(stage)


def _disk_bytes(path: Path) -> int:
    """Allocated blocks (what `du` reports), beside the file sizes the manifest sums."""
    return sum(f.stat().st_blocks * 512 for f in (path / "volumes.zarr").rglob("*") if f.is_file())


def _baseline_per_sample(workdir: Path, kind: str, n: int) -> float:
    """Seconds per sample for crop + resize + pyskl loop render + float16 store, one process."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from bench.pyskl_baseline import pyskl_render
    from pipeline.triplets import TripletStore
    from pipeline.volumes import write_volume
    from stages.render.stage import RenderParams, prepare

    store = TripletStore(Path(_summary(workdir, "import")["path"]))
    p = RenderParams(kind=kind)
    ids = store.ids()[:: max(1, len(store.ids()) // n)][:n]
    out = Path(tempfile.mkdtemp(dir=workdir))
    start = time.perf_counter()
    for sid in ids:
        sk, meta = store.read(sid), store.meta(sid)
        kp, frames, _ = prepare(sk.keypoint, (meta["img_h"], meta["img_w"]), p)
        vol = pyskl_render(kp, sk.score[:, frames], (p.size, p.size), limbs=p.limbs)
        write_volume(out, sid, vol.astype(np.float16), {})
    return (time.perf_counter() - start) / len(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-samples", type=int, default=150)
    args = ap.parse_args()
    j = str(args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        rows = [("import", _skel("import", str(PKL), "-w", tmp, "-j", j), None)]
        rows.append(("render joint", _skel("render", "-w", tmp, "-j", j), "joint"))
        rows.append(("render limb", _skel("render", "-w", tmp, "-j", j, "--limb"), "limb"))
        n = _summary(w, "import")["samples"]
        print(f"\nPenn Action: {n} samples, {args.workers} workers, nproc={os.cpu_count()}\n")
        print("| step | skel wall s | pyskl-loop baseline s (extrapolated) | speed-up | bytes/sample (files) "
              "| bytes/sample (disk blocks) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, secs, kind in rows:
            if kind is None:
                print(f"| {name} | {secs:.1f} | | | | |")
                continue
            s = _summary(w, "render", kind)
            base = _baseline_per_sample(w, kind, args.baseline_samples) * n / args.workers
            blocks = _disk_bytes(Path(s["path"])) / s["samples"]
            print(f"| {name} | {secs:.1f} | {base:.0f} | {base / secs:.1f}x | {s['bytes_per_sample'] / 1e6:.3f} MB "
                  f"| {blocks / 1e6:.3f} MB |")


if __name__ == "__main__":
    main()
