"""Predict says what it saw: windows where most frames have no skeleton are reported instead of labelled,
and live mode says why it made no decision. A small ONNX classifier with `skel export`'s metadata (a real
onnxruntime session) and frames of the shared media; no trained model needed."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import cv2
import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper

from apps import onnx_seal
from apps.predict.live import FrameSource, LiveParams, LiveSummary, open_source, run_live
from apps.predict.model import METADATA_KEY, ModelSpec, load_classifier
from apps.predict.synthetic import figures
from apps.predict.windows import classify, classify_people
from pipeline.errors import SkelError
from stages.extract.stage import ExtractStageParams, estimators
from stages.render.params import RenderParams
from stores.coco import KP_FLIP
from tests.support import skel

CLASSES = ("a", "b", "c")
POSE = ["--pose-model", "movenet-lightning"]
NOTE = re.compile(r"no skeleton in (\d+) of 60 frames: not labelled")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """probs = softmax(mean heatmap of each joint @ W), with the metadata `skel predict --onnx` reads."""
    spec = ModelSpec(RenderParams(size=32), CLASSES, clip_len=8, size=32, flip_perm=tuple(int(i) for i in KP_FLIP))
    weight = np.random.default_rng(0).normal(size=(17, len(CLASSES))).astype(np.float32) * 50
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3, 4], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 17, 8, 32, 32])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", len(CLASSES)])],
        [helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    helper.set_model_props(model, {METADATA_KEY: spec.to_json(), onnx_seal.KEY: onnx_seal.PLACEHOLDER})
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    path.write_bytes(onnx_seal.seal(model.SerializeToString()))  # as `skel export` writes it
    return path


def _video(source: Path, out: Path, n: int, real: int) -> Path:
    """The first ``n`` frames of ``source``, all but the first ``real`` of them replaced by a grey frame."""
    cap = cv2.VideoCapture(str(source))
    frames = [cap.read()[1] for _ in range(n)]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 30, frames[0].shape[1::-1])
    for t, frame in enumerate(frames):
        writer.write(frame if t < real else np.full_like(frame, 128))
    writer.release()
    return out


@pytest.fixture(scope="module")
def videos(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """60 frames of the clean-and-jerk clip (a lifter in every frame), and the same with only the first 6 kept."""
    src, tmp = shared / "media" / "stgcn_clean_and_jerk.mp4", tmp_path_factory.mktemp("videos")
    return {"full": _video(src, tmp / "full.mp4", 60, 60), "sparse": _video(src, tmp / "sparse.mp4", 60, 6)}


def test_windows_with_few_skeletons_are_not_labelled(tiny_onnx: Path) -> None:
    """A window with a skeleton in fewer than half its frames has no probabilities and says so; the others
    get exactly the probabilities of their frames, in both modes."""
    clf = load_classifier(onnx=tiny_onnx, num_clips=1)
    kp, score = figures(["squat"], 64, (480, 640))
    score[:, 40:] = 0  # frames 40-63 without anyone
    box = np.concatenate([kp.min(axis=2), kp.max(axis=2), np.ones((*kp.shape[:2], 1), np.float32)], axis=-1)
    for wins in (classify(clf, kp, score, (480, 640), window=32, stride=16),
                 classify_people(clf, kp, score, box, (480, 640), window=32, stride=16)):
        assert [(w.start, w.labelled, w.posed) for w in wins] == [(0, True, 32), (16, True, 24), (32, False, 8)]
        np.testing.assert_allclose(wins[0].probs, clf.probs(kp[:, :32], score[:, :32], (480, 640)), atol=1e-6)
        assert wins[2].note() == "no skeleton in 24 of 32 frames: not labelled" and wins[2].top(3) == []
        assert wins[0].note() == "" and wins[2].track is None


@pytest.mark.slow  # whole predict runs in subprocesses (pose model on real frames)
def test_predict_reports_a_clip_without_skeletons_instead_of_labelling_it(
        tiny_onnx: Path, shared: Path, videos: dict[str, Path], tmp_path: Path) -> None:
    common = ["--onnx", tiny_onnx, "--models", shared / "models", *POSE, "--num-clips", "1", "--json"]
    runs = {}
    for mode in ((), ("--per-person",)):
        proc = skel("predict", videos["sparse"], *mode, *common, "--parquet", tmp_path / "t.parquet", "--force")
        [result] = json.loads(proc.stdout)
        [w] = result["windows"]
        missing = NOTE.fullmatch(w["note"])
        assert w["status"] == "no_skeleton" and w["top"] == [] and missing and int(missing[1]) >= 50, w
        assert w["posed"] == 60 - int(missing[1]) and w["track"] is None
        warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
        assert warnings == [f"warning: {videos['sparse']}: {w['note']}"], proc.stderr
        [row] = pq.read_table(tmp_path / "t.parquet").to_pylist()
        assert row["status"] == "no_skeleton" and row["labels"] == [] and row["posed"] == w["posed"]
        runs[mode] = result
    proc = skel("predict", videos["full"], *common)
    [w] = json.loads(proc.stdout)[0]["windows"]
    assert w["status"] == "labelled" and w["note"] is None and w["posed"] == 60 and len(w["top"]) == 3
    assert "warning:" not in proc.stderr


@pytest.mark.slow  # whole predict runs in subprocesses (pose model on real frames)
def test_live_says_why_it_made_no_decision(tiny_onnx: Path, shared: Path, videos: dict[str, Path]) -> None:
    """A window longer than the source never fills; a window of frames without skeletons is not labelled:
    either way the summary (JSON and stderr) says so, with the counts."""
    proc = skel("predict", "--live", videos["full"], "--onnx", tiny_onnx, "--models", shared / "models", *POSE,
                "--window", "100", "--json")
    summary = json.loads(proc.stdout.splitlines()[-1])["summary"]
    want = (f"no decision: the window never filled: {summary['frames']} frames processed ({summary['posed']} with "
            "a skeleton), a decision needs 100 (--window)")
    assert summary["decisions"] == 0 and summary["frames"] >= 1 and summary["notes"][0] == want
    assert f"warning: {want}" in proc.stderr.splitlines()

    params = ExtractStageParams(models=str(shared / "models"), pose_model="movenet-lightning")
    detector, pose = estimators(params)
    decisions: list[dict] = []
    live = run_live(str(videos["sparse"]), load_classifier(onnx=tiny_onnx, num_clips=1), detector=detector,
                    pose=pose, params=params, live=LiveParams(window=20, stride=10, queue=1000), emit=decisions.append)
    notes = live.notes()
    assert decisions == [] and live.decisions == 0 and notes[0].startswith("no decision: "), notes
    if live.frames >= 20:  # the reader had every frame processed (nothing dropped for lack of time)
        assert live.checks >= 1 and live.unlabelled == live.checks and live.most_posed < 10
        assert notes[0] == (f"no decision: {live.checks} of {live.checks} windows not labelled: at most "
                            f"{live.most_posed} of their 20 frames had a skeleton, a decision needs 10")


def test_live_summary_explains_the_drops() -> None:
    """The issue's run (1280x720, 150 frames, 125 dropped): the window never filled because processing was
    slower than the source, and the summary says both, with the rates."""
    summary = LiveSummary(window=48, stride=8, frames=25, posed=22, dropped=125, source_fps=30.0, busy=5.0,
                          pose_model="movenet-thunder", num_clips=10)
    assert summary.as_dict()["notes"] == [
        "no decision: the window never filled: 25 frames processed (22 with a skeleton), a decision needs 48 "
        "(--window)",
        "125 of 150 frames dropped: detector, pose and classifier handled 5.0 frames/s, the source delivered "
        "30.0/s (what helps: --pose-model movenet-lightning, fewer --num-clips, a longer --stride, a smaller input)"]
    # Lightning and one clip already: the hint names only what would change something
    fastest = dataclasses.replace(summary, pose_model="movenet-lightning", num_clips=1)
    assert fastest.notes()[1].endswith("30.0/s (what helps: a longer --stride, a smaller input)"), fastest.notes()
    fine = LiveSummary(window=48, stride=8, frames=295, posed=295, dropped=5, checks=30, decisions=30, busy=5.0)
    assert fine.notes() == []  # a few frames dropped while the first detection is awaited: nothing to explain
    # a recording holds only the frames processed, at the source's rate: it is shorter and plays faster
    recorded = dataclasses.replace(fine, overlay="rec.mp4", dropped=57, frames=63)
    assert recorded.notes()[-1] == ("the recording rec.mp4 holds the 63 frames processed, not the 57 dropped, at the "
                                    "source's rate: it plays 1.9x as fast")


def test_a_truncated_file_played_live_is_said_to_be_cut_short(tmp_path: Path) -> None:
    """Offline, a file that ends before its announced frame count is an error; live, it ended quietly with exit 0.
    The summary now says so; a whole file, or one stopped at --max-frames, says nothing of the kind."""
    whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 200.0, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(40):
        writer.write(rng.integers(0, 255, (48, 64, 3), np.uint8))
    writer.release()
    cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    got = {}
    for video, max_frames in ((whole, None), (cut, None), (cut, 5)):
        frames = FrameSource(open_source(str(video))[0], paced=True, max_frames=max_frames)
        n = sum(1 for _ in frames)
        got[video.name, max_frames] = (n > 0, frames.cut_short, frames.announced)
        frames.close()
    assert got == {("whole.avi", None): (True, False, 40), ("cut.avi", None): (True, True, 40),
                   ("cut.avi", 5): (True, False, 40)}
    note = LiveSummary(frames=18, window=8, checks=3, decisions=3, busy=1.0, cut_short=(18, 40)).notes()
    assert note == ["the file ended after 18 of the 40 frames it announces: truncated or corrupt"]



def test_a_digit_source_is_a_camera_and_a_file_of_that_name_is_said(tmp_path: Path, monkeypatch, caplog) -> None:
    """``--live 7`` is camera 7, as OpenCV takes it, even with a file named ``7`` here; it was opened as the camera
    but paced as a file, and nothing said which. The file is named, with the way to play it (``./7``)."""
    writer = cv2.VideoWriter(str(tmp_path / "7.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    for _ in range(3):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    (tmp_path / "7.avi").rename(tmp_path / "7")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="skel"), pytest.raises(SkelError, match="cannot open it"):
        open_source("7")  # no camera 7 here
    assert any("--live ./7 plays it" in r.getMessage() for r in caplog.records), caplog.text
    cap, is_file = open_source("./7")
    cap.release()
    assert is_file

def test_a_damaged_onnx_export_is_refused(tiny_onnx: Path, tmp_path: Path, caplog) -> None:
    """An export carries its own sha256: one flipped bit in a weight (which onnxruntime loads and runs happily)
    is refused; a file that records no digest (an older export) loads with a warning that it cannot be checked."""
    with caplog.at_level("WARNING", logger="skel"):
        load_classifier(onnx=tiny_onnx)
    assert not caplog.text
    data = bytearray(tiny_onnx.read_bytes())
    weights = np.array(onnx.load(str(tiny_onnx)).graph.initializer[0].float_data, np.float32).tobytes()
    at = bytes(data).find(weights[:16])
    assert at > 0
    data[at + 3] ^= 0x01  # an exponent bit of the first weight
    (flipped := tmp_path / "flipped.onnx").write_bytes(bytes(data))
    with pytest.raises(SkelError, match=r"flipped.onnx: damaged .* export it again"):
        load_classifier(onnx=flipped)
    model = onnx.load(str(tiny_onnx))  # as exported before skel recorded digests: no digest, nor says it has one
    spec = json.loads(dict((p.key, p.value) for p in model.metadata_props)[METADATA_KEY])
    helper.set_model_props(model, {METADATA_KEY: json.dumps({k: v for k, v in spec.items() if k != "sealed"})})
    onnx.save(model, str(old := tmp_path / "old.onnx"))
    with caplog.at_level("WARNING", logger="skel"):
        load_classifier(onnx=old)
    assert "records no digest" in caplog.text
    data = bytearray(tiny_onnx.read_bytes())
    data[bytes(data).rfind(onnx_seal.KEY.encode()) + 5] ^= 0x01  # the digest's key: the digest is not found
    (unkeyed := tmp_path / "unkeyed.onnx").write_bytes(bytes(data))
    with pytest.raises(SkelError, match=r"unkeyed.onnx: damaged"):  # its spec says it was sealed
        load_classifier(onnx=unkeyed)


@pytest.mark.parametrize(("field", "value"), [("classes", ["a", "b"]), ("clip_len", 16), ("size", 48)])
def test_an_export_whose_metadata_disagrees_with_its_network_is_refused(tiny_onnx: Path, tmp_path: Path,
                                                                        field: str, value) -> None:
    """A hand-edited (or foreign) file without a digest whose spec does not fit its network: one line at load,
    not an IndexError or onnxruntime's shape error on the first video."""
    model = onnx.load(str(tiny_onnx))
    spec = json.loads(dict((p.key, p.value) for p in model.metadata_props)[METADATA_KEY])
    helper.set_model_props(model, {METADATA_KEY: json.dumps(spec | {field: value, "sealed": False})})
    onnx.save(model, str(edited := tmp_path / "edited.onnx"))
    with pytest.raises(SkelError, match=r"edited.onnx: its network takes views \[17, 8, 32, 32\] and scores 3 "
                                        r"classes, but its skel.predict metadata says"):
        load_classifier(onnx=edited)


