"""`skel import` / `skel export-pkl`: exact round trip, refused pickles, malformed samples."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.cluster import Cluster
from pipeline.digests import file_digest
from pipeline.errors import SkelError
from pipeline.runner import run_stage
from stages.import_pkl import ImportParams, ImportStage
from stages.render.stage import RenderParams, RenderStage
from stages.train.stage import TrainParams, TrainStage
from stores.pyskl import to_pyskl
from stores.safepickle import load_pickle
from stores.triplets import TripletStore
from tests.support import error_line, skel


def _import(pkl: Path, workdir: Path) -> Path:
    return run_stage(ImportStage(), workdir, ImportParams(source=str(pkl)), Cluster(workers=0), quiet=True)


def _assert_same(a: dict, b: dict) -> None:
    assert a["split"] == b["split"]
    assert a.get("classes") == b.get("classes")
    assert len(a["annotations"]) == len(b["annotations"])
    for x, y in zip(a["annotations"], b["annotations"], strict=True):
        assert x.keys() == y.keys(), x["frame_dir"]
        for key in x:
            if isinstance(x[key], np.ndarray):
                assert x[key].dtype == y[key].dtype and x[key].shape == y[key].shape
                assert np.array_equal(x[key], y[key]), (x["frame_dir"], key)
            else:
                assert x[key] == y[key] and type(x[key]) is type(y[key]), (x["frame_dir"], key)


@pytest.mark.slow
def test_penn_round_trip_is_exact(penn_pkl: Path, tmp_path: Path) -> None:
    out = _import(penn_pkl, tmp_path / "w")
    store = TripletStore(out)
    assert store.samples.num_rows == 2326 and store.errors.num_rows == 0
    # one row group per sample, so a sample reads without scanning its part
    row = store.meta(store.ids()[100])
    assert pq.ParquetFile(out / row["part"]).read_row_group(row["row_group"]).column("sample_id")[0].as_py() == row[
        "sample_id"
    ]
    skel("export-pkl", tmp_path / "back.pkl", "-w", tmp_path / "w")
    _assert_same(load_pickle(penn_pkl), load_pickle(tmp_path / "back.pkl"))


def test_synthetic_round_trip_with_two_people(synth_pkl: Path, tmp_path: Path) -> None:
    original = load_pickle(synth_pkl)
    assert any(a["keypoint"].shape[0] == 2 for a in original["annotations"])
    out = _import(synth_pkl, tmp_path)
    _assert_same(original, to_pyskl(TripletStore(out)))
    # which import it wrote: the newest complete one, which need not be the last run (that one may have failed)
    line = " ".join(skel("export-pkl", tmp_path / "back.pkl", "-w", tmp_path).stderr.split())
    assert line == f"wrote {len(original['annotations'])} samples of {out} (imported from {synth_pkl}) -> " \
                   f"{tmp_path / 'back.pkl'}"
    # another import of the workdir, newer: --from names the first
    fewer = tmp_path / "fewer.pkl"
    fewer.write_bytes(pickle.dumps({**original, "annotations": original["annotations"][:5]}, protocol=4))
    _import(fewer, tmp_path)
    line = " ".join(skel("export-pkl", tmp_path / "first.pkl", "-w", tmp_path, "--from", out.name[:8]).stderr.split())
    assert line.startswith(f"wrote {len(original['annotations'])} samples of {out} ")
    _assert_same(original, load_pickle(tmp_path / "first.pkl"))


def test_samples_of_a_split_without_a_label_are_said(synth_pkl: Path, tmp_path: Path, caplog) -> None:
    """A split's unlabelled samples were left out of training and testing without a word."""
    data = load_pickle(synth_pkl)
    unlabelled = set(data["split"]["test"][:2])
    for ann in data["annotations"]:
        if ann["frame_dir"] in unlabelled:
            del ann["label"]
    path = tmp_path / "u.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    _import(path, tmp_path)
    volumes = run_stage(RenderStage(), tmp_path, RenderParams(size=32, max_frames=16), Cluster(workers=0), quiet=True)
    with caplog.at_level("WARNING", logger="skel"):
        TrainStage().check_data({"volumes": volumes}, TrainParams(train_split="train", val_split="test"))
    n = len(data["split"]["test"])
    assert caplog.messages == [f"{volumes}: 2 of the {n} samples of split 'test' have no label: not validated on"]
    # a validation split that is not there: '' would mean a carve, not every labelled sample, as the advice said
    with pytest.raises(SkelError, match=r"no labelled samples in split 'nosuch' \(labelled splits: test, train\); "
                                        r"leave --val-split out to carve --val-fraction of the training split"):
        TrainStage().check_data({"volumes": volumes}, TrainParams(train_split="train", val_split="nosuch"))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_with_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"split": {}, "annotations": [_Evil(marker)]}))
    proc = skel("import", evil, "-w", tmp_path / "w", "-j", "0", check=False)
    assert proc.returncode != 0
    assert not marker.exists()
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) <= 2 and "refusing to load" in proc.stderr and "Traceback" not in proc.stderr


