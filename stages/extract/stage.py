"""`skel extract`: videos → two-stage ONNX pose estimation → triplet tables (samples, triplets, errors).

One shard per video; a video announcing more than `chunk_frames` frames is split into frame ranges of
that length, each its own shard (written to ``chunks/*.npz`` with all its tracks), and the driver joins the
ranges by box overlap at the boundaries (`merge_chunks`), joins the fragments of tracks and keeps `max_persons`
of the whole video when it writes the tables. A video that cannot be decoded becomes a row of errors.parquet and
the rest completes.

Each sample's ``extra`` holds its fragment statistics, ``{"fragments": {tracks_before_merge, tracks,
short_tracks}}`` (`stages.extract.track.finish`); the manifest summary sums them over the videos.

The fingerprint covers the extraction parameters, the model names and their SHA256, the label file's
content and each video's path and content (its sha256, kept in the workdir's digest store,
`pipeline.digests`, so that a plan hashes only the videos changed since).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import socket
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np

from models.detector import PersonDetector, available_detectors, make_detector
from models.pose import MOVENET_SIZES, HeatmapPose, MoveNetPose, PoseEstimator
from models.pose_onnx import model_sha256
from pipeline.atomic import CorruptFile, atomic_path
from pipeline.digests import file_digest
from pipeline.errors import SkelError
from pipeline.fingerprint import canonical_json, fingerprint_params
from pipeline.records import read_record
from pipeline.stage import Context, Shard, Stage
from pipeline.workdir import SHARDS, load_output
from stages.extract.core import extract_video
from stages.extract.params import ExtractStageParams
from stages.extract.sources import Found, Video, discover
from stages.extract.track import merge_chunks
from stages.extract.video import VideoError, capture
from stores.triplets import Skeleton, finalize_tables, part_name, sample_table, write_part

log = logging.getLogger("skel")
CHUNKS = "chunks"
LONG_PART = "long"  # the part holding the samples joined from frame-range shards


@functools.cache
def estimators(p: ExtractStageParams, warn: bool = True) -> tuple[PersonDetector, PoseEstimator]:
    """Detector and pose model for these parameters, once per process (sessions cannot be pickled).

    `warn` off: a missing model of a fused detector spec is not warned of again (the stage did, in `external`).
    """
    detector = make_detector(
        p.detector, p.models, long_side=p.detector_size, min_score=p.min_score, pad=p.detector_pad, fuse_iou=p.fuse_iou,
        device=p.device, threads=p.threads, warn=warn,
    )
    if p.pose_model in MOVENET_SIZES:
        return detector, MoveNetPose(p.models, name=p.pose_model, device=p.device, threads=p.threads)
    return detector, HeatmapPose(p.models, name=p.pose_model, device=p.device, threads=p.threads)


def _ranges(video: Video, p: ExtractStageParams) -> list[tuple[int, int | None]]:
    """Source frame ranges of a video's shards (its announced length is only used to split it)."""
    if not p.chunk_frames or p.max_frames is not None:
        return [(0, None)]
    cap = capture(video.path)
    announced = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    cap.release()
    n = max(1, math.ceil(announced / p.chunk_frames))
    return [(k * p.chunk_frames, (k + 1) * p.chunk_frames if k + 1 < n else None) for k in range(n)]


def _sample_row(video: Video, meta: dict, n_persons: int, part: str, row_group: int) -> dict:
    return {
        "sample_id": video.sample_id, "label": video.label, "split": video.split, "img_h": meta["img_h"],
        "img_w": meta["img_w"], "n_frames": meta["n_frames"], "fps": meta["fps"], "source": video.path,
        "n_persons": n_persons, "part": part, "row_group": row_group,
        "extra": json.dumps({"fragments": meta["fragments"]}
                            | ({"video_sha256": meta["sha256"]} if meta.get("sha256") else {})
                            | ({"timed": True} if meta.get("timed") else {})),  # `skel frames` selects alike
    }  # fmt: skip