@pytest.mark.parametrize(("field", "value", "said"), [
    ("flip_perm", [0, 2, 1, *range(3, 16), 40], r"flip_perm \[.*40\] is not a permutation of its 17 channels"),
    ("classes", ["a", "b", "a"], "classes named twice: a")])
def test_an_export_whose_metadata_cannot_be_a_spec_is_refused(tiny_onnx: Path, tmp_path: Path, field: str, value,
                                                              said: str) -> None:
    """A flip permutation out of range was an IndexError's traceback on the first window; classes named twice
    labelled windows 'a 0.23 | a 0.20'. Each is one line at load."""
    model = onnx.load(str(tiny_onnx))
    spec = json.loads(dict((p.key, p.value) for p in model.metadata_props)[METADATA_KEY])
    helper.set_model_props(model, {METADATA_KEY: json.dumps(spec | {field: value, "sealed": False})})
    onnx.save(model, str(edited := tmp_path / "edited.onnx"))
    with pytest.raises(SkelError, match=rf"edited.onnx: unreadable skel.predict metadata \(ValueError: {said}\)"):
        load_classifier(onnx=edited)


def test_an_export_of_a_training_whose_pickle_named_a_class_twice_loads(tiny_onnx: Path) -> None:
    """A pyskl pickle may name two classes alike; import, train and test keep them, and so must export and predict
    (the check of a hand-edited file refused them after a whole training)."""
    model = onnx.load(str(tiny_onnx))
    spec = json.loads(dict((p.key, p.value) for p in model.metadata_props)[METADATA_KEY])
    assert spec["sealed"] and ModelSpec.from_json(json.dumps(spec | {"classes": ["a", "b", "a"]})).classes == (
        "a", "b", "a")
