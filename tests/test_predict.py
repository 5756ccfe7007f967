"""`skel predict`: whole scene, per person, live input and the torch-free ONNX path, on real videos (shared
media and synthetic mannequin videos) with a model trained on synthetic skeletons (`skel demo`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
import torch
from onnx import TensorProto, helper

from apps.predict import views
from apps.predict.live import LiveParams, Poser, run_live
from apps.predict.model import Classifier, load_classifier
from apps.predict.synthetic import draw_figures, figures, write_video
from apps.predict.windows import classify, classify_people, windows
from inference.views import eval_views as torch_eval_views
from stages.extract.stage import ExtractStageParams, estimators
from stages.test.report import SCORES, read_scores
from stores.triplets import TripletStore
from stores.volumes import VolumeStore
from tests.support import REPO, SKEL, as_terminal_job, ctrl_c_when, error_line, remount, skel

CLASSES = {"wave", "jumping_jacks", "squat", "walk", "boxing", "arm_circles"}
LIGHTNING = ["--pose-model", "movenet-lightning"]


def _first_frames(video: Path, out: Path, n: int) -> Path:
    cap, writer = cv2.VideoCapture(str(video)), None
    for _ in range(n):
        ok, frame = cap.read()
        assert ok
        if writer is None:
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 30, frame.shape[1::-1])
        writer.write(frame)
    writer.release()
    return out


def _frame_count(video: Path) -> int:
    cap, n = cv2.VideoCapture(str(video)), 0
    while cap.read()[0]:
        n += 1
    return n


@pytest.fixture(scope="module")
def clip(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 2 seconds (60 frames, 340x256) of the clean-and-jerk clip: short tests."""
    return _first_frames(shared / "media" / "stgcn_clean_and_jerk.mp4", tmp_path_factory.mktemp("clip") / "c.mp4", 60)


