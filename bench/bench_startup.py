"""Command start-up against an earlier skel checkout: wall and CPU seconds of commands that do little work, so
that what they cost is interpreter start-up and imports (every `skel` process pays it: each training of a side-by-side
run, each torchrun rank, each test of the suite).

Each command runs in a fresh process by the code of each tree, alternating for ``--rounds``; the median of each is
reported. ``run --dry-run`` plans the demo recipe (workflows/demo.toml: two training steps, each step's model
checked on the meta device) on a generated pickle.

    git worktree add /tmp/skel-before 77896e2 && cp stages/render/_heatmap*.so /tmp/skel-before/stages/render/
    .venv/bin/python -m bench.bench_startup --baseline-tree /tmp/skel-before --rounds 5
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from apps.synth import generate
from stores.safepickle import dump_pickle

REPO = Path(__file__).resolve().parents[1]


def timed(tree: Path, args: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of ``skel ARGS`` by the code in ``tree``, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "120"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", *args], cwd=tree, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-tree", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dump_pickle(generate(2, seed=0), Path(tmp) / "synth.pkl")
        os.environ["DEMO_PKL"] = str(Path(tmp) / "synth.pkl")
        commands = {"--help": ["--help"], "status": ["status", "-w", tmp],
                    "run --dry-run (2 trainings)": ["run", str(REPO / "workflows" / "demo.toml"), "-w",
                                                    str(Path(tmp) / "w"), "--dry-run"]}
        trees = {"this tree": REPO, "baseline": args.baseline_tree.resolve()}
        got: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for name, argv in commands.items():
                for label, tree in trees.items():
                    got.setdefault((name, label), []).append(timed(tree, argv))
    print(f"| command (median of {args.rounds}) | this tree: wall / CPU s | baseline: wall / CPU s |")
    print("| --- | --- | --- |")
    for name in commands:
        cells = []
        for label in trees:
            runs = got[name, label]
            cells.append(f"{statistics.median(w for w, _ in runs):.2f} / {statistics.median(c for _, c in runs):.2f}")
        print(f"| `skel {name}` | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
