"""Class-disjoint small-data proxy on short clips (docs/small_data.md, "Penn-short, new actions").

``pre.pkl``: the pretraining classes (default 0-7) of the set tools/penn_short_sets.py writes (Penn's train
split minus 200 held-out clips, each full-length + two 15-40-frame windows); ``fine.pkl``: Penn-short's clips
of the other classes, relabelled from 0, with its train10 / train20 / train / test splits. Two class splits
exist so that settings are chosen on one (``--pre-classes 7-14``, on training clips outside train20) and
reported on the other (the default, on its test split).

    python tools/penn_short_disjoint.py /tmp/penn_short_sets/penn_pretrain.pkl \
        ../shared/data/penn_short/penn_short.pkl OUT [--pre-classes 0-7]
"""

import argparse
import pickle
from pathlib import Path

from stores.safepickle import load_pickle

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("pretrain", type=Path)
parser.add_argument("short", type=Path)
parser.add_argument("out", type=Path)
parser.add_argument("--pre-classes", default="0-7", help="FIRST-LAST: the classes pretrained on")
args = parser.parse_args()
first, last = map(int, args.pre_classes.split("-"))
pre, short = load_pickle(args.pretrain), load_pickle(args.short)
args.out.mkdir(parents=True, exist_ok=True)


def subset(data: dict, classes: list[int]) -> dict:
    """The samples of ``classes``, relabelled 0.. in that order, with every split restricted to them."""
    new = {c: i for i, c in enumerate(classes)}
    anns = [{**a, "label": new[a["label"]]} for a in data["annotations"] if a["label"] in new]
    ids = {a["frame_dir"] for a in anns}
    return {"classes": [data["classes"][c] for c in classes], "annotations": anns,
            "split": {k: [s for s in v if s in ids] for k, v in data["split"].items()}}


pre_classes = list(range(first, last + 1))
fine_classes = [c for c in range(len(short["classes"])) if c not in pre_classes]
pre_set = subset(pre, pre_classes)
fine_set = subset(short, fine_classes)
(args.out / "pre.pkl").write_bytes(pickle.dumps(pre_set))
(args.out / "fine.pkl").write_bytes(pickle.dumps(fine_set))
print(len(pre_set["annotations"]), {k: len(v) for k, v in fine_set["split"].items()})
