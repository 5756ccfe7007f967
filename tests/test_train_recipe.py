"""Training recipe: stratified subsets and carved validation, step budgets, batch augmentations, and
``--init`` from skel and pyskl checkpoints (pyskl's key names and shapes, built here from pyskl's rules)."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from inference import checkpoint
from inference.splits import Item
from models import build_model
from pipeline.cluster import Cluster
from pipeline.digests import file_digest
from pipeline.errors import SkelError
from pipeline.fingerprint import fingerprint_params
from pipeline.runner import Upstream, run_stage
from pipeline.status import status_rows
from stages import installed_version
from stages.train.extra_aug import ExtraAug, batch_augment, random_affine
from stages.train.split import carve, per_class_subset, stratified_subset
from stages.train.stage import TrainParams, TrainStage, epochs_for, select, steps_per_epoch
from stages.train.transfer import load_pretrained, pretrained_weights
from stores.coco import LIMBS
from tests.support import MODEL_ARGS

pytestmark = pytest.mark.usefixtures("torch_threads")

LABELS = [0] * 50 + [1] * 30 + [2] * 15 + [3] * 5  # unbalanced, 100 items


# --- split ---------------------------------------------------------------------------------------------------

def test_stratified_subset_keeps_class_shares_and_is_seeded() -> None:
    pick = stratified_subset(LABELS, 20, seed=0)
    assert len(pick) == 20 and len(set(pick.tolist())) == 20
    assert np.bincount(np.asarray(LABELS)[pick]).tolist() == [10, 6, 3, 1]
    assert (pick == stratified_subset(LABELS, 20, seed=0)).all()
    assert not (pick == stratified_subset(LABELS, 20, seed=1)).all()
    assert set(stratified_subset(LABELS, 20, 0).tolist()) <= set(stratified_subset(LABELS, 40, 0).tolist())
    assert np.bincount(np.asarray(LABELS)[per_class_subset(LABELS, 4, 0)]).tolist() == [4, 4, 4, 4]


def test_carve_takes_every_class_and_leaves_every_class_trainable() -> None:
    train, val = carve(LABELS + [4], 0.1)  # class 4 has a single clip: it stays in train
    assert not set(train.tolist()) & set(val.tolist()) and len(train) + len(val) == 101
    labels = np.asarray(LABELS + [4])
    assert np.bincount(labels[val], minlength=5).tolist() == [5, 3, 2, 1, 0]  # round(10%), at least 1
    assert (np.bincount(labels[train], minlength=5) >= 1).all()
    assert (val == carve(LABELS + [4], 0.1)[1]).all()  # the same clips for every training seed
    with pytest.raises(ValueError, match="fraction"):
        carve(LABELS, 1.0)


def test_validation_is_carved_by_default_and_never_the_test_split() -> None:
    p = TrainParams()
    assert p.val_split is None
    items = [Item(f"s{i}", label, 10) for i, label in enumerate(LABELS)]
    train, val = select(p, items)
    assert len(val) == 11 and len(train) == 89  # default 10% per class, rounded, >= 1: 5 + 3 + 2 + 1
    assert select(TrainParams(val_fraction=0.0), items) == (items, [])
    assert select(TrainParams(val_split="val"), items) == (items, [])  # a named split validates instead


def test_steps_budget_gives_whole_epochs_at_any_data_size() -> None:
    p = TrainParams(steps=1000, batch_size=16)
    for n in (270, 1258, 50_000):
        per = steps_per_epoch(p, n, 1)
        assert per == math.ceil(n / 16)
        epochs = epochs_for(p, n, 1)
        assert (epochs - 1) * per < 1000 <= epochs * per
    assert epochs_for(TrainParams(epochs=7), 270, 1) == 7
    # steps and a floor of epochs: the steps for a small set, the passes for a large one
    both = TrainParams(steps=1600, min_epochs=20, batch_size=16)
    assert [epochs_for(both, n, 1) for n in (300, 1258, 50_000)] == [85, 21, 20]
    assert steps_per_epoch(TrainParams(batch_size=16, repeat=2), 270, 2) == math.ceil(270 / 8)


# --- batch augmentation -----------------------------------------------------------------------------------------

def test_affine_moves_a_point_as_rotated_and_is_identity_at_zero() -> None:
    x = torch.zeros(1, 2, 3, 33, 33)
    x[..., 16, 26] = 1.0  # right of the centre (row 16, column 26)
    torch.testing.assert_close(random_affine(x, 0, 0, 0), x, atol=1e-6, rtol=0)
    torch.manual_seed(0)
    turned = random_affine(x.expand(200, -1, -1, -1, -1).contiguous(), 90, 0, 0)
    where = turned[:, 0, 0].flatten(1).argmax(1)
    rows, cols = where // 33, where % 33
    radius = ((rows - 16.0) ** 2 + (cols - 16.0) ** 2).sqrt()
    assert ((radius - 10).abs() <= 1.5).all()  # stays on its circle about the centre
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 20  # at many different angles
    assert torch.equal(turned[:, 0], turned[:, 1])  # the same transform for every channel


def test_mixup_and_label_smoothing_make_soft_targets() -> None:
    x = torch.rand(8, 2, 3, 8, 8)
    labels = torch.arange(8) % 4
    torch.manual_seed(0)
    mixed, target = batch_augment(ExtraAug(mixup=0.2, label_smoothing=0.1), 4)(x, labels)
    torch.testing.assert_close(target.sum(1), torch.ones(8))
    assert target.min() >= 0.1 / 4 - 1e-6 and not torch.equal(mixed, x)
    _, plain = batch_augment(ExtraAug(label_smoothing=0.1), 4)(x, labels)
    assert torch.allclose(plain.max(1).values, torch.full((8,), 0.925)) and (plain.argmax(1) == labels).all()


# --- transfer: pyskl checkpoints ---------------------------------------------------------------------------------

def _bn(sd: dict, key: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        sd[f"{key}.bn.{name}"] = (c,)
    sd[f"{key}.bn.num_batches_tracked"] = ()


def _conv(sd: dict, key: str, shape: tuple, bn: bool = True) -> None:
    sd[f"{key}.conv.weight"] = shape
    if bn:
        _bn(sd, key, shape[0])


def pyskl_slowonly(in_ch: int, classes: int = 60) -> dict:
    """pyskl ResNet3dSlowOnly(depth=50, base_channels=32, num_stages=3, stage_blocks=(4, 6, 3),
    inflate=(0, 1, 1), conv1_kernel=(1, 7, 7)) + I3DHead: key -> shape."""
    sd: dict = {}
    _conv(sd, "backbone.conv1", (32, in_ch, 1, 7, 7))
    inplanes = 32
    for i, (blocks, inflate) in enumerate(zip((4, 6, 3), (0, 1, 1), strict=True)):
        planes = 32 * 2**i
        for j in range(blocks):
            key = f"backbone.layer{i + 1}.{j}"
            _conv(sd, f"{key}.conv1", (planes, inplanes, 3 if inflate else 1, 1, 1))
            _conv(sd, f"{key}.conv2", (planes, planes, 1, 3, 3))
            _conv(sd, f"{key}.conv3", (planes * 4, planes, 1, 1, 1))
            if j == 0:
                _conv(sd, f"{key}.downsample", (planes * 4, inplanes, 1, 1, 1))
            inplanes = planes * 4
    return {**sd, "cls_head.fc_cls.weight": (classes, 512), "cls_head.fc_cls.bias": (classes,)}


def pyskl_c3d_light(in_ch: int, classes: int = 60) -> dict:
    """pyskl C3D(base_channels=32, num_stages=3, temporal_downsample=False) + I3DHead."""
    sd: dict = {}
    for name, cin, cout in (("conv1a", in_ch, 32), ("conv2a", 32, 64), ("conv3a", 64, 128), ("conv3b", 128, 128),
                            ("conv4a", 128, 256), ("conv4b", 256, 256)):
        _conv(sd, f"backbone.{name}", (cout, cin, 3, 3, 3))
    return {**sd, "cls_head.fc_cls.weight": (classes, 256), "cls_head.fc_cls.bias": (classes,)}


def pyskl_x3d_shallow(in_ch: int, classes: int = 60) -> dict:
    """pyskl X3D(gamma_d=1, gamma_b=2.25, gamma_w=1, base_channels=24, stage_blocks=(2, 5, 3), se_ratio=None,
    use_swish=False) + I3DHead."""
    sd: dict = {}
    _conv(sd, "backbone.conv1_s", (24, in_ch, 1, 3, 3), bn=False)
    _conv(sd, "backbone.conv1_t", (24, 1, 5, 1, 1))
    layer_in = 24
    for i, blocks in enumerate((2, 5, 3)):
        inplanes = 24 * 2**i
        planes = int(inplanes * 2.25)
        for j in range(blocks):
            key = f"backbone.layer{i + 1}.{j}"
            _conv(sd, f"{key}.conv1", (planes, layer_in if j == 0 else inplanes, 1, 1, 1))
            _conv(sd, f"{key}.conv2", (planes, 1, 3, 3, 3))
            _conv(sd, f"{key}.conv3", (inplanes, planes, 1, 1, 1))
            if j == 0:
                _conv(sd, f"{key}.downsample", (inplanes, layer_in, 1, 1, 1))
        layer_in = inplanes
    _conv(sd, "backbone.conv5", (216, 96, 1, 1, 1))
    return {**sd, "cls_head.fc_cls.weight": (classes, 216), "cls_head.fc_cls.bias": (classes,)}


def _mmcv_checkpoint(path: Path, shapes: dict, prefix: str = "") -> dict:
    """An mmcv-style .pth: meta + state_dict of random tensors with the given shapes (+ an optimizer entry)."""
    g = torch.Generator().manual_seed(0)
    sd = {prefix + k: (torch.randint(0, 9, s, generator=g) if k.endswith("num_batches_tracked")
                       else torch.randn(s, generator=g)) for k, s in shapes.items()}
    meta = {"epoch": 24, "mmcv_version": "1.5.0", "hook_msgs": {"best_score": np.float64(0.9), "iter": np.int64(9)}}
    torch.save({"meta": meta, "state_dict": sd,  # mmcv's meta may hold numpy scalars
                "optimizer": {"state": {}, "param_groups": []}}, path)
    return {k.removeprefix(prefix): v for k, v in sd.items()}


@pytest.mark.parametrize("name, shapes, in_ch", [
    ("slowonly", pyskl_slowonly, 17), ("slowonly", pyskl_slowonly, len(LIMBS)),  # pyskl's COCO limbs: 17 too
    ("c3d_light", pyskl_c3d_light, 17), ("x3d_shallow", pyskl_x3d_shallow, 17),
], ids=["slowonly-joint", "slowonly-limb", "c3d-light", "x3d-shallow"])
def test_pyskl_checkpoint_loads_every_backbone_key_and_replaces_the_head(tmp_path: Path, name, shapes, in_ch) -> None:
    path = tmp_path / "pyskl.pth"
    saved = _mmcv_checkpoint(path, shapes(in_ch), prefix="module." if name == "c3d_light" else "")
    model = build_model(name, num_classes=7, in_channels=in_ch)  # 7 classes, not pyskl's 60
    report = load_pretrained(model, pretrained_weights(path))
    assert sorted(report.head_replaced) == sorted(
        f"{k} {tuple(saved[k].shape)} -> {tuple(model.state_dict()[k].shape)}" for k in saved if k.startswith("cls_"))
    assert not report.skipped and not report.missing and not report.unused and not report.reshaped
    assert len(report.loaded) == len(saved) - 2
    own = model.state_dict()
    assert all(torch.equal(own[k], saved[k]) for k in report.loaded)
    assert own["cls_head.fc_cls.weight"].shape == (7, model.backbone.out_channels)


def test_init_reports_mismatches_and_rejects_an_unrelated_network(tmp_path: Path) -> None:
    path = tmp_path / "joint.pth"
    _mmcv_checkpoint(path, pyskl_slowonly(17))
    model = build_model("slowonly", num_classes=60, in_channels=25)  # e.g. a 25-joint layout
    report = load_pretrained(model, pretrained_weights(path))
    assert report.skipped == ["backbone.conv1.conv.weight (32, 17, 1, 7, 7) -> (32, 25, 1, 7, 7)"]
    assert not report.head_replaced and len(report.loaded) == len(model.state_dict()) - 1
    with pytest.raises(SkelError, match="most backbone weights do not fit"):
        load_pretrained(build_model("x3d_shallow", num_classes=3), pretrained_weights(path))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SkelError, match="junk.pth: not a loadable"):
        pretrained_weights(tmp_path / "junk.pth")
    torch.save({"state_dict": {}, "meta": {"work_dir": tmp_path}}, tmp_path / "code.pth")  # a class: refused
    with pytest.raises(SkelError) as err:
        pretrained_weights(tmp_path / "code.pth")
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value) and "Unsupported global" in str(err.value)


# --- the stage: carved validation, steps, init from skel's best.pt with a frozen backbone ------------------------

def test_stage_carves_validation_runs_steps_and_inits_a_frozen_backbone(tiny: Path) -> None:
    common = dict(model_args=MODEL_ARGS, dropout=0.0, clip_len=16, input_size=32, batch_size=3, lr=0.1,
                  train_split=None, workers=0, threads=1)  # all 6 labelled clips: 2 per class
    first = run_stage(TrainStage(), tiny, TrainParams(steps=4, val_fraction=0.4, **common), Cluster(workers=0),
                      quiet=True)
    summary = json.loads((first / "manifest.json").read_text())["summary"]
    assert summary["train_samples"] == 3 and summary["epochs"] == 4 and summary["steps"] == 4  # 1 step per epoch
    assert summary["best_top1"] is not None  # validated on the 3 carved clips
    best = checkpoint.load(first / checkpoint.BEST)
    frozen = dict(epochs=1, backbone_lr_mult=0.0, aug_rotate=10, mixup=0.2, label_smoothing=0.1, **common)
    by_path = run_stage(TrainStage(), tiny, TrainParams(init=str(first / checkpoint.BEST), **frozen),
                        Cluster(workers=0), quiet=True)
    by_input = run_stage(TrainStage(), tiny, TrainParams(**frozen), Cluster(workers=0), quiet=True,
                         inputs={"pretrained": Upstream("train", first.name, first)})  # as a workflow chains it
    model = build_model("slowonly", num_classes=3, **MODEL_ARGS)
    for out in (by_path, by_input):
        after = checkpoint.load(out / checkpoint.LAST)["model"]
        for name, _ in model.named_parameters():  # parameters, not BN running statistics
            same = torch.equal(after[name], best["model"][name])
            assert same == name.startswith("backbone."), name
    # skel status says what it started from (the manifest's params leave the --init path out: its digest counts)
    (row,) = [r for r in status_rows(tiny, installed_version) if r["fingerprint"] == by_path.name]
    assert row["external"]["init_sha256"] == f"{first / checkpoint.BEST} ({file_digest(first / checkpoint.BEST)[:12]})"


def test_bf16_training_on_a_cpu_only_when_asked_and_native() -> None:
    """--bf16 autocasts a CPU's training steps (and test scoring) only where oneDNN computes bf16 natively; off,
    nothing changes, not even the fingerprints of runs made before the option existed."""
    from inference.device import autocast, cpu_bf16

    cpu, conv, x = torch.device("cpu"), torch.nn.Conv3d(2, 2, 1), torch.rand(1, 2, 2, 2, 2)
    with autocast(cpu):
        assert conv(x).dtype == torch.float32
    with autocast(cpu, bf16_on_cpu=True):
        assert conv(x).dtype == (torch.bfloat16 if cpu_bf16() else torch.float32)
    from stages.test.params import TestParams

    for params in (TrainParams, TestParams):
        assert "bf16" not in fingerprint_params(params())
        assert fingerprint_params(params(bf16=True))["bf16"] is True


def test_bf16_where_it_runs_in_float32_is_said_and_fingerprinted_so(caplog) -> None:
    """On a CPU without native bf16, --bf16 ran float32 steps without a word, under the fingerprint of bf16: a work
    folder copied to a native CPU was a cache hit of float32 results there. Its external digests say float32 now
    (and nothing for every other output), with one warning per process."""
    from inference.device import cpu_bf16
    from inference.precision import _say_float32
    from stages.test.params import TestParams
    from stages.test.stage import TestStage

    _say_float32.cache_clear()
    with caplog.at_level("WARNING", logger="skel"):
        got = [stage.external(params(bf16=True, device="cpu"))
               for stage, params in ((TrainStage(), TrainParams), (TestStage(), TestParams))]
    float32 = {"bf16": "float32: no native bf16 on this CPU"}
    assert got == [{} if cpu_bf16() else float32] * 2
    assert caplog.text.count("no native bf16") == (0 if cpu_bf16() else 1)
    assert TrainStage().external(TrainParams(device="cpu")) == TestStage().external(TestParams(device="cpu")) == {}


def test_model_args_hold_one_form_whatever_gives_them() -> None:
    """A recipe gives lists and the CLI tuples; the fingerprint cannot tell them apart, so the checkpoint, which
    pickles the config, must not either (a resume by the other launcher gave other bytes)."""
    from_recipe = TrainParams(model_args={"base_channels": 8, "stage_blocks": [1, 1, 1]})
    from_cli = TrainParams(model_args={"base_channels": 8, "stage_blocks": (1, 1, 1)})
    assert from_recipe.model_args == from_cli.model_args == {"base_channels": 8, "stage_blocks": (1, 1, 1)}
    assert pickle.dumps(from_recipe.model_args) == pickle.dumps(from_cli.model_args)
    # a recipe's '' and the CLI's None both mean every labelled sample: one fingerprint
    assert fingerprint_params(TrainParams(train_split="", val_split="")) == fingerprint_params(
        TrainParams(train_split=None, val_split=None))
