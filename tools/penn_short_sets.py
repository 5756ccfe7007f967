"""Write the pickles behind the Penn-short measurements and the pretrained ``penn-joint-s16`` model.

    python tools/penn_short_sets.py ../shared/data/penn_action/penn_action_coco17.pkl \
        ../shared/data/penn_short/penn_short.pkl /tmp/penn_short_sets

* ``holdout``: 200 clips of Penn's official TRAIN split, stratified (seed 0), none of them in Penn-short's
  ``train20`` (so none in ``train10``). They choose the fine-tuning settings: the pretraining never sees
  them, the Penn-short subsets never train on them, and they are not test clips.
* ``penn_pretrain.pkl``: Penn's train split minus ``holdout`` (1058 clips), each clip full-length plus
  ``WINDOWS`` random windows of 15-40 consecutive frames cut from it (seeded, ids ``<clip>@w<k>``), all in the
  split ``train``; no test clip of Penn is in it, in any form.
* ``penn_short_sets.pkl``: ``penn_short.pkl`` unchanged plus the split ``holdout`` (the short windows of those
  200 clips) and ``train_nohold`` (Penn-short's train minus holdout).
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

from stages.train.split import stratified_subset
from stores.safepickle import load_pickle

SEED = 0
HOLDOUT = 200
WINDOWS = 2  # short windows per pretraining clip, besides the full-length clip
MIN_LEN, MAX_LEN = 15, 40


def holdout_ids(short: dict) -> list[str]:
    label = {a["frame_dir"]: a["label"] for a in short["annotations"]}
    used = set(short["split"]["train20"])
    pool = [i for i in short["split"]["train"] if i not in used]
    return [pool[j] for j in stratified_subset([label[i] for i in pool], HOLDOUT, SEED)]


def windows(ann: dict, rng: np.random.Generator) -> list[dict]:
    out = []
    total = ann["keypoint"].shape[1]
    for k in range(WINDOWS):
        length = min(total, int(rng.integers(MIN_LEN, MAX_LEN + 1)))
        start = int(rng.integers(0, total - length + 1))
        w = dict(ann, frame_dir=f"{ann['frame_dir']}@w{k}", total_frames=length)
        w["keypoint"] = np.ascontiguousarray(ann["keypoint"][:, start:start + length])
        w["keypoint_score"] = np.ascontiguousarray(ann["keypoint_score"][:, start:start + length])
        out.append(w)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("penn", type=Path)
    ap.add_argument("short", type=Path)
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    penn, short = load_pickle(a.penn), load_pickle(a.short)
    hold = holdout_ids(short)
    held = set(hold)
    train, test = set(penn["split"]["train"]), set(penn["split"]["test"])
    rng = np.random.default_rng(SEED)
    anns, ids = [], []
    for ann in penn["annotations"]:
        fid = ann["frame_dir"]
        if fid in test or fid in held or fid not in train:
            continue
        for x in [ann, *windows(ann, rng)]:
            anns.append(x)
            ids.append(x["frame_dir"])
    pre = {k: v for k, v in penn.items() if k not in ("annotations", "split")}
    pre.update(split={"train": ids}, annotations=anns)
    sets = dict(short)
    sets["split"] = {**short["split"], "holdout": hold,
                     "train_nohold": [i for i in short["split"]["train"] if i not in held]}
    a.out.mkdir(parents=True, exist_ok=True)
    for name, d in (("penn_pretrain", pre), ("penn_short_sets", sets)):
        (a.out / f"{name}.pkl").write_bytes(pickle.dumps(d, protocol=4))
        print(name, {k: len(v) for k, v in d["split"].items()})


if __name__ == "__main__":
    main()