def _nobody(video: Video, n_frames: int) -> dict:
    """The error row of a video in which no person was found: as a sample it would train as an all-zero clip of
    its class."""
    return {"sample_id": video.sample_id, "source": video.path, "message": f"no person found in its {n_frames} frames"}


class ExtractStage(Stage):
    name = "extract"
    version = "5"  # 5: a video without a person is an error row, not an all-zero sample
    Params = ExtractStageParams

    def _found(self, params: ExtractStageParams) -> Found:
        """The inputs' videos, labels and classes, listed once per stage object: the fingerprint, the manifest, the
        shards and the tables all describe one listing, though files are added, removed or relabelled while it runs
        (a class folder added mid-run renumbered every class name in the tables before)."""
        listings = self.__dict__.setdefault("_listings", {})
        key = (params.sources, params.labels)
        if key not in listings:
            listings[key] = discover(*key)
        return listings[key]

    def external(self, params: ExtractStageParams) -> dict:
        found = self._found(params)
        listing = [(v.sample_id, v.path, _content(v.path), v.label, v.split) for v in found.videos]
        models = _models(params)
        # the skipped duplicates are rows of the error table, so they count; only where there are any, so
        # every other output keeps the fingerprint it had before they counted
        skipped = {"duplicates": sorted(e["source"] for e in found.errors)} if found.errors else {}
        return {
            "videos_sha256": hashlib.sha256(canonical_json(listing).encode()).hexdigest(),
            "n_videos": len(found.videos), "classes": found.classes, "models_sha256": models,
            "labels_sha256": file_digest(Path(params.labels)) if params.labels else None,
        } | skipped  # fmt: skip

    def shards(self, ctx: Context) -> list[Shard]:
        found = self._found(ctx.params)
        labelled = sum(v.label is not None for v in found.videos)
        classes = f"; classes: {', '.join(found.classes)}" if found.classes else ""
        if splits := Counter(v.split for v in found.videos if v.split):
            classes += f"; splits: {', '.join(f'{name} {n}' for name, n in sorted(splits.items()))}"
        log.info("%d videos, %s", len(found.videos), f"{labelled} labelled{classes}" if labelled
                 else "none labelled (labels come from --labels CSV or from <input>/<class>/<video> folders)")
        for note in found.notes:
            log.warning(note)
        # a video's poses depend on its content, the parameters and the models, not on where it lies, its labels or
        # the other videos: a shard another output of this workdir committed for the same work is copied, not
        # extracted again (a folder of videos moved or copied elsewhere is not extracted twice; its sample ids stay)
        params = fingerprint_params(ctx.params)
        common = {"version": self.version, "models": _models(ctx.params)}
        done, sizes = _done_elsewhere(ctx.out)
        shards = []
        for i, video in enumerate(found.videos):
            ranges = _ranges(video, ctx.params)
            content = _content(video.path)
            for k, frames in enumerate(ranges):
                sid = f"{i:06d}" if len(ranges) == 1 else f"{i:06d}-{k:04d}"
                key = functools.partial(_work_key, common, video, content, frames, k)
                work = key(params)
                # a video not split: its work under another --chunk-frames that did not split it either is the same
                others = (key(params | {"chunk_frames": c}) for c in sizes) if len(ranges) == 1 else ()
                hint = next((done[w] for w in (work, *others) if w in done), None) if content else None
                shards.append(Shard(sid, (video, frames, k, len(ranges), content, work), hint=hint))
        return shards

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        return {"work": shard.payload[-1]} | (_copied(ctx, shard) or self._extract(ctx, shard))

    def _extract(self, ctx: Context, shard: Shard) -> dict:
        video, frames, k, n, planned, _ = shard.payload
        detector, pose = estimators(ctx.params, warn=False)
        # a range keeps all its tracks as they are: the join picks and joins fragments over the whole video
        params = ctx.params if n == 1 else replace(ctx.params, max_persons=0, merge_gap=0)
        try:
            kp, score, box, meta = extract_video(video.path, detector=detector, pose=pose, params=params, frames=frames)
        except VideoError as exc:
            _unchanged(video.path, planned)
            return {"errors": [{"sample_id": video.sample_id, "source": video.path, "message": exc.problem}]}
        _unchanged(video.path, planned)
        meta["sha256"] = planned  # what the poses were made from: `skel frames` decodes it again
        record = {"frames": meta["n_frames"], "timing": meta["timing"]}
        if n == 1 and not len(kp):
            return record | {"errors": [_nobody(video, meta["n_frames"])]}
        if n == 1:
            part = _shard_file(shard.id, n)
            write_part(ctx.out / part, [sample_table(video.sample_id, Skeleton(kp, score, box))])
            return record | {"samples": [_sample_row(video, meta, len(kp), part, 0)]}
        with atomic_path(ctx.out / _shard_file(shard.id, n)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keypoint=kp, score=score, box=box)
        return record | {"chunk": {"video": asdict(video), "k": k, "n": n, "meta": meta}}

    def finalize(self, ctx: Context, records: dict[str, dict]) -> dict:
        found = self._found(ctx.params)
        whole = {sid: r for sid, r in records.items() if "-" not in sid}
        ranged = {sid: r for sid, r in records.items() if "-" in sid}
        tables = whole | {LONG_PART: self._join_chunks(ctx, ranged), "duplicates": {"errors": found.errors}}
        summary = finalize_tables(ctx.out, tables, self.name, {"classes": found.classes})
        extracted = sum(r.get("frames", 0) for r in records.values() if not r.get("copied"))
        timing = {s: round(sum(r.get("timing", {}).get(s, 0.0) for r in records.values()), 3)
                  for s in ("decode", "detect", "pose")}  # fmt: skip
        busy = sum(timing.values())
        fragments: Counter = Counter()
        rows = [row for t in tables.values() for row in t.get("samples", [])]
        for row in rows:
            fragments.update(json.loads(row["extra"])["fragments"])
        return summary | {
            "frames": sum(row["n_frames"] for row in rows),  # of the samples: a failed video's pieces count none
            "seconds": timing,
            "frames_per_s": round(extracted / busy, 2) if busy else None,
            "copied": len({sid.partition("-")[0] for sid, r in records.items() if r.get("copied")}),  # videos
            "fragments": dict(fragments),
        }

    def _join_chunks(self, ctx: Context, records: dict[str, dict]) -> dict:
        """Join the frame-range shards of long videos into one sample each, in one part (driver)."""
        chunks: dict[str, dict[int, str]] = {}
        failed: dict[str, dict] = {}
        info: dict[str, dict] = {}
        for shard_id, rec in sorted(records.items()):
            if "chunk" in rec:
                video = rec["chunk"]["video"]
                chunks.setdefault(video["sample_id"], {})[rec["chunk"]["k"]] = shard_id
                info[video["sample_id"]] = rec["chunk"]
            else:  # an error in one range fails the whole video, reported once
                for err in rec.get("errors", []):
                    failed.setdefault(err["sample_id"], err)
        samples, tables = [], []
        part = part_name(LONG_PART)
        for sid in sorted(set(chunks) - set(failed)):
            parts = [np.load(ctx.out / CHUNKS / f"{chunks[sid][k]}.npz") for k in sorted(chunks[sid])]
            pieces = [(z["keypoint"], z["score"], z["box"]) for z in parts]
            meta = info[sid]["meta"]
            hw = (meta["img_h"], meta["img_w"])
            kp, score, box, fragments = merge_chunks(pieces, ctx.params.max_persons, hw, ctx.params.iou_threshold,
                                                     ctx.params.merge_gap)
            timed = any(records[shard]["chunk"]["meta"].get("timed") for shard in chunks[sid].values())
            meta = meta | {"n_frames": kp.shape[1], "fragments": fragments, "timed": timed}
            video = Video(**info[sid]["video"])
            if not len(kp):
                failed[sid] = _nobody(video, kp.shape[1])
                continue
            samples.append(_sample_row(video, meta, len(kp), part, len(tables)))
            tables.append(sample_table(sid, Skeleton(kp, score, box)))
        if tables:
            write_part(ctx.out / part, tables)
        return {"samples": samples, "errors": list(failed.values())}


