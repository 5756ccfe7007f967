"""`skel import`: a pyskl annotation pickle -> triplet tables (samples, triplets, errors).

The pickle is loaded with a restricted unpickler (numbers, strings, containers and numpy arrays only).
Each shard converts a contiguous range of annotations into one Parquet part; malformed samples become
rows of errors.parquet and the rest imports. ``export_pickle`` turns the tables back into the same pickle.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.errors import SkelError
from pipeline.fingerprint import file_digest
from pipeline.safepickle import load_pickle
from pipeline.stage import Context, Shard, Stage
from pipeline.triplets import Skeleton, TripletStore, V, finalize_tables, part_name, sample_table, write_part

KNOWN_KEYS = {"frame_dir", "label", "img_shape", "original_shape", "total_frames", "keypoint", "keypoint_score"}


@dataclass(frozen=True)
class ImportParams:
    source: str = field(metadata={"fingerprint": False})  # the content digest identifies it instead
    part_size: int = 256


@cache
def _load(path: str, digest: str) -> dict:
    """Load and check the top level once per process (the digest keys the cache)."""
    data = load_pickle(Path(path))
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise SkelError(f"{path}: not a pyskl annotation pickle (expected a dict with an 'annotations' list)")
    return data


def _splits(data: dict) -> dict[str, list[str]]:
    splits = data.get("split") or {}
    if not isinstance(splits, dict):
        raise SkelError("'split' must map split names to lists of frame_dir")
    member: dict[str, list[str]] = {}
    for name, ids in splits.items():
        for sid in ids:
            member.setdefault(str(sid), []).append(str(name))
    return member


def _check(ann: object) -> tuple[str, Skeleton]:
    """Validate one annotation; raise ValueError with what is wrong."""
    if not isinstance(ann, dict):
        raise ValueError(f"annotation is a {type(ann).__name__}, not a dict")
    missing = [k for k in ("frame_dir", "keypoint", "img_shape") if k not in ann]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    kp = np.asarray(ann["keypoint"])
    if kp.ndim != 4 or kp.shape[-1] != 2 or kp.shape[2] != V:
        raise ValueError(f"keypoint has shape {kp.shape}, expected [M, T, {V}, 2]")
    score = np.asarray(ann.get("keypoint_score", np.ones(kp.shape[:3], np.float32)))
    if score.shape != kp.shape[:3]:
        raise ValueError(f"keypoint_score has shape {score.shape}, expected {kp.shape[:3]}")
    if not (np.isfinite(kp).all() and np.isfinite(score).all()):
        raise ValueError("keypoint or keypoint_score holds NaN/inf")
    total = ann.get("total_frames", kp.shape[1])
    if int(total) != kp.shape[1]:
        raise ValueError(f"total_frames is {total} but keypoint has {kp.shape[1]} frames")
    if len(tuple(ann["img_shape"])) != 2:
        raise ValueError(f"img_shape {ann['img_shape']!r} is not (H, W)")
    return str(ann["frame_dir"]), Skeleton(kp.astype(np.float32), score.astype(np.float32))


def _extra(ann: dict) -> str | None:
    rest = {k: ann[k] for k in ann if k not in KNOWN_KEYS}
    if "original_shape" in ann:
        rest["original_shape"] = [int(v) for v in ann["original_shape"]]
    return json.dumps(rest, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)) if rest else None


class ImportStage(Stage):
    name = "import"
    version = "1"
    Params = ImportParams

    def external(self, params: ImportParams) -> dict:
        path = Path(params.source)
        if not path.is_file():
            raise SkelError(f"{path}: no such file")
        return {"source_sha256": file_digest(path)}

    def _data(self, params: ImportParams) -> dict:
        return _load(str(Path(params.source).resolve()), self.external(params)["source_sha256"])

    def shards(self, ctx: Context) -> list[Shard]:
        n = len(self._data(ctx.params)["annotations"])
        size = ctx.params.part_size
        return [Shard(f"{i // size:05d}", (i, min(i + size, n))) for i in range(0, n, size)]

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        data = self._data(ctx.params)
        member = _splits(data)
        lo, hi = shard.payload
        seen = {str(a.get("frame_dir")) for a in data["annotations"][:lo] if isinstance(a, dict)}
        tables, samples, errors = [], [], []
        part = part_name(shard.id)
        for i in range(lo, hi):
            ann = data["annotations"][i]
            try:
                sid, skel = _check(ann)
                if sid in seen:
                    raise ValueError("duplicate frame_dir")
            except (ValueError, TypeError) as exc:
                name = str(ann.get("frame_dir", f"#{i}")) if isinstance(ann, dict) else f"#{i}"
                errors.append({"sample_id": name, "source": ctx.params.source, "message": str(exc)})
                continue
            seen.add(sid)
            h, w = (int(v) for v in ann["img_shape"])
            label = ann.get("label")
            samples.append({
                "sample_id": sid, "label": None if label is None else int(label),
                "split": ",".join(member.get(sid, [])) or None, "img_h": h, "img_w": w,
                "n_frames": skel.keypoint.shape[1], "fps": None, "source": f"{ctx.params.source}#{i}",
                "n_persons": skel.keypoint.shape[0], "part": part, "row_group": len(tables),
                "extra": _extra(ann),
            })  # fmt: skip
            tables.append(sample_table(sid, skel))
        write_part(ctx.out / part, tables)
        return {"samples": samples, "errors": errors}

    def finalize(self, ctx: Context, records: dict[str, dict]) -> dict:
        data = self._data(ctx.params)
        meta = {"classes": data.get("classes"), "split_names": list((data.get("split") or {}).keys())}
        return finalize_tables(ctx.out, records, self.name, meta)


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
        for name in (row["split"] or "").split(","):
            if name:
                split.setdefault(name, []).append(row["sample_id"])
    out = {"split": split, "annotations": annotations}
    if store.metadata.get("classes") is not None:
        out["classes"] = store.metadata["classes"]
    return out


def export_pickle(store: TripletStore, path: Path) -> int:
    """Write the tables as a pyskl pickle (protocol 4), atomically; return the number of samples."""
    data = to_pyskl(store)
    with atomic_path(path) as tmp:
        tmp.write_bytes(pickle.dumps(data, protocol=4))
    return len(data["annotations"])
