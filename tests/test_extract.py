"""`extract`: ONNX pose adapters, video decoding, tracking and the two-stage pipeline on real clips.

Real models come from <shared>/models and real videos from <shared>/media (SKEL_SHARED, default ../shared);
both must exist. Videos are trimmed by reading only their first frames, to keep the tests short.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper

import pipeline.digests as digests
from models.detector import CenterNet, Fused, MoveNetMultiPose, available_detectors, box_iou, fuse_boxes, make_detector
from models.pose import HeatmapPose, MoveNetPose
from models.pose_onnx import ModelError, cuda_usable, model_path, session
from pipeline.cluster import Cluster
from pipeline.errors import SkelError
from pipeline.integrity import output_problems
from pipeline.records import committed
from pipeline.runner import make_plan, run_plan, run_stage
from pipeline.workdir import load_output
from stages.extract.core import extract_video
from stages.extract.params import ExtractParams
from stages.extract.preview import write_preview
from stages.extract.sources import Video, discover
from stages.extract.stage import ExtractStage, ExtractStageParams, _sample_row, estimators
from stages.extract.track import SHORT_TRACK, Tracker, box_from_keypoints, finish, join_fragments, merge_chunks
from stages.extract.video import FrameSelection, VideoError, VideoReader
from stores.coco import KP_FLIP
from stores.persons import keep_persons
from stores.triplets import TripletStore
from tests.support import REPO, SHARED, SKEL, as_terminal_job, ctrl_c_when, error_line, needs_shared, output_files, skel

MODELS = SHARED / "models"
NTU = SHARED / "media" / "mmaction2_ntu_S001C001P001R001A001_rgb.avi"
TWO_PEOPLE = SHARED / "media" / "mmaction2_demo_skeleton.mp4"
FAR_PEOPLE = SHARED / "media" / "opencv_vtest.avi"  # 4–8 pedestrians 60–140 px tall
LOW_RES_CLOSE_UP = SHARED / "media" / "stgcn_clean_and_jerk.mp4"  # 340×256: CenterNet misses the lifter
PERSON_BOXES = REPO / "tests" / "data" / "person_boxes.json"
NOSE, L_HIP, R_HIP, L_ANKLE, R_ANKLE = 0, 11, 12, 15, 16


@pytest.fixture(scope="module")
def shared() -> Path:
    needed = [MODELS / f"movenet-{m}.onnx" for m in ("thunder", "lightning", "multipose")] + [NTU, TWO_PEOPLE]
    needed += [MODELS / "mb3-centernet.onnx", FAR_PEOPLE, LOW_RES_CLOSE_UP]
    needs_shared(*needed)
    return SHARED


@pytest.fixture(scope="module")
def detector(shared) -> MoveNetMultiPose:
    return MoveNetMultiPose(MODELS, threads=1)


@pytest.fixture(scope="module")
def thunder(shared) -> MoveNetPose:
    return MoveNetPose(MODELS, name="movenet-thunder", threads=1)


def short_clip(path: Path, frames: int = 12, size: tuple[int, int] = (640, 360)) -> Path:
    """The first frames of the NTU sample, downscaled, as an MJPG AVI (a fast, real test video)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, size)
    for rgb in first_frames(NTU, frames):
        writer.write(cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), size, interpolation=cv2.INTER_AREA))
    writer.release()
    return path


def black_clip(path: Path, frames: int = 12) -> Path:
    """A readable video with nobody in it."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    for _ in range(frames):
        writer.write(np.zeros((240, 320, 3), np.uint8))
    writer.release()
    return path


def first_frames(path: Path, n: int) -> list[np.ndarray]:
    frames = []
    for _, rgb in VideoReader(str(path)):
        frames.append(rgb)
        if len(frames) == n:
            break
    return frames


def heatmap_model(path: Path, batch: int | str = "N", stride: int = 4, size: tuple[int, int] = (48, 64)) -> None:
    """A heatmap 'pose model' whose 17 heatmaps peak where the crop is brightest (max over channels)."""
    w, h = size
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], axes=[1], keepdims=1),
        helper.make_node("MaxPool", ["m"], ["p"], kernel_shape=[stride, stride], strides=[stride, stride]),
        helper.make_node("Tile", ["p", "reps"], ["y"]),
    ]
    reps = helper.make_tensor("reps", TensorProto.INT64, [4], [1, 17, 1, 1])
    graph = helper.make_graph(
        nodes, "peak",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 17, h // stride, w // stride])],
        initializer=[reps],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, path)


# --- models -------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", ["N", 1])
def test_heatmap_pose_finds_known_peak(tmp_path, batch):
    heatmap_model(tmp_path / "peak.onnx", batch=batch)
    pose = HeatmapPose(tmp_path, name="peak")
    assert pose.batched == (batch == "N")
    rgb = np.zeros((240, 320, 3), np.uint8)
    spots = [(100, 60), (250, 180)]
    for x, y in spots:
        rgb[y - 2 : y + 3, x - 2 : x + 3] = 255  # survives the resize into the crop
    boxes = np.array([[70, 20, 130, 110, 1.0], [220, 130, 290, 230, 1.0]], np.float32)
    out = pose(rgb, boxes)
    assert out.shape == (2, 17, 3) and out.dtype == np.float32
    for (x, y), kps, box in zip(spots, out, boxes, strict=True):
        cell = 4 * 1.25 * max((box[2] - box[0]) / 48, (box[3] - box[1]) / 64)  # image px per heatmap px
        assert np.all(np.abs(kps[:, 0] - x) <= cell) and np.all(np.abs(kps[:, 1] - y) <= cell)
        assert np.allclose(kps[:, 2], kps[0, 2]) and kps[0, 2] > 1.0  # normalised 255 ≈ 2.2


def test_model_errors(tmp_path, shared):
    with pytest.raises(ModelError, match="not found"):
        model_path("movenet-thunder", tmp_path)
    heatmap_model(tmp_path / "peak.onnx")
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  peak.onnx\n")
    with pytest.raises(ModelError, match="SHA256") as err:
        model_path("peak", tmp_path)
    assert str(tmp_path / "peak.onnx") in str(err.value) and isinstance(err.value, ValueError)
    (tmp_path / "SHA256SUMS").unlink()
    with pytest.raises(ModelError, match="unexpected input shape"):
        MoveNetPose(tmp_path, name="peak")
    (tmp_path / "junk.onnx").write_text("not a model")
    with pytest.raises(ModelError, match="cannot load"):
        MoveNetPose(tmp_path, name="junk")
    assert model_path("movenet-thunder", MODELS).name == "movenet-thunder.onnx"  # SHA256SUMS matches


def test_providers_are_explicit(shared):
    path = str(MODELS / "movenet-lightning.onnx")
    assert session(path, "cpu", 1).get_providers() == ["CPUExecutionProvider"]
    expected = "CUDAExecutionProvider" if cuda_usable() else "CPUExecutionProvider"
    assert session(path, "auto", 1).get_providers()[0] == expected
    assert session(path, "cpu", 1) is session(path, "cpu", 1)


# --- video and tracking ---------------------------------------------------------------------------


def test_frame_selection():
    def kept(selection: FrameSelection, n: int) -> list[int]:  # the first frame of each slot, by index at 30 fps
        return [i for i in range(n) if i == 0 or selection.slot(i, 30.0) != selection.slot(i - 1, 30.0)]

    assert kept(FrameSelection(stride=3), 10) == [0, 3, 6, 9]
    assert kept(FrameSelection(fps=10), 12) == [0, 3, 6, 9]
    assert len(kept(FrameSelection(fps=12), 300)) == 120
    assert kept(FrameSelection(fps=60), 5) == [0, 1, 2, 3, 4]
    assert FrameSelection(stride=2).out_fps(30.0) == 15.0 and FrameSelection(fps=10).out_fps(30.0) == 10


def bad_videos(tmp_path: Path) -> dict[str, Path]:
    """A truncated AVI, a text file named .mp4 and a valid zero-frame AVI."""
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(NTU.read_bytes()[:300_000])
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    empty = tmp_path / "empty.avi"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48)).release()
    return {"truncated": truncated, "text": text, "empty": empty}


def no_codec_video(path: Path) -> Path:
    """An MP4 whose video stream names no codec FFmpeg knows (fourcc and MPEG-4 object type overwritten): OpenCV
    logs its own "[ERROR:...] Could not find decoder" line for it."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    data = bytearray(path.read_bytes().replace(b"mp4v", b"zzzz"))
    data[data.index(b"\x20\x11", data.index(b"esds"))] = 0xFF  # objectTypeIndication 0x20: MPEG-4 Visual
    path.write_bytes(bytes(data))
    return path


def test_opencvs_own_log_lines_stay_under_verbose(tmp_path, shared):
    """A video without a known codec is skel's one error line; OpenCV's own lines about it only with --verbose."""
    video = no_codec_video(tmp_path / "nocodec.mp4")
    args = ("extract", video, "-w", tmp_path / "w", "--models", MODELS, "-j", "0", "-q")
    quiet = skel(*args, check=False).stderr
    assert "nocodec: not a readable video" in quiet and "cap_ffmpeg_impl" not in quiet, quiet
    assert "Could not find decoder" in skel(*args, "-v", check=False).stderr


