"""`skel import`: a pyskl annotation pickle -> triplet tables (samples, triplets, errors).

The pickle is loaded with a restricted unpickler (numbers, strings, containers and numpy arrays only).
Each shard converts a contiguous range of annotations into one Parquet part; malformed samples become
rows of errors.parquet and the rest imports. ``stores.pyskl.export_pickle`` turns the tables back into the
same pickle.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from pipeline.digests import file_digest
from pipeline.errors import SkelError, SourceGone, printable, utf8_name
from pipeline.stage import Context, Shard, Stage, split_shards
from pipeline.values import PATH
from pipeline.workdir import Output
from stores.safepickle import load_pickle
from stores.triplets import Skeleton, V, finalize_tables, part_name, sample_table, write_part

log = logging.getLogger("skel")

KNOWN_KEYS = {"frame_dir", "label", "img_shape", "original_shape", "total_frames", "keypoint", "keypoint_score"}


@dataclass(frozen=True)
class ImportParams:
    source: str = field(metadata={"fingerprint": False, PATH: True})  # the content digest identifies it instead
    part_size: int = 256


@cache
def _load(path: str, digest: str) -> dict:
    """Load and check the top level once per process (the digest keys the cache)."""
    data = load_pickle(Path(path), sha256=digest)
    if isinstance(data, list) and data and all(isinstance(a, dict) for a in data):
        raise SkelError(f"{path}: a list of annotations (mmaction2 0.x: one pickle per split): pyskl's format is one "
                        "dict {'annotations': [...], 'split': {'train': [frame_dir, ...], ...}}")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise SkelError(f"{path}: not a pyskl annotation pickle (expected a dict with an 'annotations' list)")
    if not data["annotations"]:
        raise SkelError(f"{path}: its 'annotations' list is empty: nothing to import")
    _splits(data, path)
    classes = data.get("classes")
    if classes is None:
        _check_label_range(path, data["annotations"])
    elif not isinstance(classes, list | tuple) or not all(isinstance(c, str) for c in classes):
        raise SkelError(f"{path}: 'classes' must be a list of class names (strings)")
    elif twice := sorted({c for c in classes if classes.count(c) > 1}):
        log.warning("%s: 'classes' names %s more than once: their labels read as one class in the scores' names, "
                    "and a pretrained head gives them one row", path, ", ".join(map(repr, twice[:5])))
    return data


def _labels(annotations: list) -> set[int]:
    """The class indices the annotations give without a class list; labels bad on their own (negative, names,
    floats) are left to the per-sample check."""
    labels = set()
    for ann in annotations:
        try:
            label = _label(ann.get("label"), None) if isinstance(ann, dict) else None
        except ValueError:
            continue
        if label is not None:
            labels.add(label)
    return labels


def _check_label_range(path: str, annotations: list) -> None:
    """Without a class list the class count is the largest label + 1, so the labels must be exactly 0..N-1:
    a gap (a label of 99999, 1-based labels) would train a head with classes no sample has."""
    labels = _labels(annotations)
    gaps, expected = [], 0
    for label in sorted(labels):
        if label > expected:
            gaps.append(str(expected) if label == expected + 1 else f"{expected}..{label - 1}")
        expected = label + 1
    if gaps:
        more = f" and {len(gaps) - 5} more ranges" if len(gaps) > 5 else ""
        raise SkelError(f"{path}: missing labels {', '.join(gaps[:5])}{more} (no sample has them, yet the largest "
                        f"label is {max(labels)}; without a 'classes' list the labels must be 0..N-1): add a 'classes' "
                        "list (the class names, indexed by label) to the pickle")


def split_key(data: dict) -> str:
    """What the split lists name, as pyskl decides it: each annotation's ``filename`` when the first annotation has
    one, else its ``frame_dir``."""
    first = data["annotations"][0]
    return "filename" if isinstance(first, dict) and "filename" in first else "frame_dir"


def _splits(data: dict, path: str) -> dict[str, list[str]]:
    """Each identifier's split names (``split_key``), in the pickle's order (one listed twice in a split counts
    once). A sample's splits are stored comma-separated: a name holding a comma would come back as two other
    splits."""
    splits = data.get("split") or {}
    if not isinstance(splits, dict):
        raise SkelError(f"{path}: 'split' must map split names to lists of {split_key(data)}")
    member: dict[str, list[str]] = {}
    for name, ids in splits.items():
        if "," in str(name) or not str(name):
            raise SkelError(f"{path}: split name {str(name)!r} is empty or holds a comma (skel lists a sample's "
                            "splits comma-separated): rename it")
        if isinstance(ids, str | bytes | dict) or not isinstance(ids, list | tuple | set | np.ndarray):
            raise SkelError(f"{path}: split {str(name)!r} is a {type(ids).__name__}, not a list of "
                            f"{split_key(data)}")
        for sid in ids:
            names = member.setdefault(str(sid), [])
            if str(name) not in names:
                names.append(str(name))
    return member


def _warn_unmatched(source: str, data: dict) -> None:
    """A split that lists frame_dirs no annotation has (a pickle cut down, or a split of another dataset version)
    would be silently smaller: say which, and how many are missing."""
    key = split_key(data)
    annotated = {str(a.get(key)) for a in data["annotations"] if isinstance(a, dict)}
    for name, ids in (data.get("split") or {}).items():
        missing = [str(sid) for sid in ids if str(sid) not in annotated]
        if missing:
            log.warning("%s: %d of the %d %ss of split %r have no annotation (e.g. %r); the split holds the other %d",
                        source, len(missing), len(ids), key, str(name), missing[0], len(ids) - len(missing))


def _zero_nan(values: np.ndarray) -> np.ndarray:
    """NaN coordinates become 0, as pyskl's PoseCompact makes them (a joint a pose tool did not find), and a
    NaN score becomes 0 (the joint is missing; pyskl would render NaN). inf stays, for the check to refuse."""
    return np.where(np.isnan(values), np.float32(0), values)


def _nan_in(value: object) -> bool:
    if value is None:  # absent (keypoint_score is optional); np.asarray(None, float) would be NaN
        return False
    try:
        return bool(np.isnan(np.asarray(value, dtype=np.float64)).any())
    except (TypeError, ValueError):  # not numbers: the sample's own check reports it
        return False


COORD_RANGE = 4  # coordinates may lie this many image sizes outside the image (pose estimates overshoot)
NORMALISED = 1.0  # a skeleton within 1 pixel of the corner is coordinates in [0, 1], not pixels


def _normalised(x: np.ndarray, y: np.ndarray, h: int, w: int) -> bool:
    """Whether every found joint lies within (0..1, 0..1) of a larger image: coordinates in [0, 1], not pixels."""
    found = (x != 0) | (y != 0)  # (0, 0): a joint the pose tool did not find
    return bool(found.any() and min(h, w) > 2 * NORMALISED
                and max(np.abs(x[found]).max(), np.abs(y[found]).max()) <= NORMALISED)


def _normalised_in(ann: dict) -> bool:
    """``_normalised`` of an annotation whose keypoints and image shape read as numbers (else its check says why)."""
    try:
        h, w = (int(v) for v in ann["img_shape"])
        kp = _zero_nan(np.asarray(ann["keypoint"], dtype=np.float32))
        return _normalised(kp[..., 0], kp[..., 1], h, w)
    except (KeyError, TypeError, ValueError, IndexError):
        return False


# what the import treats otherwise than it once did, and how it treats it now (see ``_markers``)
MARKERS = {"nan": "zeroed", "normalised": "refused", "duplicates": "first named owns",
           "filename": "splits name filenames", "top_label": "counted though refused"}


@cache
def _markers(path: str, digest: str) -> dict[str, str]:
    """The ``MARKERS`` of what the pickle holds, in one pass: NaN joints (once refused, now zeroed), a skeleton in
    normalised coordinates (once imported into a 2x2 corner, now refused), a frame_dir named twice (once owned by
    the first annotation that imported, now by the first that names it), split lists of filenames (once matched
    on frame_dir, leaving the splits empty), a top label without a class list whose every sample is refused (once
    dropped from the class count, now counted: ``_top_label_refused``). They enter the fingerprint
    (``external``) only where the pickle holds them: only such pickles' outputs changed, so every other import
    (and all that depends on it) stays cached."""
    data = _load(path, digest)
    held, names = {"filename"} if split_key(data) == "filename" else set(), set()
    if _top_label_refused(data):
        held.add("top_label")
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            continue
        if _nan_in(ann.get("keypoint")) or _nan_in(ann.get("keypoint_score")):
            held.add("nan")
        if _normalised_in(ann):
            held.add("normalised")
        name = str(ann.get("frame_dir"))
        if name in names:
            held.add("duplicates")
        names.add(name)
    return {key: how for key, how in MARKERS.items() if key in held}


def _top_label_refused(data: dict) -> bool:
    """Whether, without a class list, none of the samples of the largest label imports (the class count is the
    pickle's all the same: ``ImportStage.finalize``)."""
    if data.get("classes") is not None or not (labels := _labels(data["annotations"])):
        return False
    top, named = max(labels), set()
    for ann in data["annotations"]:
        name = _frame_dir(ann) if isinstance(ann, dict) else None
        try:  # it imports when it passes its check and is the first to name its frame_dir (``run_shard``)
            if isinstance(ann, dict) and _label(ann.get("label"), None) == top and name not in named:
                _check(ann, None)
                return False
        except (ValueError, TypeError):
            pass
        named.add(name)
    return True


def _label(value: object, classes: list | None) -> int | None:
    """A class index: an integer in [0, len(classes)) (or >= 0 without a class list), or a class name
    mapped through the pickle's ``classes``; floats, lists and unknown names are errors."""
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, str):
        if classes is None:
            raise ValueError(f"label {value!r} is a name but the pickle has no 'classes' list")
        if value not in classes:
            raise ValueError(f"label {value!r} is not one of the pickle's {len(classes)} classes")
        return classes.index(value)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"label {value!r} is a {type(value).__name__}, expected an integer class index")
    label = int(value)
    if label < 0 or (classes is not None and label >= len(classes)):
        within = f"[0, {len(classes)})" if classes is not None else ">= 0"
        raise ValueError(f"label {label} is out of range (expected {within})")
    return label