@pytest.fixture(scope="module")
def onnx_model(demo_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's newest train output exported by `skel export` (with the predict metadata); it trains two
    models, so the tests that use it are marked slow."""
    workdir, _ = demo_run
    out = tmp_path_factory.mktemp("onnx") / "classifier.onnx"
    skel("export", out, "-w", workdir, "--last")
    return out


@pytest.mark.parametrize("persons", [0, 2])
def test_a_video_without_skeletons_comes_back_unlabelled(persons: int) -> None:
    """No one found (no track, or tracks without a pose): every window unlabelled and saying why, not an error
    that stops the other videos; the classifier is never asked."""
    kp, score = np.zeros((persons, 30, 17, 2), np.float32), np.zeros((persons, 30, 17), np.float32)
    (scene,) = classify(None, kp, score, (240, 320))
    assert not scene.labelled and scene.note() == "no skeleton in 30 of 30 frames: not labelled"
    wins = classify_people(None, kp, score, np.zeros((persons, 30, 5), np.float32), (240, 320), window=20, stride=10)
    assert [(w.start, w.stop, w.track, w.labelled) for w in wins] == [(0, 20, None, False), (10, 30, None, False)]


def test_windows_cover_the_video() -> None:
    assert windows(40, None, None) == [(0, 40)]
    assert windows(40, 48, 24) == [(0, 40)]
    wins = windows(100, 48, 24)
    assert wins[0] == (0, 48) and wins[-1] == (52, 100) and all(b - a == 48 for a, b in wins)


@pytest.mark.parametrize(("t", "size", "flip"), [(30, 32, True), (7, 24, True), (40, 48, False)])
def test_numpy_views_equal_the_torch_views(t: int, size: int, flip: bool) -> None:
    rng = np.random.default_rng(t)
    volume = rng.random((17, t, 32, 32), dtype=np.float32)
    perm = list(rng.permutation(17))
    want = torch_eval_views(torch.from_numpy(volume), 12, 3, size=size, flip=flip, perm=perm).numpy()
    got = views.eval_views(volume, 12, 3, size=size, flip=flip, perm=perm)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


@pytest.mark.slow
def test_predict_a_real_video_with_windows_and_overlay(demo_run, shared: Path, clip: Path, tmp_path: Path) -> None:
    workdir, _ = demo_run
    overlay, table = tmp_path / "overlay.mp4", tmp_path / "windows.parquet"
    proc = skel("predict", clip, "--run", workdir, "--models", shared / "models", "--window", "40", "--stride", "20",
                "--num-clips", "2", "--out", overlay, "--parquet", table, "--json")
    [result] = json.loads(proc.stdout)
    assert result["frames"] == 60 and [(w["start"], w["stop"]) for w in result["windows"]] == [(0, 40), (20, 60)]
    # the demo trains two streams: the one --run takes (the newest, limb) is named with the other (it was unsaid)
    said = " ".join(proc.stderr.split())
    assert "(limb volumes), the most recently used of the 2 trained models in" in said, said
    assert "(joint volumes)): --model" in said, said
    for w in result["windows"]:
        scores = [t["score"] for t in w["top"]]
        assert len(w["top"]) == 5 and {t["label"] for t in w["top"]} <= CLASSES and w["track"] is None
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-5
    rows = pq.read_table(table).to_pylist()
    assert [(r["start"], r["track"], r["labels"][0]) for r in rows] == [
        (w["start"], None, w["top"][0]["label"]) for w in result["windows"]]
    assert _frame_count(overlay) == 60
    ok, frame = cv2.VideoCapture(str(overlay)).read()
    assert ok and np.abs(frame.astype(int) - cv2.VideoCapture(str(clip)).read()[1]).max() > 50  # drawn on

    table = skel("predict", clip, "--run", workdir, "--models", shared / "models", "--num-clips", "1")
    assert "top-1" in table.stderr
    exported = " ".join(skel("export", tmp_path / "m.onnx", "-w", workdir).stderr.split())
    assert "the most recently used of the 2 trained models" in exported and "--from FINGERPRINT names" in exported


@pytest.mark.slow
def test_onnx_predict_runs_without_torch_and_agrees_with_torch(
        demo_run, onnx_model: Path, shared: Path, clip: Path) -> None:
    workdir, _ = demo_run
    args = [str(clip), "--models", str(shared / "models"), "--window", "30", "--stride", "15", "--num-clips", "2",
            "--json"]
    code = ("import json, sys\nfrom typer.testing import CliRunner\nfrom cli import app\n"
            f"r = CliRunner().invoke(app, ['predict', *{args!r}, '--onnx', {str(onnx_model)!r}])\n"
            "assert r.exit_code == 0, r.output\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'out': json.loads(r.stdout)}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["torch"] is False
    want = json.loads(skel("predict", *args, "--run", workdir, "--last").stdout)  # the exported checkpoint
    top1 = lambda res: [(w["start"], w["top"][0]["label"]) for w in res[0]["windows"]]  # noqa: E731
    assert len(top1(want)) == 3 and top1(got["out"]) == top1(want)
    for a, b in zip(got["out"][0]["windows"], want[0]["windows"], strict=True):
        assert abs(a["top"][0]["score"] - b["top"][0]["score"]) < 1e-4


@pytest.mark.slow
def test_per_person_equals_each_person_alone_on_exact_skeletons(onnx_model: Path) -> None:
    """A track's volume holds that person only: two people side by side get exactly the probabilities each
    gets when alone in the video, and the whole scene gets one label for both."""
    clf = load_classifier(onnx=onnx_model, num_clips=2)
    kp, score = figures(["jumping_jacks", "squat"], 64, (480, 640))
    box = np.concatenate([kp.min(axis=2), kp.max(axis=2), np.ones((*kp.shape[:2], 1), np.float32)], axis=-1)
    both = classify_people(clf, kp, score, box, (480, 640), window=32, stride=16, tracks=[7, 3])
    assert [(w.start, w.track) for w in both] == [(s, t) for s in (0, 16, 32) for t in (7, 3)]
    for m, track in enumerate([7, 3]):
        alone = classify(clf, kp[m : m + 1], score[m : m + 1], (480, 640), window=32, stride=16)
        mine = [w for w in both if w.track == track]
        for a, b in zip(mine, alone, strict=True):
            np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)
            assert a.box == (float(box[m, a.start:a.stop, 0].min()), float(box[m, a.start:a.stop, 1].min()),
                             float(box[m, a.start:a.stop, 2].max()), float(box[m, a.start:a.stop, 3].max()))
    scene = classify(clf, kp, score, (480, 640), window=32, stride=16)
    assert len(scene) == 3 and all(w.track is None for w in scene)


@pytest.mark.slow
def test_per_person_on_a_synthetic_two_person_video(onnx_model: Path, shared: Path, tmp_path: Path) -> None:
    """Two mannequins doing different actions: one labelled track each (left and right), the label each gets
    alone in the same video, a Parquet row per (track, window) and an overlay of every frame."""
    kp, score = figures(["jumping_jacks", "squat"], 64, (480, 640))
    common = ["--onnx", onnx_model, "--models", shared / "models", *LIGHTNING, "--window", "32", "--stride", "16",
              "--num-clips", "2", "--json"]
    runs = {}
    for name, keep in (("both", [0, 1]), ("left", [0]), ("right", [1])):
        shown = np.zeros_like(score)
        shown[keep] = score[keep]
        video = write_video(tmp_path / f"{name}.mp4", draw_figures(kp, shown, (480, 640)))
        extra = ["--out", tmp_path / "overlay.mp4", "--parquet", tmp_path / "t.parquet"] if name == "both" else []
        [runs[name]] = json.loads(skel("predict", video, "--per-person", *common, *extra).stdout)
    both = runs["both"]
    assert both["per_person"] and {w["start"] for w in both["windows"]} == {0, 16, 32}
    for side in ("left", "right"):
        mine = [w for w in both["windows"] if ((w["box"][0] + w["box"][2]) / 2 < 320) == (side == "left")]
        assert len(mine) == 3 and len({w["track"] for w in mine}) == 1, both["windows"]
        alone = runs[side]["windows"]
        same = sum(a["top"][0]["label"] == b["top"][0]["label"] for a, b in zip(mine, alone, strict=True))
        assert same >= 2, (side, mine, alone)
    assert pq.read_table(tmp_path / "t.parquet").num_rows == len(both["windows"]) == 6
    assert _frame_count(tmp_path / "overlay.mp4") == 64


@pytest.mark.slow
def test_predict_scores_a_crowded_clip_as_test_does(shared: Path, tmp_path: Path) -> None:
    """Three people in each clip (more than the 2 predict once tracked by default): predict's default draws them
    as the model's render drew them, every person, so its scores of a clip are `skel test`'s of the same clip."""
    videos = {}
    for name, actions in (("jumping", ["jumping_jacks", "squat", "jumping_jacks"]),
                          ("squat", ["squat", "jumping_jacks", "squat"])):
        kp, score = figures(actions, 32, (360, 640))
        (tmp_path / "data" / name).mkdir(parents=True)
        videos[name] = write_video(tmp_path / "data" / name / f"{name}.mp4", draw_figures(kp, score, (360, 640)))
    w, pose = tmp_path / "w", ["--models", shared / "models", *LIGHTNING]
    skel("extract", tmp_path / "data", "-w", w, *pose, "-j", "0", "-q")
    [extract] = (w / "extract").iterdir()
    assert pq.read_table(extract / "samples.parquet").column("n_persons").to_pylist() == [3, 3]
    skel("render", "-w", w, "--size", "32", "-j", "0", "-q")
    skel("train", "-w", w, "--train-split", "", "--base-channels", "8", "--stage-blocks", "1,1,1", "--clip-len", "8",
         "--input-size", "32", "--epochs", "1", "-b", "2", "--val-fraction", "0", "--loader-workers", "0", "-q")
    skel("test", "-w", w, "--split", "", "--num-clips", "2", "-j", "0", "-q")
    [test] = (w / "test").iterdir()
    ids, _, scores = read_scores(test / SCORES)
    [render] = (w / "render").iterdir()
    triplets, volumes, classifier = TripletStore(extract), VolumeStore(render), load_classifier(run=w)
    for sid in ids:  # the heatmaps predict draws are the values test reads back from the uint8 store
        meta, skeleton = triplets.meta(sid), triplets.read(sid)
        got = classifier.volume(skeleton.keypoint, skeleton.score, (meta["img_h"], meta["img_w"]))
        np.testing.assert_array_equal(got, volumes.read(sid), err_msg=sid)
    skel("export", tmp_path / "m.onnx", "-w", w)
    classes = classifier.classes
    for model in (["--run", w], ["--onnx", tmp_path / "m.onnx"]):  # the export carries the render's settings
        got = json.loads(skel("predict", *videos.values(), *model, *pose, "--num-clips", "2", "--json").stdout)
        for res in got:
            [window] = res["windows"]
            probs = np.zeros(len(classes), np.float32)
            for t in window["top"]:
                probs[classes.index(t["label"])] = t["score"]
            [row] = [i for i, sid in enumerate(ids) if Path(res["video"]).stem in sid]
            np.testing.assert_allclose(probs, scores[row], atol=2e-6, err_msg=str(model))


@pytest.mark.slow
def test_live_on_a_shared_media_file(onnx_model: Path, shared: Path, clip: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "live.mp4"
    proc = skel("predict", "--live", clip, "--onnx", onnx_model, "--models", shared / "models", *LIGHTNING,
                "--max-frames", "45", "--window", "2", "--stride", "2", "--num-clips", "1", "--json", "--out", overlay)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    summary = lines[-1]["summary"]
    decisions = lines[:-1]
    # the last frames queued are always processed, so even a slow machine makes a decision
    assert summary["frames"] + summary["dropped"] == 45 and summary["frames"] >= 2 and not summary["interrupted"]
    assert len(decisions) == summary["decisions"] >= 1
    assert [d["frame"] for d in decisions] == sorted({d["frame"] for d in decisions})
    for d in decisions:
        assert d["track"] is None and d["frame"] > d["start"] and d["latency_ms"] > 0
        assert d["top"][0]["label"] in CLASSES
    latencies = sorted(d["latency_ms"] for d in decisions)  # the summary's figures are those of the decisions
    assert summary["latency_ms"]["median"] == pytest.approx(float(np.median(latencies)), abs=0.06)  # 0.1 ms rounding
    assert summary["overlay"] == str(overlay) and _frame_count(overlay) == summary["frames"]


@pytest.mark.slow
def test_an_overlay_that_cannot_be_written_keeps_the_labels(onnx_model: Path, shared: Path, clip: Path,
                                                           tmpfs: Path) -> None:
    """OpenCV reports no failed write: on a full disk the overlay was a damaged file put in place, exit 0 and not a
    word. It is an error now, offline and live, after the labels: they are all there, and no file is left."""
    remount(tmpfs, "size=8k")  # room for the start of the file only
    run = ("predict", "--onnx", onnx_model, "--models", shared / "models", *LIGHTNING, "--num-clips", "1", "--json")
    offline = skel(*run, clip, "--out", tmpfs / "o.mp4", check=False)
    [res] = json.loads(offline.stdout)
    assert offline.returncode == 1 and res["windows"] and "overlay" not in res, offline.stderr
    assert error_line(offline) == f"error: {tmpfs / 'o.mp4'}: the video could not be written (no space left on device)"
    live = skel(*run, "--live", clip, "--max-frames", "30", "--window", "2", "--stride", "2", "--out",
                tmpfs / "l.mp4", check=False)
    summary = json.loads(live.stdout.splitlines()[-1])["summary"]
    assert live.returncode == 1 and summary["decisions"] >= 1 and summary["overlay"] is None, live.stderr
    assert summary["overlay_error"] == f"{tmpfs / 'l.mp4'}: the video could not be written (no space left on device)"
    assert error_line(live) == f"error: {summary['overlay_error']}"
    assert list(tmpfs.iterdir()) == []


@pytest.mark.slow
def test_live_drops_frames_when_processing_is_slow(onnx_model: Path, shared: Path, clip: Path) -> None:
    fast = load_classifier(onnx=onnx_model, num_clips=1, flip=False)

    def slow(x: np.ndarray) -> np.ndarray:  # a classifier that takes 0.4 s per decision
        time.sleep(0.4)
        return fast.net(x)

    params = ExtractStageParams(models=str(shared / "models"), pose_model="movenet-lightning")
    detector, pose = estimators(params)
    decisions: list[dict] = []
    summary = run_live(str(clip), Classifier(fast.spec, slow, 1, False), detector=detector, pose=pose,
                       params=params, live=LiveParams(window=2, stride=1, max_frames=60), emit=decisions.append)
    # a decision takes 0.4 s = 12 frames at 30 fps: frames pile up and the oldest are dropped
    assert summary.frames + summary.dropped == 60 and summary.dropped >= 10 and summary.decisions >= 1
    dropped = [d["dropped"] for d in decisions]
    assert len(decisions) == summary.decisions and dropped == sorted(dropped) and dropped[-1] <= summary.dropped


@pytest.mark.slow
def test_live_detector_runs_beside_the_poses_and_finds_the_same_person(shared: Path, clip: Path) -> None:
    params = ExtractStageParams(models=str(shared / "models"), pose_model="movenet-lightning")
    detector, pose = estimators(params)
    threads: set[str] = set()

    def recording(rgb: np.ndarray) -> np.ndarray:
        threads.add(threading.current_thread().name)
        return detector(rgb)

    cap, frames = cv2.VideoCapture(str(clip)), []
    while (item := cap.read())[0]:
        frames.append(cv2.cvtColor(item[1], cv2.COLOR_BGR2RGB))
    inline, beside = Poser(recording, pose, params), Poser(recording, pose, params, background=True)
    seen_inline = [inline(rgb) for rgb in frames]
    assert threads == {threading.main_thread().name}
    seen_beside = [beside(rgb) for rgb in frames]
    beside.close()
    assert any(name.startswith("detector") for name in threads)  # the boxes came from the detector's thread
    first = next(t for t, people in enumerate(seen_beside) if people)
    assert sum(bool(people) for people in seen_beside[first:]) >= 0.9 * (len(frames) - first)
    # the same lifter: keypoints within a few pixels of the synchronous run's (340x256 frames)
    gaps = [np.abs(next(iter(a.values()))[0][:, :2] - next(iter(b.values()))[0][:, :2]).mean()
            for a, b in zip(seen_inline[first:], seen_beside[first:], strict=True) if a and b]
    assert len(gaps) >= 0.9 * (len(frames) - first) and float(np.median(gaps)) < 3.0


@pytest.mark.slow
@pytest.mark.parametrize("signals", [
    ("SIGINT",),
    # how a service is stopped (systemd, docker stop, timeout) and a closed ssh session: the recording was lost, a
    # temporary left, no summary; a second Ctrl-C while the recording was closed lost it too
    pytest.param(("SIGTERM",), marks=pytest.mark.slow), pytest.param(("SIGHUP",), marks=pytest.mark.slow),
    pytest.param(("SIGINT", "SIGINT"), marks=pytest.mark.slow)])
def test_live_stops_cleanly_on_ctrl_c(onnx_model: Path, shared: Path, tmp_path: Path, signals: tuple[str, ...]) -> None:
    overlay = tmp_path / "interrupted.mp4"
    cmd = [*SKEL, "predict", "--live", str(shared / "media" / "stgcn_clean_and_jerk.mp4"), "--onnx", str(onnx_model),
           "--models", str(shared / "models"), *LIGHTNING, "--window", "8", "--stride", "4", "--num-clips", "1",
           "--json", "--out", str(overlay)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = json.loads(proc.stdout.readline())  # the first decision: it is running
    for name in signals:
        proc.send_signal(getattr(signal, name))
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err and "frame" in first
    summary = json.loads(rest.splitlines()[-1])["summary"]
    assert summary["interrupted"] and summary["frames"] + summary["dropped"] < 300
    assert _frame_count(overlay) == summary["frames"] and sorted(tmp_path.iterdir()) == [overlay]


def _two_input_onnx(path: Path) -> Path:
    """A classifier graph that also takes RGB frames (as RGBPose does): probs = softmax(mean(x) + mean(frames))."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["mx"], axes=[1, 2, 3, 4], keepdims=0),
             helper.make_node("ReduceMean", ["frames"], ["mf"], axes=[1, 2, 3, 4], keepdims=0),
             helper.make_node("Add", ["mx", "mf"], ["s"]),
             helper.make_node("Unsqueeze", ["s", "axis"], ["s2"]),
             helper.make_node("Softmax", ["s2"], ["probs"])]
    graph = helper.make_graph(
        nodes, "rgbpose", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 17, 12, 32, 32]),
                           helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["n", 3, 3, 128, 128])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor("axis", TensorProto.INT64, [1], [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


@pytest.mark.parametrize("flag", ["--run", "--model"])
def test_a_model_directory_that_does_not_exist_is_named(tmp_path: Path, flag: str) -> None:
    (tmp_path / "v.mp4").touch()
    line = error_line(skel("predict", tmp_path / "v.mp4", flag, tmp_path / "nodir", check=False))
    assert line == f"error: {flag} {tmp_path / 'nodir'}: no such directory", line


def test_a_model_folder_of_another_kind_is_named_with_the_flag_to_use(tmp_path: Path) -> None:
    """--model W/train said '0 train outputs match', --run W/train/FP 'run skel train -w W/train/FP first'."""
    (tmp_path / "v.mp4").touch()
    fp = tmp_path / "w" / "train" / "c8acf0925a414bd9"
    fp.mkdir(parents=True)
    (fp / "manifest.json").write_text("{}")
    (fp / "manifest.json").write_text('{"stage": "train"}')
    (render := tmp_path / "w" / "render" / "0123456789abcdef").mkdir(parents=True)
    (render / "manifest.json").write_text('{"stage": "render"}')
    w, train = tmp_path / "w", tmp_path / "w" / "train"
    said = [error_line(skel("predict", tmp_path / "v.mp4", flag, path, check=False))
            for flag, path in (("--model", train), ("--run", fp), ("--run", render), ("--run", train))]
    assert said == [
        f"error: --model {train} is the folder of a workdir's train outputs: give --run {w} (the most recently used) "
        f"or --model {train}/<fingerprint>",
        f"error: --run {fp} is a train output, not a workdir: give --model {fp}",
        f"error: --run {render} is a render output, not a workdir: give --run {w}",
        f"error: --run {train} is the folder of a workdir's train outputs: give --run {w}"], said


def test_ctrl_c_in_predict_says_interrupted_and_nothing_of_resuming(tmp_path: Path, monkeypatch) -> None:
    """predict commits nothing, so Ctrl-C (here while the model loads) is the one line `interrupted`, exit 130."""
    from typer.testing import CliRunner

    from apps.predict import model
    from cli import app

    def ctrl_c(**_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "load_classifier", ctrl_c)
    (tmp_path / "v.mp4").touch()
    (tmp_path / "m.onnx").touch()
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "v.mp4"), "--onnx", str(tmp_path / "m.onnx")])
    assert result.exit_code == 130 and result.output.strip() == "interrupted", result.output


