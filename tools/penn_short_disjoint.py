"""Class-disjoint small-data proxy on short clips (docs/small_data.md, "Penn-short, new actions").

``pre8.pkl``: classes 0-7 of the pretraining set that tools/penn_short_sets.py writes (Penn's train split minus
200 held-out clips, each full-length + two 15-40-frame windows); ``fine7.pkl``: Penn-short's clips of the other
classes 8-14, relabelled 0-6, with its train10 / train20 / test splits.

    python tools/penn_short_disjoint.py /tmp/penn_short_sets/penn_pretrain.pkl \
        ../shared/data/penn_short/penn_short.pkl OUT
"""

import pickle
import sys
from pathlib import Path

from pipeline.safepickle import load_pickle

pre, short = (load_pickle(Path(a)) for a in sys.argv[1:3])
out = Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
keep = [a for a in pre["annotations"] if a["label"] < 8]
ids = {a["frame_dir"] for a in keep}
(out / "pre8.pkl").write_bytes(pickle.dumps(
    {"classes": pre["classes"][:8], "split": {"train": [s for s in pre["split"]["train"] if s in ids]},
     "annotations": keep}))
anns = [{**a, "label": a["label"] - 8} for a in short["annotations"] if a["label"] >= 8]
ids = {a["frame_dir"] for a in anns}
split = {k: [s for s in v if s in ids] for k, v in short["split"].items()}
(out / "fine7.pkl").write_bytes(pickle.dumps({"classes": short["classes"][8:], "split": split, "annotations": anns}))
print(len(keep), {k: len(v) for k, v in split.items()})
