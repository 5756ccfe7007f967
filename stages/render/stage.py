"""`skel render`: triplets -> heatmap volumes in Zarr (joint or limb Gaussians), one array per shard.

Per sample: the persons to draw (all, or the ``max_persons`` ranked first), pyskl's subject-centred crop,
resize to size x size, all frames up to ``max_frames`` (uniformly resampled beyond), render straight into the
stored dtype and layout ([T, K, H, W]), and append the frames to the shard's array
(stores.shard_codec.FrameWriter), committed atomically when the shard ends. Sampling, random crops and flips
happen later, on the stored tensors, while training streams them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from inference.splits import labelled_splits
from pipeline.digests import file_digest
from pipeline.errors import error_message
from pipeline.stage import Context, Shard, Stage, split_shards
from pipeline.workdir import load_output
from stages.import_pkl import imported_from
from stages.render.compact import cap_frames, pose_compact, resize
from stages.render.heatmap import render_volume
from stages.render.params import DTYPES, RenderParams
from stores.coco import KP_FLIP, LIMB_FLIP
from stores.finalize import finalize_arrays
from stores.persons import keep_persons
from stores.shard_codec import FrameWriter
from stores.triplets import Skeleton, TripletStore
from stores.volumes import GROUP, INDEX_SCHEMA, SCALES, VolumeStore

log = logging.getLogger("skel")


def select_persons(skel: Skeleton, img_shape: tuple[int, int], p: RenderParams) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints and scores of the persons to draw: all (``max_persons`` 0, the default), else the ``max_persons``
    ranked first by ``p.rank`` (stores.persons; boxes from the keypoints where the triplets have none)."""
    if not p.max_persons:
        return skel.keypoint, skel.score
    kp, score, _ = keep_persons(skel.keypoint, skel.score, skel.box, p.max_persons, img_shape, p.rank)
    return kp, score


def prepare(
    skel: Skeleton, img_shape: tuple[int, int], p: RenderParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float, float] | None]:
    """One sample as the render draws it, for the stage and for predict alike: the persons to draw, cropped
    around the subject, resized to p.size, frames capped. Returns (keypoint, score, source frames, crop box)."""
    keypoint, score = select_persons(skel, img_shape, p)
    kp, shape, box = pose_compact(keypoint, img_shape, padding=p.crop_padding, threshold=p.crop_threshold)
    kp = resize(kp, shape, (p.size, p.size))
    frames = cap_frames(kp.shape[1], p.max_frames)
    return kp[:, frames], score[:, frames], frames, box


class RenderStage(Stage):
    name = "render"
    version = "3"
    Params = RenderParams
    inputs = {"triplets": ("import", "extract")}

    def splits(self, out: Path) -> set[str]:
        return labelled_splits(VolumeStore(out))

    def describes(self, params: RenderParams, described: Mapping[str, dict]) -> dict:
        return {"kind": params.kind}

    def check_data(self, inputs: Mapping[str, Path], params: RenderParams) -> None:
        """An import whose pickle has changed since (an edit, more clips) is still the newest import until `skel
        import` runs again: say so, for it is the old content that renders."""
        made = load_output(inputs["triplets"])
        source = imported_from(made)
        if source and Path(source).is_file() and file_digest(Path(source)) != made.manifest["external"].get(
                "source_sha256"):
            log.warning("%s has changed since import %s was made from it: rendering that import's samples (run `skel "
                        "import` again to render the new content)", source, made.fingerprint[:8])

    def shards(self, ctx: Context) -> list[Shard]:
        ids = TripletStore(ctx.inputs["triplets"]).ids()
        return split_shards(ids, ctx.params.samples_per_shard)

    def render(self, keypoint: np.ndarray, score: np.ndarray, p: RenderParams, out: np.ndarray) -> np.ndarray:
        """The stored [T, K, H, W] volume of prepared keypoints, rendered into ``out`` (a method, so a
        benchmark can swap renderers)."""
        return render_volume(keypoint, score, (p.size, p.size), sigma=p.sigma, limbs=p.limbs, use_score=p.use_score,
                             dtype=DTYPES[p.dtype], layout="tkhw", out=out)

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        p: RenderParams = ctx.params
        store = TripletStore(ctx.inputs["triplets"])
        channels = p.channels
        writer = FrameWriter(ctx.out / GROUP, shard.id, (channels, p.size, p.size), DTYPES[p.dtype])
        buffer = np.empty((p.max_frames, channels, p.size, p.size), DTYPES[p.dtype])  # reused by every sample
        rows, errors = [], []
        for sid in shard.payload:
            meta = store.meta(sid)
            try:
                shape = (meta["img_h"], meta["img_w"])
                kp, score, frames, box = prepare(store.read(sid), shape, p)
                volume = self.render(kp, score, p, buffer[: len(frames)])
            except Exception as exc:  # noqa: BLE001 - a bad sample is recorded, the rest goes on
                errors.append({"sample_id": sid, "source": meta["source"], "message": error_message(exc)})
                continue
            offset = writer.frames
            rows.append({
                "sample_id": sid, "array": shard.id, "offset": offset, "n_frames": len(volume),
                "label": meta["label"], "split": meta["split"], "nbytes": writer.add(volume),
                "img_shape": [meta["img_h"], meta["img_w"]], "crop_box": list(box) if box else None,
                "frames": frames.tolist(),
            })  # fmt: skip
        if rows:
            writer.close({"kind": p.kind, "source_fingerprint": ctx.inputs["triplets"].name})
        else:
            writer.abort()
        return {"rows": rows, "errors": errors}

    def finalize(self, ctx: Context, records: dict[str, dict]) -> dict:
        p: RenderParams = ctx.params
        store = TripletStore(ctx.inputs["triplets"])
        channels = p.channels
        return finalize_arrays(ctx.out, records, self.name, {
            "kind": p.kind, "sigma": p.sigma, "size": p.size, "dtype": p.dtype, "scale": SCALES[p.dtype],
            "channels": channels, "limbs": p.limbs, "flip_perm": LIMB_FLIP if p.kind == "limb" else KP_FLIP,
            "use_score": p.use_score, "max_frames": p.max_frames, "classes": store.metadata.get("classes"),
            "layout": "tkhw", "source_fingerprint": ctx.inputs["triplets"].name,
            **({"num_classes": n} if (n := store.metadata.get("num_classes")) else {}),  # import_pkl's, when it has it
        }, GROUP, INDEX_SCHEMA)  # fmt: skip