def test_malformed_samples_are_recorded_and_skipped(synth_pkl: Path, tmp_path: Path) -> None:
    data = load_pickle(synth_pkl)
    anns = data["annotations"]
    bad = {
        anns[0]["frame_dir"]: lambda a: a.update(keypoint=a["keypoint"][..., :1]),  # wrong shape
        anns[1]["frame_dir"]: lambda a: a["keypoint"].__setitem__((0, 0, 0, 0), np.inf),  # inf
        anns[2]["frame_dir"]: lambda a: a.pop("img_shape"),  # missing key
        anns[3]["frame_dir"]: lambda a: a.update(total_frames=a["total_frames"] + 1),  # inconsistent
    }
    for ann in anns[:4]:
        bad[ann["frame_dir"]](ann)
    anns.append(anns[5])  # duplicate frame_dir
    anns.append("not a dict")
    h, w = anns[6]["img_shape"]
    anns[6]["keypoint"] = anns[6]["keypoint"] / np.array([w, h], np.float32)  # normalised to [0, 1]
    good = anns[8]
    anns.insert(7, {**good, "keypoint": good["keypoint"][..., :1]})  # a bad copy before the good one
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    store = TripletStore(_import(path, tmp_path / "w"))
    errors = store.errors.to_pylist()
    assert {e["sample_id"] for e in errors} >= set(bad) | {anns[6]["frame_dir"], good["frame_dir"]}
    assert "normalised coordinates?" in next(e["message"] for e in errors if e["sample_id"] == anns[6]["frame_dir"])
    assert len(errors) == 9 and all(e["stage"] == "import" and e["message"] for e in errors)
    duplicate = len(anns) - 2  # anns[5] appended, before "not a dict" (an insert at 7 moved both one on)
    assert {"sample_id": anns[5]["frame_dir"], "source": f"{path}#{duplicate}", "stage": "import",
            "message": "duplicate frame_dir: annotation #5 has it (the first keeps it)"} in errors
    assert store.samples.num_rows == len(anns) - 9
    assert not set(bad) & set(store.ids())
    # the first annotation with a name owns it, imported or not: parts of 8 split the copies, as the default 256
    # splits them in a larger pickle, and the same samples are kept
    parts = run_stage(ImportStage(), tmp_path / "p", ImportParams(source=str(path), part_size=8), Cluster(workers=0),
                      quiet=True)
    assert TripletStore(parts).ids() == store.ids()


def test_nan_joints_are_zeroed_as_pyskl_does_and_only_such_pickles_change_fingerprint(
    synth_pkl: Path, tmp_path: Path
) -> None:
    """pyskl's PoseCompact turns NaN coordinates into 0; the import does the same (a NaN score becomes 0), so a
    pickle with undetected joints loses no sample. A pickle without NaN keeps the fingerprint it always had."""
    stage = ImportStage()
    assert stage.external(ImportParams(source=str(synth_pkl))) == {"source_sha256": file_digest(synth_pkl)}
    bare = load_pickle(synth_pkl)
    for ann in bare["annotations"]:
        ann.pop("keypoint_score", None)  # optional: its absence is no NaN
    (no_scores := tmp_path / "no_scores.pkl").write_bytes(pickle.dumps(bare, protocol=4))
    assert "nan" not in stage.external(ImportParams(source=str(no_scores)))
    plain = _import(synth_pkl, tmp_path / "w")
    data = load_pickle(synth_pkl)
    ann = data["annotations"][1]
    ann["keypoint"][0, 2, 3] = np.nan
    ann["keypoint_score"] = np.ones(ann["keypoint"].shape[:3], np.float32)
    ann["keypoint_score"][0, 4, 5] = np.nan
    path = tmp_path / "nan.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    out = _import(path, tmp_path / "w")
    assert out.name != plain.name
    store = TripletStore(out)
    assert store.errors.num_rows == 0 and store.samples.num_rows == len(data["annotations"])
    skel_ = store.read(ann["frame_dir"])
    assert (skel_.keypoint[0, 2, 3] == 0).all() and skel_.score[0, 4, 5] == 0
    assert np.isfinite(skel_.keypoint).all() and np.isfinite(skel_.score).all()