@pytest.mark.slow
def test_predict_errors_are_one_line(onnx_model: Path, shared: Path, clip: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    cases = [
        (("predict", fake, "--run", tmp_path), "no complete train output"),
        (("predict", "--live", tmp_path / "missing.mp4", "--onnx", onnx_model), "cannot open it"),
        (("predict", "--live", "57", "--onnx", onnx_model), "57: cannot open it"),
        (("predict", clip, "--onnx", _two_input_onnx(tmp_path / "rgb.onnx")), "pose-only classifiers"),
        (("predict", clip, "--onnx", fake), "not a readable ONNX model"),
        (("predict", clip, "--live", "0", "--onnx", onnx_model), "not both"),
        (("predict", clip, "--model", tmp_path), "is a workdir: give --run"),
    ]
    (tmp_path / "train").mkdir()
    for args, message in cases:
        proc = skel(*args, "--models", shared / "models", check=False)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert len(errors) == 1 and message in errors[0], (args, proc.stderr)


@pytest.mark.slow
def test_each_videos_labels_are_shown_as_it_is_done(onnx_model: Path, shared: Path, clip: Path,
                                                     tmp_path: Path) -> None:
    """Every table was printed after the last video: a Ctrl-C then lost the labels of those done (their overlays
    were written, and the rerun refused them without --force)."""
    second = tmp_path / "second" / clip.name
    second.parent.mkdir()
    second.write_bytes(clip.read_bytes())
    args = ["predict", clip, second, "--onnx", onnx_model, "--models", shared / "models", "--num-clips", "1",
            *LIGHTNING, "--out", tmp_path / "ov"]
    run = as_terminal_job([*SKEL, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"})
    err = ctrl_c_when(run, lambda: bool(list((tmp_path / "ov").glob(f".{clip.stem}-2.mp4.tmp-*"))))  # 2nd begun
    assert run.returncode == 130 and f"{clip} (" in err, err


@pytest.mark.slow
def test_a_video_shorter_than_the_models_clips_is_labelled_with_a_warning(onnx_model: Path, shared: Path,
                                                                           clip: Path, tmp_path: Path) -> None:
    """A one-frame video (or a still image) came back labelled with its top classes and no word that they rest on
    one pose repeated to the model's clip length."""
    cap = cv2.VideoCapture(str(clip))
    ok, frame = cap.read()
    cap.release()
    assert ok
    one = tmp_path / "one.avi"
    writer = cv2.VideoWriter(str(one), cv2.VideoWriter_fourcc(*"MJPG"), 30, (frame.shape[1], frame.shape[0]))
    writer.write(frame)
    writer.release()
    proc = skel("predict", one, "--onnx", onnx_model, "--models", shared / "models", *LIGHTNING, "--json")
    (result,) = json.loads(proc.stdout)
    assert result["frames"] == 1 and f"warning: {one}: 1 frame(s), fewer than the " in proc.stderr, proc.stderr
    assert "of the model's clips: its labels rest on those frames repeated" in proc.stderr


@pytest.mark.slow
def test_a_bad_video_in_a_batch_is_one_error_and_the_rest_is_labelled(
        onnx_model: Path, shared: Path, clip: Path, tmp_path: Path) -> None:
    """One unreadable video neither stops the others nor loses their results; overlays of videos with the same
    name do not overwrite each other, and an overlay onto an input video is refused before any work."""
    fake, twin, gone = tmp_path / "fake.mp4", tmp_path / "twin" / clip.name, tmp_path / "gone.mp4"
    fake.write_text("not a video")
    twin.parent.mkdir()
    twin.write_bytes(clip.read_bytes())
    run = ("predict", "--onnx", onnx_model, "--models", shared / "models", "--num-clips", "1", *LIGHTNING)
    proc = skel(*run, fake, clip, gone, twin.parent, twin, "--out", tmp_path / "ov", "--parquet",
                tmp_path / "r.parquet", "--json", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert [(str(video) in line, why in line) for line, video, why in zip(errors, (fake, gone, twin.parent), (
        "not a readable video", "file not found", "is a directory"), strict=True)] == [(True, True)] * 3, errors
    results = json.loads(proc.stdout)
    assert [r.get("error") for r in results if "error" in r] == [e.removeprefix("error: ") for e in errors]
    good = [r for r in results if "error" not in r]
    assert [r["video"] for r in good] == [str(clip), str(twin)] and all(r["windows"] for r in good)
    assert sorted(p.name for p in (tmp_path / "ov").iterdir()) == ["c-1.mp4", "c-2.mp4"]
    assert {r["video"] for r in pq.read_table(tmp_path / "r.parquet").to_pylist()} == {str(clip), str(twin)}
    # a Parquet that cannot be written (under /proc: its folder is there, yet no file can be made in it, even by
    # root) loses no result: they are shown first
    failed = skel(*run, clip, "--parquet", "/proc/skel-results.parquet", "--json", check=False)
    assert failed.returncode == 1 and json.loads(failed.stdout)[0]["windows"], failed.stderr
    assert error_line(failed).startswith("error: --parquet /proc/skel-results.parquet"), failed.stderr

    before = twin.read_bytes()
    for out in (twin, twin.parent):  # the overlay would be the video itself (a file, or <dir>/<stem>.mp4)
        line = [ln for ln in skel(*run, twin, "--out", out, check=False).stderr.splitlines() if "error:" in ln]
        assert line and "is an input of this command: refusing" in line[0], line
    assert twin.read_bytes() == before


def test_predict_checks_its_output_files_before_any_work(tmp_path: Path) -> None:
    """--parquet replaced any file, the input video or the model included, and --out any file not an input,
    without a word; an --out that could not be written was found after every video was processed (its labels
    lost, a temporary left). Each is one line before the model is even loaded; --force replaces a file that is
    neither an input nor a folder."""
    video, model, mine, old = tmp_path / "v.mp4", tmp_path / "m.onnx", tmp_path / "mine.parquet", tmp_path / "o.mp4"
    for f, data in ((video, b"a video"), (model, b"a model"), (mine, b"my table"), (old, b"an overlay")):
        f.write_bytes(data)
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "link.parquet").symlink_to(tmp_path / "nowhere")
    cases = {
        ("--parquet", video): f"--parquet {video} is an input of this command: refusing to write over it",
        ("--parquet", model): f"--parquet {model} is an input of this command: refusing to write over it",
        ("--parquet", mine): f"--parquet {mine} exists: give another path, or --force to replace it",
        ("--out", old): f"--out {old} exists: give another path, or --force to replace it",
        ("--out", tmp_path / "folder.mp4"): f"--out {tmp_path / 'folder.mp4'}: is a directory",
        ("--out", tmp_path / "file" / "o.mp4"): f"--out {tmp_path / 'file' / 'o.mp4'}: {tmp_path / 'file'} is not a "
                                                "directory",
        # an overlay named .avi became a folder holding v.mp4
        ("--out", tmp_path / "o.avi"): f"--out {tmp_path / 'o.avi'}: overlays are MP4 files: name a .mp4 file, or a "
                                       "folder",
        ("--parquet", tmp_path / "link.parquet"): f"--parquet {tmp_path / 'link.parquet'} exists: give another path, "
                                                  "or --force to replace it",  # a dangling link: the path is taken
    }
    for (option, dest), message in cases.items():
        for force in ([], ["--force"]):
            proc = skel("predict", video, "--onnx", model, option, dest, *force, check=False)
            if force and message.endswith("--force to replace it"):
                assert "exists" not in proc.stderr  # past the check: fails later, on the fake model
                continue
            assert error_line(proc) == f"error: {message}", (option, force)
    several = skel("predict", video, tmp_path / "w.mp4", "--onnx", model, "--out", tmp_path / "file", check=False)
    assert error_line(several) == (f"error: --out {tmp_path / 'file' / 'v.mp4'}: {tmp_path / 'file'} is not a "
                                   "directory")  # several videos' overlays go in a folder
    one_file = skel("predict", video, tmp_path / "w.mp4", "--onnx", model, "--out", tmp_path / "all.mp4", check=False)
    assert error_line(one_file) == (f"error: --out {tmp_path / 'all.mp4'} names one file: give a folder for the "
                                    "overlays of 2 videos")
    for rec in ("rec", "recs/", "folder.mp4"):  # live: a recording written nowhere, found when the session ended
        live = skel("predict", "--live", video, "--onnx", model, "--out", tmp_path / rec, check=False)
        assert error_line(live) == (f"error: --out {tmp_path / rec}: a live session is recorded to one .mp4 file: "
                                    "name one"), rec
    exported = skel("export", tmp_path / "file" / "m.onnx", "-w", tmp_path / "w", check=False)  # before any work
    assert error_line(exported) == f"error: {tmp_path / 'file' / 'm.onnx'}: {tmp_path / 'file'} is not a directory"
    assert [f.read_bytes() for f in (video, model, mine, old)] == [b"a video", b"a model", b"my table", b"an overlay"]


def test_no_command_writes_into_a_stage_output_even_with_force(tmp_path: Path) -> None:
    """--force let `skel export` and `predict --parquet` write over a train output's best.pt (the model damaged,
    status then said so); any file inside a stage output is its stage's to write."""
    out = tmp_path / "w" / "train" / "c8acf0925a414bd9"
    out.mkdir(parents=True)
    (out / "manifest.json").write_text("{}")
    (best := out / "best.pt").write_bytes(b"weights")
    (video := tmp_path / "v.mp4").write_bytes(b"a video")
    (model := tmp_path / "m.onnx").write_bytes(b"a model")
    inside = f"is inside the stage output {out}, which only its stage writes: give a path outside it"
    cases = {("export", best, "-w", tmp_path / "w"): f"{best} {inside}",
             ("export-pkl", out / "new.pkl", "-w", tmp_path / "w"): f"{out / 'new.pkl'} {inside}",
             ("predict", video, "--onnx", model, "--parquet", best): f"--parquet {best} {inside}"}
    for command, said in cases.items():
        assert error_line(skel(*command, "--force", check=False)) == f"error: {said}", command
    assert best.read_bytes() == b"weights" and not (out / "new.pkl").exists()
    # a folder of the user's with a manifest.json of its own (a web app's) is no stage output; a folder named with
    # a dot is a folder; both pass the checks (and fail on the fake model)
    (project := tmp_path / "project").mkdir()
    (project / "manifest.json").write_text('{"name": "my-web-app"}')
    for dest in (project / "out" / "r.parquet", project / "overlays_v1.2"):
        option = "--parquet" if dest.suffix == ".parquet" else "--out"
        line = error_line(skel("predict", video, "--onnx", model, option, dest, check=False))
        assert "not a readable ONNX model" in line, line


@pytest.mark.slow
def test_model_takes_a_train_outputs_fingerprint_prefix(demo_run) -> None:
    """--model W/train/PREFIX, the fingerprint as `skel status` lists it (8 characters), as --from takes it."""
    from apps.predict.model import load_classifier

    workdir, _ = demo_run
    for full in (workdir / "train").iterdir():
        got = load_classifier(model_dir=workdir / "train" / full.name[:8], num_clips=1)
        assert Path(got.source).resolve() == full.resolve()


@pytest.mark.parametrize(("args", "said"), [
    (("--out", "{t}/o.mp4", "--parquet", "{t}/o.mp4"), "--parquet {t}/o.mp4 is also where --out writes: name another"
                                                        " file"),
    (("--max-frames", "20"), "--max-frames stops a --live source; video files are labelled whole (--window and "
                             "--stride choose the windows)"),
], ids=["same-file", "max-frames"])
def test_options_that_would_do_nothing_or_overwrite_each_other_are_refused_first(tmp_path: Path, args: tuple,
                                                                                 said: str) -> None:
    """--out and --parquet naming one file: the table replaced the overlay, which was announced (exit 0); --max-frames
    with video files was ignored. Both said before any model loads (the model here is not one)."""
    (tmp_path / "v.mp4").touch()
    (tmp_path / "m.onnx").touch()
    run = skel("predict", tmp_path / "v.mp4", "--onnx", tmp_path / "m.onnx",
               *(a.format(t=tmp_path) for a in args), check=False)
    assert error_line(run) == "error: " + said.format(t=tmp_path) and run.returncode == 1


def test_parquet_with_live_is_refused(tmp_path: Path) -> None:
    """The live branch never wrote the table it was asked for (exit 0)."""
    (tmp_path / "m.onnx").touch()
    run = skel("predict", "--live", "0", "--onnx", tmp_path / "m.onnx", "--parquet", tmp_path / "p.parquet",
               check=False)
    assert error_line(run).startswith("error: --parquet writes the windows of video files") and run.returncode == 1


def test_an_out_folder_that_cannot_be_written_is_refused_first(tmpfs: Path) -> None:
    """A read-only folder was found after every video was labelled (the labels printed, exit 1): refused first."""
    (tmpfs / "v.mp4").touch()
    (tmpfs / "m.onnx").touch()
    (tmpfs / "out").mkdir()
    remount(tmpfs, "ro")
    for option, dest in (("--out", tmpfs / "out" / "o.mp4"), ("--parquet", tmpfs / "out" / "o.parquet")):
        run = skel("predict", tmpfs / "v.mp4", "--onnx", tmpfs / "m.onnx", option, dest, check=False)
        assert error_line(run) == f"error: {option} {dest}: {tmpfs / 'out'} is not writable"