def _shard_file(shard_id: str, n: int) -> str:
    """The file a shard writes: a whole video's part, or one frame range's arrays."""
    return part_name(shard_id) if n == 1 else f"{CHUNKS}/{shard_id}.npz"


def _models(p: ExtractStageParams) -> dict[str, str]:
    """sha256 of each model the extraction runs."""
    return {n: model_sha256(n, p.models) for n in (p.pose_model, *available_detectors(p.detector, p.models))}


def _work_key(common: dict, video: Video, content: str | None, frames: tuple, k: int, params: dict) -> str:
    """What a shard's work depends on: the stage's version and models, the parameters, the video's content and the
    frame range (its record keeps it, for ``_done_elsewhere``)."""
    return hashlib.sha256(canonical_json(
        common | {"params": params, "video": [video.sample_id, content], "range": [frames, k]}
    ).encode()).hexdigest()[:32]


def _done_elsewhere(out: Path) -> tuple[dict[str, tuple[Path, dict]], list[int]]:
    """Committed shard records of the workdir's other extract outputs, by the work they did (the first found), and
    the other --chunk-frames they ran with."""
    done: dict[str, tuple[Path, dict]] = {}
    sizes = {(found.manifest.get("params") or {}).get("chunk_frames") for o in out.parent.glob("*")
             if o != out and o.is_dir() and (found := load_output(o)) is not None}
    for path in sorted(out.parent.glob(f"*/{SHARDS}/*.json")):
        other = path.parent.parent
        if other == out:
            continue
        try:
            rec = read_record(path)
        except (CorruptFile, OSError):  # that output's own problem: its next run mends it
            continue
        if rec and "work" in rec:
            done.setdefault(rec["work"], (other, rec))
    return done, sorted(c for c in sizes if isinstance(c, int))


