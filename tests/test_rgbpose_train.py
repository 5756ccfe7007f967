"""RGBPose-Conv3D end to end: synthetic videos -> triplets -> render -> frames -> `skel train --model rgbpose`
(overfits) -> `skel test` (fused softmax scores and metrics).

Six 12-frame 64 x 64 videos of a stick figure that walks right (class 0, red) or falls down (class 1, green);
the triplets hold its exact keypoints. Pose clips are 8 frames at 16 x 16, RGB clips 2 frames at 64 x 64.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from inference import checkpoint
from inference.data import eval_set
from pipeline.cluster import Cluster
from pipeline.errors import SkelError
from pipeline.runner import make_plan, run_stage
from stages.frames.params import FramesParams
from stages.frames.stage import FramesStage
from stages.render.stage import RenderParams, RenderStage
from stages.test.report import read_scores
from stages.train.stage import TrainParams, TrainStage
from stores.coco import LIMBS
from stores.triplets import Skeleton
from tests.support import REPO, extract_output

pytestmark = pytest.mark.usefixtures("torch_threads")

SIDE, T = 64, 12
MOTIONS = {0: ((1.5, 0.0), (255, 0, 0)), 1: ((0.0, 1.5), (0, 255, 0))}  # label -> (px per frame, RGB colour)
MODEL = ["--model", "rgbpose", "--base-channels", "4", "--stage-blocks", "1,1,1", "--rgb-base-channels", "8",
         "--rgb-stage-blocks", "1,1,1,1", "--clip-len", "8", "--input-size", "16", "--dropout", "0"]  # fmt: skip
TRAIN = ["--epochs", "4", "--repeat", "8", "-b", "6", "--lr", "0.1", "--val-split", "train", "--loader-workers", "0",
         "--threads", "1", "-q"]  # fmt: skip


def _keypoints(label: int, seed: int) -> np.ndarray:
    """float32 [1, T, 17, 2]: a random 14 x 20 px figure moving as its class says."""
    rng = np.random.RandomState(seed)
    (vx, vy), _ = MOTIONS[label]
    base = rng.uniform((0, 0), (14, 20), (17, 2)) + (12, 10)
    steps = np.arange(T, dtype=np.float64)[:, None, None] * np.array([vx, vy])
    return (base[None] + steps)[None].astype(np.float32)


def _write_video(path: Path, kp: np.ndarray, colour: tuple[int, int, int]) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (SIDE, SIDE))
    for t in range(T):
        img = np.full((SIDE, SIDE, 3), 40, np.uint8)
        for a, b in LIMBS:
            pa, pb = (tuple(int(round(v)) for v in kp[0, t, i]) for i in (a, b))
            cv2.line(img, pa, pb, colour[::-1], 2)  # BGR
        writer.write(img)
    writer.release()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Triplets as extract writes them for 3 videos per class, rendered (16 x 16) and their frames (64)."""
    wd = tmp_path_factory.mktemp("rgbpose_train")
    samples = {}
    for i in range(6):
        label, sid = i % 2, f"clip{i}"
        kp = _keypoints(label, i)
        video = wd / f"{sid}.mp4"
        _write_video(video, kp, MOTIONS[label][1])
        samples[sid] = ({"label": label, "split": "train", "img_h": SIDE, "img_w": SIDE, "fps": 10.0,
                         "source": str(video)}, Skeleton(kp, np.full((1, T, 17), 0.9, np.float32)))
    extract_output(wd, samples)
    with Cluster(workers=0) as cluster:
        run_stage(RenderStage(), wd, RenderParams(size=16, sigma=1.5), cluster, quiet=True)
        frames = run_stage(FramesStage(), wd, FramesParams(size=64), cluster, quiet=True)
    assert json.loads((frames / "manifest.json").read_text())["summary"]["samples"] == 6
    return wd


