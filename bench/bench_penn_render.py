"""Whole Penn Action (2326 clips) through the render stage, skel's renderer vs upstream's, same cluster.

Both runs are skel's own RenderStage (64×64, σ 0.6, uint8, all frames up to 300, one Zarr array per
shard) on a Dask LocalCluster of ``--workers`` processes over the same imported triplets; the baseline
swaps the renderer for mmaction2 1.2.0's GeneratePoseTarget (pyskl's), served per worker from its own
venv (``bench/baseline.py``; each volume crosses a pipe, which adds ~1 ms per sample to the baseline).
Times are the stage itself, after the cluster and (baseline) the renderers have started; the cluster
start is reported apart. Also: bytes and files per output, and the outputs' agreement (max abs
difference of the stored uint8 values).

    .venv/bin/python -m bench.bench_penn_render [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import baseline
from pipeline.cluster import Cluster
from pipeline.runner import run_stage
from stages.import_pkl import ImportParams, ImportStage
from stages.render.stage import RenderParams, RenderStage
from stores.volumes import GROUP, VolumeStore


def skel_stage(workdir: Path, params: RenderParams, workers: int) -> dict:
    """skel's render stage: seconds of the stage after the cluster is up, and the cluster start."""
    start = time.perf_counter()
    with Cluster(workers=workers) as cluster:
        started = time.perf_counter() - start
        start = time.perf_counter()
        out = run_stage(RenderStage(), workdir, params, cluster, quiet=True)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "start_seconds": started, "out": out,
            "summary": json.loads((out / "manifest.json").read_text())["summary"]}


def max_diff(a: Path, b: Path, n: int = 50) -> int:
    """Max abs difference of stored values over ``n`` samples spread over both outputs."""
    sa, sb = VolumeStore(a), VolumeStore(b)
    ids = list(sa.rows)[:: max(1, len(sa.rows) // n)]
    return max(int(np.abs(sa.read(s) * 255 - sb.read(s) * 255).round().max()) for s in ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print("| volumes | skel stage (s) | upstream renderer, same stage (s) | speed-up | cluster start (s) | "
          "bytes/sample | files in output | max stored diff |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run_stage(ImportStage(), work, ImportParams(source=str(baseline.PENN)), Cluster(workers=0), quiet=True)
        for kind in ("joint", "limb"):
            params = RenderParams(kind=kind)
            ours = skel_stage(work, params, args.workers)
            try:
                theirs = baseline.run_render_stage(work, params, args.workers)
                up, ratio = f"{theirs['seconds']:.1f}", f"{theirs['seconds'] / ours['seconds']:.1f}×"
                diff = str(max_diff(ours["out"], theirs["out"]))
            except baseline.BaselineMissing as exc:
                up, ratio, diff = f"skipped: {exc}", "—", "—"
            files = sum(1 for _ in (ours["out"] / GROUP).rglob("*"))
            print(f"| {kind} | {ours['seconds']:.1f} | {up} | {ratio} | {ours['start_seconds']:.1f} | "
                  f"{ours['summary']['bytes_per_sample'] / 1e3:.1f} kB | {files} | {diff} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
