"""stages.render.preview: PNG strip size, body-part colours, and a preview of a synthetic clip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from apps.synth import generate
from pipeline.atomic import temp_name
from stages.extract.mp4 import Mp4Writer
from stages.render.preview import GAP, GROUP_RGB, TITLE_HEIGHT, ZOOM, save_preview
from stores.coco import LIMBS


def _rgb_at(image: np.ndarray, tile: int, y: int, x: int, w: int, top: int = 0) -> tuple[int, ...]:
    """RGB of the screen pixel at the centre of volume pixel (y, x) in frame `tile` of the strip."""
    row, col = top + y * ZOOM + ZOOM // 2, tile * (w * ZOOM + GAP) + x * ZOOM + ZOOM // 2
    return tuple(int(v) for v in image[row, col, ::-1])


def test_joint_strip_size_and_colours(tmp_path: Path) -> None:
    k, t, h, w = 17, 10, 16, 20
    vol = np.zeros((k, t, h, w), np.float32)
    vol[9, 0, 5, 7] = 1.0  # left wrist, first frame: arms
    vol[13, t - 1, 8, 3] = 1.0  # left knee, last frame: legs
    vol[0, 0, 10, 10] = vol[7, 0, 10, 10] = 1.0  # nose and elbow overlap: per-colour maximum
    out = save_preview(vol, "joint", tmp_path / "sub" / "j.png", frames=5, title="wave_000 joint")
    assert out == tmp_path / "sub" / "j.png" and sorted(p.name for p in out.parent.iterdir()) == ["j.png"]
    img = cv2.imread(str(out), cv2.IMREAD_COLOR)
    assert img.shape == (TITLE_HEIGHT + h * ZOOM, 5 * w * ZOOM + 4 * GAP, 3)
    assert _rgb_at(img, 0, 5, 7, w, TITLE_HEIGHT) == GROUP_RGB["arms"]
    assert _rgb_at(img, 4, 8, 3, w, TITLE_HEIGHT) == GROUP_RGB["legs"]
    both = tuple(max(a, b) for a, b in zip(GROUP_RGB["head"], GROUP_RGB["arms"], strict=True))
    assert _rgb_at(img, 0, 10, 10, w, TITLE_HEIGHT) == both
    assert _rgb_at(img, 2, 5, 7, w, TITLE_HEIGHT) == (0, 0, 0)  # background is black


def test_limb_colours_uint8_and_short_clip(tmp_path: Path) -> None:
    t, h, w = 3, 12, 12
    vol = np.zeros((len(LIMBS), t, h, w), np.uint8)
    vol[LIMBS.index((11, 12)), 1, 6, 6] = 255  # hip-hip: torso
    vol[LIMBS.index((5, 7)), 1, 7, 2] = 255  # shoulder-elbow: arms
    vol[LIMBS.index((0, 1)), 1, 9, 9] = 128  # nose-eye: head, half intensity
    img = cv2.imread(str(save_preview(vol, "limb", tmp_path / "l.png")), cv2.IMREAD_COLOR)
    assert img.shape == (h * ZOOM, 3 * w * ZOOM + 2 * GAP, 3)  # frames capped at T, no title band
    assert _rgb_at(img, 1, 6, 6, w) == GROUP_RGB["torso"]
    assert _rgb_at(img, 1, 7, 2, w) == GROUP_RGB["arms"]
    half = np.array(GROUP_RGB["head"]) * 128 / 255
    assert np.abs(np.array(_rgb_at(img, 1, 9, 9, w)) - half).max() <= 1


def test_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        save_preview(np.zeros((17, 2, 4, 4)), "bones", tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\[17, T, H, W\]"):
        save_preview(np.zeros((len(LIMBS) + 1, 2, 4, 4)), "joint", tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def _gaussians(keypoint: np.ndarray, score: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Minimal joint heatmaps [V, T, H, W] (max over persons), independent of the render stage."""
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    d2 = (xs - keypoint[..., 0, None, None]) ** 2 + (ys - keypoint[..., 1, None, None]) ** 2
    heat = np.exp(-d2 / (2 * sigma**2)) * np.where(score >= 1e-3, score, 0.0)[..., None, None]
    return heat.max(axis=0).transpose(1, 0, 2, 3).astype(np.float32)


def test_synthetic_clip_preview(tmp_path: Path) -> None:
    ann = generate(1, seed=0)["annotations"][1]  # jumping_jacks
    h, w = ann["img_shape"]
    size = 48
    kp = ann["keypoint"][:1] * np.float32([size / w, size / h])
    vol = _gaussians(kp, ann["keypoint_score"][:1], (size, size), sigma=0.8)
    out = save_preview(vol, "joint", tmp_path / "jj.png", title=ann["frame_dir"])
    img = cv2.imread(str(out), cv2.IMREAD_COLOR)
    assert img.shape == (TITLE_HEIGHT + size * ZOOM, 8 * size * ZOOM + 7 * GAP, 3)
    x, y = np.rint(kp[0, 0, 9]).astype(int)  # left wrist in frame 0 (first tile): visible in this clip
    assert ann["keypoint_score"][0, 0, 9] > 0.3 and 0 <= x < size and 0 <= y < size
    rgb = np.array(_rgb_at(img, 0, y, x, size, TITLE_HEIGHT))
    assert rgb.argmax() == 0 and rgb[0] > 100  # orange-ish: red dominant


def test_a_name_of_240_bytes_is_written_and_its_killed_temporary_reclaimed(tmp_path: Path) -> None:
    """A video named with 240 characters failed its preview (and predict its overlay) after the work was done: the
    temporary's name, 20 bytes longer, passed the file system's 255. Long names get a shortened temporary."""
    final = tmp_path / f"{'é' * 118}[1].mp4"  # 245 bytes; brackets, which a glob reads as a class
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    killed = temp_name(final).with_name(temp_name(final).name.rpartition("-")[0] + f"-{dead}.mp4")
    killed.write_bytes(b"half a video")
    with Mp4Writer(final, 25) as writer:
        writer.write(np.zeros((48, 64, 3), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_a_killed_writers_temporary_is_reclaimed_by_the_next_writer(tmp_path: Path) -> None:
    """A predict killed while it wrote an overlay left `.out.mp4.tmp-<pid>.mp4` in the user's folder for good (the
    pid before the extension OpenCV needs: the reclaim took it for no pid). A live writer's is left alone."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    killed, live = (tmp_path / f".out.mp4.tmp-{pid}.mp4" for pid in (dead, os.getppid()))
    killed.write_bytes(b"half a video")
    live.write_bytes(b"being written")
    with Mp4Writer(tmp_path / "out.mp4", 25) as writer:
        writer.write(np.zeros((48, 64, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out.mp4"]
