"""`skel render`: triplets -> heatmap volumes [K, T, H, W] in Zarr (joint or limb Gaussians).

Per sample: pyskl's subject-centred crop, resize to size x size, all frames up to ``max_frames``
(uniformly resampled beyond), render into the stored dtype, write one compressed Zarr array atomically.
Sampling, random crops and flips happen later, on the stored tensors, while training streams them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.coco import KP_FLIP, LIMB_FLIP, LIMBS
from pipeline.stage import Context, Shard, Stage
from pipeline.triplets import TripletStore
from pipeline.volumes import SCALES, VolumeStore, finalize_arrays, write_volume
from stages.render.compact import cap_frames, pose_compact, resize
from stages.render.heatmap import render_volume

KINDS = ("joint", "limb")
DTYPES = {"float16": np.float16, "float32": np.float32, "uint8": np.uint8}


@dataclass(frozen=True)
class RenderParams:
    kind: str = "joint"
    sigma: float = 0.6
    size: int = 64
    max_frames: int = 300
    dtype: str = "float16"
    use_score: bool = True
    crop_padding: float = 0.25
    crop_threshold: int = 10
    samples_per_shard: int = field(default=64, metadata={"fingerprint": False})

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.sigma <= 0 or self.size < 8 or self.max_frames < 1:
            raise ValueError("sigma must be > 0, size >= 8 and max_frames >= 1")

    @property
    def limbs(self) -> list[tuple[int, int]] | None:
        return [tuple(limb) for limb in LIMBS] if self.kind == "limb" else None


def array_name(sample_id: str) -> str:
    """A filesystem-safe, collision-free array name for a sample id."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id)[:60]
    return f"{safe}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}"


def prepare(keypoint: np.ndarray, img_shape: tuple[int, int], p: RenderParams):
    """Crop around the subject, resize to p.size, cap frames: returns (keypoint, frames, crop box)."""
    kp, shape, box = pose_compact(keypoint, img_shape, padding=p.crop_padding, threshold=p.crop_threshold)
    kp = resize(kp, shape, (p.size, p.size))
    frames = cap_frames(kp.shape[1], p.max_frames)
    return kp[:, frames], frames, box


class RenderStage(Stage):
    name = "render"
    version = "1"
    Params = RenderParams
    inputs = {"triplets": ("import", "extract")}

    def shards(self, ctx: Context) -> list[Shard]:
        ids = TripletStore(ctx.inputs["triplets"]).ids()
        n = ctx.params.samples_per_shard
        return [Shard(f"{i // n:05d}", ids[i : i + n]) for i in range(0, len(ids), n)]

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        p: RenderParams = ctx.params
        store = TripletStore(ctx.inputs["triplets"])
        rows, errors = [], []
        for sid in shard.payload:
            meta = store.meta(sid)
            try:
                skel = store.read(sid)
                kp, frames, box = prepare(skel.keypoint, (meta["img_h"], meta["img_w"]), p)
                volume = render_volume(
                    kp, skel.score[:, frames], (p.size, p.size), sigma=p.sigma, limbs=p.limbs,
                    use_score=p.use_score, dtype=DTYPES[p.dtype],
                )  # fmt: skip
                name = array_name(sid)
                attrs = {
                    "sample_id": sid, "label": meta["label"], "split": meta["split"], "kind": p.kind,
                    "sigma": p.sigma, "crop_box": list(box) if box else None,
                    "img_shape": [meta["img_h"], meta["img_w"]], "frames": frames.tolist(),
                    "source_fingerprint": ctx.inputs["triplets"].name,
                }  # fmt: skip
                nbytes = write_volume(ctx.out, name, volume, attrs)
            except Exception as exc:  # noqa: BLE001 - a bad sample is recorded, the rest goes on
                errors.append({"sample_id": sid, "source": meta["source"], "message": f"{type(exc).__name__}: {exc}"})
                continue
            rows.append({
                "sample_id": sid, "array": name, "label": meta["label"], "split": meta["split"],
                "n_frames": int(volume.shape[1]), "nbytes": nbytes,
            })  # fmt: skip
        return {"rows": rows, "errors": errors}

    def finalize(self, ctx: Context, records: dict[str, dict]) -> dict:
        p: RenderParams = ctx.params
        store = TripletStore(ctx.inputs["triplets"])
        channels = len(LIMBS) if p.kind == "limb" else 17
        return finalize_arrays(ctx.out, records, self.name, {
            "kind": p.kind, "sigma": p.sigma, "size": p.size, "dtype": p.dtype, "scale": SCALES[p.dtype],
            "channels": channels, "limbs": p.limbs, "flip_perm": LIMB_FLIP if p.kind == "limb" else KP_FLIP,
            "use_score": p.use_score, "max_frames": p.max_frames, "classes": store.metadata.get("classes"),
        })  # fmt: skip


def write_previews(out: Path, n: int) -> list[Path]:
    """PNG strips of ``n`` samples spread over a render output, in ``out/preview/``."""
    from stages.render.preview import save_preview

    store = VolumeStore(out)
    rows = store.index.to_pylist()
    picks = sorted({int(i) for i in np.linspace(0, len(rows) - 1, n)}) if rows and n > 0 else []
    paths = []
    for row in (rows[i] for i in picks):
        title = f"{row['sample_id']} label={row['label']}"
        path = out / "preview" / f"{row['array']}.png"
        paths.append(save_preview(store.read(row["array"]), store.attrs["kind"], path, title=title))
    return paths
