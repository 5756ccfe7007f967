"""`skel predict`: a real video through extract -> render -> a model trained on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from apps.predict.windows import windows
from tests.conftest import skel


def test_windows_cover_the_video() -> None:
    assert windows(40, None, None) == [(0, 40)]
    assert windows(40, 48, 24) == [(0, 40)]
    wins = windows(100, 48, 24)
    assert wins[0] == (0, 48) and wins[-1] == (52, 100) and all(b - a == 48 for a, b in wins)


def test_predict_a_real_video_with_windows_and_overlay(demo_run, shared: Path, tmp_path: Path) -> None:
    workdir, _ = demo_run
    video = shared / "media" / "stgcn_clean_and_jerk.mp4"  # 300 frames, 340x256
    clip = tmp_path / "clip.mp4"
    cap, writer = cv2.VideoCapture(str(video)), None
    for _ in range(60):  # keep the test short: the first 2 seconds
        ok, frame = cap.read()
        assert ok
        if writer is None:
            writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30, frame.shape[1::-1])
        writer.write(frame)
    writer.release()
    overlay = tmp_path / "overlay.mp4"
    proc = skel("predict", clip, "--run", workdir, "--models", shared / "models", "--window", "40", "--stride", "20",
                "--num-clips", "2", "--out", overlay, "--json")
    [result] = json.loads(proc.stdout)
    classes = {"wave", "jumping_jacks", "squat", "walk", "boxing", "arm_circles"}
    assert result["frames"] == 60 and [(w["start"], w["stop"]) for w in result["windows"]] == [(0, 40), (20, 60)]
    for w in result["windows"]:
        scores = [t["score"] for t in w["top"]]
        assert len(w["top"]) == 5 and {t["label"] for t in w["top"]} <= classes
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-5
    out = cv2.VideoCapture(str(overlay))
    assert int(out.get(cv2.CAP_PROP_FRAME_COUNT)) == 60
    ok, frame = out.read()
    assert ok and np.abs(frame.astype(int) - cv2.VideoCapture(str(clip)).read()[1]).max() > 50  # drawn on

    table = skel("predict", clip, "--run", workdir, "--models", shared / "models", "--num-clips", "1")
    assert "top-1" in table.stderr


def test_predict_errors_are_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    proc = skel("predict", fake, "--run", tmp_path, check=False)
    assert proc.returncode == 1 and "no complete train output" in proc.stderr and "Traceback" not in proc.stderr
