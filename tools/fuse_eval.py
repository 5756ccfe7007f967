"""Fuse streams' saved per-clip probabilities (``carved_eval.py --save``) under several weights.

    python tools/fuse_eval.py J_FOLD0.npz,J_FOLD1.npz L_FOLD0.npz,L_FOLD1.npz --weights 1:0 0:1 1:1 2:1

Each positional argument is one stream: its ``.npz`` files, comma-separated, are parts scored on disjoint
clips (e.g. the out-of-fold halves of a two-fold split) and are joined by sample id; every stream must cover
the same clips with the same labels. For each ``--weights`` (one number per stream, as ``skel fuse``'s
weights) prints top-1 (counted as the test stage does, ties included) and the mean negative log-likelihood of
the true class of the weighted mean of the probabilities, the measures recipes are chosen on
(docs/small_data.md), never on a test split.
"""

from __future__ import annotations

import argparse

import numpy as np

from stages.test.metrics import mean_nll, top_k_accuracy


def load_stream(parts: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs, labels, ids) of one stream's comma-separated ``.npz`` parts, ordered by sample id."""
    try:
        loaded = [np.load(part) for part in parts.split(",")]
    except (OSError, ValueError) as exc:  # a missing file, or not an .npz
        raise SystemExit(f"{parts}: {exc}") from None
    ids = np.concatenate([d["ids"] for d in loaded])
    if len(set(ids.tolist())) != len(ids):
        raise SystemExit(f"{parts}: the parts score some clips twice")
    order = np.argsort(ids)
    probs = np.concatenate([d["probs"] for d in loaded])[order]
    return probs, np.concatenate([d["labels"] for d in loaded])[order], ids[order]


def fused(streams: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """The weighted mean of the streams' probabilities (``skel fuse``'s sum, normalised for the NLL)."""
    return sum(w * p for w, p in zip(weights, streams, strict=True)) / sum(weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("streams", nargs="+", help="one per stream: comma-separated .npz parts")
    ap.add_argument("--weights", nargs="+", default=None, help="e.g. 1:1 2:1 (default: equal weights)")
    args = ap.parse_args()
    loaded = [load_stream(s) for s in args.streams]
    _, labels, ids = loaded[0]
    for s, (_, other_labels, other_ids) in zip(args.streams[1:], loaded[1:], strict=True):
        if not (np.array_equal(ids, other_ids) and np.array_equal(labels, other_labels)):
            raise SystemExit(f"{s}: other clips or labels than {args.streams[0]}")
    print(f"| weights | top-1 ({len(labels)} clips) | NLL |\n| --- | --- | --- |")
    for spec in args.weights or [":".join("1" * len(loaded))]:
        weights = [float(w) for w in spec.split(":")]
        if len(weights) != len(loaded) or min(weights) < 0 or sum(weights) <= 0:
            raise SystemExit(f"--weights {spec}: one non-negative number per stream, not all zero")
        p = fused([probs for probs, _, _ in loaded], weights)
        right = round(top_k_accuracy(p, labels, 1) * len(labels))  # the test stage's top-1, ties included
        print(f"| {spec} | {right / len(labels):.2%} ({right}) | {mean_nll(p, labels):.4f} |")


if __name__ == "__main__":
    main()
