"""models/: pyskl-equivalent PoseConv3D networks (sizes, shapes, keys, init, clip averaging, ONNX parity)."""

import copy

import numpy as np
import pytest
import torch

from models import MODEL_NAMES, MODELS, Recognizer3D, build_model
from models.flops import count_macs, count_params
from tests.support import conv, resnet3d_counts, strided

TORCH_THREADS = 2
pytestmark = pytest.mark.usefixtures("torch_threads")


def _c3d_light_counts(clip: tuple[int, int, int] = (48, 56, 56)) -> tuple[int, int, int]:
    """C3D, base 32, without conv5: 3x3x3 convs; 1x2x2 average pools before conv2a, conv3a and conv4a."""
    t, side = clip[0], clip[1]
    layers = []
    for i, convs in enumerate([[(17, 32)], [(32, 64)], [(64, 128), (128, 128)], [(128, 256), (256, 256)]]):
        side = side // 2 if i else side
        layers += [conv(a, b, (3, 3, 3), (t, side, side)) for a, b in convs]
    return sum(p for p, _ in layers), sum(m for _, m in layers), 256


def _x3d_shallow_counts(clip: tuple[int, int, int] = (48, 56, 56)) -> tuple[int, int, int]:
    """X3D, base 24, gamma_b 2.25, blocks (2, 5, 3): 1x3x3 s2 stem conv (no BN), depth-wise 5x1x1 conv, blocks of
    1x1x1 expand -> depth-wise 3x3x3 (stride in the first block) -> 1x1x1 project, then conv5 96 -> 216."""
    t, side = clip[0], strided(clip[1], 2)
    layers = [conv(17, 24, (1, 3, 3), (t, side, side), bn=False), conv(24, 24, (5, 1, 1), (t, side, side), 24)]
    inp = 24
    for i, n in enumerate((2, 5, 3)):
        width = 24 * 2**i
        mid = int(width * 2.25)
        for b in range(n):
            out = strided(side, 2) if b == 0 else side
            layers += [conv(inp, mid, (1, 1, 1), (t, side, side)), conv(mid, mid, (3, 3, 3), (t, out, out), mid),
                       conv(mid, width, (1, 1, 1), (t, out, out))]
            if b == 0:
                layers.append(conv(inp, width, (1, 1, 1), (t, out, out)))
            inp, side = width, out
    layers.append(conv(96, 216, (1, 1, 1), (t, side, side)))
    return sum(p for p, _ in layers), sum(m for _, m in layers), 216


PAPER_SIZES = {
    # name: (backbone (params, MACs, channels), feature shape for 1x17x48x56x56, params the paper reports)
    "slowonly": (resnet3d_counts(17, 32, (4, 6, 3), (0, 1, 1), (2, 2, 2), (1, 1, 2)), (512, 24, 7, 7), 2.0e6),
    "c3d_light": (_c3d_light_counts(), (256, 48, 7, 7), 3.4e6),
    "x3d_shallow": (_x3d_shallow_counts(), (216, 48, 4, 4), 0.25e6),
}

TINY = dict(base_channels=8, stage_blocks=(1, 1, 1))


def test_registry_is_plain_dict():
    assert set(MODELS) == {"slowonly", "c3d_light", "x3d_shallow", "rgbpose"}
    assert tuple(MODELS) == MODEL_NAMES  # the torch-free list recipes are checked against
    with pytest.raises(KeyError, match="registered"):
        build_model("resnet9000", num_classes=3)


@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_paper_config_sizes_and_macs(name):
    (backbone_params, backbone_macs, channels), feat_shape, published = PAPER_SIZES[name]
    head_params, head_macs = channels * 60 + 60, channels * 60
    model = build_model(name, num_classes=60)
    assert count_params(model.backbone) == backbone_params
    assert count_params(model) == backbone_params + head_params
    assert count_params(model) == pytest.approx(published, rel=0.03)  # 2.0M / 3.4M / 0.25M in the paper
    assert model.backbone.out_channels == channels == feat_shape[0]
    # Shapes and MACs of the full-size clip on the meta device: no compute.
    with torch.device("meta"):
        meta = build_model(name, num_classes=60).eval()
        x = torch.empty(1, 17, 48, 56, 56)
        assert tuple(meta.backbone(x).shape) == (1, *feat_shape)
        assert count_macs(meta, x) == backbone_macs + head_macs  # SlowOnly: 15.6G (the paper: "15.9 GFLOPs")


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
    assert count_params(model) == resnet3d_counts(17, 16, (2, 3, 2), (0, 1, 1), (2, 2, 2), (1, 1, 2))[0] + 256 * 15 + 15
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


def _randomise_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial running statistics and affine parameters, so folding them is actually tested."""
    g = torch.Generator().manual_seed(1)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)):
        for t, lo, hi in ((bn.running_mean, -0.5, 0.5), (bn.running_var, 0.5, 2.0), (bn.weight.data, 0.5, 1.5),
                          (bn.bias.data, -0.2, 0.2)):
            t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return model


@pytest.mark.parametrize("name", ["slowonly", "c3d_light", "x3d_shallow"])
def test_inference_form_scores_like_the_eval_network(name):
    """for_inference (BN folded into the convs, channels_last_3d) gives the eval network's probabilities."""
    from inference.checkpoint import for_inference

    torch.manual_seed(0)
    model = _randomise_bn(build_model(name, num_classes=5, in_channels=17)).eval()
    x = torch.rand(3, 17, 8, 32, 32)
    want = model.predict_proba(x)
    fast = for_inference(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fast.modules())
    got = fast.predict_proba(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["slowonly", "x3d_shallow"])
def test_views_from_shared_frames_score_like_the_views(name):
    """predict_views on distinct frames + indices (frame-wise stem and layer1 run once per frame) equals
    predict_proba on the gathered views, with frames repeated across views and mirrored copies."""
    from inference.checkpoint import for_inference
    from inference.views import sample_views

    torch.manual_seed(0)
    model = for_inference(_randomise_bn(build_model(name, num_classes=5, in_channels=17, **(
        TINY if name == "slowonly" else {}))))
    assert getattr(model.backbone, "frame_wise", False) == (name == "slowonly")
    volume = torch.rand(17, 11, 32, 32)  # 11 frames, 4 clips of 8: frames repeat within and across clips
    views = sample_views(lambda f: volume[:, torch.from_numpy(f)], 11, 8, 4, 32, True, list(range(17))[::-1])
    assert views.frames.shape[1] == 22 and views.index.shape == (8, 8)
    dense = views.dense()
    want = model.predict_proba(dense.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(model.predict_views(views.frames, views.index), want, atol=1e-6, rtol=0)


@pytest.mark.slow
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


def test_checking_model_arguments_imports_no_compiler() -> None:
    """A run checks every training step's model on the meta device before any step runs; a normal draw there imported
    torch._dynamo (1.3 s of every `skel run` with a training step). The check leaves it out, for every model."""
    import subprocess
    import sys

    from tests.support import REPO

    code = ("import sys\nfrom stages.train.params import check_model_args\n"
            f"for name in {sorted(MODELS)!r}:\n    check_model_args(name, {{}}, 0.5)\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