def test_bad_videos_raise_clear_errors(tmp_path, shared):
    videos = bad_videos(tmp_path)
    expected = {"truncated": "truncated", "text": "not a readable video", "empty": "no frame"}
    for name, path in videos.items():
        with pytest.raises(VideoError, match=expected[name]) as err:
            list(VideoReader(str(path)))
        assert str(path) in str(err.value)


def test_a_video_whose_name_is_not_utf8_is_an_error_row_not_a_crash(tmp_path, shared):
    """OpenCV ends the process on a name that is not UTF-8 (Python gives it as a lone surrogate): extract died
    with a segfault, predict too. Such a video is its extraction's error row, the others extracted; given by name,
    it is one line."""
    bad = Path(os.fsdecode(bytes(tmp_path / "v" / "walk") + b"/caf\xe9.avi"))
    bad.parent.mkdir(parents=True)
    short_clip(tmp_path / "v" / "walk" / "good.avi", frames=3)
    shutil.copy(tmp_path / "v" / "walk" / "good.avi", bad)  # OpenCV cannot write it under that name either
    with pytest.raises(VideoError, match=re.escape("caf\\xe9.avi: its name is not valid UTF-8")):
        VideoReader(str(bad))
    w = tmp_path / "w"
    skel("extract", tmp_path / "v", "-w", w, "--models", MODELS, "--pose-model", "movenet-lightning", "-j", "0", "-q")
    store = TripletStore(next((w / "extract").iterdir()))
    assert store.ids() == ["walk/good"]
    [row] = store.errors.to_pylist()
    assert row["sample_id"] == "walk/caf\\xe9" and row["message"].startswith("its name is not valid UTF-8")
    for command in (("predict", bad, "--models", MODELS, "--pose-model", "movenet-lightning", "--run", w),
                    ("extract", bad, "-w", w)):
        proc = skel(*command, check=False)
        assert proc.returncode == 1 and "caf\\xe9.avi: its name is not valid UTF-8, which skel keeps names in (and " \
            "OpenCV crashes on): rename it" in error_line(proc)


def test_a_variable_rate_webm_is_whole_and_the_same_file_cut_is_not(tmp_path):
    """tests/data/vfr.webm: 40 frames of ffmpeg's testsrc, 20 at 30 fps then 20 at 10 fps (VP9). OpenCV announces 78
    (its duration times the nominal rate): it was refused as truncated. Cut at 60% of its bytes, it still is."""
    whole = REPO / "tests" / "data" / "vfr.webm"
    reader = VideoReader(str(whole))
    assert reader.announced > 60 and len(list(reader)) == 40
    (cut := tmp_path / "cut.webm").write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    with pytest.raises(VideoError, match="truncated or corrupt"):
        list(VideoReader(str(cut)))


# vfr.webm's frames 0-19 are 33 ms apart, 20-39 100 ms (VP9 keeps ms: 667, 767, 867, 933, 1067, ...): one frame of
# each 200 ms slot. By index at the nominal 30 fps, every sixth frame: 0.6 s apart after frame 18 where 0.2 s was asked.
VFR_5FPS = [0, 6, 12, 18, 22, 24, 26, 28, 30, 32, 34, 36, 38]


def test_fps_on_a_variable_rate_video_selects_by_the_frames_times():
    reader = VideoReader(str(REPO / "tests" / "data" / "vfr.webm"), FrameSelection(fps=5))
    assert [i for i, _ in reader] == VFR_5FPS and reader.timed
    by_index = VideoReader(str(REPO / "tests" / "data" / "vfr.webm"), FrameSelection(fps=5, times=False))
    assert [i for i, _ in by_index] == [0, 6, 12, 18, 24, 30, 36] and not by_index.timed
    ranged = VideoReader(str(REPO / "tests" / "data" / "vfr.webm"), FrameSelection(fps=5), start=20, stop=31)
    assert [i for i, _ in ranged] == [22, 24, 26, 28, 30]  # a long video's range: the frames the whole one keeps


def test_a_sample_selected_by_times_is_marked_for_skel_frames(detector, thunder):
    """extract_video says its selection went by times, and the sample's extra keeps it (`skel frames` reads it)."""
    meta = extract_video(REPO / "tests" / "data" / "vfr.webm", detector=detector, pose=thunder,
                         params=ExtractParams(fps=5))[3]
    assert meta["timed"] and meta["n_frames"] == len(VFR_5FPS)
    video = Video("vfr", str(REPO / "tests" / "data" / "vfr.webm"), None, None)
    assert json.loads(_sample_row(video, meta | {"sha256": "ab"}, 1, "part", 0)["extra"])["timed"] is True
    assert "timed" not in json.loads(_sample_row(video, meta | {"timed": False}, 1, "part", 0)["extra"])


def test_fps_on_a_constant_rate_video_keeps_the_index_selection(tmp_path: Path):
    """Its frames keep to the nominal grid: the selection is the index one extractions made before times counted."""
    video = short_clip(tmp_path / "cfr.avi", frames=40)
    for fps in (5, 7.3, 12):
        reader = VideoReader(str(video), FrameSelection(fps=fps))
        by_index = [i for i in range(40) if i == 0 or int(i * fps / 30) != int((i - 1) * fps / 30)]
        assert [i for i, _ in reader] == by_index and not reader.timed


# (video, selection, starts): B-frames and key frames at 0 / 250 (clean and jerk); a second H.264 stream; VP9 at two
# rates, selected by times (vfr.webm)
SEEKS = [
    (LOW_RES_CLOSE_UP, FrameSelection(), (17, 249, 250, 251, 290)),
    (LOW_RES_CLOSE_UP, FrameSelection(stride=3), (100, 250)),
    (LOW_RES_CLOSE_UP, FrameSelection(fps=7), (101, 251)),
    (SHARED / "media" / "mmaction2_test_video_structuralize.mp4", FrameSelection(), (30, 149, 299)),
    (REPO / "tests" / "data" / "vfr.webm", FrameSelection(), (5, 19, 20, 21, 39)),
    (REPO / "tests" / "data" / "vfr.webm", FrameSelection(fps=5), (17, 21, 25, 33)),
]


@pytest.mark.parametrize(("video", "selection", "starts"), SEEKS, ids=[f"{v.stem}-{i}" for i, (v, *_) in
                                                                       enumerate(SEEKS)])
def test_a_range_is_seeked_to_and_gives_the_frames_decoding_from_0_does(shared, video, selection, starts):
    """A long video's later ranges seek instead of decoding every frame before them: the same frames, pixel for
    pixel, with the same indices, and the same selection state (slots, times) at the range's start."""
    whole = list(VideoReader(str(video), selection))
    for start in starts:
        ranged = VideoReader(str(video), selection, start=start, stop=start + 12)
        got = list(ranged)
        want = [(i, rgb) for i, rgb in whole if start <= i < start + 12]
        assert [i for i, _ in got] == [i for i, _ in want], start
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, want, strict=True)), start
        assert 0 < ranged.seeked_to < start, start  # it seeked: the frames before it were not decoded


def _mp4(path: Path, n: int, gop: int) -> Path:
    """An MPEG-4 part 2 MP4 of moving noise, numbered frames, a key frame every `gop` (timescale 12800, 512 ticks a
    frame: 25 fps)."""
    base = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"mp4v"), 25, (160, 120),
                             [cv2.VIDEOWRITER_PROP_GOP_SIZE, gop])
    for k in range(n):
        frame = np.roll(base, 3 * k, axis=1).copy()
        cv2.putText(frame, str(k), (10, 60), 0, 1.5, (255, 255, 255), 3)
        writer.write(frame)
    writer.release()
    return path


def _with_box(path: Path, out: Path, name: bytes, payload: bytes) -> Path:
    """The MP4 with its box `name` (inside moov) replaced by one holding `payload`."""
    data = path.read_bytes()

    def rebuilt(off: int, end: int) -> bytes:
        body = b""
        while off < end:
            size, kind = struct.unpack(">I4s", data[off:off + 8])
            if kind in (b"moov", b"trak", b"edts", b"mdia", b"minf", b"stbl"):
                inner = rebuilt(off + 8, off + size)
                body += struct.pack(">I4s", 8 + len(inner), kind) + inner
            else:
                body += struct.pack(">I4s", 8 + len(payload), name) + payload if kind == name else data[off:off + size]
            off += size
        return body

    out.write_bytes(rebuilt(0, len(data)))
    return out


def test_a_range_of_an_mp4_whose_listing_may_not_name_its_frames_decodes_from_frame_0(tmp_path):
    """Two MP4s a hostile review built, where a seek landed on frames whose times matched but which were not the
    frames decoding from 0 gives: a sync-sample table renamed (every frame then reads as a key frame, and the seek
    decoded a P-frame without its references) and a variable-rate file cut by an edit list (its dropped frames are
    listed: from the rate change on, every index was one too high). Both decode from frame 0 now."""
    clean = _mp4(tmp_path / "gop100.mp4", 150, 100)
    data = bytearray(clean.read_bytes())
    data[data.index(b"stss")] = ord("t")
    (nostss := tmp_path / "nostss.mp4").write_bytes(bytes(data))
    deltas = [256] * 10 + [512] * 290  # 50 fps, then 25
    varied = _with_box(_mp4(tmp_path / "g300.mp4", 300, 100), tmp_path / "v300.mp4", b"stts",
                       struct.pack(">II", 0, len(deltas)) + b"".join(struct.pack(">II", 1, d) for d in deltas))
    cut = _with_box(varied, tmp_path / "cut.mp4", b"elst", struct.pack(">IIIiI", 0, 1, 11760, 2 * 256, 0x10000))
    for video, start in ((nostss, 60), (cut, 100), (cut, 290)):
        whole = [(i, rgb) for i, rgb in VideoReader(str(video)) if start <= i < start + 5]
        ranged = VideoReader(str(video), start=start, stop=start + 5)
        got = list(ranged)
        assert ranged.seeked_to == 0 and [i for i, _ in got] == [i for i, _ in whole], (video.name, start)
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, whole, strict=True)), (video.name, start)