def test_normalised_or_duplicate_annotations_change_only_such_pickles_fingerprints(synth_pkl: Path,
                                                                                      tmp_path: Path) -> None:
    """Refusing normalised coordinates and the first frame_dir owning it changed what such pickles import into:
    their fingerprints take a marker (an old import of them is not reused), and a clean pickle's fingerprint is the
    one it had before the markers."""
    from pipeline.fingerprint import fingerprint
    from pipeline.runner import make_plan

    def fingerprints(path: Path) -> tuple[str, str]:
        """The import's fingerprint, and the one it had before the markers (its pickle's digest alone)."""
        params = ImportParams(source=str(path))
        before = fingerprint("import", ImportStage.version, {"part_size": params.part_size}, {},
                             {"source_sha256": file_digest(path)})
        return make_plan(ImportStage(), tmp_path / "w", params).fingerprint, before

    now, before = fingerprints(synth_pkl)
    assert now == before
    data = load_pickle(synth_pkl)
    h, w = data["annotations"][3]["img_shape"]
    data["annotations"][3]["keypoint"] = data["annotations"][3]["keypoint"] / np.array([w, h], np.float32)
    (normalised := tmp_path / "normalised.pkl").write_bytes(pickle.dumps(data, protocol=4))
    data = load_pickle(synth_pkl)
    data["annotations"].append(data["annotations"][0])
    (twice := tmp_path / "twice.pkl").write_bytes(pickle.dumps(data, protocol=4))
    for path, marker in ((normalised, {"normalised": "refused"}), (twice, {"duplicates": "first named owns"})):
        assert ImportStage().external(ImportParams(source=str(path))) == {"source_sha256": file_digest(path)} | marker
        now, before = fingerprints(path)
        assert now != before


def test_a_class_with_no_training_clip_is_said(synth_pkl: Path, tmp_path: Path, caplog) -> None:
    """A class only the test split holds was trained as a head row that never saw a clip, without a word."""
    data = load_pickle(synth_pkl)
    first = data["classes"][0]
    zero = {a["frame_dir"] for a in data["annotations"] if a["label"] == 0}
    data["split"]["train"] = [sid for sid in data["split"]["train"] if sid not in zero]
    path = tmp_path / "t.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    _import(path, tmp_path)
    volumes = run_stage(RenderStage(), tmp_path, RenderParams(size=32, max_frames=16), Cluster(workers=0), quiet=True)
    with caplog.at_level("WARNING", logger="skel"):
        TrainStage().check_data({"volumes": volumes}, TrainParams(train_split="train"))
        TrainStage().check_data({"volumes": volumes}, TrainParams(train_split=""))  # every labelled sample: silent
    assert caplog.messages == [f"{volumes}: 1 class(es) have labelled samples but none in the training split "
                               f"({first}): the model never learns them"]


def test_render_says_when_the_import_it_takes_is_of_a_pickle_changed_since(synth_pkl: Path, tmp_path: Path,
                                                                          caplog) -> None:
    """After the pickle is edited, a plain `skel render` renders the last import (of the old content), as documented
    (a recipe imports again), without a word; it says so now, and nothing while the pickle is as imported."""
    pkl = tmp_path / "s.pkl"
    pkl.write_bytes(synth_pkl.read_bytes())
    imported = _import(pkl, tmp_path)
    with caplog.at_level("WARNING", logger="skel"):
        run_stage(RenderStage(), tmp_path, RenderParams(size=32, max_frames=16), Cluster(workers=0), quiet=True)
        assert caplog.messages == []
        data = load_pickle(pkl)
        data["annotations"] = data["annotations"][:10]
        pkl.write_bytes(pickle.dumps(data, protocol=4))
        run_stage(RenderStage(), tmp_path, RenderParams(size=24, max_frames=16), Cluster(workers=0), quiet=True)
    assert caplog.messages == [f"{pkl} has changed since import {imported.name[:8]} was made from it: rendering that "
                               "import's samples (run `skel import` again to render the new content)"]


