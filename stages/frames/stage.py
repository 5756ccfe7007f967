"""`skel frames`: the RGB frames behind each pose volume, cropped like it, as uint8 Zarr [T, H, W, 3] (RGBPose).

Input: a render output. For each of its samples the triplet row's ``source`` video (the render manifest
names the triplet directory) is decoded with OpenCV under the extract stage's frame selection (stride/fps
from the extract manifest), so triplet frame t is the t-th selected frame. The volume's ``frames`` are
kept, each is cropped to the volume's ``crop_box`` (original pixels, zero outside the image; the whole
image when the box is None) and resized to short side ``size`` (bilinear, pyskl's Resize), so frame t of
the array shows frame t of the volume. One array per sample (inner chunk = one frame, one shard file per
sample), named ``sample_name(sample_id)``; ``index.parquet`` lists them. A missing or corrupt video, or a sample
imported from a pyskl pickle (no video), becomes a row of errors.parquet and the rest completes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from pipeline.digests import file_digest
from pipeline.errors import error_message
from pipeline.inputs import inputs_of
from pipeline.stage import Context, Shard, Stage, split_shards
from pipeline.workdir import load_output
from stages.extract.video import FrameSelection, VideoReader
from stages.frames.params import FramesParams
from stores.arrays import sample_name
from stores.finalize import finalize_arrays
from stores.frames import GROUP, INDEX_SCHEMA, write_array
from stores.triplets import TripletStore
from stores.volumes import VolumeStore


@dataclass(frozen=True)
class Origin:
    """Where a render output's samples come from: the triplet directory and extract's frame selection."""

    triplets: Path
    stage: str
    selection: FrameSelection

    @classmethod
    def of(cls, volumes: Path) -> Origin:
        triplets = load_output(inputs_of(volumes)["triplets"])
        params = triplets.manifest.get("params", {})
        return cls(triplets.path, triplets.stage, FrameSelection(params.get("stride", 1), params.get("fps")))


def out_shape(box_hw: tuple[int, int], size: int) -> tuple[int, int]:
    """(height, width) with the short side ``size`` and the box's aspect ratio."""
    h, w = box_hw
    return (size, max(1, round(w * size / h))) if h <= w else (max(1, round(h * size / w)), size)


def crop_resize(frame: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop ``box`` (x0, y0, x1, y1; may leave the image: zeros there) and resize to short side ``size``.

    One ``warpAffine`` with cv2.resize's pixel-centre mapping (src = x0 + (j + 0.5)·scale − 0.5), so it
    equals zero-padding, cropping and a bilinear resize without building the padded crop.
    """
    x0, y0, x1, y1 = box
    oh, ow = out_shape((y1 - y0, x1 - x0), size)
    sx, sy = (x1 - x0) / ow, (y1 - y0) / oh
    inverse = np.array([[sx, 0, x0 + 0.5 * sx - 0.5], [0, sy, y0 + 0.5 * sy - 0.5]], dtype=np.float64)
    return cv2.warpAffine(frame, inverse, (ow, oh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def read_frames(path: str, selection: FrameSelection, frames: list[int], box: tuple[int, int, int, int] | None,
                img_shape: tuple[int, int], size: int) -> np.ndarray:
    """Decode the selected frames ``frames`` of a video, cropped and resized: uint8 [T, H, W, 3] (RGB)."""
    box = box or (0, 0, img_shape[1], img_shape[0])
    oh, ow = out_shape((box[3] - box[1], box[2] - box[0]), size)
    out = np.zeros((len(frames), oh, ow, 3), np.uint8)
    where: dict[int, list[int]] = {}
    for i, f in enumerate(frames):
        where.setdefault(int(f), []).append(i)
    last, seen = max(where), -1
    for seen, (_, rgb) in enumerate(VideoReader(path, selection)):
        if rgb.shape[:2] != tuple(img_shape):
            raise ValueError(f"{path}: frames are {rgb.shape[1]}x{rgb.shape[0]}, the triplets say "
                             f"{img_shape[1]}x{img_shape[0]} (video changed since extraction?)")
        if seen in where:
            out[where[seen]] = crop_resize(rgb, box, size)
        if seen == last:
            return out
    raise ValueError(f"{path}: {seen + 1} frames selected, the pose volume needs frame {last}")


class FramesStage(Stage):
    name = "frames"
    version = "2"
    Params = FramesParams
    inputs = {"volumes": ("render",)}

    def shards(self, ctx: Context) -> list[Shard]:
        ids = VolumeStore(ctx.inputs["volumes"]).index.column("sample_id").to_pylist()
        return split_shards(ids, ctx.params.samples_per_shard)

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        p: FramesParams = ctx.params
        volumes = VolumeStore(ctx.inputs["volumes"])
        up = Origin.of(ctx.inputs["volumes"])
        triplets = TripletStore(up.triplets)
        rows, errors = [], []
        for sid in shard.payload:
            source, name = triplets.meta(sid)["source"], sample_name(sid)
            try:
                if not Path(source).is_file():
                    hint = " (imported from a pyskl pickle)" if up.stage == "import" else ""
                    raise ValueError(f"no video for this sample{hint}: source {source!r} is not a file")
                extra = json.loads(triplets.meta(sid)["extra"] or "{}")
                made_from = extra.get("video_sha256")
                if made_from and file_digest(Path(source)) != made_from:  # its frames would not be the poses' frames
                    raise ValueError(f"{source} changed since its poses were extracted (other bytes): run skel extract "
                                     "again")
                attrs = volumes.meta(sid)
                selection = replace(up.selection, times=extra.get("timed", False))  # as extract selected
                frames = read_frames(source, selection, attrs["frames"], attrs["crop_box"],
                                     tuple(attrs["img_shape"]), p.size)
                t, h, w, _ = frames.shape
                meta = {k: attrs[k] for k in ("sample_id", "label", "split", "frames", "crop_box", "img_shape")}
                nbytes = write_array(ctx.out / GROUP, name, frames, {**meta, "source": source},
                                     chunks=(1, h, w, 3), shards=(t, h, w, 3), dimension_names=("t", "y", "x", "c"))
            except Exception as exc:  # noqa: BLE001 - a bad sample is recorded, the rest goes on
                errors.append({"sample_id": sid, "source": source, "message": error_message(exc)})
                continue
            rows.append({"sample_id": sid, "array": name, "label": attrs["label"], "split": attrs["split"],
                         "n_frames": t, "nbytes": nbytes})
        return {"rows": rows, "errors": errors}

    def finalize(self, ctx: Context, records: dict[str, dict]) -> dict:
        attrs = {"size": ctx.params.size, "dtype": "uint8", "layout": "t,y,x,c (RGB)",
                 "volumes_fingerprint": ctx.inputs["volumes"].name}
        return finalize_arrays(ctx.out, records, self.name, attrs, GROUP, INDEX_SCHEMA)