def _check(ann: object, classes: list | None) -> tuple[str, int | None, tuple[int, int], Skeleton]:
    """Validate one annotation; return (sample id, label, (H, W), skeleton) or raise ValueError saying what
    is wrong."""
    if not isinstance(ann, dict):
        raise ValueError(f"annotation is a {type(ann).__name__}, not a dict")
    if "keypoint" in ann:  # first: another layout (pyskl's 3-D skeletons have no img_shape) is said as such
        kp = np.asarray(ann["keypoint"])
        if kp.ndim != 4 or kp.shape[-1] != 2 or kp.shape[2] != V:
            raise ValueError(f"keypoint has shape {kp.shape}, expected [M, T, {V}, 2]{_layout_hint(kp.shape)}")
    missing = [k for k in ("frame_dir", "keypoint", "img_shape") if k not in ann]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    if _frame_dir(ann) is None:
        utf8 = not isinstance(ann["frame_dir"], str) or utf8_name(ann["frame_dir"])
        raise ValueError(f"frame_dir {ann['frame_dir']!r} is not a name (a non-empty string or an integer)" if utf8
                         else f"frame_dir '{printable(ann['frame_dir'])}' is not valid UTF-8 text")
    label = _label(ann.get("label"), classes)
    if (shape := _shape(ann["img_shape"])) is None:
        raise ValueError(f"img_shape {ann['img_shape']!r} is not (H, W) in positive integers")
    if "original_shape" in ann and _shape(ann["original_shape"]) is None:
        raise ValueError(f"original_shape {ann['original_shape']!r} is not (H, W) in positive integers")
    h, w = shape
    if kp.shape[0] < 1 or kp.shape[1] < 1:
        raise ValueError(f"keypoint has shape {kp.shape}: no persons (M = 0) or no frames (T = 0)")
    score = np.asarray(ann.get("keypoint_score", np.ones(kp.shape[:3], np.float32)))
    if score.shape != kp.shape[:3]:
        raise ValueError(f"keypoint_score has shape {score.shape}, expected {kp.shape[:3]}")
    kp, score = _zero_nan(kp.astype(np.float32)), _zero_nan(score.astype(np.float32))
    if not (np.isfinite(kp).all() and np.isfinite(score).all()):
        raise ValueError("keypoint or keypoint_score holds inf")
    x, y = kp[..., 0], kp[..., 1]
    if (np.abs(x - w / 2) > (COORD_RANGE + 0.5) * w).any() or (np.abs(y - h / 2) > (COORD_RANGE + 0.5) * h).any():
        raise ValueError(f"keypoint coordinates reach ({x.min():.3g}..{x.max():.3g}, {y.min():.3g}..{y.max():.3g}), "
                         f"more than {COORD_RANGE} image sizes outside the {w}x{h} image")
    if not ((x >= 0) & (x < w) & (y >= 0) & (y < h)).any():
        raise ValueError(f"no keypoint lies inside the {w}x{h} image")
    if _normalised(x, y, h, w):
        raise ValueError(f"every keypoint lies within (0..1, 0..1) of the {w}x{h} image: normalised coordinates? "
                         "keypoints are pixels of img_shape (multiply x by the width and y by the height)")
    total = ann.get("total_frames", kp.shape[1])
    if isinstance(total, bool) or not isinstance(total, int | np.integer | float | np.floating) or total % 1:
        raise ValueError(f"total_frames {total!r} is not a whole number")  # 30.0 is, as a script may write it
    if total != kp.shape[1]:
        raise ValueError(f"total_frames is {total} but keypoint has {kp.shape[1]} frames")
    return _frame_dir(ann), label, (h, w), Skeleton(kp, score)


