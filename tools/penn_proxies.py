"""Write the Penn Action proxy sets (small data, transfer) as pyskl pickles into a scratch folder.

    python tools/penn_proxies.py ../shared/data/penn_action/penn_action_coco17.pkl /tmp/penn_proxies

* ``penn_small.pkl``: all of Penn with extra splits ``train300`` and ``train600``: seeded stratified subsets
  of the official train split (300 within 600); ``test`` is the full official test split.
* ``penn_pre8.pkl``: the first 8 classes (train and test splits), for pretraining.
* ``penn_folds.pkl``: all of Penn with extra splits ``fold0`` and ``fold1``: the official train split in two
  seeded stratified halves, for choosing the full-Penn recipe's settings on out-of-fold predictions (train on
  one half, score the other) without the test split.
* ``penn_fine7.pkl``: the other 7 classes relabelled 0..6, ``train`` = 20 stratified-random training clips
  per class, ``test`` = all of their test clips.

Subsets come from ``stages.train.split`` with seed 0, so every machine writes the same clips.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

from stages.train.split import per_class_subset, stratified_subset
from stores.safepickle import load_pickle

SEED = 0
SMALL = (300, 600)
PRETRAIN_CLASSES = 8
PER_CLASS = 20


def _labels(data: dict, ids: list[str]) -> list[int]:
    label = {a["frame_dir"]: a["label"] for a in data["annotations"]}
    return [label[i] for i in ids]


def small(data: dict) -> dict:
    """Penn with nested stratified training subsets as extra splits."""
    train = list(data["split"]["train"])
    extra = {f"train{n}": [train[i] for i in stratified_subset(_labels(data, train), n, SEED)] for n in SMALL}
    assert set(extra["train300"]) <= set(extra["train600"])  # same seed: the smaller is a prefix per class
    return {**data, "split": {**data["split"], **extra}}


def folds(data: dict) -> dict:
    """Penn with the train split in two stratified halves as extra splits ``fold0`` / ``fold1``."""
    train = list(data["split"]["train"])
    half = set(stratified_subset(_labels(data, train), len(train) // 2, SEED).tolist())
    extra = {f"fold{k}": [t for i, t in enumerate(train) if (i in half) == (k == 0)] for k in (0, 1)}
    return {**data, "split": {**data["split"], **extra}}


def classes(data: dict, keep: list[int], per_class: int | None) -> dict:
    """Only the classes ``keep`` (relabelled 0..len-1 in that order); ``per_class`` caps the train split."""
    new = {old: i for i, old in enumerate(keep)}
    anns = [{**a, "label": new[a["label"]]} for a in data["annotations"] if a["label"] in new]
    kept = {a["frame_dir"] for a in anns}
    split = {name: [i for i in ids if i in kept] for name, ids in data["split"].items()}
    if per_class is not None:
        train = split["train"]
        labels = _labels({"annotations": anns}, train)
        split["train"] = [train[i] for i in per_class_subset(labels, per_class, SEED)]
        assert np.bincount(_labels({"annotations": anns}, split["train"])).tolist() == [per_class] * len(keep)
    return {"split": split, "classes": [data["classes"][c] for c in keep], "annotations": anns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pkl", type=Path)
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    data = load_pickle(a.pkl)
    n = len(data["classes"])
    sets = {"penn_small": small(data),
            "penn_folds": folds(data),
            "penn_pre8": classes(data, list(range(PRETRAIN_CLASSES)), None),
            "penn_fine7": classes(data, list(range(PRETRAIN_CLASSES, n)), PER_CLASS)}
    a.out.mkdir(parents=True, exist_ok=True)
    for name, d in sets.items():
        (a.out / f"{name}.pkl").write_bytes(pickle.dumps(d, protocol=4))
        print(name, {k: len(v) for k, v in d["split"].items()})


if __name__ == "__main__":
    main()
