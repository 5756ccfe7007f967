"""`skel test` against the same stage of an earlier skel checkout: the stage's own seconds (its manifest), the
process's wall and CPU seconds (with interpreter start-up), and how far the scores move.

Both run the test stage in a fresh process (``--workers 0``, ``--threads`` torch threads) on a copy of the same
workdir (so neither is a cache hit), the same train output, split and views, alternating for ``--rounds``;
the fastest round of each is reported, and the largest |score difference| between the two.

    git worktree add /tmp/skel-before 34bfb99 && cp stages/render/_heatmap*.so /tmp/skel-before/stages/render/
    .venv/bin/python -m bench.bench_test W --baseline-tree /tmp/skel-before --split test --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]


def run(tree: Path, workdir: Path, split: str, num_clips: int, threads: int) -> tuple[tuple[float, ...], dict]:
    """((stage s, wall s, CPU s), scores by sample) of one `skel test` by the code in ``tree`` on a copy of
    ``workdir``."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "w"
        shutil.copytree(workdir, work, ignore=shutil.ignore_patterns("test"))
        env = {**os.environ, "PYTHONPATH": str(tree)}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cli", "test", "-w", str(work), "--split", split, "--num-clips",
                        str(num_clips), "--threads", str(threads), "-j", "0", "-q"], cwd=tree, env=env, check=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        (out,) = work.glob("test/*")
        table = pq.read_table(out / "scores.parquet").to_pydict()
        stage = json.loads((out / "manifest.json").read_text())["seconds"]
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return (stage, wall, cpu), dict(zip(table["sample_id"], np.array(table["scores"]), strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", type=Path, help="a workdir with a complete train output (and its render)")
    ap.add_argument("--baseline-tree", type=Path, required=True, help="checkout of the skel to compare against")
    ap.add_argument("--split", default="test")
    ap.add_argument("--num-clips", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    best: dict[str, tuple[float, ...]] = {}
    scores = {}
    for _ in range(a.rounds):
        for name, tree in (("baseline", a.baseline_tree), ("skel", REPO)):
            times, scores[name] = run(tree, a.workdir, a.split, a.num_clips, a.threads)
            best[name] = min(best.get(name, times), times)
            print(f"{name}: stage {times[0]:.1f} s, process {times[1]:.1f} s wall / {times[2]:.1f} s CPU", flush=True)
    diff = max(float(np.abs(scores["skel"][s] - scores["baseline"][s]).max()) for s in scores["baseline"])
    b, s = best["baseline"], best["skel"]
    print(f"| {len(scores['skel'])} samples x {a.num_clips} clips x flip | {b[0]:.1f} / {b[1]:.1f} / {b[2]:.1f} | "
          f"{s[0]:.1f} / {s[1]:.1f} / {s[2]:.1f} | {b[0] / s[0]:.2f}x / {b[1] / s[1]:.2f}x / {b[2] / s[2]:.2f}x | "
          f"{diff:.1e} |")


if __name__ == "__main__":
    main()