def _layout_hint(shape: tuple[int, ...]) -> str:
    """What a keypoint array of another layout likely is, and how to make COCO-17 of it."""
    if len(shape) == 4 and shape[2] == 133:
        return " (COCO-WholeBody? its first 17 joints are COCO-17: keypoint[:, :, :17])"
    if len(shape) == 4 and shape[2] == 25 and shape[3] == 3:
        return (" (NTU's 3-D skeletons, 25 joints x, y, z? skel takes 2-D COCO-17 keypoints in pixels: pyskl's "
                "ntu*_hrnet.pkl)")
    if len(shape) == 4 and shape[2] == V and shape[3] == 3:
        return (" (x, y, score packed? give keypoint[..., :2] as keypoint and keypoint[..., 2] as keypoint_score; "
                "3-D keypoints are not supported)")
    return ""


def _frame_dir(ann: dict) -> str | None:
    """The sample id an annotation's frame_dir gives: a non-empty string, or an integer as text (None: neither)."""
    name = ann.get("frame_dir")
    if isinstance(name, np.generic):
        name = name.item()
    if isinstance(name, bool) or not isinstance(name, str | int) or name == "" or not utf8_name(str(name)):
        return None
    return str(name)


def _shape(value: object) -> tuple[int, int] | None:
    """(H, W) of an img_shape or original_shape given as two positive integers, else None."""
    shape = tuple(value) if isinstance(value, tuple | list | np.ndarray) else ()
    if len(shape) != 2 or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0
                                  for v in shape):
        return None
    return int(shape[0]), int(shape[1])


