"""`skel predict VIDEO`: a video -> people -> skeletons -> heatmap volumes -> top-k labels per window, for
the whole scene (default) or for each tracked person, with JSON rows, a Parquet table and an overlay MP4."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from apps.predict.model import Classifier
from apps.predict.overlay import draw_people
from apps.predict.windows import Window, classify, classify_people
from models.detector import PersonDetector
from models.pose import PoseEstimator
from pipeline.atomic import atomic_path
from pipeline.errors import SkelError, error_message
from pipeline.progress import stage_progress
from stages.extract.core import extract_video
from stages.extract.mp4 import Mp4Writer
from stages.extract.params import ExtractParams
from stages.extract.video import FrameSelection, VideoReader


def window_row(w: Window, classes: tuple[str, ...], top: int) -> dict:
    """One (track, window) result as plain data: frames, track id and box (None for the whole scene), top-k
    (empty when not labelled), status ("labelled" or "no_skeleton"), frames with a skeleton, and the note
    saying why a window is not labelled (None when it is)."""
    return {"start": w.start, "stop": w.stop, "track": w.track, "box": list(w.box) if w.box else None,
            "top": [{"label": classes[i], "score": s} for i, s in w.top(top)],
            "status": "labelled" if w.labelled else "no_skeleton", "posed": w.posed, "note": w.note() or None}


def warning(result: dict, clip_len: int) -> str | None:
    """One line about a video's windows that were not labelled, or about a video shorter than the model's clips
    (a still image, one frame: labelled as confidently as any, its one pose repeated); None when neither."""
    skipped = [w for w in result["windows"] if w["status"] != "labelled"]
    if not skipped:
        if result["frames"] < clip_len:
            return (f"{result['video']}: {result['frames']} frame(s), fewer than the {clip_len} of the model's clips: "
                    "its labels rest on those frames repeated")
        return None
    if len(result["windows"]) == 1:
        return f"{result['video']}: {skipped[0]['note']}"
    first = skipped[0]
    return (f"{result['video']}: {len(skipped)} of {len(result['windows'])} windows not labelled, e.g. frames "
            f"{first['start']}-{first['stop']}: {first['note']}")


def predict_video(
    video: str | os.PathLike, clf: Classifier, *, detector: PersonDetector, pose: PoseEstimator,
    params: ExtractParams, window: int | None = None, stride: int | None = None, per_person: bool = False,
    top: int = 5, overlay: Path | None = None, min_presence: float = 0.5,
    on_frame: Callable[[int, int], None] | None = None,
) -> dict:
    """Label one video: {video, frames, fps, per_person, windows: [window_row...], warning, overlay? or
    overlay_error?} (``warning``: why some windows are not labelled, or None; ``on_frame``: ``extract_video``'s)."""
    kp, score, box, meta = extract_video(video, detector=detector, pose=pose, params=params, on_frame=on_frame)
    img_shape = (meta["img_h"], meta["img_w"])
    if per_person:
        wins = classify_people(clf, kp, score, box, img_shape, window=window, stride=stride,
                               min_presence=min_presence)
    else:
        wins = classify(clf, kp, score, img_shape, window=window, stride=stride)
    result = {"video": str(video), "frames": meta["n_frames"], "fps": meta["fps"] or 0.0, "per_person": per_person,
              "windows": [window_row(w, clf.classes, top) for w in wins]}
    result["warning"] = warning(result, clf.spec.clip_len)
    if overlay is not None:
        try:
            result["overlay"] = str(write_overlay(video, overlay, kp, score, box, wins, clf.classes, meta["fps"]))
        except (SkelError, OSError) as exc:  # the labels stand: the overlay's failure goes beside them
            result["overlay_error"] = error_message(exc)
    return result


def overlay_paths(videos: list[Path], out: Path | None) -> list[Path | None]:
    """Where each video's overlay goes: ``out`` itself for one video and a ``.mp4`` path, else
    ``out/<video stem>.mp4``, numbered (``<stem>-1.mp4``, ``<stem>-2.mp4``) where stems repeat."""
    if out is None:
        return [None] * len(videos)
    if len(videos) == 1 and out.suffix.lower() == ".mp4":
        dests = [out]
    else:
        counts, seen, taken, dests = Counter(v.stem for v in videos), Counter(), set(), []
        for video in videos:
            seen[video.stem] += 1
            name = video.stem if counts[video.stem] == 1 else f"{video.stem}-{seen[video.stem]}"
            while name in taken:
                name += "_"
            taken.add(name)
            dests.append(out / f"{name}.mp4")
    return dests


def predict_videos(
    videos: list[Path], clf: Classifier, *, detector: PersonDetector, pose: PoseEstimator, params: ExtractParams,
    window: int | None = None, stride: int | None = None, per_person: bool = False, top: int = 5,
    overlays: list[Path | None] | None = None, on_result: Callable[[dict], None] | None = None,
) -> list[dict]:
    """``predict_video`` for each video, with its overlay from ``overlays`` (``overlay_paths``); a video that
    fails comes back as {video, error} and the rest go on. ``on_result`` gets each result as its video is done."""
    results = []
    with stage_progress(transient=True) as bar:
        for k, (video, dest) in enumerate(zip(videos, overlays or [None] * len(videos), strict=True)):
            task = bar.add_task(f"{video.name} ({k + 1} of {len(videos)}): frames", total=None)

            def on_frame(done: int, announced: int, task: int = task) -> None:
                bar.update(task, completed=done, total=announced or None)

            try:
                results.append(predict_video(video, clf, detector=detector, pose=pose, params=params, window=window,
                                             stride=stride, per_person=per_person, top=top, overlay=dest,
                                             on_frame=on_frame))
            except (SkelError, ValueError, OSError) as exc:
                message = error_message(exc)
                named = message if str(video) in message else f"{video}: {message}"
                results.append({"video": str(video), "error": named})
            bar.remove_task(task)
            if on_result is not None:
                on_result(results[-1])
    return results


def frame_labels(wins: list[Window], classes: tuple[str, ...], n_frames: int) -> list[dict[int | None, str]]:
    """Per frame, track (None: the scene) -> "label score" of the latest window that covers the frame."""
    labels: list[dict[int | None, str]] = [{} for _ in range(n_frames)]
    for w in wins:
        for t in range(w.start, w.stop):
            labels[t][w.track] = w.label(classes)
    return labels


def write_overlay(video: str | os.PathLike, out: Path, kp: np.ndarray, score: np.ndarray, box: np.ndarray,
                  wins: list[Window], classes: tuple[str, ...], fps: float | None) -> Path:
    """The video with skeletons, boxes and labels (each person's above their box, the scene's as a caption)."""
    labels = frame_labels(wins, classes, kp.shape[1])
    ids = list(range(kp.shape[0]))
    with Mp4Writer(out, fps) as writer:
        for t, (_, rgb) in enumerate(VideoReader(str(video), FrameSelection())):
            if t >= kp.shape[1]:
                break
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            draw_people(bgr, ids, kp[:, t], score[:, t], box[:, t], labels[t], labels[t].get(None, ""))
            writer.write(bgr)
    return out


def write_parquet(results: list[dict], out: Path, *, overwrite: bool = True) -> Path:
    """One row per (video, track, window): video, track (null: whole scene), start, stop, box, labels, scores
    (empty when not labelled), status ("labelled" or "no_skeleton") and posed (frames with a skeleton).
    ``overwrite`` off: a file made at ``out`` meanwhile is kept."""
    rows = [{"video": r["video"], "track": w["track"], "start": w["start"], "stop": w["stop"], "box": w["box"],
             "labels": [t["label"] for t in w["top"]], "scores": [t["score"] for t in w["top"]],
             "status": w["status"], "posed": w["posed"]}
            for r in results for w in r.get("windows", [])]  # fmt: skip
    schema = pa.schema([("video", pa.string()), ("track", pa.int32()), ("start", pa.int32()), ("stop", pa.int32()),
                        ("box", pa.list_(pa.float32(), 4)), ("labels", pa.list_(pa.string())),
                        ("scores", pa.list_(pa.float32())), ("status", pa.string()), ("posed", pa.int32())])
    with atomic_path(out, reclaim=True, overwrite=overwrite) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    return out
