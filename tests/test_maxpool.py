"""models/maxpool.py: the stem pool's C kernel gives what autocast's float32 max_pool3d gives, to the bit."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inference.device import cpu_bf16
from models import build_model
from models.maxpool import StemPool

CL = torch.channels_last_3d
TORCH_THREADS = 1
pytestmark = pytest.mark.usefixtures("torch_threads")


def _input(shape: tuple[int, ...], special: bool) -> torch.Tensor:
    """bf16 channels_last_3d with ties (rounded, ReLU'd: many zeros) and, if asked, NaN, -inf and -0.0."""
    x = (torch.randn(shape) * 2).round().relu()
    if special:
        x.view(-1)[::97] = float("nan")
        x.view(-1)[5::89] = float("-inf")
        x.view(-1)[7::61] = -0.0
    return x.to(torch.bfloat16).contiguous(memory_format=CL)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16 if t.dtype == torch.bfloat16 else torch.int32)


@pytest.mark.parametrize(("shape", "stride", "special"), [
    ((2, 16, 3, 9, 11), 1, False), ((2, 16, 3, 9, 11), 2, False), ((1, 24, 2, 7, 5), 1, True),
    ((3, 3, 1, 4, 6), 2, False), ((2, 32, 2, 1, 1), 1, False), ((1, 16, 2, 8, 8), 3, True),
    ((2, 5, 2, 6, 7), 2, True),
])  # fmt: skip
def test_kernel_matches_autocast_max_pool_to_the_bit(shape, stride, special):
    """Forward (float32 out), the window's first maximum taking the gradient, and the float32 sum of overlapping
    windows' gradients cast to bf16 once: all as autocast's float32 max_pool3d, on channel counts with and
    without a remainder past 16, strides 1-3, border windows and NaN/-inf/-0.0 inputs."""
    torch.manual_seed(0)
    x = _input(shape, special)
    ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = StemPool((1, stride))(ours)
        y_ref = F.max_pool3d(ref, (1, 3, 3), (1, stride, stride), (0, 1, 1))
    assert y.dtype == y_ref.dtype == torch.float32 and y.is_contiguous(memory_format=CL)
    nan = y_ref.isnan()
    assert torch.equal(nan, y.isnan())
    assert torch.equal(_bits(y)[~nan], _bits(y_ref)[~nan]), "forward differs"
    grad = torch.randn(y_ref.shape).contiguous(memory_format=CL)
    y.backward(grad)
    y_ref.backward(grad)
    assert ours.grad.dtype == torch.bfloat16
    assert torch.equal(_bits(ours.grad), _bits(ref.grad)), "backward differs"


def test_training_steps_are_the_same_with_and_without_the_kernel():
    """Three bf16 autocast SGD steps of a small SlowOnly: bit-equal weights with the kernel and with PyTorch's
    pool, the stem pool seeing the input the kernel takes (bf16, channels_last_3d)."""
    seen = []

    def train(use_kernel: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = build_model("slowonly", num_classes=4, in_channels=17, base_channels=16, stage_blocks=(1, 1, 1),
                            pool1_stride=(1, 1)).to(memory_format=CL).train()
        if not use_kernel:
            model.backbone.maxpool = torch.nn.MaxPool3d((1, 3, 3), 1, (0, 1, 1))
        model.backbone.maxpool.register_forward_hook(
            lambda m, inp, out: seen.append(inp[0].dtype == torch.bfloat16 and inp[0].is_contiguous(memory_format=CL)))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            x = torch.rand(4, 17, 4, 16, 16).contiguous(memory_format=CL)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x).float(), torch.tensor([0, 1, 2, 3]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    assert isinstance(build_model("slowonly", num_classes=4).backbone.maxpool, StemPool)
    for a, b in zip(train(True), train(False), strict=True):
        assert torch.equal(a, b)
    # where oneDNN emulates bf16 (no AVX512-BF16 / AMX) its convolutions return a contiguous tensor: the pool then
    # takes PyTorch's path, and the kernel serves only CPUs where bf16 training pays
    assert seen and (all(seen) or not cpu_bf16())


def test_other_inputs_take_pytorchs_pool():
    """float32, no autocast or a temporal stride: PyTorch's own result and dtype."""
    x = torch.rand(2, 16, 4, 9, 9).contiguous(memory_format=CL)
    assert torch.equal(StemPool((1, 1))(x), F.max_pool3d(x, (1, 3, 3), 1, (0, 1, 1)))
    xb = x.to(torch.bfloat16)
    assert StemPool((1, 1))(xb).dtype == torch.bfloat16  # no autocast: PyTorch's bf16 pool
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = StemPool((2, 1))(xb)
    assert torch.equal(y, F.max_pool3d(xb.float(), (1, 3, 3), (2, 1, 1), (0, 1, 1)))


def test_the_kernel_checks_its_arguments_itself():
    """A direct call whose sizes overflow or do not match the buffers is an error, not a wild write."""
    from models import _maxpool

    x, y, taps = (np.zeros((1, 4, 4, 16), dtype) for dtype in (np.int16, np.float32, np.uint8))
    _maxpool.forward(x, y, taps, 1, 4, 4, 16, 1, 4, 4)  # fits
    for args, what in [((1, 8, 8, 16, 1, 8, 8), "expected"), ((1, 4, 4, 16, 1, 3, 4), "OH"),
                       ((2**40, 2**20, 2**20, 16, 1, 2**20, 2**20), "too large")]:
        with pytest.raises(ValueError, match=what):
            _maxpool.forward(x, y, taps, *args)
