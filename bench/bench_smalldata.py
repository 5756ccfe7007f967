"""Random-forest baseline for the Penn Action proxies: hand-made features of normalised joint trajectories.

    .venv/bin/pip install -e '.[bench]'          # scikit-learn (bench only)
    python tools/penn_proxies.py ../shared/data/penn_action/penn_action_coco17.pkl /tmp/penn_proxies
    python bench/bench_smalldata.py /tmp/penn_proxies [--seeds 0 1 2]
    python bench/bench_smalldata.py ../shared/data/penn_short --runs penn_short:train10 penn_short:train20 \
        penn_short:train                                             # Penn-short (docs/small_data.md)

Features per clip (the usual hand-made recipe): per frame, the joints that carry data are centred on their
mean and divided by the larger side of their bounding box; the clip is resampled to 16 frames; the vector
is those coordinates, their frame-to-frame differences and the joint scores. scikit-learn's
RandomForestClassifier (500 trees) on the training split, top-1 on the test split; one line per
(set, train split, seed) and the mean and spread (max - min) per set.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from stores.safepickle import load_pickle

FRAMES = 16
RUNS = (("penn_small", "train300"), ("penn_small", "train600"), ("penn_small", "train"), ("penn_fine7", "train"))


def features(ann: dict) -> np.ndarray:
    """Normalised trajectory, its velocity and the scores of the joints that carry data, at FRAMES frames."""
    score = ann["keypoint_score"][0].astype(np.float64)  # [T, J]
    real = score.max(axis=0) > 0  # Penn: eyes/ears never carry data
    kp, score = ann["keypoint"][0][:, real].astype(np.float64), score[:, real]
    ok = score > 0
    out = np.zeros_like(kp)
    for t in np.flatnonzero(ok.sum(1) >= 2):
        p = kp[t][ok[t]]
        scale = max(np.ptp(p[:, 0]), np.ptp(p[:, 1]), 1e-3)
        out[t] = np.where(ok[t][:, None], (kp[t] - p.mean(0)) / scale, 0)
    idx = np.linspace(0, len(kp) - 1, FRAMES).round().astype(int)
    f = out[idx]
    return np.concatenate([f.ravel(), np.diff(f, axis=0).ravel(), score[idx].ravel()])


def split(data: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    anns = {a["frame_dir"]: a for a in data["annotations"]}
    ids = data["split"][name]
    return np.stack([features(anns[i]) for i in ids]), np.array([anns[i]["label"] for i in ids])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("proxies", type=Path, help="folder of the pickles (tools/penn_proxies.py writes the defaults)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", nargs="+", metavar="PKL:SPLIT", help="pickle stem (in PROXIES) and training split "
                    "of each run, tested on that pickle's 'test' split (default: the Penn proxies)")
    a = ap.parse_args()
    runs = [tuple(r.split(":", 1)) for r in a.runs] if a.runs else RUNS
    for pkl, train in runs:
        data = load_pickle(a.proxies / f"{pkl}.pkl")
        (xtr, ytr), (xte, yte) = split(data, train), split(data, "test")
        accs = []
        for seed in a.seeds:
            start = time.perf_counter()
            clf = RandomForestClassifier(n_estimators=500, n_jobs=a.jobs, random_state=seed).fit(xtr, ytr)
            accs.append(float((clf.predict(xte) == yte).mean()))
            print(f"{pkl}:{train} seed {seed}: top-1 {accs[-1]:.4f} ({len(ytr)} train / {len(yte)} test clips, "
                  f"{time.perf_counter() - start:.1f} s)", flush=True)
        print(f"{pkl}:{train} RF top-1 mean {np.mean(accs):.4f} spread {np.ptp(accs):.4f}", flush=True)


if __name__ == "__main__":
    main()
