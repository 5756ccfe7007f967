"""`skel test` / `skel fuse` metrics on hand-built score tables (no training needed)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from pipeline.atomic import write_json
from pipeline.cluster import Cluster
from pipeline.errors import SkelError
from pipeline.runner import Upstream, run_stage
from stages.test.fuse import FuseStage
from stages.test.metrics import confusion_matrix, mean_class_accuracy, mean_nll, metrics, top_k_accuracy
from stages.test.params import FuseParams
from stages.test.report import SCORES, read_scores, write_scores

# 6 samples, 6 classes; labels 0,0,1,2,3,5
LABELS = np.array([0, 0, 1, 2, 3, 5])
SCORES_A = np.array([
    [0.90, 0.02, 0.02, 0.02, 0.02, 0.02],  # 0 -> 0 hit
    [0.10, 0.50, 0.05, 0.05, 0.05, 0.25],  # 0 -> 1 miss (label ranked 3rd)
    [0.05, 0.80, 0.05, 0.04, 0.03, 0.03],  # 1 -> 1 hit
    [0.30, 0.02, 0.25, 0.01, 0.40, 0.02],  # 2 -> 4 miss (label ranked 3rd)
    [0.01, 0.01, 0.01, 0.95, 0.01, 0.01],  # 3 -> 3 hit
    [0.01, 0.01, 0.01, 0.01, 0.01, 0.95],  # 5 -> 5 hit
])  # fmt: skip


def test_top_k() -> None:
    assert top_k_accuracy(SCORES_A, LABELS, 1) == pytest.approx(4 / 6)
    assert top_k_accuracy(SCORES_A, LABELS, 3) == pytest.approx(1.0)
    assert top_k_accuracy(SCORES_A, LABELS, 5) == 1.0
    assert top_k_accuracy(SCORES_A[:, :3], np.array([0, 1]).repeat(3), 5) == 1.0  # k capped at the class count


def test_mean_nll_is_the_true_class_log_loss() -> None:
    # true-class probabilities 0.90, 0.10, 0.80, 0.25, 0.95, 0.95 (rows of SCORES_A at LABELS)
    expected = -(np.log(0.90) + np.log(0.10) + np.log(0.80) + np.log(0.25) + 2 * np.log(0.95)) / 6
    assert mean_nll(SCORES_A, LABELS) == pytest.approx(expected)
    assert mean_nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-np.log(1e-12))  # finite at p = 0


def test_fuse_eval_joins_parts_by_id_and_names_bad_input(tmp_path: Path) -> None:
    """tools/fuse_eval.py: a stream's parts (disjoint clips, any order) are joined by sample id before fusing;
    overlapping parts, other clips and a missing part are one-line errors naming the input."""
    import subprocess
    import sys

    ids = np.array([f"c{i}" for i in range(6)])
    other = np.roll(SCORES_A, 1, axis=1)  # a second stream, each row's scores shifted one class on
    for name, probs in (("a", SCORES_A), ("b", other)):
        np.savez(tmp_path / f"{name}0.npz", ids=ids[3:], labels=LABELS[3:], probs=probs[3:])  # parts out of order
        np.savez(tmp_path / f"{name}1.npz", ids=ids[:3], labels=LABELS[:3], probs=probs[:3])
    tool = Path(__file__).resolve().parents[1] / "tools" / "fuse_eval.py"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True,
                              cwd=tool.parents[1])

    a, b = f"{tmp_path}/a0.npz,{tmp_path}/a1.npz", f"{tmp_path}/b0.npz,{tmp_path}/b1.npz"
    out = run(a, b, "--weights", "1:0", "1:1").stdout
    assert f"| 1:0 | 66.67% (4) | {mean_nll(SCORES_A, LABELS):.4f} |" in out
    both = (SCORES_A + other) / 2
    assert f"| 1:1 | {top_k_accuracy(both, LABELS, 1):.2%} " in out and f"{mean_nll(both, LABELS):.4f} |" in out
    twice = run(f"{tmp_path}/a0.npz,{tmp_path}/a0.npz")
    assert twice.returncode != 0 and "the parts score some clips twice" in twice.stderr
    assert "other clips or labels" in run(a, f"{tmp_path}/b0.npz").stderr
    missing = run(f"{tmp_path}/a0.npz,{tmp_path}/gone.npz")
    assert missing.returncode != 0 and "gone.npz" in missing.stderr and "Traceback" not in missing.stderr


def test_mean_class_accuracy_follows_pyskl() -> None:
    # classes present as label or prediction: 0 (1/2), 1 (1/1), 2 (0/1), 3 (1/1), 4 (predicted only: 0), 5 (1/1)
    assert mean_class_accuracy(SCORES_A, LABELS) == pytest.approx((0.5 + 1 + 0 + 1 + 0 + 1) / 6)
    perfect = np.eye(6)[LABELS]
    assert mean_class_accuracy(perfect, LABELS) == 1.0  # class 4 absent everywhere: not counted


def test_confusion_rows_are_true_classes() -> None:
    cm = confusion_matrix(SCORES_A.argmax(1), LABELS, 6)
    assert cm[0, 0] == 1 and cm[0, 1] == 1 and cm[2, 4] == 1 and cm.sum() == 6


def _fake_test_output(workdir: Path, fp: str, ids: list[str], labels: np.ndarray, scores: np.ndarray) -> Path:
    out = workdir / "test" / fp
    write_scores(out / SCORES, ids, labels, scores)
    write_json(out / "metrics.json", {"classes": [f"c{i}" for i in range(scores.shape[1])]})
    write_json(out / "manifest.json", {"stage": "test", "fingerprint": fp, "state": "complete", "params": {},
                                       "finished": "2026-01-01T00:00:00+00:00"})
    return out


def test_fuse_weights_and_alignment(tmp_path: Path) -> None:
    ids = [f"s{i}" for i in range(6)]
    scores_b = np.eye(6)[LABELS] * 0.6 + 0.02  # a second stream: always right, less sure
    a = _fake_test_output(tmp_path, "a" * 16, ids, LABELS, SCORES_A)
    order = [5, 3, 1, 0, 2, 4]  # the other stream lists samples in another order
    b = _fake_test_output(tmp_path, "b" * 16, [ids[i] for i in order], LABELS[order], scores_b[order])
    inputs = {"scores0": Upstream("test", "a" * 16, a), "scores1": Upstream("test", "b" * 16, b)}
    out = run_stage(FuseStage(), tmp_path, FuseParams(weights=(1.0, 2.0)), Cluster(workers=0), inputs=inputs,
                    quiet=True)
    got_ids, got_labels, fused = read_scores(out / SCORES)
    assert got_ids == ids and (got_labels == LABELS).all()
    np.testing.assert_allclose(fused, SCORES_A + 2 * scores_b, rtol=1e-6)
    m = metrics(fused, LABELS)
    assert m["top1"] == 1.0 and m["mean_class_accuracy"] == 1.0
    rows = list(csv.reader((out / "confusion.csv").open()))
    assert rows[0][1:] == [f"c{i}" for i in range(6)] and rows[1][1:3] == ["2", "0"]
    png = cv2.imread(str(out / "confusion.png"))
    assert png is not None and png.shape[0] >= 400 and png.std() > 0  # a decodable, non-blank figure

    # the CLI: fingerprint prefixes, default weights 1:1
    result = CliRunner().invoke(app, ["fuse", "aaaa", str(b), "-w", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    assert "top-1 1.0000" in result.output.replace("\n", " ")
    outputs = sorted((tmp_path / "fuse").iterdir())
    result = CliRunner().invoke(app, ["fuse", "aaaa", "bbbb", "--weights", "1,2,3", "-w", str(tmp_path)])
    assert result.exit_code == 1 and "3 weights for 2" in result.output
    assert sorted((tmp_path / "fuse").iterdir()) == outputs  # refused before an output exists


def test_an_output_given_twice_to_fuse_is_refused(tmp_path: Path) -> None:
    """Its scores counted twice without a word (weights say how much each output counts)."""
    (out := tmp_path / "test" / "abc").mkdir(parents=True)
    with pytest.raises(SkelError, match="is given twice \\(scores0 and scores2\\): its scores would count twice"):
        FuseStage().check_data({"scores0": out, "scores1": tmp_path, "scores2": out / ".." / "abc"}, FuseParams())