def _extra(ann: dict) -> str | None:
    """The annotation's other fields as JSON (arrays as lists, keys JSON cannot hold as text)."""
    rest = {k: ann[k] for k in ann if k not in KNOWN_KEYS}
    if "original_shape" in ann:
        rest["original_shape"] = list(_shape(ann["original_shape"]))
    return json.dumps(_jsonable(rest)) if rest else None


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {_key(k.item() if isinstance(k, np.generic) else k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _jsonable(value.tolist())
    return _key(value)


def _key(value: object) -> object:
    """A value JSON holds as is (a dict key: as text), else its text."""
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def imported_from(found: Output) -> str | None:
    """The pickle an output was imported from, as its plan gave it (None: not an import output)."""
    return found.manifest.get("plan", {}).get("params", {}).get("source") if found.stage == "import" else None


def _path(params: ImportParams) -> Path:
    """The pickle, which must still be there."""
    path = Path(params.source)
    if not path.is_file():
        raise SourceGone(path, "skel import NEWPATH")
    return path


def _source(params: ImportParams) -> tuple[str, str]:
    """The pickle's absolute path and content digest (the key of ``_load``)."""
    path = _path(params)
    return str(path.resolve()), file_digest(path)


class ImportStage(Stage):
    name = "import"
    version = "1"
    Params = ImportParams

    def external(self, params: ImportParams) -> dict:
        """The pickle's digest and its ``_markers``; the pickle is loaded and checked here, so that a wrong one
        fails before its output directory exists."""
        path, digest = _source(params)
        return {"source_sha256": digest} | _markers(path, digest)

    def _data(self, ctx: Context) -> dict:
        """The pickle with the bytes the run planned: replaced while the run goes on, each process that loads it
        after fails its shard, rather than mixing two files' samples under the first one's fingerprint."""
        return _load(str(_path(ctx.params).resolve()), ctx.external["source_sha256"])

    def shards(self, ctx: Context) -> list[Shard]:
        n = len(self._data(ctx)["annotations"])
        return split_shards(n, ctx.params.part_size)

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        data = self._data(ctx)
        member = _splits(data, ctx.params.source)
        lo, hi = shard.payload
        # the first annotation with a frame_dir owns it, whether or not it imports: the same samples are kept
        # and refused however the annotations fall into parts
        seen: dict[str | None, int] = {}  # name -> the annotation that owns it
        for j, a in enumerate(data["annotations"][:lo]):
            if isinstance(a, dict):
                seen.setdefault(_frame_dir(a), j)
        classes, key = data.get("classes"), split_key(data)
        tables, samples, errors = [], [], []
        part = part_name(shard.id)
        for i in range(lo, hi):
            ann = data["annotations"][i]
            try:
                sid, label, (h, w), skel = _check(ann, list(classes) if classes is not None else None)
                if sid in seen:
                    raise ValueError(f"duplicate frame_dir: annotation #{seen[sid]} has it (the first keeps it)")
                extra = _extra(ann)
            except (ValueError, TypeError, RecursionError) as exc:
                name = _frame_dir(ann) if isinstance(ann, dict) else None
                errors.append({"sample_id": name or f"#{i}", "source": f"{ctx.params.source}#{i}",
                               "message": str(exc)})
                seen.setdefault(name, i)  # a named sample owns its name even when refused
                continue
            seen[sid] = i
            samples.append({
                "sample_id": sid, "label": label,
                "split": ",".join(member.get(sid if key == "frame_dir" else str(ann.get(key)), [])) or None,
                "img_h": h, "img_w": w,
                "n_frames": skel.keypoint.shape[1], "fps": None, "source": f"{ctx.params.source}#{i}",
                "n_persons": skel.keypoint.shape[0], "part": part, "row_group": len(tables),
                "extra": extra,
            })  # fmt: skip
            tables.append(sample_table(sid, skel))
        write_part(ctx.out / part, tables)
        return {"samples": samples, "errors": errors}

    def finalize(self, ctx: Context, records: dict[str, dict]) -> dict:
        data = self._data(ctx)
        _load.cache_clear()  # this process is done with it (a recipe's driver kept it through its trainings)
        meta = {"classes": data.get("classes"), "split_names": [str(n) for n in (data.get("split") or {})]}
        if "top_label" in ctx.external:  # the class count the samples give would miss it (``_markers``)
            meta["num_classes"] = max(_labels(data["annotations"])) + 1
        if (key := split_key(data)) != "frame_dir":
            meta["split_key"] = key
        _warn_unmatched(ctx.params.source, data)
        return finalize_tables(ctx.out, records, self.name, meta)
