"""models/frames2d.py: the frames-as-batch 2D execution computes the same function as the Conv3d SlowOnly.

Outputs, parameter gradients and BN running-stat updates are compared in float64, where both paths are exact
up to rounding (~1e-12): in float32 a deep train-mode network amplifies summation-order rounding to ~1e-3 in
the stem's gradients for either path alike, which would hide nothing and prove nothing.
"""

import copy

import pytest
import torch

import models.frames2d as frames2d
from models import build_model
from models.resnet3d_slowonly import ResNet3dSlowOnly

torch.set_num_threads(2)

CONFIGS = {
    "default": {},
    "cpu_recipe": dict(base_channels=16, stage_blocks=(2, 3, 2)),
}


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine and running stats (zero-init residual BN weights would hide the branches)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)


def _pair(**config) -> tuple[ResNet3dSlowOnly, ResNet3dSlowOnly]:
    """(Conv3d, frames2d) copies of one randomized backbone, in float64."""
    torch.manual_seed(0)
    ref = ResNet3dSlowOnly(**config)
    _randomize(ref)
    ref = ref.double()
    fast = copy.deepcopy(ref)
    fast.frames2d = True
    return ref, fast


def _assert_same(ref: ResNet3dSlowOnly, fast: ResNet3dSlowOnly, x: torch.Tensor, train: bool) -> None:
    ref.train(train)
    fast.train(train)
    y_ref, y_fast = ref(x), fast(x)
    assert y_fast.shape == y_ref.shape
    torch.testing.assert_close(y_fast, y_ref, rtol=0, atol=1e-4)
    if not train:
        return
    weights = torch.randn(y_ref.shape, dtype=y_ref.dtype, generator=torch.Generator().manual_seed(1))
    (y_ref * weights).sum().backward()
    (y_fast * weights).sum().backward()
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, rtol=0, atol=1e-4, msg=f"grad of {name}")
    for (name, b_ref), b_fast in zip(ref.named_buffers(), fast.buffers(), strict=True):
        torch.testing.assert_close(b_fast, b_ref, rtol=0, atol=1e-4, msg=f"buffer {name}")


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("config", [pytest.param("default", marks=pytest.mark.slow), "cpu_recipe"])
def test_same_outputs_and_gradients(config, train):
    ref, fast = _pair(**CONFIGS[config])
    x = torch.randn(2, 17, 16, 32, 32, dtype=torch.float64)
    _assert_same(ref, fast, x, train)


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
def test_temporal_kernels_and_strides_everywhere(monkeypatch, memory_format):
    """A 3x7x7 stem with temporal stride, a strided pool, temporal strides in two stages and an odd T."""
    monkeypatch.setattr(frames2d, "MEMORY_FORMAT", memory_format)
    ref, fast = _pair(
        base_channels=8,
        stage_blocks=(1, 2, 1),
        conv1_kernel=(3, 7, 7),
        conv1_stride=(2, 1),
        pool1_stride=(2, 2),
        temporal_strides=(1, 2, 2),
    )
    x = torch.randn(2, 17, 15, 24, 24, dtype=torch.float64)
    for train in (False, True):
        _assert_same(ref, fast, x, train)


def test_float32_forward_matches():
    torch.manual_seed(0)
    model = build_model("slowonly", num_classes=15, **CONFIGS["cpu_recipe"]).eval()
    _randomize(model)
    x = torch.rand(2, 17, 16, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model.backbone.frames2d = True
        fast = model(x)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


def test_state_dict_unchanged_and_interchangeable():
    torch.manual_seed(0)
    ref = build_model("slowonly", num_classes=15, **CONFIGS["cpu_recipe"])
    fast = build_model("slowonly", num_classes=15, frames2d=True, **CONFIGS["cpu_recipe"])
    assert fast.backbone.frames2d and not ref.backbone.frames2d
    sd_ref, sd_fast = ref.state_dict(), fast.state_dict()
    assert list(sd_fast) == list(sd_ref)
    assert all(sd_fast[k].shape == v.shape for k, v in sd_ref.items())
    fast.load_state_dict(sd_ref)
    ref.eval()
    fast.eval()
    x = torch.rand(2, 3, 17, 8, 32, 32)  # multi-clip input goes through the recognizer's clip folding
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-4, atol=1e-5)