def _copied(ctx: Context, shard: Shard) -> dict | None:
    """The record of a shard whose work another output did (``shard.hint``), its file copied here under this
    shard's name, its label, split and video path this output's; None when there is none or its file does not match the
    digest its record holds (the shard is then extracted)."""
    if shard.hint is None:
        return None
    other, rec = shard.hint
    video, _, _, n, _, _ = shard.payload
    copied = {"frames": rec.get("frames", 0), "timing": {}, "copied": str(other.name)}
    if "errors" in rec:
        return copied | {"errors": [e | {"source": video.path} for e in rec["errors"]]}
    if len(rec.get("files", {})) != 1:
        return None
    ((rel, entry),) = rec["files"].items()
    try:
        data = (other / rel).read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return None
    name = _shard_file(shard.id, n)
    with atomic_path(ctx.out / name) as tmp:
        tmp.write_bytes(data)
    if n == 1:
        return copied | {"samples": [rec["samples"][0] | {"label": video.label, "split": video.split, "part": name,
                                                          "source": video.path}]}
    return copied | {"chunk": rec["chunk"] | {"video": asdict(video)}}


def _unchanged(path: str, planned: str | None) -> None:
    """The video holds the bytes the shard was planned for (they are in the fingerprint and the work key): one
    replaced or removed while it was decoded would leave poses, or an error row, of other bytes under them."""
    now = _content(path)
    if now is None and planned is not None:  # read when planned: gone since, or not seen by this Dask worker
        raise SkelError(f"{path}: cannot be read on {socket.gethostname()} (pid {os.getpid()}), though it was when "
                        "the run was planned: removed since, or not on a filesystem every worker shares")
    if now != planned:
        raise SkelError(f"{path}: changed while it was being extracted; run the command again")


def _content(path: str) -> str | None:
    """sha256 of a video's bytes; None when it cannot be read (its shard records the error, as for any bad video)."""
    try:
        return file_digest(Path(path))
    except OSError:
        return None
