"""Readers outside the runner check what they read: `skel export`, `skel predict --run/--model`,
`skel export-pkl` and `skel fuse` refuse a damaged file of a stage output with one line naming it and the
repair, and read the undamaged file as before; a checkpoint outside any output is read as is."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from apps.predict.model import load_classifier
from inference import checkpoint
from pipeline.checked import checked
from pipeline.cluster import Cluster
from pipeline.errors import SkelError
from pipeline.integrity import sha256
from pipeline.runner import run_stage
from pipeline.stage import Context, Shard
from pipeline.workdir import write_manifest
from stages.import_pkl import ImportParams, ImportStage
from stages.render.stage import RenderParams, RenderStage
from stages.test.fuse import FuseStage
from stages.test.params import FuseParams, TestParams
from stages.test.stage import TestStage
from stages.train.stage import TrainParams, TrainStage
from stores.safepickle import load_pickle
from tests.support import error_line, skel


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, synth_pkl: Path) -> Path:
    """A clean workdir of the synthetic set: import, joint render, a tiny one-epoch train and its test."""
    w = tmp_path_factory.mktemp("readers") / "w"
    cluster = Cluster(workers=0)
    run_stage(ImportStage(), w, ImportParams(source=str(synth_pkl)), cluster, quiet=True)
    run_stage(RenderStage(), w, RenderParams(), cluster, quiet=True)
    train = TrainParams(model_args={"base_channels": 4, "stage_blocks": (1, 1, 1)}, clip_len=8, input_size=32,
                        epochs=1, batch_size=6, val_split=None, workers=0, threads=1)
    run_stage(TrainStage(), w, train, cluster, quiet=True)
    run_stage(TestStage(), w, TestParams(num_clips=1, flip=False, threads=1), cluster, quiet=True)
    return w


def _copy(work: Path, dst: Path) -> Path:
    shutil.copytree(work, dst)
    return dst


def _only(workdir: Path, stage: str) -> Path:
    (out,) = (workdir / stage).iterdir()
    return out


def _flip(path: Path, at: int) -> None:
    """Invert 16 bytes of ``path`` from offset ``at``: same size, another sha256."""
    data = bytearray(path.read_bytes())
    data[at : at + 16] = bytes(b ^ 0xFF for b in data[at : at + 16])
    path.write_bytes(bytes(data))


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "flip": (lambda p: _flip(p, p.stat().st_size // 2), "digest mismatch"),
    "truncate": (lambda p: os.truncate(p, p.stat().st_size // 2), "truncated"),
    "delete": (lambda p: p.unlink(), "missing"),
}


# --- the function -------------------------------------------------------------------------------------------

def test_checked_passes_a_good_file_and_names_each_kind_of_damage(work: Path, tmp_path: Path) -> None:
    w = _copy(work, tmp_path / "w")
    train = _only(w, "train")
    assert checked(train / "best.pt") == train / "best.pt"
    for name, (damage, what) in DAMAGE.items():
        ckpt = train / checkpoint.LAST
        original = ckpt.read_bytes()
        damage(ckpt)
        with pytest.raises(SkelError) as exc:
            checked(ckpt)
        msg = str(exc.value)
        assert msg.startswith(f"{ckpt}: {what} ") and f"skel verify --repair -w {w.resolve()}`" in msg, name
        assert "\n" not in msg
        ckpt.write_bytes(original)
    assert checked(train / checkpoint.LAST) == train / checkpoint.LAST


def test_checked_refuses_unrecorded_files_and_incomplete_outputs(work: Path, tmp_path: Path) -> None:
    w = _copy(work, tmp_path / "w")
    train = _only(w, "train")
    stray = train / "extra.pt"
    shutil.copy(train / "best.pt", stray)
    unrecorded = r"extra\.pt: not recorded in its complete train output's manifest\.json; run `skel verify --repair"
    with pytest.raises(SkelError, match=unrecorded):
        checked(stray)
    manifest = json.loads((train / "manifest.json").read_text())
    write_manifest(train, {k: v for k, v in manifest.items() if k != "files"})
    assert checked(stray) == stray  # an output made before skel recorded digests: nothing to check against
    write_manifest(train, {**manifest, "state": "failed"})
    with pytest.raises(SkelError, match=r"best\.pt: its train output .* is failed, not complete; .*verify --repair"):
        checked(train / "best.pt")


def test_a_file_replaced_by_a_link_to_another_recorded_file_is_refused(work: Path, tmp_path: Path) -> None:
    """A checkpoint replaced by a link to another recorded file (another output's best.pt, an earlier epoch's state)
    passed: the link was followed first and the file it leads to checked against its own record, so export and
    predict used other weights. A link of the user's to a file of an output is checked as that file."""
    w = _copy(work, tmp_path / "w")
    train = _only(w, "train")
    other = _only(w, "render") / "index.parquet"  # a file its own output records
    last = train / checkpoint.LAST
    last.unlink()
    last.symlink_to(other)
    with pytest.raises(SkelError, match=rf"{last}: .* \(checked against its output's manifest.json\)"):
        checked(last)
    mine = tmp_path / "mine.pt"
    mine.symlink_to(train / "best.pt")
    assert checked(mine) == mine
    _flip(train / "best.pt", 100)
    with pytest.raises(SkelError, match="digest mismatch"):
        checked(mine)


