"""Choosing persons: the rankings extract and render share (stores/persons.py), render's `max_persons` and `rank`
on real stage runs, and the fingerprint rule that keeps the render outputs made before those options valid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pipeline.cluster import Cluster
from pipeline.errors import SkelError
from pipeline.fingerprint import fingerprint, fingerprint_params
from pipeline.runner import run_stage
from pipeline.workflow import load_recipe
from stages import get_stage
from stages.render.stage import RenderParams, RenderStage
from stores.persons import keep_persons, person_boxes, rank_persons
from stores.triplets import Skeleton
from stores.volumes import VolumeStore
from tests.support import extract_output, skel

HW = (480, 640)
T = 8


def skeleton(*persons: tuple[tuple[float, float, float, float], float]) -> Skeleton:
    """Persons standing still, each ((x0, y0, x1, y1) their keypoints spread over, keypoint score): 17 keypoints
    on a 4 × 5 grid inside the box, in every frame; boxes = the keypoints' extent, person score = keypoint score."""
    kp = np.zeros((len(persons), T, 17, 2), np.float32)
    score = np.zeros((len(persons), T, 17), np.float32)
    box = np.zeros((len(persons), T, 5), np.float32)
    for m, ((x0, y0, x1, y1), s) in enumerate(persons):
        gx, gy = np.meshgrid(np.linspace(x0, x1, 4), np.linspace(y0, y1, 5))
        kp[m, :] = np.stack([gx.ravel(), gy.ravel()], axis=-1)[:17]
        score[m, :] = s
        box[m, :] = [x0, y0, x1, y1, s]
    return Skeleton(kp, score, box)


# an edge person seen with sure keypoints, a large central one with unsure keypoints, a small one
EDGE, CENTRE, SMALL = ((5, 5, 45, 85), 1.0), ((220, 80, 420, 440), 0.5), ((560, 400, 580, 440), 0.3)


def test_salience_and_score_rank_differently():
    skel = skeleton(EDGE, CENTRE, SMALL)
    assert rank_persons(skel.keypoint, skel.score, skel.box, HW, "salience").tolist() == [1, 0, 2]
    assert rank_persons(skel.keypoint, skel.score, skel.box, HW, "score").tolist() == [0, 1, 2]
    kp, score, box = keep_persons(skel.keypoint, skel.score, skel.box, 2, HW, "score")
    np.testing.assert_array_equal(box, skel.box[[0, 1]])
    with pytest.raises(ValueError, match="rank must be one of"):
        rank_persons(skel.keypoint, skel.score, skel.box, HW, "area")


def test_without_boxes_salience_takes_them_from_the_keypoints():
    skel = skeleton(EDGE, CENTRE, SMALL)
    skel.score[1, :, :2] = 0.1  # two unsure keypoints: left out of the box
    skel.score[2, 3, 3:] = 0.0  # only 3 confident keypoints left: still a box
    skel.score[2, 4, 2:] = 0.0  # 2 left: no box in that frame
    box = person_boxes(skel.keypoint, skel.score)
    pts = skel.keypoint[1, 0, 2:]  # the confident ones
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * 1.2
    np.testing.assert_allclose(box[1, 0, :4], [*(centre - half), *(centre + half)], rtol=1e-6)
    assert box[1, 0, 4] == pytest.approx(skel.score[1, 0].mean())
    assert box[2, 3, 4] > 0 and np.all(box[2, 4] == 0)
    order = rank_persons(skel.keypoint, skel.score, None, HW, "salience")
    assert order.tolist() == [1, 0, 2]  # the central person first, as with the detector's boxes
    kept = keep_persons(skel.keypoint, skel.score, None, 1, HW)
    assert kept[2] is None
    np.testing.assert_array_equal(kept[0], skel.keypoint[[1]])


def render(workdir: Path, skel: Skeleton, **params) -> tuple[np.ndarray, list]:
    """The volume and crop box of one sample, rendered by the render stage from an extract output holding it."""
    extract_output(workdir, {"clip": ({"label": 0, "split": "train", "img_h": HW[0], "img_w": HW[1], "fps": 30.0,
                                       "source": "clip.mp4"}, skel)})  # fmt: skip
    with Cluster(workers=0) as cluster:
        out = run_stage(RenderStage(), workdir, RenderParams(size=32, **params), cluster, quiet=True)
    store = VolumeStore(out)
    return store.read("clip"), store.index.to_pylist()[0]["crop_box"]


def only(skel: Skeleton, m: int) -> Skeleton:
    return Skeleton(skel.keypoint[[m]], skel.score[[m]], skel.box[[m]])


def test_render_max_persons_draws_the_persons_ranked_first(tmp_path: Path):
    skel = skeleton(SMALL, EDGE, CENTRE)  # the most salient is the last, the surest the second
    top, top_box = render(tmp_path / "top", only(skel, 2))
    picked, picked_box = render(tmp_path / "picked", skel, max_persons=1)
    np.testing.assert_array_equal(picked, top)
    assert picked_box == top_box
    surest, _ = render(tmp_path / "surest", only(skel, 1))
    np.testing.assert_array_equal(render(tmp_path / "by_score", skel, max_persons=1, rank="score")[0], surest)
    everyone, everyone_box = render(tmp_path / "all", skel)  # the default draws all three
    assert everyone_box != top_box and not np.array_equal(everyone, top)
    np.testing.assert_array_equal(render(tmp_path / "three", skel, max_persons=3)[0], everyone)


def test_new_render_options_keep_old_fingerprints():
    old = {"kind": "joint", "sigma": 0.6, "size": 64, "max_frames": 300, "dtype": "uint8", "use_score": True,
           "crop_padding": 0.25, "crop_threshold": 10}  # the fields before max_persons and rank
    assert fingerprint_params(RenderParams()) == old
    inputs = {"triplets": "0" * 16}
    default = fingerprint("render", RenderStage.version, fingerprint_params(RenderParams()), inputs, {})
    assert default == "01ad1f4a9b0a06ff"  # computed by the code before these options existed
    for changed in (RenderParams(max_persons=2), RenderParams(rank="score")):
        assert fingerprint("render", RenderStage.version, fingerprint_params(changed), inputs, {}) != default
    assert fingerprint_params(RenderParams(max_persons=2))["max_persons"] == 2
    fields = {f.name: f.metadata.get("fingerprint") for f in dataclasses.fields(RenderParams)}
    assert fields["samples_per_shard"] is False  # never hashed, whatever its value
    assert "samples_per_shard" not in fingerprint_params(RenderParams(samples_per_shard=3))
    with pytest.raises(ValueError, match="rank must be one of"):
        RenderParams(rank="area")


def test_recipes_and_the_command_line_set_the_render_choice(tmp_path: Path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[step]]\nid = "imp"\nstage = "import"\nsource = "x.pkl"\n'
                      '[[step]]\nid = "ren"\nstage = "render"\nmax_persons = 2\nrank = "score"\n')
    ren = load_recipe(recipe, get_stage).steps[1].params
    assert (ren.max_persons, ren.rank) == (2, "score")
    with pytest.raises(SkelError, match="rank must be one of"):
        load_recipe(recipe, get_stage, overrides=["ren.rank=area"])
    helptext = skel("render", "--help").stdout
    assert "--max-persons" in helptext and "--rank" in helptext
