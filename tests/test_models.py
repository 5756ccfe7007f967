"""models/: pyskl-equivalent PoseConv3D networks (sizes, shapes, keys, init, clip averaging, ONNX parity)."""

import numpy as np
import pytest
import torch

from models import MODELS, Recognizer3D, build_model
from models.flops import count_macs, count_params

torch.set_num_threads(2)

# Exact sizes with num_classes=60 (paper: 2.0M / 3.4M / 0.25M) and MACs of one 17 x 48 x 56 x 56 clip.
PAPER_SIZES = {
    # name: (params, backbone params, feature shape for 1x17x48x56x56, MACs)
    "slowonly": (2_024_860, 1_994_080, (512, 24, 7, 7), 15_630_858_240),
    "c3d_light": (3_404_892, 3_389_472, (256, 48, 7, 7), 16_777_264_128),
    "x3d_shallow": (254_508, 241_488, (216, 48, 4, 4), 568_950_624),
}

TINY = dict(base_channels=8, stage_blocks=(1, 1, 1))


def test_registry_is_plain_dict():
    assert set(MODELS) == {"slowonly", "c3d_light", "x3d_shallow", "rgbpose"}
    with pytest.raises(KeyError, match="registered"):
        build_model("resnet9000", num_classes=3)


@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_paper_config_sizes_and_macs(name):
    params, backbone_params, feat_shape, macs = PAPER_SIZES[name]
    model = build_model(name, num_classes=60)
    assert count_params(model) == params
    assert count_params(model.backbone) == backbone_params
    assert model.backbone.out_channels == feat_shape[0]
    # Shapes and MACs of the full-size clip on the meta device: no compute.
    with torch.device("meta"):
        meta = build_model(name, num_classes=60).eval()
        x = torch.empty(1, 17, 48, 56, 56)
        assert tuple(meta.backbone(x).shape) == (1, *feat_shape)
        assert count_macs(meta, x) == macs


def test_slowonly_structure_follows_pyskl():
    sd = build_model("slowonly", num_classes=60).state_dict()
    assert sd["backbone.conv1.conv.weight"].shape == (32, 17, 1, 7, 7)
    # inflate (0, 1, 1): stage 1 conv1 is 1x1x1, stages 2-3 are 3x1x1; conv2 is 1x3x3.
    assert sd["backbone.layer1.0.conv1.conv.weight"].shape == (32, 32, 1, 1, 1)
    assert sd["backbone.layer2.0.conv1.conv.weight"].shape == (64, 128, 3, 1, 1)
    assert sd["backbone.layer3.2.conv2.conv.weight"].shape == (128, 128, 1, 3, 3)
    assert sd["backbone.layer3.0.downsample.conv.weight"].shape == (512, 256, 1, 1, 1)
    assert "backbone.layer3.0.downsample.bn.running_var" in sd
    assert sd["cls_head.fc_cls.weight"].shape == (60, 512)
    assert "backbone.layer4.0.conv1.conv.weight" not in sd
    assert not any(k.endswith(".conv.bias") for k in sd)


def test_other_backbone_keys_follow_pyskl():
    c3d = build_model("c3d_light", num_classes=60).state_dict()
    assert c3d["backbone.conv4b.conv.weight"].shape == (256, 256, 3, 3, 3)
    assert "backbone.conv5a.conv.weight" not in c3d
    x3d = build_model("x3d_shallow", num_classes=60).state_dict()
    assert x3d["backbone.conv1_s.conv.weight"].shape == (24, 17, 1, 3, 3)
    assert "backbone.conv1_s.bn.weight" not in x3d
    assert x3d["backbone.conv1_t.conv.weight"].shape == (24, 1, 5, 1, 1)
    assert x3d["backbone.layer2.4.conv2.conv.weight"].shape == (108, 1, 3, 3, 3)  # depth-wise
    assert x3d["backbone.conv5.conv.weight"].shape == (216, 96, 1, 1, 1)
    assert x3d["cls_head.fc_cls.weight"].shape == (60, 216)