@pytest.mark.parametrize(("video", "start"), [(FAR_PEOPLE, 500), (TWO_PEOPLE, 50)], ids=["avi", "uneven-mp4"])
def test_a_range_of_an_avi_or_an_unevenly_timed_mp4_decodes_from_frame_0(shared, video, start):
    """AVI's index gives frames no times of their own; demo_skeleton's frames are 33 ms apart but for a gap of 200
    (28.05 fps announced), which in an MP4 may be an edit list's doing: no seek, the frames as before."""
    whole = [(i, rgb) for i, rgb in VideoReader(str(video)) if start <= i < start + 10]
    ranged = VideoReader(str(video), start=start, stop=start + 10)
    got = list(ranged)
    assert ranged.seeked_to == 0 and [i for i, _ in got] == list(range(start, start + 10))
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, whole, strict=True))


@pytest.mark.slow
def test_chunked_extraction_of_an_mp4_is_the_same_seeked_or_decoded_from_0(tmp_path, shared, monkeypatch):
    """The stage over a video split into ranges: what it stores does not depend on how a range was reached."""
    clip = tmp_path / "v" / "clip.mp4"
    clip.parent.mkdir()
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30, (640, 360))
    for rgb in first_frames(NTU, 30):
        writer.write(cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (640, 360), interpolation=cv2.INTER_AREA))
    writer.release()
    seeks = []
    catch_up = VideoReader._catch_up
    monkeypatch.setattr(VideoReader, "_catch_up", lambda self, *a: seeks.append(self.start) or catch_up(self, *a))
    params = extract_params(clip.parent, chunk_frames=10)
    seeked = run_stage(ExtractStage(), tmp_path / "a", params, Cluster(workers=0), quiet=True)
    assert sorted(set(seeks)) == [10, 20]
    monkeypatch.setattr("stages.extract.video._timed_container", lambda path: False)
    decoded = run_stage(ExtractStage(), tmp_path / "b", params, Cluster(workers=0), quiet=True)
    a, b = TripletStore(seeked).read("clip"), TripletStore(decoded).read("clip")
    assert a.keypoint.shape[1] == 30
    for x, y in ((a.keypoint, b.keypoint), (a.score, b.score), (a.box, b.box)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("change", ["replaced", "removed"])
def test_a_video_changed_while_it_is_extracted_fails_its_shard(tmp_path: Path, change: str) -> None:
    """The shard's poses (or error row) would belong to other bytes than the fingerprint's: the shard fails, not
    committed, so no cache hit keeps them (its sample's digest named the new bytes, and `skel frames` took them)."""
    root = tmp_path / "videos"
    root.mkdir()
    video = short_clip(root / "a.avi", frames=6)
    ctx = make_plan(ExtractStage(), tmp_path / "w", extract_params(root)).context(tmp_path / "w")
    (shard,) = ExtractStage().shards(ctx)
    short_clip(video, frames=8) if change == "replaced" else video.unlink()
    said = ("changed while it was being extracted; run the command again" if change == "replaced" else
            r"cannot be read on .* \(pid \d+\), though it was when the run was planned: removed since, or not on a "
            "filesystem every worker shares")  # a Dask worker that cannot see it said 'changed'
    with pytest.raises(SkelError, match=f"a.avi: {said}"):
        ExtractStage().run_shard(ctx, shard)


@pytest.mark.slow
def test_ctrl_c_on_a_local_cluster_is_one_line_and_the_same_command_resumes(tmp_path, shared):
    """A terminal's Ctrl-C signals the whole process group, Dask's worker processes too: they ignore it (the driver
    closes the cluster), so the run says its one line, with no worker's traceback, and resumes to the end."""
    (tmp_path / "videos").mkdir()
    for i in range(8):
        short_clip(tmp_path / "videos" / f"clip{i}.avi", frames=24)
    w = tmp_path / "w"
    args = [*SKEL, "extract", tmp_path / "videos", "-w", w, "--models", MODELS, "--pose-model", "movenet-lightning",
            "-j", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = as_terminal_job(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = ctrl_c_when(run, lambda: bool(list(w.glob("extract/*/_shards/*.json"))))  # after the first committed shard
    assert run.returncode == 130 and "interrupted: the same command resumes" in err and "Traceback" not in err, err
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "resuming, " in again.stderr, again.stderr
    (out,) = w.glob("extract/*")
    assert load_output(out).complete and load_output(out).manifest["summary"]["samples"] == 8


def test_tracker_keeps_identity_and_ranks():
    tracker = Tracker()
    kps = np.ones((2, 17, 3), np.float32)
    a, b = [10, 10, 50, 100, 0.9], [200, 10, 240, 100, 0.5]
    assert tracker.update(0, np.array([a, b], np.float32), kps) == [0, 1]
    moved = [[205, 12, 245, 102, 0.5], [12, 10, 52, 100, 0.9]]  # listed in the other order
    assert tracker.update(1, np.array(moved, np.float32), kps) == [1, 0]
    kp, score, box, _ = tracker.result(3, max_persons=1, frame_hw=(120, 250))
    assert kp.shape == (1, 3, 17, 2) and box[0, 1, 0] == 12 and score[0, 2].sum() == 0
    assert tracker.result(3, max_persons=0, frame_hw=(120, 250))[0].shape == (2, 3, 17, 2)  # 0 = all tracks
    assert box_iou(np.array([a]), np.array([a]))[0, 0] == pytest.approx(1.0)
    assert box_from_keypoints(np.zeros((17, 3), np.float32)) is None


def test_merge_chunks_follows_people_across_ranges():
    def chunk(boxes: list[list[float]], t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        box = np.repeat(np.array(boxes, np.float32)[:, None], t, axis=1)
        kp = np.repeat(box[:, :, None, :2], 17, axis=2)
        return kp, np.ones(box.shape[:2] + (17,), np.float32), box

    left, right, far = [10, 10, 50, 100, 0.9], [200, 10, 240, 100, 0.8], [400, 10, 420, 40, 0.3]
    kp, score, box, stats = merge_chunks([chunk([left, right], 3), chunk([right, far, left], 2)], 2, (120, 250))
    assert stats["tracks_before_merge"] == stats["tracks"] == 3  # left, right and far, joined at the boundary
    assert kp.shape == (2, 5, 17, 2) and score.shape == (2, 5, 17)
    np.testing.assert_array_equal(box[0, :, 0], [10] * 5)  # the left person stays person 0
    np.testing.assert_array_equal(box[1, :, 0], [200] * 5)


def fragments(t: int, *tracks: tuple[int, int, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints, scores and boxes of tracks (first frame, last frame, x0), each a 40 × 100 box at x0."""
    box = np.zeros((len(tracks), t, 5), np.float32)
    for m, (first, last, x0) in enumerate(tracks):
        box[m, first : last + 1] = [x0, 10, x0 + 40, 110, 0.9]
    kp = np.repeat(box[:, :, None, :2], 17, axis=2)
    return kp, np.repeat(box[:, :, 4:], 17, axis=2), box


def test_join_fragments_joins_a_short_gap_near_where_the_track_ended():
    _, _, box = fragments(30, (0, 9, 100), (16, 29, 110))  # lost for 6 frames, back 10 px further
    assert join_fragments(box, 30) == [[0, 1]]
    assert join_fragments(box, 6) == [[0, 1]] and join_fragments(box, 5) == [[0], [1]]  # 6 frames unseen
    _, _, far = fragments(30, (0, 9, 100), (16, 29, 400))  # back 3 box heights away: someone else
    assert join_fragments(far, 30) == [[0], [1]]
    _, _, overlap = fragments(30, (0, 9, 100), (8, 29, 100))  # both seen in frames 8 and 9: two people
    assert join_fragments(overlap, 30) == [[0], [1]]


def test_join_fragments_chains_and_takes_the_nearest():
    _, _, box = fragments(40, (0, 9, 100), (14, 19, 115), (25, 39, 130))
    assert join_fragments(box, 30) == [[0, 1, 2]]
    _, _, box = fragments(20, (0, 9, 150), (0, 9, 100), (12, 19, 105))  # two candidates: the nearer continues
    assert join_fragments(box, 30) == [[0], [1, 2]]


def test_finish_fills_the_joined_person_and_counts_fragments():
    kp, score, box = fragments(40, (0, 9, 100), (14, 19, 115), (25, 39, 130), (0, 39, 400))
    kp2, score2, box2, stats = finish((kp, score, box), 0, (480, 640), merge_gap=30)
    assert stats == {"tracks_before_merge": 4, "tracks": 2, "short_tracks": 0}
    assert kp2.shape == (2, 40, 17, 2) and score2.shape == (2, 40, 17)
    joined = next(m for m in range(2) if box2[m, 0, 0] == 100)
    np.testing.assert_array_equal(box2[joined, :, 4] > 0, box[:3, :, 4].sum(axis=0) > 0)
    np.testing.assert_array_equal(kp2[joined], kp[:3].sum(axis=0))
    _, _, unjoined, stats = finish((kp, score, box), 0, (480, 640), merge_gap=0)
    assert len(unjoined) == 4 and stats == {"tracks_before_merge": 4, "tracks": 4, "short_tracks": 1}
    assert SHORT_TRACK == 10  # the 6-frame middle fragment is the short one
    assert finish((kp, score, box), 1, (480, 640), merge_gap=30)[2].shape[0] == 1  # then max_persons


def annotated(video: Path, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """The RGB frame and its hand-checked person boxes [N, 4] from tests/data/person_boxes.json."""
    entry = next(f for f in json.loads(PERSON_BOXES.read_text())["frames"] if (f["video"], f["frame"]) ==
                 (video.name, frame))  # fmt: skip
    for i, rgb in VideoReader(str(video)):
        if i == frame:
            return rgb, np.array(entry["boxes"], np.float32)
    raise AssertionError(f"{video} has no frame {frame}")


def test_centernet_finds_far_people_where_they_are(shared):
    rgb, truth = annotated(FAR_PEOPLE, 200)  # 7 walkers 47–107 px tall
    boxes = CenterNet(MODELS)(rgb)
    assert boxes.dtype == np.float32 and boxes.shape[1] == 5 and np.all(boxes[:, 4] >= 0.3)
    best = box_iou(truth, boxes).max(axis=1)
    assert (best >= 0.5).sum() >= 6 and len(boxes) <= len(truth) + 2  # found where they are, few extras
    assert MoveNetMultiPose(MODELS)(rgb).shape[0] <= 1  # the close-range detector alone misses them


def test_fuse_boxes_keeps_one_box_per_person():
    a = np.array([[10, 10, 50, 100, 0.6], [200, 10, 240, 100, 0.5]], np.float32)
    b = np.array([[12, 8, 52, 104, 0.7], [400, 10, 420, 40, 0.3]], np.float32)  # the first is a's first person
    fused = fuse_boxes([a, b])
    np.testing.assert_allclose(fused[:, 4], [0.7, 0.5, 0.3])  # by score; of the pair, the better box
    assert fuse_boxes([np.zeros((0, 5), np.float32)] * 2).shape == (0, 5)


def test_missing_centernet_degrades_to_multipose(tmp_path, shared, caplog):
    (tmp_path / "movenet-multipose.onnx").symlink_to(MODELS / "movenet-multipose.onnx")
    with caplog.at_level("WARNING", logger="skel"):
        detector = make_detector("mb3-centernet+movenet-multipose", tmp_path)
    assert isinstance(detector, MoveNetMultiPose)
    assert "mb3-centernet.onnx: not found" in caplog.text and "small, distant people" in caplog.text
    assert available_detectors("mb3-centernet+movenet-multipose", str(MODELS)) == ("mb3-centernet",
                                                                                    "movenet-multipose")  # fmt: skip
    with pytest.raises(ModelError, match="not found"):
        make_detector("mb3-centernet", tmp_path)  # asked for alone: an error, not a silent fallback
    with pytest.raises(ModelError, match="unknown detector 'yolo'"):
        make_detector("yolo+movenet-multipose", tmp_path)
    # the CLI says it once, though a Dask worker process builds the detector too
    (tmp_path / "movenet-thunder.onnx").symlink_to(MODELS / "movenet-thunder.onnx")
    video = SHARED / "media" / "opencv_vtest.avi"
    proc = skel("extract", video, "-w", tmp_path / "w", "--models", tmp_path, "-j", "1", "--max-frames", "2")
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).count("not found, so people are detected") == 1, proc.stderr


def test_keep_persons_prefers_present_large_central_tracks():
    t, hw = 10, (480, 640)
    box = np.zeros((3, t, 5), np.float32)
    box[0, :, :] = [270, 140, 370, 400, 0.5]  # the actor: central, large, the whole clip
    box[1, :3, :] = [250, 100, 390, 460, 0.9]  # larger and surer, but only 3 frames
    box[2, :, :] = [0, 200, 40, 280, 0.9]  # a small passer-by at the edge
    kp, score = np.zeros((3, t, 17, 2), np.float32), np.zeros((3, t, 17), np.float32)
    kept = keep_persons(kp, score, box, 2, hw)[2]
    np.testing.assert_array_equal(kept[:, 0, 0], [270, 250])
    assert keep_persons(kp, score, box, 0, hw)[2].shape[0] == 3


# --- the two-stage pipeline on real video ----------------------------------------------------------


def test_single_person_video(detector, thunder):
    params = ExtractParams(max_frames=15, detect_every=5)
    kp, score, box, meta = extract_video(NTU, detector=detector, pose=thunder, params=params)
    assert meta["n_frames"] == 15 and (meta["img_h"], meta["img_w"]) == (1080, 1920) and meta["fps"] == 30
    assert kp.shape[1:] == (15, 17, 2) and kp.dtype == score.dtype == box.dtype == np.float32
    present = score[0].mean(axis=1) > 0.3
    assert present.mean() >= 0.8 and (kp.shape[0] == 1 or score[1].mean() < score[0].mean())
    y = kp[0, present, :, 1]
    hips, ankles = y[:, [L_HIP, R_HIP]].mean(axis=1), y[:, [L_ANKLE, R_ANKLE]].mean(axis=1)
    assert np.all(y[:, NOSE] < hips) and np.all(hips < ankles)
    assert np.all(box[0, present, 0] < kp[0, present, NOSE, 0]) and set(meta["timing"]) == {
        "decode", "detect", "pose"}  # fmt: skip
    again = extract_video(NTU, detector=detector, pose=thunder, params=params)
    for first, second in zip((kp, score, box), again[:3], strict=True):
        np.testing.assert_array_equal(first, second)


def test_mirrored_frames_swap_left_and_right(detector, thunder):
    for rgb in first_frames(NTU, 3):
        w = rgb.shape[1]
        boxes = detector(rgb)[:1]
        mirror_boxes = boxes.copy()
        mirror_boxes[:, [0, 2]] = w - 1 - boxes[:, [2, 0]]
        np.testing.assert_allclose(detector(np.ascontiguousarray(rgb[:, ::-1]))[:1, :4], mirror_boxes[:, :4], atol=8)
        kps = thunder(rgb, boxes)[0]
        mirrored = thunder(np.ascontiguousarray(rgb[:, ::-1]), mirror_boxes)[0][KP_FLIP]
        good = (kps[:, 2] > 0.4) & (mirrored[:, 2] > 0.4)
        assert good.sum() >= 10
        dx = np.abs(mirrored[good, 0] - (w - 1 - kps[good, 0]))
        dy = np.abs(mirrored[good, 1] - kps[good, 1])
        assert np.median(dx) < 4 and np.median(dy) < 4 and dx.max() < 12 and dy.max() < 12
        left_shoulder, right_shoulder = kps[5, 0], kps[6, 0]
        assert left_shoulder > right_shoulder  # frontal view: the person's left is on the image right


def test_two_people_keep_their_ids(detector, thunder):
    params = ExtractParams(max_frames=15, detect_every=5)
    kp, score, box, _ = extract_video(TWO_PEOPLE, detector=detector, pose=thunder, params=params)
    assert kp.shape[:2] == (2, 15) and np.all(score.mean(axis=2) > 0.3)
    centre = (box[:, :, 0] + box[:, :, 2]) / 2
    assert np.all(np.sign(centre[0] - centre[1]) == np.sign(centre[0, 0] - centre[1, 0]))  # never swap
    assert np.abs(np.diff(centre, axis=1)).max() < 60  # no jumps between the two people


class Blinking:
    """A real detector that sees nothing on the given calls (as when motion blur hides everyone)."""

    def __init__(self, detector: MoveNetMultiPose, blind: set[int]):
        self.detector, self.blind, self.calls = detector, blind, 0

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.zeros((0, 5), np.float32) if self.calls - 1 in self.blind else self.detector(rgb)


def test_people_the_detector_misses_are_followed_for_max_age_frames(detector, thunder):
    params = ExtractParams(max_frames=6, detect_every=1, max_age=2)
    box = extract_video(NTU, detector=Blinking(detector, {1, 2, 3, 4, 5}), pose=thunder, params=params)[2]
    assert box.shape[0] == 1
    np.testing.assert_array_equal(box[0, :, 4] > 0, [True, True, True, False, False, False])
    box = extract_video(NTU, detector=Blinking(detector, {2, 3}), pose=thunder, params=params)[2]
    assert box.shape[0] == 1 and np.all(box[0, :, 4] > 0)  # one person throughout, no new track after the gap


def test_fused_default_on_close_up_and_far_people(shared):
    detector, pose = estimators(ExtractStageParams(models=str(MODELS), device="cpu"))
    params = ExtractParams(max_frames=6, max_persons=0)
    kp, score, box, _ = extract_video(LOW_RES_CLOSE_UP, detector=detector, pose=pose, params=params)
    _, truth = annotated(LOW_RES_CLOSE_UP, 0)
    assert box.shape[0] >= 1 and np.all(box[0, :, 4] > 0)  # the lifter in every frame (CenterNet alone: none)
    assert box_iou(box[0, :1], truth)[0, 0] >= 0.5
    kp, score, box, _ = extract_video(FAR_PEOPLE, detector=detector, pose=pose, params=params)
    _, truth = annotated(FAR_PEOPLE, 0)  # 3 walkers
    found = box_iou(truth, box[:, 0]).max(axis=1)
    assert np.all(found >= 0.5) and box.shape[0] <= 4  # MultiPose alone (before): nobody
    assert np.all((box[..., 4] > 0).sum(axis=0) >= 3)  # all three followed in every frame
    two = extract_video(FAR_PEOPLE, detector=detector, pose=pose, params=ExtractParams(max_frames=6, max_persons=2))[2]
    np.testing.assert_array_equal(two, box[:2])  # max_persons keeps the most salient tracks, in order


# --- the stage: shards, tables, errors -------------------------------------------------------------


def extract_params(*sources: Path, **kw) -> ExtractStageParams:
    return ExtractStageParams(sources=tuple(map(str, sources)), models=str(MODELS), device="cpu", **kw)


def test_hidden_files_are_passed_over_and_a_dangling_link_is_an_error_row(tmp_path):
    """A collection copied from macOS holds a ._<name> companion beside each video: they were error rows that failed
    the run; a link to a missing video was dropped without a word."""
    (walk := tmp_path / "walk").mkdir()
    (walk / "a.mp4").write_bytes(b"video")
    (walk / "._a.mp4").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    (tmp_path / ".Trashes").mkdir()
    (tmp_path / ".Trashes" / "b.mp4").write_bytes(b"video")
    (walk / "c.mp4").symlink_to(tmp_path / "gone.mp4")
    found = discover((str(tmp_path),))
    assert [(v.sample_id, v.label) for v in found.videos] == [("walk/a", 0)] and found.classes == ["walk"]
    assert [(e["sample_id"], e["message"]) for e in found.errors] == [
        ("walk/c", f"a link to {tmp_path / 'gone.mp4'}, which is missing")]
    assert [n for n in found.notes if n.startswith("2 hidden file(s) passed over")]


def test_phone_and_camcorder_videos_in_a_folder_are_found_and_other_files_named(tmp_path):
    """A folder's .3gp (phones) and .MTS / .m2ts (camcorders) videos were passed over without a word, though named one
    by one they extract: a class could vanish with "0 skipped". Files that are not videos by their extension are
    named in one note (not the labels CSV it was given)."""
    for rel in ("jump/a.mp4", "run/b.3gp", "run/c.MTS", "sit/d.m2ts", "sit/thumbs.jpg", "notes.txt", "labels.csv"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = discover((str(tmp_path),))
    assert [(v.sample_id, v.label) for v in found.videos] == [("jump/a", 0), ("run/b", 1), ("run/c", 1), ("sit/d", 2)]
    assert [n for n in found.notes if n.startswith("3 file(s) passed over, not videos by their extension (e.g. ")]
    (tmp_path / "labels.csv").write_text("video,label\na,jump\nb,run\nc,run\nd,sit\n")
    found = discover((str(tmp_path),), str(tmp_path / "labels.csv"))
    assert [n for n in found.notes if n.startswith("2 file(s) passed over")], found.notes


def test_a_labels_csv_matches_names_in_another_unicode_normalization(tmp_path):
    """macOS tools write NFD (e + a combining accent), most others NFC (é): the same name either way."""
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "caf\u00e9 jump.mp4").write_bytes(b"video")
    (csv := tmp_path / "labels.csv").write_text("video,label\ncafe\u0301 jump.mp4,jump\n", encoding="utf-8")
    found = discover((str(tmp_path / "v"),), str(csv))
    assert [(v.sample_id, v.label) for v in found.videos] == [("caf\u00e9 jump", 0)] and found.notes == []

    # two files whose names differ only in form: a row naming one exactly is that one (NFC made both fit it)
    (tmp_path / "v" / "cafe\u0301 jump.mp4").write_bytes(b"video")
    csv.write_text("video,label\ncafe\u0301 jump.mp4,jump\ncaf\u00e9 jump.mp4,run\n", encoding="utf-8")
    found = discover((str(tmp_path / "v"),), str(csv))
    assert [(v.sample_id, found.classes[v.label]) for v in found.videos] == [
        ("cafe\u0301 jump", "jump"), ("caf\u00e9 jump", "run")]


def test_class_names_in_another_unicode_form_are_one_class(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    for name in ("a", "b"):
        (tmp_path / "v" / f"{name}.mp4").write_bytes(b"video")
    (csv := tmp_path / "labels.csv").write_text("a,caf\u00e9\nb,cafe\u0301\n", encoding="utf-8")
    found = discover((str(tmp_path / "v"),), str(csv))
    assert found.classes == ["caf\u00e9"] and [v.label for v in found.videos] == [0, 0]


def test_class_names_that_differ_only_in_case_and_the_splits_are_said(tmp_path: Path, caplog) -> None:
    """A CSV with jump and Jump made two classes, and a split typo (tset) a split of its own, without a word."""
    (tmp_path / "v").mkdir()
    for name in ("a", "b", "c"):
        short_clip(tmp_path / "v" / f"{name}.avi", frames=2)
    (csv := tmp_path / "labels.csv").write_text("a,jump,train\nb,Jump,train\nc,jump,tset\n")
    params = extract_params(tmp_path / "v", labels=str(csv))
    found = discover(params.sources, params.labels)
    assert found.notes == ["class names that differ only in case are separate classes: Jump, jump"]
    with caplog.at_level("INFO", logger="skel"):
        ExtractStage().shards(make_plan(ExtractStage(), tmp_path / "w", params).context(tmp_path / "w"))
    assert "3 labelled; classes: Jump, jump; splits: train 2, tset 1" in caplog.text


def test_discover_labels_from_folders_csv_and_globs(tmp_path):
    for rel in ("walk/a.mp4", "walk/b.avi", "run/a.mp4", "run/notes.txt"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = discover((str(tmp_path),))
    assert [(v.sample_id, v.label) for v in found.videos] == [("run/a", 0), ("walk/a", 1), ("walk/b", 1)]
    assert found.classes == ["run", "walk"] and found.errors == [] and found.notes == [
        f"1 file(s) passed over, not videos by their extension (e.g. {tmp_path / 'run' / 'notes.txt'}): name one as an "
        "input to extract it"]
    (tmp_path / "labels.csv").write_text("video,label,split\nwalk/a,3,train\nb.avi,5,test\n")
    found = discover((str(tmp_path / "walk" / "*.*"),), str(tmp_path / "labels.csv"))
    assert [(v.sample_id, v.label, v.split) for v in found.videos] == [("a", 3, "train"), ("b", 5, "test")]
    assert found.classes is None
    found = discover((str(tmp_path / "walk"), str(tmp_path / "run")))
    assert [e["sample_id"] for e in found.errors] == ["a"]  # walk/a.mp4 and run/a.mp4 both give "a"
    assert f"(kept: {tmp_path / 'walk' / 'a.mp4'})" in found.errors[0]["message"]
    assert [v.label for v in found.videos] == [None, None]  # class folders one by one
    assert [n[:30] for n in found.notes] == ["1 file(s) passed over, not vid"]  # notes.txt
    (tmp_path / "loose.mp4").write_bytes(b"")  # beside the class folders: the user is told how to label it
    assert discover((str(tmp_path),)).notes[:1] == [  # then: labels.csv and notes.txt passed over
        f"1 of 4 videos are not in a class folder (<input>/<class>/<video>, e.g. {tmp_path / 'loose.mp4'}): extracted "
        "unlabelled; give the folder above the class folders, or --labels CSV"]


LABELS = {  # a labels CSV for walk/a.mp4, walk/b.avi, run/a.mp4 -> the error, or (labels, classes, notes)
    "a bare name that fits two videos": ("a.mp4,walk\n", r"labels.csv:1: a.mp4 names 2 videos \(run/a, walk/a\)"),
    "a video named twice": ("walk/a,walk\nwalk/a.mp4,run\n", r"lines 1 and 2 both name .*walk/a.mp4"),
    "a row listed again": ("video,label\nb,walk\nb,run\n", r"labels.csv:3: b is listed again \(first on line 2\)"),
    "a blank label": ("walk/a,0\nwalk/b,1\nrun/a,\n", r"labels.csv:3: no label for run/a"),
    "integers and names": ("walk/a,0\nwalk/b,walk\n",
                           r"labels.csv:2: labels mix integers and class names \('walk' here, '0' on line 1\)"),
    "a negative label": ("walk/a,0\nwalk/b,-1\n", r"labels.csv:2: label -1 is not a class index \(0 to 2147483647\)"),
    "a label past int32": ("walk/a,2147483648\n", r"labels.csv:1: label 2147483648 is not a class index"),
    "a quote never closed": ('walk/a,"clean and jerk\nwalk/b,walk\nrun/a,run\n',
                             r"labels.csv:1: a cell spans several lines \(a quote that is never closed\?\)"),
    "a quote never closed in a long file": ('walk/a,"clean and jerk\n' + "walk/b,walk\n" * 12_000,
                                            r"labels.csv:1: field larger than field limit .* never closed"),
    "a NUL byte in a label": ("walk/a,wa\x00lk\n", r"labels.csv:1: a cell holds the control character '\\x00'"),
    "a header without video": ("clip,label\nwalk/a,walk\n", r"labels.csv:1: a header names the columns video, label"),
    "other columns, Windows paths, ./": ("video,label,split,notes,\r\n./walk/a.mp4,walk,,fine,\r\nrun\\a,run,,,\r\n",
                                        ([("run/a", 0, None), ("walk/a", 1, None), ("walk/b", None, None)],
                                         ["run", "walk"],
                                         ["1 of 3 videos have no row in {csv} (e.g. walk/b): extracted unlabelled"])),
    "rows naming no video": ("video,label\nnothere,run\n", r"labels.csv names none of the 3 videos \(line 2: nothere"),
    "columns in another order, an Excel BOM": (
        "\ufefflabel,video,split\nwalk,walk/a,train\nrun,run/a.mp4,test\nrun,gone.mp4,test\n",
        ([("run/a", 0, "test"), ("walk/a", 1, "train"), ("walk/b", None, None)], ["run", "walk"],
         ["{csv}: 1 row(s) name no video found (line 4: gone.mp4)",
          "1 of 3 videos have no row in {csv} (e.g. walk/b): extracted unlabelled"])),
}


@pytest.mark.parametrize("case", LABELS)
def test_a_labels_csv_labels_no_video_by_a_guess(tmp_path, case):
    """Each of these gave labels without a word before: a bare name labelled every video of that name, the last
    of two rows won, a blank label renumbered the file, a reordered header labelled nothing."""
    for rel in ("walk/a.mp4", "walk/b.avi", "run/a.mp4"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    text, want = LABELS[case]
    csv = tmp_path / "labels.csv"
    csv.write_text(text, encoding="utf-8")
    if isinstance(want, str):
        with pytest.raises(SkelError, match=want):
            discover((str(tmp_path),), str(csv))
        return
    found = discover((str(tmp_path),), str(csv))
    labels, classes, notes = want
    assert [(v.sample_id, v.label, v.split) for v in found.videos] == labels and found.classes == classes
    assert [n.replace(str(csv), "{csv}") for n in found.notes] == notes


def test_paths_with_glob_characters_and_linked_class_folders_are_found(tmp_path):
    """A file or folder that exists is taken as named though its name holds [ ] (``title [id].mp4``, as downloaders
    name videos: taken as a pattern, 3 files gave 1 video, or another file); a pattern matching nothing is an error;
    a class folder linked in is searched, and a link to a folder above is no loop."""
    for rel in ("yt/Clean and jerk [dQw4w9WgXcQ].mp4", "yt/clip1.mp4", "yt/clip[1].mp4", "data [2024]/walk/w.mp4",
                "elsewhere/run/r.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    named = [str(tmp_path / "yt" / n) for n in ("Clean and jerk [dQw4w9WgXcQ].mp4", "clip[1].mp4")]
    assert [v.path for v in discover(tuple(named)).videos] == named
    assert [v.sample_id for v in discover((str(tmp_path / "data [2024]"),)).videos] == ["walk/w"]
    assert [v.sample_id for v in discover((str(tmp_path / "yt" / "clip?.mp4"),)).videos] == ["clip1"]  # a pattern
    with pytest.raises(SkelError, match=r"nothing\*.mp4: no file matches this pattern"):
        discover((str(tmp_path / "yt" / "nothing*.mp4"),))
    (tmp_path / "data [2024]" / "run").symlink_to(tmp_path / "elsewhere" / "run")
    (tmp_path / "data [2024]" / "walk" / "up").symlink_to(tmp_path / "data [2024]")
    found = discover((str(tmp_path / "data [2024]"),))
    assert [(v.sample_id, v.label) for v in found.videos] == [("run/r", 0), ("walk/w", 1)]
    assert found.classes == ["run", "walk"]


def test_a_video_reached_twice_is_extracted_once(tmp_path):
    """A folder and a file inside it (or a link to a video beside it) gave the file twice, under two sample ids: the
    same video extracted twice and counted twice. The first id is kept, and the user is told."""
    for rel in ("walk/a.mp4", "walk/b.mp4", "run/c.mp4"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = discover((str(tmp_path / "walk" / "a.mp4"), str(tmp_path)))
    assert [v.sample_id for v in found.videos] == ["a", "run/c", "walk/b"] and found.errors == []
    assert found.notes[-1] == f"{tmp_path / 'walk' / 'a.mp4'} is given again (as walk/a): extracted once, as a"
    (tmp_path / "run" / "d.mp4").symlink_to(tmp_path / "run" / "c.mp4")
    found = discover((str(tmp_path),))
    assert [v.sample_id for v in found.videos] == ["run/c", "walk/a", "walk/b"]
    assert found.notes == [f"{tmp_path / 'run' / 'd.mp4'} is given again (as run/d): extracted once, as run/c"]
    assert discover((str(tmp_path / "walk"), str(tmp_path / "walk" / "*.mp4"))).notes == []  # the same ids


def test_videos_added_while_an_extraction_runs_renumber_nothing(tmp_path, shared):
    """The run lists its inputs once: a class folder added after planning (sorting before the others) renumbered
    every class in the tables before, so each label named the wrong class, and the output verified."""
    root = tmp_path / "videos"
    for cls in ("lift", "walk"):
        (root / cls).mkdir(parents=True)
        short_clip(root / cls / "a.avi", frames=4, size=(320, 180))
    stage, params = ExtractStage(), extract_params(root)
    plan = make_plan(stage, tmp_path / "w", params)
    (root / "aaa").mkdir()
    shutil.copy(root / "lift" / "a.avi", root / "aaa" / "a.avi")
    out = run_plan(plan, tmp_path / "w", Cluster(workers=0), quiet=True)
    store = TripletStore(out)
    assert store.metadata["classes"] == ["lift", "walk"] and store.ids() == ["lift/a", "walk/a"]
    assert [store.meta(sid)["label"] for sid in store.ids()] == [0, 1]
    assert load_output(out).manifest["external"]["classes"] == ["lift", "walk"]
    again = run_stage(ExtractStage(), tmp_path / "w", params, Cluster(workers=0), quiet=True)  # a new listing
    assert again != out and TripletStore(again).metadata["classes"] == ["aaa", "lift", "walk"]


def test_a_skipped_duplicate_counts_in_the_fingerprint_and_a_bad_label_file_is_named(tmp_path, shared):
    """A duplicate is a row of the error table: a rerun after one appeared must not be a cache hit that leaves
    it out (nor one after it went that still lists it). Without duplicates the fingerprint is as before."""
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
    (tmp_path / "one" / "a.mp4").write_bytes(b"")
    params = extract_params(tmp_path / "one", tmp_path / "two")
    before = ExtractStage().external(params)
    assert "duplicates" not in before
    (tmp_path / "two" / "a.mp4").write_bytes(b"")  # the same sample id; the first one found stays
    after = ExtractStage().external(params)
    assert after.pop("duplicates") == [str(tmp_path / "two" / "a.mp4")] and after == before
    (tmp_path / "labels.csv").write_bytes(b"video,label\na,\xff\xfe\n")
    with pytest.raises(SkelError, match=r"labels.csv: not a UTF-8 text file"):
        discover((str(tmp_path / "one"),), str(tmp_path / "labels.csv"))


@pytest.mark.slow
def test_stage_records_bad_videos_and_completes(tmp_path, shared):
    root = tmp_path / "videos"
    for folder in ("good", "bad"):
        (root / folder).mkdir(parents=True)
    short_clip(root / "good" / "clip.avi")
    bad_videos(root / "bad")
    black = black_clip(root / "bad" / "black.avi")
    out = run_stage(ExtractStage(), tmp_path / "w", extract_params(root), Cluster(workers=0), quiet=True)
    store = TripletStore(out)
    assert store.ids() == ["good/clip"] and store.metadata["classes"] == ["bad", "good"]
    row = store.meta("good/clip")
    assert (row["label"], row["n_frames"], row["img_h"], row["img_w"], row["fps"]) == (1, 12, 360, 640, 30)
    errors = {e["sample_id"]: e["message"] for e in store.errors.to_pylist()}
    assert set(errors) == {"bad/truncated", "bad/notes", "bad/empty", "bad/black"}
    assert errors["bad/black"] == "no person found in its 12 frames"  # not an all-zero sample of class bad
    # the frames the summary counts are the samples': the black video's 12 decoded frames made none
    assert json.loads((out / "manifest.json").read_text())["summary"]["frames"] == 12
    # nobody in any video: a failed stage, in frame ranges too
    with pytest.raises(SkelError, match="extract: all 1 samples failed"):
        run_stage(ExtractStage(), tmp_path / "w", extract_params(black, chunk_frames=5), Cluster(workers=0),
                  quiet=True)
    assert "truncated" in errors["bad/truncated"] and all(e["stage"] == "extract" for e in store.errors.to_pylist())
    skeleton = store.read("good/clip")
    assert skeleton.box is not None and skeleton.keypoint.shape == (row["n_persons"], 12, 17, 2)
    table = pq.read_table(out / row["part"])
    assert table.schema.field("box").type == pa.list_(pa.float32(), 5)
    detector, pose = estimators(extract_params(root))
    assert isinstance(detector, Fused)  # the default: CenterNet + MultiPose
    kp, score, box, _ = extract_video(root / "good" / "clip.avi", detector=detector, pose=pose, params=ExtractParams())
    np.testing.assert_array_equal(skeleton.keypoint, kp)
    np.testing.assert_array_equal(skeleton.box, box)


@pytest.mark.slow
def test_new_labels_or_one_more_video_extract_only_what_is_new(tmp_path, shared):
    """Poses depend on the video, the parameters and the models, not on the labels or the other videos: another
    labels file or one more video makes a new output (its samples table differs) whose shards of the videos
    done before are copied from the earlier output, byte for byte; a copy whose file no longer matches its
    record's digest is extracted again. The result equals a fresh extraction."""
    root = tmp_path / "videos"
    root.mkdir()
    for name in ("a", "b"):
        short_clip(root / f"{name}.avi", frames=8)
    (csv := tmp_path / "labels.csv").write_text("a,walk\nb,run\n")
    first = run_stage(ExtractStage(), tmp_path / "w", extract_params(root, labels=str(csv)), Cluster(workers=0),
                      quiet=True)
    short_clip(root / "c.avi", frames=6)
    csv.write_text("a,run\nb,walk\nc,walk\n")
    (first / TripletStore(first).meta("b")["part"]).write_bytes(b"damaged")  # not copied: extracted again
    params = extract_params(root, labels=str(csv))
    second = run_stage(ExtractStage(), tmp_path / "w", params, Cluster(workers=0), quiet=True)
    records = {r["samples"][0]["sample_id"]: r for r in committed(second).values()}
    assert {sid: r.get("copied") for sid, r in records.items()} == {"a": first.name, "b": None, "c": None}
    fresh = run_stage(ExtractStage(), tmp_path / "fresh", params, Cluster(workers=0), quiet=True)
    new, want = TripletStore(second), TripletStore(fresh)
    assert new.samples.to_pylist() == want.samples.to_pylist()
    assert [(r["sample_id"], r["label"]) for r in new.samples.to_pylist()] == [("a", 0), ("b", 1), ("c", 1)]
    for sid in ("a", "b", "c"):
        assert (second / new.meta(sid)["part"]).read_bytes() == (fresh / want.meta(sid)["part"]).read_bytes()
    done = load_output(second)
    assert done.manifest["summary"]["copied"] == 1 and output_problems(done, full=True) == []


@pytest.mark.slow
def test_the_same_videos_by_another_path_are_copied_not_extracted_again(tmp_path):
    """A symlink to the videos' folder, or a path with '..', names the same files: their poses are copied from
    the earlier extraction (the work key holds the real path), not computed again."""
    root = tmp_path / "videos"
    root.mkdir()
    short_clip(root / "a.avi", frames=6)
    (tmp_path / "link").symlink_to(root)
    (tmp_path / "sub").mkdir()
    done = [run_stage(ExtractStage(), tmp_path / "w", extract_params(root), Cluster(workers=0), quiet=True).name]
    for spelt in (tmp_path / "link", tmp_path / "sub" / ".." / "videos"):
        again = run_stage(ExtractStage(), tmp_path / "w", extract_params(spelt), Cluster(workers=0), quiet=True)
        (copied,) = [r.get("copied") for r in committed(again).values()]
        assert copied in done, spelt  # from an earlier extraction of the same file (the first one found)
        done.append(again.name)


def test_extracts_fingerprint_follows_the_videos_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A video replaced by other bytes of the same size and times plans a new output; a touched one is a hit on
    the same output (it made a new output, and ran every later stage again, before)."""
    monkeypatch.setattr(digests, "SETTLED_NS", 25_000_000)  # a minute in use
    root = tmp_path / "videos"
    root.mkdir()
    video = short_clip(root / "a.avi", frames=6)
    time.sleep(0.05)
    params = extract_params(root)
    first = make_plan(ExtractStage(), tmp_path / "w", params).fingerprint
    video.touch()
    time.sleep(0.05)
    assert make_plan(ExtractStage(), tmp_path / "w", params).fingerprint == first
    data, st = bytearray(video.read_bytes()), video.stat()
    data[len(data) // 2] ^= 0xFF
    video.write_bytes(data)
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p of another file of this size leaves it
    digests._hash.cache_clear()
    assert make_plan(ExtractStage(), tmp_path / "w", params).fingerprint != first


# Every boundary of an extraction whose shards are all copies of an earlier output's (another labels file): each
# shard's commit, a copy written but not committed, each copied file, finalize's files; whole videos and ranges
COPY_POINTS = [
    ("0", "uncommitted:extract/000000"), ("0", "commit:extract/000000"), ("0", "wrote:part-000001.parquet"),
    ("0", "commit:extract/000001"), ("0", "wrote:samples.parquet"), ("0", "finalized:extract"),
    ("3", "uncommitted:extract/000000-0001"), ("3", "wrote:000001-0000.npz"), ("3", "commit:extract/000001-0001"),
    ("3", "wrote:part-long.parquet"), ("3", "finalized:extract"),
]  # fmt: skip


@pytest.fixture(scope="module")
def copy_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two short videos, two labels files, and for each range setting an extraction with the first labels."""
    root = tmp_path_factory.mktemp("copies")
    (root / "v").mkdir()
    for name in ("a", "b"):
        short_clip(root / "v" / f"{name}.avi", frames=6)
    (root / "first.csv").write_text("a,walk\nb,run\n")
    (root / "second.csv").write_text("a,run\nb,walk\n")
    for chunk in ("0", "3"):
        _extract_labelled(root, root / f"w{chunk}", chunk, "first.csv")
    return root


def _extract_labelled(root: Path, workdir: Path, chunk: str, labels: str, crash_at: str | None = None):
    return skel("extract", root / "v", "--labels", root / labels, "--chunk-frames", chunk, "-w", workdir, "-j", "0",
                "-q", check=crash_at is None, env_extra={"SKEL_MODELS": str(MODELS)} | (
                    {"SKEL_CRASH_AT": crash_at} if crash_at else {}))


@pytest.mark.slow
@pytest.mark.parametrize(("chunk", "point"), COPY_POINTS, ids=[f"chunk{c}-{p}" for c, p in COPY_POINTS])
def test_copying_shards_killed_at_any_boundary_one_rerun_gives_the_same_bytes(copy_sources: Path, tmp_path: Path,
                                                                              chunk: str, point: str) -> None:
    """The copy of another output's shards (another labels file) commits like an extraction: killed at any
    boundary, one rerun gives the bytes of an uninterrupted copy."""
    for name in ("whole", "killed"):
        shutil.copytree(copy_sources / f"w{chunk}", tmp_path / name / "w")
    assert "2 copied from an earlier extraction" in _extract_labelled(copy_sources, tmp_path / "whole" / "w", chunk,
                                                                      "second.csv").stderr
    killed = _extract_labelled(copy_sources, tmp_path / "killed" / "w", chunk, "second.csv", crash_at=point)
    assert killed.returncode == -signal.SIGKILL, f"never reached {point}: {killed.stderr[-2000:]}"
    _extract_labelled(copy_sources, tmp_path / "killed" / "w", chunk, "second.csv")  # one rerun
    got, want = output_files(tmp_path / "killed"), output_files(tmp_path / "whole")
    assert sorted(got) == sorted(want)
    assert [p for p in want if got[p] != want[p]] == []


@pytest.mark.slow
def test_videos_moved_elsewhere_are_copied_not_extracted_again(copy_sources: Path, tmp_path: Path) -> None:
    """A folder of videos moved (or copied with its times) to another place: the poses are the same, so the earlier
    extraction's shards are copied (the models ran on every video again before: hours on a large set); the tables
    name the videos where they are now."""
    shutil.copytree(copy_sources / "w0", tmp_path / "w")
    shutil.copytree(copy_sources / "v", tmp_path / "moved" / "v")  # copytree keeps the times, as cp -a does
    shutil.copy(copy_sources / "first.csv", tmp_path / "moved")
    assert "2 copied from an earlier extraction" in _extract_labelled(tmp_path / "moved", tmp_path / "w", "0",
                                                                      "first.csv").stderr
    [first] = (copy_sources / "w0" / "extract").iterdir()
    [moved] = [o for o in (tmp_path / "w" / "extract").iterdir() if o.name != first.name]
    before, after = (pq.read_table(o / "samples.parquet").to_pylist() for o in (first, moved))
    assert [r["source"] for r in after] == [str(tmp_path / "moved" / "v" / f"{n}.avi") for n in ("a", "b")]
    assert [{**r, "source": None} for r in after] == [{**r, "source": None} for r in before]


def test_a_shards_work_key_is_the_one_outputs_made_before_hold() -> None:
    """A shard's work key is in its payload, so in the key its commit record must match: another key throws away
    every shard an older extract committed (its resume, its repair). The key of a video not split stays what it was
    (the copy across --chunk-frames looks under the other sizes' keys instead)."""
    from stages.extract.sources import Video
    from stages.extract.stage import _work_key

    common = {"version": "1", "models": {"m": "ab"}}
    key = _work_key(common, Video("clip", "/v/clip.mp4"), "c0ffee", (0, None), 0, {"chunk_frames": 900, "stride": 1})
    assert key == "b9186125eb6b609441442e1e5d44bfab"  # computed by the code before


@pytest.mark.slow
def test_videos_not_split_are_copied_when_only_the_chunk_size_changes(copy_sources: Path, tmp_path: Path) -> None:
    """--chunk-frames changes only the videos it splits: tuning it for one long video extracted every short one
    again."""
    shutil.copytree(copy_sources / "w0", tmp_path / "w")
    assert "2 copied from an earlier extraction" in _extract_labelled(copy_sources, tmp_path / "w", "100",
                                                                      "first.csv").stderr


@pytest.mark.slow
def test_stage_keeps_everyone_by_default_and_reports_fragments(tmp_path, shared):
    out = run_stage(ExtractStage(), tmp_path / "w", extract_params(FAR_PEOPLE, max_frames=10), Cluster(workers=0),
                    quiet=True)  # fmt: skip
    store = TripletStore(out)
    row = store.meta("opencv_vtest")
    fragments = json.loads(row["extra"])["fragments"]
    assert row["n_persons"] >= 3 and fragments["tracks"] == row["n_persons"]  # 3 walkers from frame 0: all kept
    assert fragments["tracks_before_merge"] >= fragments["tracks"] and 0 <= fragments["short_tracks"] <= fragments[
        "tracks"]  # fmt: skip
    assert json.loads((out / "manifest.json").read_text())["summary"]["fragments"] == fragments
    capped = run_stage(ExtractStage(), tmp_path / "w", extract_params(FAR_PEOPLE, max_frames=10, max_persons=2),
                       Cluster(workers=0), quiet=True)  # fmt: skip
    two, everyone = TripletStore(capped).read("opencv_vtest"), store.read("opencv_vtest")
    assert two.keypoint.shape[0] == 2
    np.testing.assert_array_equal(two.box, everyone.box[:2])  # the cap keeps the most salient, in the same order


@pytest.mark.slow
def test_long_videos_split_into_ranges_join_back(tmp_path, shared):
    clip = short_clip(tmp_path / "clip.avi")
    whole = run_stage(ExtractStage(), tmp_path / "w", extract_params(clip, detect_every=1, chunk_frames=0),
                      Cluster(workers=0), quiet=True)  # fmt: skip
    split = run_stage(ExtractStage(), tmp_path / "w", extract_params(clip, detect_every=1, chunk_frames=5),
                      Cluster(workers=0), quiet=True)  # fmt: skip
    assert len(list((split / "chunks").glob("*.npz"))) == 3
    (csv := tmp_path / "labels.csv").write_text("clip,walk\n")  # the ranges' work is the same: copied
    labelled = run_stage(ExtractStage(), tmp_path / "w",
                         extract_params(clip, detect_every=1, chunk_frames=5, labels=str(csv)), Cluster(workers=0),
                         quiet=True)  # fmt: skip
    assert [r.get("copied") for r in committed(labelled).values()] == [split.name] * 3
    assert load_output(labelled).manifest["summary"]["copied"] == 1  # videos, not ranges
    assert TripletStore(labelled).meta("clip")["label"] == 0
    a, b, c = (TripletStore(out).read("clip") for out in (whole, split, labelled))
    for x, y, z in ((a.keypoint, b.keypoint, c.keypoint), (a.score, b.score, c.score), (a.box, b.box, c.box)):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


@pytest.mark.slow
def test_cli_extract_with_two_workers_and_preview(tmp_path, shared):
    clip = short_clip(tmp_path / "clip.avi")
    (tmp_path / "notes.mp4").write_text("not a video")
    args = ("extract", clip, tmp_path / "notes.mp4", no_codec_video(tmp_path / "nocodec.mp4"), "-w", tmp_path / "w",
            "--models", MODELS, "-j", "2", "--device", "cpu", "--preview", "1", "--max-errors", "1", "-q")  # fmt: skip
    lines = skel(*args).stderr.splitlines()
    # FFmpeg's and OpenCV's own lines stay under --verbose, in the workers too
    assert not [line for line in lines if "moov atom" in line or "cap_ffmpeg_impl" in line], lines
    report = [line for line in lines if line.startswith("extracted")]
    assert report and report[0].startswith("extracted 1 videos (2 skipped), 12 frames")
    tracks = [line for line in lines if line.startswith("tracks: ")]
    assert tracks and "after joining fragments" in tracks[0] and "shorter than 10 frames" in tracks[0]
    manifest = (next((tmp_path / "w" / "extract").iterdir()) / "manifest.json").read_text()
    out = next((tmp_path / "w" / "extract").iterdir())
    frames = 0
    cap = cv2.VideoCapture(str(out / "previews" / "clip.mp4"))
    while cap.read()[0]:
        frames += 1
    assert frames == 12
    assert report[0] in skel(*args).stderr
    assert (out / "manifest.json").read_text() == manifest  # the same command again is a cache hit


# 4 videos x 3 frame ranges = 12 shards: killed right after each commit, between a shard's files and its
# commit, and after finalize
EXTRACT_KILLS = [f"commit:extract/{v:06d}-{k:04d}" for v in range(4) for k in range(3)] + [
    "uncommitted:extract/000002-0001", "finalized:extract"]


@pytest.fixture(scope="module")
def four_clips(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> tuple[Path, Path]:
    """Four short videos and the extract output of an uninterrupted run over them."""
    root = tmp_path_factory.mktemp("four")
    clips = root / "clips"
    clips.mkdir()
    short_clip(clips / "c0.avi")
    for i in (1, 2, 3):
        (clips / f"c{i}.avi").write_bytes((clips / "c0.avi").read_bytes())
    ref = run_stage(ExtractStage(), root / "ref", extract_params(clips, chunk_frames=4), Cluster(workers=0), quiet=True)
    return clips, ref


@pytest.mark.slow
@pytest.mark.parametrize("point", EXTRACT_KILLS)
def test_killed_at_any_boundary_one_rerun_gives_the_same_tables(four_clips, tmp_path, point: str) -> None:
    clips, ref = four_clips
    params = extract_params(clips, chunk_frames=4)
    code = (
        "from pathlib import Path; from pipeline.cluster import Cluster; from pipeline.runner import run_stage;"
        "from stages.extract.stage import ExtractStage, ExtractStageParams;"
        f"run_stage(ExtractStage(), Path({str(tmp_path / 'w')!r}), ExtractStageParams(sources=({str(clips)!r},),"
        f" models={str(MODELS)!r}, device='cpu', chunk_frames=4), Cluster(workers=0), quiet=True)"
    )
    killed = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "SKEL_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL
    out = tmp_path / "w" / ref.relative_to(ref.parents[1])
    run_stage(ExtractStage(), tmp_path / "w", params, Cluster(workers=0), quiet=True)  # one rerun
    assert json.loads((out / "manifest.json").read_text())["state"] == "complete"
    a, b = TripletStore(ref), TripletStore(out)
    assert a.samples.equals(b.samples) and b.ids() == ["c0", "c1", "c2", "c3"]
    for sid in a.ids():
        np.testing.assert_array_equal(a.read(sid).keypoint, b.read(sid).keypoint)
        np.testing.assert_array_equal(a.read(sid).box, b.read(sid).box)
    assert not list(out.rglob(".*.tmp-*"))


def test_preview_with_captions(tmp_path, shared):
    clip = short_clip(tmp_path / "clip.avi", frames=4)
    kp, score, box = np.zeros((1, 4, 17, 2), np.float32), np.zeros((1, 4, 17), np.float32), np.zeros((1, 4, 5))
    out = write_preview(clip, tmp_path / "p" / "clip.mp4", kp, score, box, captions=["walk 0.9"] * 4)
    cap = cv2.VideoCapture(str(out))
    ok, bgr = cap.read()
    assert ok and bgr[10:20, 10:40].max() > 200  # the caption's white text on its black band
    assert not list((tmp_path / "p").glob(".*tmp*"))


def test_a_row_naming_a_video_left_out_as_a_duplicate_id_says_so(tmp_path: Path) -> None:
    """a.mp4 and a.AVI are one sample id: one is left out (an error row), and a labels row naming it said it named
    no video found, though the file is there (names audit)."""
    (tmp_path / "v" / "cls").mkdir(parents=True)
    for name in ("a.mp4", "a.AVI", "b.mp4"):
        (tmp_path / "v" / "cls" / name).write_bytes(b"x")
    found = discover((str(tmp_path / "v"),), None)
    [left] = found.errors
    (csv := tmp_path / "l.csv").write_text(f"video,label\n{Path(left['source']).name},y\nb.mp4,x\n")
    notes = discover((str(tmp_path / "v"),), str(csv)).notes
    assert f"{csv}:2: {Path(left['source']).name} was left out, another video having its sample id (see the error " \
           "table): rename one of the two to extract both" in notes
    assert not any("name no video found" in note for note in notes)


def test_a_labels_row_names_a_video_whose_name_starts_with_a_space(tmp_path: Path) -> None:
    """Cells are stripped (`a.mp4, walk` names a.mp4), so a video named ' sp .mp4' could not be named at all, and the
    warning showed the stripped name (names audit). A row whose stripped name matches nothing tries its cell as
    written, and a row naming nothing is shown with its spaces."""
    (tmp_path / "v" / "c").mkdir(parents=True)
    for name in (" sp .mp4", "b.mp4"):
        (tmp_path / "v" / "c" / name).write_bytes(b"x")
    (csv := tmp_path / "l.csv").write_text('video,label\n" sp .mp4",a\n b.mp4 , b\n" nope.mp4",c\n')
    found = discover((str(tmp_path / "v"),), str(csv))
    assert {v.sample_id: v.label for v in found.videos} == {"c/ sp ": 0, "c/b": 1}
    assert f"{csv}: 1 row(s) name no video found (line 4: ' nope.mp4')" in found.notes
