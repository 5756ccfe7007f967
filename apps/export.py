"""`skel export`: a trained checkpoint -> a self-contained ONNX classifier, checked on onnxruntime.

The graph takes heatmap clips ``x`` [batch, K, T, H, W] (batch dynamic; T, H, W as trained and tested)
and returns class probabilities ``probs`` [batch, classes]. ``metadata`` (e.g. the render parameters and
classes that `skel predict --onnx` needs) is stored in the model's metadata_props. Right after export it is run on
onnxruntime's CPU provider against torch on the same random input; a gap above ``tol`` is an error.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from apps import onnx_seal
from apps.predict.model import METADATA_KEY, ModelSpec
from inference import checkpoint
from models import uses_frames
from pipeline.atomic import atomic_path
from pipeline.checked import checked
from pipeline.errors import SkelError, interrupts_held
from pipeline.inputs import find_output


class Probabilities(nn.Module):
    """A recognizer's softmax output, the quantity `skel test` averages."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(dim=-1)


@dataclass(frozen=True)
class Exported:
    path: Path
    input_shape: tuple[int, ...]  # with batch 1
    max_abs_diff: float


def check_onnx(path: Path, model: nn.Module, x: torch.Tensor, tol: float) -> float:
    """Max |onnxruntime - torch| on ``x``; raises SkelError above ``tol``."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if sess.get_providers()[0] != "CPUExecutionProvider":
        raise SkelError(f"onnxruntime picked {sess.get_providers()} instead of the CPU provider")
    (got,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    diff = float(np.abs(got - want).max())
    if not diff <= tol:
        raise SkelError(f"{path}: onnxruntime differs from torch by {diff:.3g} (> {tol:g})")
    return diff


def heatmap_like(n: int, shape: tuple[int, int, int, int], seed: int = 0) -> torch.Tensor:
    """``n`` clips [C, T, H, W] like rendered volumes: per channel a Gaussian that drifts from frame to frame, values
    in 0..1. Uniform noise drives a trained model's softmax to one-hot, where an export that computes other numbers
    still agrees (1 with 1: a copy with every weight 20% off passed the check by 3e-25)."""
    c, t, h, w = shape
    g = torch.Generator().manual_seed(seed)
    start = torch.rand(n, c, 1, 2, generator=g) * torch.tensor([h, w])
    centre = start + torch.randn(n, c, t, 2, generator=g).cumsum(2) * (h / 64)
    yy, xx = torch.arange(h).view(h, 1), torch.arange(w).view(1, w)
    d2 = (yy - centre[..., 0, None, None]) ** 2 + (xx - centre[..., 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * max(1.0, h / 32) ** 2))


@contextmanager
def exporter_quiet() -> Iterator[None]:
    """Silence the dynamo exporter's pass logs (INFO), its notes on torchvision ops a recognizer never uses and
    torch's FutureWarnings: noise to a user; all of it stays under --verbose (DEBUG logging)."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(ckpt: Path, out: Path, *, clip_len: int | None = None, size: int | None = None,
                tol: float = 1e-4, train_dir: Path | None = None, overwrite: bool = True) -> Exported:
    """Export ``ckpt`` to ``out`` (one file, dynamic batch), then check it against torch on onnxruntime; a
    checkpoint of a train output is checked against its manifest first. With ``train_dir`` (the train output
    ``ckpt`` belongs to), the file holds the metadata `skel predict --onnx` needs. ``overwrite`` off: a file made
    at ``out`` while this one was exported (another export to the same path) is kept, and FileExistsError raised."""
    state = checkpoint.load(checked(ckpt))
    model, config = checkpoint.model_from_state(state), state["config"]
    if uses_frames(config["model"]):
        raise SkelError(f"{ckpt}: ONNX export of {config['model']} (two inputs) is not supported")
    net = Probabilities(model).eval()
    side = size or config["test_size"]
    shape = (config["in_channels"], clip_len or config["clip_len"], side, side)
    metadata = {} if train_dir is None else {METADATA_KEY: replace(
        ModelSpec.from_train_output(train_dir, config), clip_len=shape[1], size=side).to_json()}  # as exported
    example = torch.rand(2, *shape)
    with atomic_path(out, reclaim=True, overwrite=overwrite) as tmp:  # in place once checked
        with exporter_quiet(), interrupts_held():
            torch.onnx.export(net, (example,), str(tmp), input_names=["x"], output_names=["probs"], dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False)
        import onnx

        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, {**metadata, onnx_seal.KEY: onnx_seal.PLACEHOLDER})
        tmp.write_bytes(onnx_seal.seal(proto.SerializeToString()))
        diff = check_onnx(tmp, net, heatmap_like(3, shape), tol)
    return Exported(out, (1, *shape), diff)


def export_train_output(workdir: Path, ref: str | None, out: Path, *, last: bool = False,
                        overwrite: bool = True) -> tuple[Path, Exported]:
    """Export the best (or ``last``) checkpoint of a train output (``ref``: --from; default the newest) with
    the metadata `skel predict --onnx` needs; returns the train output's directory and the result."""
    train_dir = find_output(workdir, ("train",), ref).path
    ckpt = checkpoint.of(train_dir, checkpoint.which(last))
    return train_dir, export_onnx(ckpt, out, train_dir=train_dir, overwrite=overwrite)