def test_odd_names_shapes_and_frame_counts_are_per_sample_errors(synth_pkl: Path, tmp_path: Path) -> None:
    """An audit's pickles: an original_shape of None failed the whole import (a TypeError outside the per-sample
    check); a frame_dir of None imported as a sample named 'None'; a total_frames of 30.5 imported as 30. Each is
    that sample's error now, named by its frame_dir (or its position), and the rest imports."""
    data = load_pickle(synth_pkl)
    anns = data["annotations"]
    t = anns[2]["keypoint"].shape[1]
    anns[0]["original_shape"] = None
    anns[1]["original_shape"] = "unknown"
    anns[2]["total_frames"] = t + 0.5
    anns[3]["frame_dir"] = None
    anns[4]["frame_dir"] = ""
    anns[5]["frame_dir"] = np.int64(7)  # a number is a name, as text
    anns[6]["total_frames"] = float(anns[6]["keypoint"].shape[1])  # a whole number, written as a float
    anns[7]["frame_dir"] = "caf\udce9"  # a name that is not UTF-8 (a file system's byte 0xe9) failed every part
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    store = TripletStore(_import(path, tmp_path / "w"))
    assert {e["sample_id"]: e["message"] for e in store.errors.to_pylist()} == {
        anns[0]["frame_dir"]: "original_shape None is not (H, W) in positive integers",
        anns[1]["frame_dir"]: "original_shape 'unknown' is not (H, W) in positive integers",
        anns[2]["frame_dir"]: f"total_frames {t + 0.5!r} is not a whole number",
        "#3": "frame_dir None is not a name (a non-empty string or an integer)",
        "#4": "frame_dir '' is not a name (a non-empty string or an integer)",
        "#7": "frame_dir 'caf\\xe9' is not valid UTF-8 text",
    }
    assert store.samples.num_rows == len(anns) - 6 and "7" in store.ids() and "None" not in store.ids()


@pytest.mark.parametrize("layout", ["whole-body", "packed scores", "ntu 3-d", "list of annotations"])
def test_other_layouts_are_named_with_the_way_to_coco17(synth_pkl: Path, tmp_path: Path, layout: str) -> None:
    """A whole-body sample, x, y and score packed in one array, mmaction2 0.x's list of annotations: each refused
    with what it looks like and how to make pyskl's COCO-17 of it."""
    data = load_pickle(synth_pkl)
    ann = data["annotations"][0]
    m, t = ann["keypoint"].shape[:2]
    if layout == "whole-body":
        ann["keypoint"] = np.concatenate([ann["keypoint"], np.zeros((m, t, 116, 2), np.float32)], axis=2)
        ann.pop("keypoint_score")
    elif layout == "packed scores":
        ann["keypoint"] = np.concatenate([ann["keypoint"], ann.pop("keypoint_score")[..., None]], axis=-1)
    elif layout == "ntu 3-d":  # pyskl's ntu60_3danno.pkl: no img_shape
        ann["keypoint"] = np.zeros((m, t, 25, 3), np.float32)
        ann.pop("keypoint_score"), ann.pop("img_shape")
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps(data["annotations"] if layout == "list of annotations" else data, protocol=4))
    if layout == "list of annotations":
        with pytest.raises(SkelError, match=r"a list of annotations \(mmaction2 0.x: one pickle per split\)"):
            ImportStage().external(ImportParams(source=str(path)))
        return
    (error,) = [e for e in TripletStore(_import(path, tmp_path / "w")).errors.to_pylist()
                if e["sample_id"] == ann["frame_dir"]]
    assert error["message"].endswith({
        "whole-body": "(COCO-WholeBody? its first 17 joints are COCO-17: keypoint[:, :, :17])",
        "packed scores": "(x, y, score packed? give keypoint[..., :2] as keypoint and keypoint[..., 2] as "
                         "keypoint_score; 3-D keypoints are not supported)",
        "ntu 3-d": "(NTU's 3-D skeletons, 25 joints x, y, z? skel takes 2-D COCO-17 keypoints in pixels: pyskl's "
                   "ntu*_hrnet.pkl)"}[layout]), error


def test_split_names_that_would_not_come_back_are_refused(synth_pkl: Path, tmp_path: Path) -> None:
    """A sample's splits are stored comma-separated: a split 'xsub,train' came back as two other splits, 'xsub'
    and 'train', without a word. A frame_dir listed twice in a split counted twice; an empty pickle said 'no
    samples' and pointed at an empty error table."""
    data = load_pickle(synth_pkl)
    train = data["split"].pop("train")
    data["split"]["xsub,train"] = train
    comma = tmp_path / "comma.pkl"
    comma.write_bytes(pickle.dumps(data, protocol=4))
    proc = skel("import", comma, "-w", tmp_path / "a", "-j", "0", check=False)
    assert proc.returncode == 1 and error_line(proc) == (
        f"error: {comma.resolve()}: split name 'xsub,train' is empty or holds a comma (skel lists a sample's splits "
        "comma-separated): rename it")
    data["split"].pop("xsub,train")
    data["split"]["train"] = [*train, *train[:2]]
    twice = tmp_path / "twice.pkl"
    twice.write_bytes(pickle.dumps(data, protocol=4))
    line = " ".join(skel("import", twice, "-w", tmp_path / "b", "-j", "0", "-q").stderr.split())
    assert f"train {len(train)})" in line or f"train {len(train)}," in line, line
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(pickle.dumps({"split": {"train": []}, "annotations": []}, protocol=4))
    proc = skel("import", empty, "-w", tmp_path / "c", "-j", "0", check=False)
    assert error_line(proc) == f"error: {empty.resolve()}: its 'annotations' list is empty: nothing to import"