@pytest.mark.slow
def test_rgbpose_train_overfits_and_test_scores_fused(workdir: Path) -> None:
    result = CliRunner().invoke(app, ["train", "-w", str(workdir), *MODEL, *TRAIN])
    assert result.exit_code == 0, result.output
    (out,) = workdir.glob("train/*")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["state"] == "complete" and set(manifest["inputs"]) == {"volumes", "frames"}
    assert manifest["summary"]["last_top1"] == 1.0, manifest["summary"]
    config = checkpoint.load(out / checkpoint.LAST)["config"]
    assert config["model"] == "rgbpose" and config["model_args"]["pose_base_channels"] == 4
    assert config["clip_spec"]["rgb_len"] == 2 and config["clip_spec"]["rgb_size"] == 64

    # Without explicit inputs the stage finds the frames itself (same fingerprint: the same run).
    params = TrainParams(**manifest["params"])
    plan = make_plan(TrainStage(), workdir, params)
    assert plan.cached and plan.out == out and set(plan.inputs) == {"volumes", "frames"}

    clips = eval_set(config, {k: workdir / v["path"] for k, v in manifest["inputs"].items()}, "train", num_clips=2,
                     flip=True)
    (imgs, heat), _ = clips[0]
    assert imgs.shape == (4, 3, 2, 64, 64) and heat.shape == (4, 17, 8, 16, 16)
    torch.testing.assert_close(imgs[2:], imgs[:2].flip(-1))  # the mirrored views: one flip for both modalities
    torch.testing.assert_close(heat[2:], heat[:2].flip(-1)[:, clips.perm])

    result = CliRunner().invoke(app, ["test", "-w", str(workdir), "--split", "train", "--num-clips", "2", "--last",
                                      "-j", "0", "-q"])
    assert result.exit_code == 0, result.output
    (train_out,) = workdir.glob("train/*")
    said = "".join(result.output.split())  # wrapped anywhere
    assert f"scored{train_out / 'last.pt'}(jointvolumes)onthetrainsplit" in said
    (test_out,) = workdir.glob("test/*")
    metrics = json.loads((test_out / "metrics.json").read_text())
    assert metrics["samples"] == 6 and metrics["top1"] == 1.0
    _, labels, scores = read_scores(test_out / "scores.parquet")
    assert scores.shape == (6, 2) and np.allclose(scores.sum(1), 1.0, atol=1e-5)  # fused softmax, 1:1


def test_rgbpose_needs_frames_of_its_volumes(workdir: Path, tmp_path: Path) -> None:
    shutil.copytree(workdir / "render", tmp_path / "render")  # volumes only, no frames output
    with pytest.raises(SkelError, match="no complete frames output"):
        make_plan(TrainStage(), tmp_path, TrainParams(model="rgbpose", clip_len=8))
    result = CliRunner().invoke(app, ["train", "-w", str(tmp_path), *MODEL, *TRAIN])
    assert result.exit_code != 0 and "skel frames" in result.output
    with pytest.raises(ValueError, match="multiple of speed_ratio"):
        TrainParams(model="rgbpose", clip_len=10)


@pytest.mark.slow
def test_rgbpose_ddp_two_processes_keep_identical_replicas(workdir: Path, tmp_path: Path) -> None:
    ddp = tmp_path / "ddp"
    shutil.copytree(workdir, ddp, ignore=shutil.ignore_patterns("train", "test"))
    train = [a for a in TRAIN if a not in ("-q",)]
    cmd = [sys.executable, "-m", "cli", "train", "-w", str(ddp), *MODEL, *train, "--epochs", "1", "--nproc", "2", "-q"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out,) = ddp.glob("train/*")
    for shard in sorted((out / "_shards").glob("*.json")):
        digests = json.loads(shard.read_text())["weight_digests"]
        assert len(digests) == 2 and digests[0] == digests[1]
    assert checkpoint.load(out / checkpoint.LAST)["world_size"] == 2


def test_samples_without_frames_are_said_once(workdir: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A training builds its datasets each epoch and a test in each shard: the samples left out for want of RGB
    frames are said once."""
    import pyarrow.parquet as pq

    (frames,) = workdir.glob("frames/*")
    shutil.copytree(frames, tmp_path / frames.name)
    index = pq.read_table(tmp_path / frames.name / "index.parquet")
    pq.write_table(index.slice(1), tmp_path / frames.name / "index.parquet")
    (volumes,) = workdir.glob("render/*")
    spec = {"rgb_len": 2, "pose_len": 8, "rgb_size": 64, "pose_size": 16}
    config = {"model": "rgbpose", "test_size": 16, "clip_len": 8, "clip_spec": spec}
    with caplog.at_level("WARNING", logger="skel"):
        sizes = [len(eval_set(config, {"volumes": volumes, "frames": tmp_path / frames.name}, "train", num_clips=1))
                 for _ in range(3)]
    assert sizes == [5, 5, 5]
    said = [r.getMessage() for r in caplog.records if "have no RGB frames" in r.getMessage()]
    assert len(said) == 1 and "1 of 6 samples" in said[0], said
