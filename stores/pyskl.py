"""Triplet tables -> a pyskl annotation pickle (`skel export-pkl`): the inverse of the import stage for what skel
keeps of a pickle (docs/architecture.md, import): float32 keypoints and scores, NaN as 0, other per-sample fields as
JSON values."""

from __future__ import annotations

import json
from pathlib import Path

from stores.safepickle import dump_pickle
from stores.triplets import TripletStore, split_names


def to_pyskl(store: TripletStore) -> dict:
    """Triplet tables -> a pyskl annotation dict (the inverse of the import)."""
    annotations, split = [], {name: [] for name in store.metadata.get("split_names") or []}
    for row in store.samples.to_pylist():
        skel = store.read(row["sample_id"])
        ann = {"frame_dir": row["sample_id"], "label": row["label"], "img_shape": (row["img_h"], row["img_w"])}
        extra = json.loads(row["extra"]) if row["extra"] else {}
        if "original_shape" in extra:
            ann["original_shape"] = tuple(extra.pop("original_shape"))
        ann.update(total_frames=row["n_frames"], keypoint=skel.keypoint, keypoint_score=skel.score, **extra)
        if ann["label"] is None:
            del ann["label"]
        annotations.append(ann)
        for name in split_names(row["split"]):  # by what the pickle's lists named (import_pkl.split_key)
            split.setdefault(name, []).append(ann.get(store.metadata.get("split_key", "frame_dir")))
    out = {"split": split, "annotations": annotations}
    if store.metadata.get("classes") is not None:
        out["classes"] = store.metadata["classes"]
    return out


def export_pickle(store: TripletStore, path: Path, *, overwrite: bool = True) -> int:
    """Write the tables as a pyskl pickle (protocol 4), atomically (``overwrite`` off: not over a file made
    meanwhile); return the number of samples."""
    data = to_pyskl(store)
    dump_pickle(data, path, overwrite=overwrite)
    return len(data["annotations"])