def test_import_says_which_splits_it_found(synth_pkl: Path, tmp_path: Path) -> None:
    """The summary line counts the samples per split, and says so when the pickle has none (train needs one)."""
    data = load_pickle(synth_pkl)
    line = " ".join(skel("import", synth_pkl, "-w", tmp_path / "a", "-j", "0", "-q").stderr.split())
    counts = ", ".join(f"{name} {len(ids)}" for name, ids in sorted(data["split"].items()))
    assert f"imported {len(data['annotations'])} samples (0 skipped; splits: {counts})" in line, line
    data.pop("split")
    bare = tmp_path / "bare.pkl"
    bare.write_bytes(pickle.dumps(data, protocol=4))
    line = " ".join(skel("import", bare, "-w", tmp_path / "b", "-j", "0", "-q").stderr.split())
    assert "splits: none (train and test need one)" in line, line


def test_import_warns_of_split_entries_without_an_annotation(synth_pkl: Path, tmp_path: Path) -> None:
    """A split naming frame_dirs the pickle has no annotation for (a cut-down pickle) is said, not silently smaller;
    a pickle whose splits all match says nothing."""
    data = load_pickle(synth_pkl)
    assert "warning" not in skel("import", synth_pkl, "-w", tmp_path / "a", "-j", "0", "-q").stderr.lower()
    n = len(data["split"]["test"])
    data["split"]["test"] = [*data["split"]["test"], "gone_1", "gone_2"]
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(pickle.dumps(data, protocol=4))
    err = " ".join(skel("import", cut, "-w", tmp_path / "b", "-j", "0", "-q").stderr.split())
    assert (f"2 of the {n + 2} frame_dirs of split 'test' have no annotation (e.g. 'gone_1'); the split holds the "
            f"other {n}") in err, err


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", pickle.dumps([1, 2, 3])])
def test_unreadable_or_wrong_pickles_give_one_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(content)
    proc = skel("import", path, "-w", tmp_path / "w", "-j", "0", check=False)
    assert proc.returncode == 1 and "error:" in proc.stderr and "Traceback" not in proc.stderr
    assert str(path) in proc.stderr.replace("\n", "")


@pytest.mark.slow
def test_missing_file_and_missing_upstream(tmp_path: Path) -> None:
    proc = skel("import", tmp_path / "nope.pkl", "-w", tmp_path / "w", check=False)
    assert str(tmp_path / "nope.pkl") in error_line(proc)
    proc = skel("render", "-w", tmp_path / "empty", check=False, env_extra={"COLUMNS": "300"})
    assert proc.returncode == 1 and f"run `skel import -w {tmp_path / 'empty'}` first" in proc.stderr


def test_a_pickle_replaced_after_its_plan_is_not_imported_under_the_old_digest(synth_pkl: Path, tmp_path: Path) -> None:
    """Each process loads the pickle (Dask workers included) and took whatever it held then, under the digest the
    plan fingerprinted: what is unpickled is hashed as it is read and must be the planned bytes."""
    from stages.import_pkl import _load

    path = tmp_path / "data.pkl"
    path.write_bytes(synth_pkl.read_bytes())
    planned = file_digest(path)
    data = load_pickle(synth_pkl)
    data["annotations"] = data["annotations"][:3]
    path.write_bytes(pickle.dumps(data, protocol=4))
    with pytest.raises(SkelError, match="data.pkl: changed since this run planned it: run the command again"):
        _load(str(path), planned)
    assert len(_load(str(path), file_digest(path))["annotations"]) == 3


