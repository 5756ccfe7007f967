"""apps.synth: format, determinism, class separability and the COCO left/right convention."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from apps.synth import CLASSES, generate
from stores.coco import LEFT_KP, NUM_KEYPOINTS, RIGHT_KP
from stores.safepickle import dump_pickle, load_pickle


@pytest.fixture(scope="module")
def data() -> dict:
    return generate(20, seed=0)


def test_format(data: dict) -> None:
    assert data["classes"] == list(CLASSES) and len(CLASSES) >= 5
    anns = data["annotations"]
    assert len(anns) == 20 * len(CLASSES)
    assert len({a["frame_dir"] for a in anns}) == len(anns)
    assert sorted(data["split"]["train"] + data["split"]["test"]) == sorted(a["frame_dir"] for a in anns)
    assert len(data["split"]["test"]) == 5 * len(CLASSES)
    for a in anns:
        m, t = a["keypoint"].shape[:2]
        assert a["keypoint"].dtype == np.float32 and a["keypoint"].shape == (m, t, NUM_KEYPOINTS, 2)
        assert a["keypoint_score"].dtype == np.float32 and a["keypoint_score"].shape == (m, t, NUM_KEYPOINTS)
        assert m in (1, 2) and 24 <= t <= 80 and a["total_frames"] == t
        assert a["img_shape"] == a["original_shape"] == (240, 320) and type(a["label"]) is int
        assert np.isfinite(a["keypoint"]).all()
        main = a["keypoint_score"][0]
        assert ((main > 0.3) & (main <= 1.0) | (main < 1e-3)).all()
    assert any(a["keypoint"].shape[0] == 2 for a in anns)
    assert any((a["keypoint_score"][0] < 1e-3).any() for a in anns)
    outside = [(a["keypoint"][..., 0] < 0) | (a["keypoint"][..., 0] >= 320) | (a["keypoint"][..., 1] < 0)
               | (a["keypoint"][..., 1] >= 240) for a in anns]  # fmt: skip
    assert 0 < sum(o.any() for o in outside) < len(anns) / 2  # sometimes, slightly
    assert max(o.mean() for o in outside) < 0.2


def test_deterministic_and_seeded(data: dict) -> None:
    again, other = generate(20, seed=0), generate(20, seed=1)
    assert again["split"] == data["split"]
    for a, b in zip(data["annotations"], again["annotations"], strict=True):
        assert np.array_equal(a["keypoint"], b["keypoint"])
        assert np.array_equal(a["keypoint_score"], b["keypoint_score"])
    assert not np.array_equal(data["annotations"][0]["keypoint"], other["annotations"][0]["keypoint"])


def test_every_class_in_both_splits(data: dict) -> None:
    label = {a["frame_dir"]: a["label"] for a in data["annotations"]}
    for split in ("train", "test"):
        assert {label[f] for f in data["split"][split]} == set(range(len(CLASSES)))


def test_clip_does_not_depend_on_set_size(data: dict) -> None:
    """Clip i of a class is the same whether 3 or 20 clips per class are generated (a demo's small set is a
    prefix of the big one); speed is measured in bench/, not asserted here."""
    small = {a["frame_dir"]: a for a in generate(3, seed=0)["annotations"]}
    assert len(small) == 3 * len(CLASSES)
    for a in data["annotations"]:
        if a["frame_dir"] in small:
            assert np.array_equal(a["keypoint"], small[a["frame_dir"]]["keypoint"]), a["frame_dir"]
            assert np.array_equal(a["keypoint_score"], small[a["frame_dir"]]["keypoint_score"]), a["frame_dir"]


def _features(ann: dict, n: int = 32) -> np.ndarray:
    """Mirror-invariant motion statistics of person 0, resampled to n frames, in torso units."""
    kp = ann["keypoint"][0, np.linspace(0, ann["total_frames"] - 1, n).round().astype(int)].astype(float)
    hip, neck = kp[:, [11, 12]].mean(1), kp[:, [5, 6]].mean(1)
    torso = np.median(np.linalg.norm(neck - hip, axis=1))
    rel = (kp - hip[:, None]) / torso
    stats = np.stack([rel[..., 0].std(0), rel[..., 1].std(0), rel[..., 1].mean(0), np.abs(rel[..., 0]).mean(0)])
    left, right = stats[:, LEFT_KP], stats[:, RIGHT_KP]
    drift = np.abs(hip[-1, 0] - hip[0, 0]) / torso, hip[:, 1].std() / torso
    return np.concatenate([stats[:, 0], np.maximum(left, right).ravel(), np.minimum(left, right).ravel(), drift])


def test_classes_separable(data: dict) -> None:
    anns = {a["frame_dir"]: a for a in data["annotations"]}

    def xy(split: str) -> tuple[np.ndarray, np.ndarray]:
        rows = [anns[f] for f in data["split"][split]]
        return np.stack([_features(a) for a in rows]), np.array([a["label"] for a in rows])

    x_train, y_train = xy("train")
    x_test, y_test = xy("test")
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    centroids = np.stack([x_train[y_train == c].mean(0) for c in range(len(CLASSES))])
    pred = np.linalg.norm(x_test[:, None] - centroids[None], axis=2).argmin(1)
    assert (pred == y_test).mean() >= 0.9


def test_left_is_image_right(data: dict) -> None:
    for a in data["annotations"]:
        kp = a["keypoint"][0]
        for left, right in ((5, 6), (11, 12)):
            assert np.median(kp[:, left, 0] - kp[:, right, 0]) > 0, a["frame_dir"]


def test_dump_pickle_roundtrip(tmp_path: Path) -> None:
    data = generate(2, seed=5)
    path = tmp_path / "synth.pkl"
    dump_pickle(data, path)
    loaded = load_pickle(path)  # only plain types and numpy arrays inside
    assert [p.name for p in tmp_path.iterdir()] == ["synth.pkl"]
    assert loaded["split"] == data["split"] and loaded["classes"] == data["classes"]
    assert np.array_equal(loaded["annotations"][3]["keypoint"], data["annotations"][3]["keypoint"])
    assert loaded["annotations"][3]["img_shape"] == (240, 320)