def test_a_checkpoint_outside_any_output_is_read_as_is(work: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine.pt"
    shutil.copy(_only(work, "train") / "best.pt", mine)
    assert checked(mine) == mine
    _, config = checkpoint.load_model(checked(mine))
    assert config["num_classes"] == 6


# --- skel export ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_export_refuses_a_damaged_checkpoint_and_exports_a_good_one(work: Path, tmp_path: Path) -> None:
    w = _copy(work, tmp_path / "w")
    onnx = tmp_path / "model.onnx"
    for name, extra in ((checkpoint.BEST, []), (checkpoint.LAST, ["--last"])):
        ckpt = _only(w, "train") / name
        original = ckpt.read_bytes()
        _flip(ckpt, len(original) // 2)
        line = error_line(skel("export", onnx, "-w", w, *extra, check=False))
        assert f"{ckpt}: digest mismatch" in line and "verify --repair" in line
        assert not onnx.exists()
        ckpt.write_bytes(original)
    proc = skel("export", onnx, "-w", w)
    assert onnx.stat().st_size > 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()  # the exporter's pass logs stay under --verbose
    assert len(lines) <= 2 and lines[0].startswith("exported"), lines


@pytest.mark.slow
def test_the_exports_check_tells_a_network_with_other_weights(work: Path, tmp_path: Path) -> None:
    """export checks onnxruntime against torch on heatmap-like clips: on uniform noise a trained model's softmax is
    one-hot, and a network with every weight 20% off agreed with the export to 3e-25."""
    import torch

    from apps.export import Probabilities, check_onnx, export_onnx, heatmap_like

    ckpt = _only(work, "train") / checkpoint.BEST
    exported = export_onnx(ckpt, tmp_path / "m.onnx")
    state = checkpoint.load(ckpt)
    other = checkpoint.model_from_state(state)
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in other.parameters():
            weight.mul_(1 + 0.2 * torch.randn(weight.shape))
    with pytest.raises(SkelError, match="onnxruntime differs from torch by"):
        check_onnx(tmp_path / "m.onnx", Probabilities(other).eval(), heatmap_like(3, exported.input_shape[1:]), 1e-4)


# --- skel predict -------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGE)
def test_predict_refuses_a_damaged_checkpoint(work: Path, tmp_path: Path, damage: str) -> None:
    """A flipped checkpoint is found by its digest; a truncated or missing one already by the lookup of the
    train output (its message names the output and the file)."""
    w = _copy(work, tmp_path / "w")
    train = _only(w, "train")
    video = tmp_path / "clip.mp4"  # never opened: the model is loaded first
    video.write_bytes(b"")
    hurt, what = DAMAGE[damage]
    for name, model in ((checkpoint.BEST, ["--run", w]), (checkpoint.BEST, ["--model", train]),
                        (checkpoint.LAST, ["--model", train, "--last"])):
        original = (train / name).read_bytes()
        hurt(train / name)
        line = error_line(skel("predict", video, *model, check=False))
        assert str(train) in line and name in line and what in line and "verify --repair" in line, line
        if damage == "flip":
            assert f"{train / name}: digest mismatch" in line
        (train / name).write_bytes(original)


def test_predict_loads_an_undamaged_train_output(work: Path) -> None:
    for last in (False, True):
        clf = load_classifier(run=work, num_clips=1, last=last)
        assert len(clf.classes) == 6 and clf.source == str(_only(work, "train"))


def test_a_train_output_whose_volumes_were_deleted_says_so(work: Path, tmp_path: Path) -> None:
    w = _copy(work, tmp_path / "w")
    volumes = _only(w, "render")
    shutil.rmtree(volumes)
    for args in (("test", "-w", w, "-j", "0", "-q"), ("export", tmp_path / "m.onnx", "-w", w)):
        line = error_line(skel(*args, check=False))
        assert f"its volumes input {volumes} is gone: run its stage again" in line, line


def test_a_moved_workdir_named_through_a_symlink_or_from_elsewhere(work: Path, tmp_path: Path) -> None:
    """A train output named by a symlink to it, or by a path from another directory, is read from its workdir:
    its inputs are found there (they were looked for beside the symlink: 'its volumes input ... is gone'), a
    damaged input is refused as when named by fingerprint, and test names the model as -w spells it."""
    w = _copy(work, tmp_path / "moved")
    train = _only(w, "train")
    (tmp_path / "mymodel").symlink_to(train)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    exported = skel("export", "m.onnx", "-w", "../moved", "--from", "../mymodel", cwd=elsewhere)
    assert (elsewhere / "m.onnx").is_file()
    # which model, and (a recipe's streams differ by it, not by their fingerprints) which volumes it learnt from
    assert f"exported {train.name} (joint volumes) -> m.onnx" in " ".join(exported.stderr.split()), exported.stderr
    proc = skel("test", "-w", "../moved", "--from", "../mymodel", "-j", "0", "--num-clips", "1", cwd=elsewhere)
    assert f"scored ../moved/train/{train.name}/best.pt (joint volumes) on" in proc.stderr, proc.stderr
    clf = load_classifier(model_dir=tmp_path / "mymodel", num_clips=1)  # predict --model
    assert Path(clf.source) == train.resolve()
    (part,) = (_only(w, "import") / "triplets").glob("part-*.parquet")
    _flip(part, 0)
    line = error_line(skel("test", "-w", "../moved", "--from", "../mymodel", "-j", "0", cwd=elsewhere, check=False))
    assert "is damaged" in line and part.name in line, line


# --- skel export-pkl ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_export_pkl_refuses_a_flipped_triplet_part(work: Path, tmp_path: Path, where: str) -> None:
    w = _copy(work, tmp_path / "w")
    (part,) = (_only(w, "import") / "triplets").glob("part-*.parquet")
    size = part.stat().st_size
    _flip(part, {"start": 0, "middle": size // 2, "end": size - 16}[where])
    out = tmp_path / "back.pkl"
    line = error_line(skel("export-pkl", out, "-w", w, check=False))
    assert f"{part}: digest mismatch" in line and "verify --repair" in line, line
    assert not out.exists()


@pytest.mark.slow
def test_export_pkl_refuses_a_flipped_samples_table_and_exports_good_tables(
        work: Path, synth_pkl: Path, tmp_path: Path) -> None:
    w = _copy(work, tmp_path / "w")
    samples = _only(w, "import") / "samples.parquet"
    original = samples.read_bytes()
    _flip(samples, len(original) // 2)
    out = tmp_path / "back.pkl"
    line = error_line(skel("export-pkl", out, "-w", w, check=False))
    assert f"{samples}: digest mismatch" in line and "verify --repair" in line, line
    samples.write_bytes(original)
    out.write_bytes(b"keep")  # an existing file, an imported pickle perhaps, is replaced only with --force
    assert "exists" in error_line(skel("export-pkl", out, "-w", w, check=False)) and out.read_bytes() == b"keep"
    skel("export-pkl", out, "-w", w, "--force")
    want, got = load_pickle(synth_pkl)["annotations"], load_pickle(out)["annotations"]
    assert len(got) == len(want) == 36
    for a, b in zip(want, got, strict=True):
        assert a["frame_dir"] == b["frame_dir"] and np.array_equal(a["keypoint"], b["keypoint"])


def test_a_file_made_meanwhile_is_kept_by_export_pkl_and_predicts_parquet(work: Path, tmp_path: Path) -> None:
    """Without --force, export-pkl and `predict --parquet` checked their path at their start and then replaced
    whatever another command wrote there meanwhile; now, as `skel export`, they put theirs in place only if the path
    is still free, and the other file is kept and named in one line."""
    from apps.predict.offline import write_parquet
    from cli.common import made_meanwhile
    from stores.pyskl import export_pickle
    from stores.triplets import TripletStore

    store = TripletStore(_only(work, "import"), check=True)
    for write in (lambda out, overwrite: export_pickle(store, out, overwrite=overwrite),
                  lambda out, overwrite: write_parquet([], out, overwrite=overwrite)):
        out = tmp_path / "theirs"
        out.write_bytes(b"theirs")  # the other command's, made after this one's check
        with pytest.raises(SkelError, match=r"theirs exists \(made while this command ran, by another .*--force"):
            with made_meanwhile(out):
                write(out, False)
        assert out.read_bytes() == b"theirs" and sorted(tmp_path.iterdir()) == [out]
        write(out, True)  # --force
        assert out.read_bytes() != b"theirs" and sorted(tmp_path.iterdir()) == [out]
        out.unlink()


# --- skel fuse ----------------------------------------------------------------------------------------------

def test_fusion_refuses_flipped_files_of_a_test_output(work: Path, tmp_path: Path) -> None:
    """The stage itself checks what it reads (scores in its shard, the class names in finalize), whatever
    the runner checked before."""
    w = _copy(work, tmp_path / "w")
    test = _only(w, "test")
    out = tmp_path / "fused"
    out.mkdir()
    stage, ctx = FuseStage(), Context(w, out, FuseParams(), {"scores0": test, "scores1": test})
    assert stage.run_shard(ctx, Shard("fuse")) == {"samples": 12}
    for name, read in (("scores.parquet", lambda: stage.run_shard(ctx, Shard("fuse"))),
                       ("metrics.json", lambda: stage.finalize(ctx, {}))):
        original = (test / name).read_bytes()
        _flip(test / name, len(original) // 2)
        with pytest.raises(SkelError, match=rf"{test / name}: digest mismatch .*verify --repair"):
            read()
        (test / name).write_bytes(original)
    # restored: fusing a test output with itself keeps its argmax, so its top-1
    assert stage.finalize(ctx, {})["top1"] == json.loads((test / "metrics.json").read_text())["top1"]


def test_fusion_refuses_scores_of_other_classes(work: Path, tmp_path: Path) -> None:
    """Two test outputs over the same samples whose columns name other classes (a dataset whose class list was
    reordered): fusing would add the scores of two classes. Refused, naming both outputs' classes."""
    w = _copy(work, tmp_path / "w")
    test = _only(w, "test")
    other = shutil.copytree(test, w / "test" / ("f" * 16))
    metrics = json.loads((other / "metrics.json").read_text())
    (other / "metrics.json").write_text(json.dumps(metrics | {"classes": metrics["classes"][::-1]}))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["files"]["metrics.json"] = {"size": (other / "metrics.json").stat().st_size,
                                         "sha256": sha256(other / "metrics.json")}
    write_manifest(other, manifest)  # a complete output, as a test of the reordered dataset leaves it
    out = tmp_path / "fused"
    out.mkdir()
    ctx = Context(w, out, FuseParams(), {"scores0": test, "scores1": other})
    with pytest.raises(SkelError, match=rf"{other}: its classes \['{metrics['classes'][-1]}'.* are not those of"):
        FuseStage().run_shard(ctx, Shard("fuse"))
    # refused before its output exists: the run left a failed fuse output behind, for good in the workdir
    line = error_line(skel("fuse", test, other, "-w", w, "-q", check=False))
    assert "are not those of" in line and not (w / "fuse").exists(), line


@pytest.mark.slow
def test_skel_fuse_refuses_flipped_scores_and_fuses_good_ones(work: Path, tmp_path: Path) -> None:
    w = _copy(work, tmp_path / "w")
    test = _only(w, "test")
    scores = test / "scores.parquet"
    original = scores.read_bytes()
    _flip(scores, len(original) // 2)
    line = error_line(skel("fuse", test, "-w", w, "-q", check=False))
    assert "scores.parquet" in line and "verify --repair" in line, line
    scores.write_bytes(original)
    assert "samples: top-1" in skel("fuse", test, "-w", w, "-q").stderr


def test_a_fifo_in_place_of_a_manifest_or_an_export_is_refused_not_waited_on(work: Path, tmp_path: Path) -> None:
    """A FIFO where a manifest or an ONNX export should be blocked status, verify, export-pkl, fuse and predict for
    ever (a read of one waits for a writer)."""
    w = _copy(work, tmp_path / "w")
    manifest = _only(w, "train") / "manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)
    proc = skel("status", "-w", w, check=False, timeout=60)
    assert "not a regular file" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    from apps.predict.model import OnnxNet

    with pytest.raises(SkelError, match="not a regular file"):
        OnnxNet(fifo)