def test_a_pickle_replaced_while_its_import_runs_fails_the_shards_that_load_it(synth_pkl: Path, tmp_path: Path) -> None:
    """A shard took the digest of the file as it was then, not the planned one: a worker loading the pickle after it
    was replaced imported the new samples and passed the check, and the output mixed two files under the first
    one's fingerprint (complete, verified, a later cache hit of the first file's request)."""
    from pipeline.runner import make_plan
    from stages.import_pkl import _load

    path = tmp_path / "data.pkl"
    path.write_bytes(synth_pkl.read_bytes())
    ctx = make_plan(ImportStage(), tmp_path / "w", ImportParams(source=str(path), part_size=4)).context(tmp_path / "w")
    shard = ImportStage().shards(ctx)[-1]
    data = load_pickle(synth_pkl)
    data["annotations"].reverse()  # the same samples, other shards' share
    path.write_bytes(pickle.dumps(data, protocol=4))
    _load.cache_clear()  # a worker that loads it now
    with pytest.raises(SkelError, match="data.pkl: changed since this run planned it"):
        ImportStage().run_shard(ctx, shard)


def test_a_field_json_cannot_hold_as_is_imports_and_a_split_that_is_no_list_is_one_line(synth_pkl: Path,
                                                                                     tmp_path: Path) -> None:
    """An extra field keyed by numpy integers or tuples failed the whole part (256 samples) with a TypeError naming
    no sample; it imports now, its keys as text. A split given as None printed a traceback; a split given as one
    string was read letter by letter."""
    data = load_pickle(synth_pkl)
    data["annotations"][1]["track_len"] = {np.int64(0): 20, (1, 2): np.float32(0.5)}
    odd = tmp_path / "odd.pkl"
    odd.write_bytes(pickle.dumps(data, protocol=4))
    store = TripletStore(_import(odd, tmp_path / "a"))
    assert store.samples.num_rows == len(data["annotations"]) and store.errors.num_rows == 0
    back = to_pyskl(store)["annotations"][1]
    assert back["track_len"] == {"0": 20, "(1, 2)": 0.5}
    for value in (None, 3, "S001C001P001R001A001"):
        data["split"]["test"] = value
        bad = tmp_path / "bad.pkl"
        bad.write_bytes(pickle.dumps(data, protocol=4))
        proc = skel("import", bad, "-w", tmp_path / "b", "-j", "0", check=False)
        assert proc.returncode == 1 and error_line(proc) == (
            f"error: {bad.resolve()}: split 'test' is a {type(value).__name__}, not a list of frame_dir"), proc.stderr


def test_the_class_count_is_the_pickles_though_its_top_label_was_refused(synth_pkl: Path, tmp_path: Path) -> None:
    """Without a class list the model's classes were the largest label + 1 of the samples that imported: a refused
    sample of the top label took a class from the head, the scores and the metrics without a word."""
    data = load_pickle(synth_pkl)
    data.pop("classes", None)
    top = max(a["label"] for a in data["annotations"])
    other = next(a["frame_dir"] for a in data["annotations"] if a["label"] != top)
    for i, ann in enumerate(data["annotations"]):
        if ann["label"] == top and i % 2:
            ann["total_frames"] += 1  # refused by its check
        elif ann["label"] == top:
            ann["frame_dir"] = other  # refused as a frame_dir another annotation named first
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(pickle.dumps(data, protocol=4))
    w = tmp_path / "w"
    skel("import", cut, "-w", w, "-j", "0", "-q", "--max-errors", "0.5")
    with Cluster(workers=0) as cluster:
        volumes = run_stage(RenderStage(), w, RenderParams(size=16, max_frames=8), cluster, quiet=True)
    from inference.views import num_classes
    from stores.volumes import VolumeStore

    assert num_classes(VolumeStore(volumes)) == top + 1
    # only such a pickle's fingerprint and tables change: an import made before counted one class fewer
    assert ImportStage().external(ImportParams(str(cut)))["top_label"] == "counted though refused"
    data = load_pickle(synth_pkl)
    data.pop("classes", None)
    whole = tmp_path / "whole.pkl"
    whole.write_bytes(pickle.dumps(data, protocol=4))
    assert "top_label" not in ImportStage().external(ImportParams(str(whole)))
    assert "num_classes" not in TripletStore(_import(whole, tmp_path / "v")).metadata


