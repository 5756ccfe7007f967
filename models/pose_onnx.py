"""ONNX model files and onnxruntime sessions for the pose models used by `extract`.

A model is named (``movenet-thunder``) and looked up as ``<dir>/<name>.onnx``; the directory comes from
``--models DIR`` or ``$SKEL_MODELS``. When the directory has a ``SHA256SUMS`` file the model must match its
line there. Sessions are created once per process (cached on path, device and thread count) with explicit
providers, because onnxruntime-gpu lists CUDA even where it cannot use it and then silently runs on CPU.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from models import Device
from pipeline.digests import file_digest
from pipeline.errors import FileError

SUMS_FILE = "SHA256SUMS"
MODELS_ENV = "SKEL_MODELS"


class ModelError(FileError):
    """A model file that cannot be used: missing, corrupt, wrong checksum or unexpected shapes."""


def models_dir(path: str | os.PathLike | None = None) -> Path:
    """The model directory: the explicit argument, else ``$SKEL_MODELS``."""
    chosen = path or os.environ.get(MODELS_ENV)
    if not chosen:
        raise ModelError("<models>", f"no model directory given (use --models DIR or set ${MODELS_ENV})")
    return Path(chosen)


def model_path(name: str, directory: str | os.PathLike | None = None) -> Path:
    """Resolve a model name to ``<dir>/<name>.onnx``, checked for existence and against SHA256SUMS."""
    path = models_dir(directory) / (name if name.endswith(".onnx") else f"{name}.onnx")
    if not path.is_file():
        raise ModelError(path, "model file not found")
    expected = _expected_sha256(str(path.parent / SUMS_FILE), path.name)
    if expected is not None and file_digest(path) != expected:
        raise ModelError(path, f"SHA256 does not match {SUMS_FILE} (expected {expected[:12]}…)")
    return path


def model_sha256(name: str, directory: str | os.PathLike | None = None) -> str:
    """SHA256 of a named model (for fingerprints); checked against SHA256SUMS like `model_path`."""
    return file_digest(model_path(name, directory))


def _expected_sha256(sums: str, filename: str) -> str | None:
    """The hash listed for `filename` in a sha256sum-style file; None if the file or the line is absent."""
    if not os.path.isfile(sums):
        return None
    with open(sums) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == filename:
                return parts[0].lower()
    return None


@functools.cache
def cuda_usable() -> bool:
    """Whether CUDA is worth trying: the provider is built in and a CUDA driver loads (`session` then checks
    that onnxruntime really placed the model on CUDA)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def providers_for(device: Device) -> list[str]:
    """Execution providers for ``--device``: auto picks CUDA only where a driver exists."""
    if device == "cpu" or (device == "auto" and not cuda_usable()):
        return ["CPUExecutionProvider"]
    if device in ("cuda", "auto"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"unknown device {device!r} (auto, cpu or cuda)")


@functools.cache
def session(path: str, device: Device = "cpu", threads: int = 1) -> ort.InferenceSession:
    """One cached inference session per (model, device, intra-op threads) in this process."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle intra-op threads sleep instead of spinning, so they do not take cores from other processes
    # (other workers, the loader) that compete for the same CPUs.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    providers = providers_for(device)
    try:
        sess = ort.InferenceSession(path, opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise ModelError(path, f"onnxruntime cannot load it: {str(exc).splitlines()[0]}") from exc
    if sess.get_providers()[0] != providers[0]:
        if device == "cuda":
            raise ModelError(path, f"CUDA requested but onnxruntime runs on {sess.get_providers()[0]}")
        return session(path, "cpu", threads)
    return sess


def check_io(
    sess: ort.InferenceSession, path: str | os.PathLike, inp: Sequence[int | None], out: Sequence[int | None]
) -> None:
    """Check the first input and output shapes: an int must match exactly, None matches any size."""
    for kind, arg, want in (("input", sess.get_inputs()[0], inp), ("output", sess.get_outputs()[0], out)):
        got = list(arg.shape)
        ok = len(got) == len(want) and all(w is None or g == w for g, w in zip(got, want, strict=True))
        if not ok:
            raise ModelError(path, f"unexpected {kind} shape {got} (expected {list(want)})")


def input_type(sess: ort.InferenceSession) -> str:
    """The ONNX element type of the first input, e.g. ``tensor(int32)``."""
    return sess.get_inputs()[0].type