def test_init_like_pyskl():
    torch.manual_seed(0)
    model = build_model("slowonly", num_classes=60)
    block = model.backbone.layer2[0]
    assert torch.all(block.conv1.bn.weight == 1) and torch.all(block.conv1.bn.bias == 0)
    assert torch.all(block.conv3.bn.weight == 0)  # zero_init_residual
    fc = model.cls_head.fc_cls
    assert torch.all(fc.bias == 0) and 0.008 < fc.weight.std().item() < 0.012
    w = model.backbone.layer3[0].conv3.conv.weight  # kaiming normal, fan_out, relu
    fan_out = w.shape[0] * w[0, 0].numel()
    assert abs(w.std().item() / (2 / fan_out) ** 0.5 - 1) < 0.05


@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_forward_small_clip(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7).eval()
    x = torch.rand(2, 17, 8, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_overrides_small_cpu_recipe():
    model = build_model("slowonly", num_classes=15, in_channels=17, base_channels=16, stage_blocks=(2, 3, 2))
    assert count_params(model) == 321_983
    assert [len(model.backbone.layer1), len(model.backbone.layer2), len(model.backbone.layer3)] == [2, 3, 2]
    assert model.backbone.out_channels == 256
    assert model.cls_head.dropout.p == 0.5
    assert build_model("slowonly", num_classes=3, dropout=0.2, **TINY).cls_head.dropout.p == 0.2
    assert build_model("x3d_shallow", num_classes=3, dropout=0.0).cls_head.dropout is None
    assert (
        build_model("slowonly", num_classes=3, in_channels=25, **TINY).backbone.conv1.conv.in_channels == 25
    )
    with pytest.raises(ValueError, match="num_stages"):
        build_model("slowonly", num_classes=3, stage_blocks=(1, 1))
    with pytest.raises(TypeError):
        build_model("slowonly", num_classes=3, no_such_option=1)


def test_train_step_backward():
    torch.manual_seed(0)
    model = build_model("slowonly", num_classes=4, **TINY).train()
    x, y = torch.rand(2, 17, 8, 16, 16), torch.tensor([1, 3])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert model.cls_head.fc_cls.weight.grad is not None
    assert model.backbone.conv1.conv.weight.grad.abs().sum() > 0


def test_multi_clip_averaging():
    torch.manual_seed(0)
    model: Recognizer3D = build_model("slowonly", num_classes=5, **TINY).eval()
    x = torch.rand(2, 3, 17, 8, 16, 16)  # [N, clips, K, T, H, W]
    with torch.no_grad():
        per_clip = torch.stack([model(x[:, c]) for c in range(3)], dim=1)  # [N, clips, C]
        logits = model(x)
    probs = model.predict_proba(x)
    assert logits.shape == probs.shape == (2, 5)
    torch.testing.assert_close(logits, per_clip.mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs, per_clip.softmax(-1).mean(1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    torch.testing.assert_close(model.predict_proba(x[:, 0]), per_clip[:, 0].softmax(-1), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="expected"):
        model(torch.rand(17, 8, 16, 16))


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # raised inside torch.export
@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_onnx_export_matches_onnxruntime(tmp_path, name):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    overrides = {
        "slowonly": TINY,
        "c3d_light": dict(base_channels=4),
        "x3d_shallow": dict(base_channels=8, stage_blocks=(1, 1, 1)),
    }[name]
    model = build_model(name, num_classes=6, **overrides).eval()
    # Non-trivial BN statistics and residual gains, so parity is not checked on a degenerate network.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    path = tmp_path / f"{name}.onnx"
    x = torch.rand(2, 17, 8, 16, 16)
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=True,
        external_data=False,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    assert path.exists() and not (tmp_path / f"{name}.onnx.data").exists()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    assert sess.get_providers() == ["CPUExecutionProvider"]
    (inp,) = sess.get_inputs()
    for batch in (2, 3):  # 3: the batch dimension really is dynamic
        xb = torch.rand(batch, 17, 8, 16, 16)
        with torch.no_grad():
            expected = model(xb).numpy()
        (got,) = sess.run(None, {inp.name: xb.numpy()})
        assert got.shape == (batch, 6)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