def test_splits_of_filenames_are_matched_as_pyskl_matches_them(synth_pkl: Path, tmp_path: Path) -> None:
    """pyskl matches the split lists on each annotation's ``filename`` when the first annotation has one (else on
    ``frame_dir``): such a pickle imported with every split empty. Its splits hold now, export-pkl writes them back
    as filenames, and only such pickles' fingerprints change; a split name that is not text comes back once."""
    data = load_pickle(synth_pkl)
    plain = tmp_path / "plain.pkl"
    first = data["split"][0] = data["split"]["test"][:1]
    plain.write_bytes(pickle.dumps(data, protocol=4))
    for ann in data["annotations"]:
        ann["filename"] = f"videos/{ann['frame_dir']}.mp4"
    data["split"] = {name: [f"videos/{sid}.mp4" for sid in ids] for name, ids in data["split"].items()}
    named = tmp_path / "named.pkl"
    named.write_bytes(pickle.dumps(data, protocol=4))
    stage = ImportStage()
    assert "filename" in stage.external(ImportParams(str(named)))
    assert "filename" not in stage.external(ImportParams(str(plain)))
    store = TripletStore(_import(named, tmp_path / "w"))
    back = to_pyskl(store)
    assert back["split"] == {str(name): ids for name, ids in data["split"].items()}
    split = to_pyskl(TripletStore(_import(plain, tmp_path / "p")))["split"]
    assert split["0"] == first and 0 not in split


def test_a_tilde_the_shell_left_is_the_home_folder(synth_pkl: Path, tmp_path: Path) -> None:
    """A shell expands no ``~`` after ``=``: ``--workdir=~/runs``, ``SKEL_WORKDIR="~/runs"`` made a folder named ``~``
    here, and the import's summary (pyarrow expands it) then looked in the home folder and failed, at every run;
    ``--set import.source=~/mine.pkl`` was no such file."""
    home, here = tmp_path / "home", tmp_path / "here"
    here.mkdir()
    home.mkdir()
    (home / "mine.pkl").write_bytes(synth_pkl.read_bytes())
    env = {"HOME": str(home), "SKEL_WORKDIR": "~/r1"}
    for _ in range(2):  # made, then a cache hit
        skel("import", synth_pkl, "-j", "0", "-q", cwd=here, env_extra=env)
    skel("import", synth_pkl, "--workdir=~/r2", "-j", "0", "-q", cwd=here, env_extra={"HOME": str(home)})
    (here / "recipe.toml").write_text('[[step]]\nid = "import"\nstage = "import"\nsource = "x.pkl"\n')
    skel("run", here / "recipe.toml", "--set", "import.source=~/mine.pkl", "-w", "~/r3", "-j", "0", "-q", cwd=here,
         env_extra={"HOME": str(home)})
    assert not (here / "~").exists()
    assert all(len(list((home / w / "import").iterdir())) == 1 for w in ("r1", "r2", "r3"))
    skel("export-pkl", "~/back.pkl", "--workdir=~/r1", cwd=here, env_extra={"HOME": str(home)})  # any path option
    assert (home / "back.pkl").is_file()
    (here / "~mine.pkl").write_bytes(synth_pkl.read_bytes())  # ~name of no user: a name, as a shell leaves it
    skel("import", "~mine.pkl", "-w", "~nosuchuser/w", "-j", "0", "-q", cwd=here, env_extra={"HOME": str(home)})
    assert len(list((here / "~nosuchuser" / "w" / "import").iterdir())) == 1


def test_classes_named_twice_are_said(synth_pkl: Path, tmp_path: Path) -> None:
    """A class list naming a class twice imports (pyskl reads it), and says so: the names no longer tell the
    classes apart, and a pretrained head matched by name gives both one row."""
    data = load_pickle(synth_pkl)
    data["classes"][1] = data["classes"][0]
    twice = tmp_path / "twice.pkl"
    twice.write_bytes(pickle.dumps(data, protocol=4))
    said = " ".join(skel("import", twice, "-w", tmp_path / "w", "-j", "0", "-q").stderr.split())
    assert f"'classes' names {data['classes'][0]!r} more than once" in said, said


def test_an_annotation_without_the_filename_the_splits_name_imports_outside_them(synth_pkl: Path,
                                                                                  tmp_path: Path) -> None:
    """Splits matched on ``filename`` (the first annotation has one): an annotation without it failed its whole part
    with a KeyError naming no sample; it imports, in no split, as pyskl leaves it out of them."""
    data = load_pickle(synth_pkl)
    for ann in data["annotations"]:
        ann["filename"] = f"{ann['frame_dir']}.mp4"
    del data["annotations"][3]["filename"]
    data["split"] = {name: [f"{sid}.mp4" for sid in ids] for name, ids in data["split"].items()}
    path = tmp_path / "one.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    rows = {r["sample_id"]: r["split"] for r in TripletStore(_import(path, tmp_path / "w")).samples.to_pylist()}
    assert len(rows) == len(data["annotations"]) and rows[data["annotations"][3]["frame_dir"]] is None
    assert all(rows[a["frame_dir"]] for i, a in enumerate(data["annotations"]) if i != 3)


def test_an_unfinished_import_of_a_pickle_changed_since_says_how_to_leave_it(synth_pkl: Path, tmp_path: Path) -> None:
    """Its repair cannot finish it (it would be another output), and verify counts it unfinished until it is gone:
    the refusal says the current output comes from the stage's command, and how to take this one out."""
    pkl = tmp_path / "mine.pkl"
    pkl.write_bytes(synth_pkl.read_bytes())
    killed = skel("import", pkl, "-w", tmp_path / "w", "-j", "0", "-q", check=False,
                  env_extra={"SKEL_CRASH_AT": "commit:import/00000"})
    assert killed.returncode == -9
    data = load_pickle(pkl)
    data["annotations"] = data["annotations"][:-1]
    pkl.write_bytes(pickle.dumps(data, protocol=4))
    proc = skel("verify", "-w", tmp_path / "w", "--repair", "-j", "0", "-q", check=False)
    (out,) = (tmp_path / "w" / "import").iterdir()
    assert proc.returncode == 1 and f"`rm -r {out}` takes this one out of the check" in " ".join(proc.stderr.split())


def test_the_first_skipped_sample_is_named_on_one_line(synth_pkl: Path, tmp_path: Path) -> None:
    """A sample id holding a newline split the 'samples skipped (first: ...)' warning over two lines (and an escape
    code would reach the terminal): such an id is quoted."""
    data = load_pickle(synth_pkl)
    data["annotations"][0] |= {"frame_dir": "bad\nname \x1b[2J", "original_shape": None}
    (path := tmp_path / "odd.pkl").write_bytes(pickle.dumps(data, protocol=4))
    proc = skel("import", path, "-w", tmp_path / "w", "-j", "0")
    assert "(first: 'bad\\nname \\x1b[2J': original_shape None is not" in proc.stderr.replace("\n", "")


def test_the_process_that_ran_the_import_drops_the_pickle(synth_pkl: Path, tmp_path: Path) -> None:
    """The loaded pickle stayed in memory for the rest of the process: through a recipe's renders and trainings
    (an NTU pickle is gigabytes)."""
    from stages.import_pkl import _load

    _import(synth_pkl, tmp_path / "w")
    assert _load.cache_info().currsize == 0


def test_a_damaged_manifest_is_said_once_per_run(synth_pkl: Path, tmp_path: Path) -> None:
    """Planning, input resolution and the runner each read the manifest, and each said it was damaged: six times in
    one training's resume (resume audit)."""
    out = _import(synth_pkl, tmp_path / "w")
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])
    proc = skel("import", synth_pkl, "-w", tmp_path / "w", "-j", "0")
    assert " ".join(proc.stderr.split()).count("treated as incomplete") == 1, proc.stderr


def test_a_run_beside_an_unfinished_output_of_other_parameters_names_it(synth_pkl: Path, tmp_path: Path) -> None:
    """A training killed after three of four epochs, run again with --epochs 3, started a new one and said nothing of
    the three epochs kept beside it (resume audit). Such a run names the unfinished output, its committed work and
    the parameters that differ; the first command resumes it."""
    w = tmp_path / "w"
    _import(synth_pkl, w)
    killed = skel("render", "-w", w, "--size", "16", "-j", "0", check=False,
                  env_extra={"SKEL_CRASH_AT": "commit:render/00000"})
    assert killed.returncode == -9
    [unfinished] = (w / "render").iterdir()
    other = " ".join(skel("render", "-w", w, "--size", "16", "--sigma", "1.0", "-j", "0").stderr.split())
    assert (f"render {unfinished.name[:8]} is unfinished, with 1 of its shards committed; this run starts another "
            "(sigma 0.6 -> 1.0): the command with its parameters resumes it") in other
    again = " ".join(skel("render", "-w", w, "--size", "16", "-j", "0").stderr.split())
    assert "resuming, 1 of 1" in again and "is unfinished" not in again
    # a repair starts no other output: the sibling left unfinished is not its business (hostile review)
    killed = skel("render", "-w", w, "--size", "16", "--sigma", "1.5", "-j", "0", check=False,
                  env_extra={"SKEL_CRASH_AT": "commit:render/00000"})
    assert killed.returncode == -9
    data = max((f for f in (unfinished / "volumes.zarr").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    data.write_bytes(bytes([data.read_bytes()[0] ^ 1]) + data.read_bytes()[1:])
    repair = skel("verify", "-w", w, "--repair", check=False)
    said = " ".join((repair.stdout + repair.stderr).split())
    assert f"render {unfinished.name[:8]}" in said and "is unfinished" not in said, said
