"""Start training from pretrained weights: skel's ``best.pt`` / ``last.pt`` or a pyskl (mmcv) ``.pth``.

pyskl checkpoints are a dict with ``state_dict`` (keys ``backbone.*`` and ``cls_head.fc_cls.*``, sometimes
behind a ``module.`` prefix) and ``meta``; skel's own hold ``model``. skel's models use pyskl's key names
(models/registry.py), so weights map by name. A tensor whose shape differs is reshaped when only its
layout differs (same element count), and anything else is skipped; the report lists every case. The classifier
head's rows follow the class names where both sides have them (a skel checkpoint, volumes whose source named its
classes): reordered, or picked for a subset of the checkpoint's classes, else left freshly initialised (a class
it never saw); without names, the head is kept when the class count is the same. Fewer than half
of the backbone's tensors fitting means another architecture: an error, not a silent fresh start.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.digests import check_planned
from pipeline.errors import SkelError
from pipeline.log import say

log = logging.getLogger("skel")
HEAD = "cls_head."
NOT_WEIGHTS = ".num_batches_tracked"  # a scalar every BN has: fits anything, says nothing


@dataclass
class InitReport:
    """What ``load_pretrained`` did with each key of the model."""

    loaded: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    head_replaced: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # in both, shapes incompatible: "key (src) -> (dst)"
    missing: list[str] = field(default_factory=list)  # in the model only: kept as initialised
    unused: list[str] = field(default_factory=list)  # in the checkpoint only

    def summary(self) -> str:
        return (f"{len(self.loaded)} loaded, {len(self.reshaped)} reshaped, {len(self.head_replaced)} head "
                f"replaced, {len(self.skipped)} skipped, {len(self.missing)} missing, {len(self.unused)} unused")


def _numpy_scalars() -> list:
    """What numpy scalars in an mmcv checkpoint's ``meta`` (a best score, an epoch) unpickle from: numbers
    only, so allowing them keeps the load weights-only."""
    core = getattr(np, "_core", None) or np.core
    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
             np.float16, np.float32, np.float64)
    return [core.multiarray.scalar, np.dtype, *(type(np.dtype(k)) for k in kinds)]


def _why(e: Exception) -> str:
    """torch's unpickling error in one line (it spans several, with terminal colour codes and advice)."""
    text = str(e).split("WeightsUnpickler error: ", 1)[-1]
    line = re.sub(r"\x1b\[[0-9;]*m", "", text).strip().splitlines()[0] if text.strip() else type(e).__name__
    return line.split(". Please use")[0]


def _damaged_member(path: Path | io.BytesIO) -> str | None:
    """The first member of a checkpoint in torch's zip format whose bytes do not match their CRC (torch.load does not
    check them: a damaged tensor loads as other numbers); None when intact or not a zip (torch.load judges those)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except zipfile.BadZipFile:
        return None


def _planned(path: Path, sha256: str | None) -> Path | io.BytesIO:
    """The checkpoint as torch is to read it: with ``sha256`` (the digest the run's fingerprint holds), its bytes,
    which must be those (a file replaced after the plan hashed it would train under the old one's fingerprint)."""
    if sha256 is None:
        return path
    data = path.read_bytes()
    check_planned(path, hashlib.sha256(data).hexdigest(), sha256)
    return io.BytesIO(data)


def pretrained_weights(
    path: Path, kind: str | None = None, classes: list[str] | None = None, sha256: str | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a skel or pyskl checkpoint, keyed as the model's state dict (``module.`` stripped). With
    ``kind`` (the volumes trained on: joint, limb), a skel checkpoint of another kind is refused: joint and
    limb heatmaps have the same channel count, so its weights would load and mean the wrong thing. With
    ``classes`` (the volumes' class names), the head's rows are those classes' (`_head_rows`); with ``sha256``,
    the file must have those bytes (`_planned`)."""
    if not path.is_file():
        raise SkelError(f"{path}: no such checkpoint")
    source = _planned(path, sha256)
    if (bad := _damaged_member(source)) is not None:
        raise SkelError(f"{path}: damaged ({bad} does not match the checksum the file holds for it)")
    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        with torch.serialization.safe_globals(_numpy_scalars()):
            state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same for the user
        raise SkelError(f"{path}: not a loadable weights-only checkpoint ({type(e).__name__}: {_why(e)})") from None
    trained_on = None
    if isinstance(state, dict):
        config = state.get("config")
        was = config.get("kind") if isinstance(config, dict) else None
        trained_on = config.get("classes") if isinstance(config, dict) else None
        if kind and was and was != kind:
            raise SkelError(f"{path}: pretrained on {was} heatmaps, these volumes are {kind}: start the {kind} "
                            f"stream from a {kind} checkpoint (e.g. penn-{kind}-s16)")
        state = state.get("model", state.get("state_dict", state))
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SkelError(f"{path}: no state dict of tensors (expected 'model' or 'state_dict')")
    weights = {k.removeprefix("module."): v for k, v in state.items()}
    return _head_rows(weights, list(trained_on), list(classes)) if trained_on and classes else weights


def _head_rows(weights: dict[str, torch.Tensor], trained_on: list[str], classes: list[str]) -> dict[str, torch.Tensor]:
    """The head's rows for ``classes`` by name: the checkpoint's rows reordered or picked where it knows every
    one of them, else no head (it stays freshly initialised: `load_pretrained` reports it replaced, and the classes
    it does not know are said)."""
    if trained_on == classes:
        return weights
    head = [k for k, v in weights.items() if k.startswith(HEAD) and v.ndim and len(v) == len(trained_on)]
    if new := [c for c in classes if c not in trained_on]:
        say(f"  head: {len(new)} of the {len(classes)} classes are not among the checkpoint's {len(trained_on)} "
            f"({', '.join(map(repr, new[:5]))}{', ...' if len(new) > 5 else ''}; names match exactly): the head "
            "starts fresh")
        return {k: v for k, v in weights.items() if k not in head}
    rows = torch.tensor([trained_on.index(c) for c in classes])
    return weights | {k: weights[k][rows] for k in head}


def load_pretrained(model: nn.Module, weights: dict[str, torch.Tensor]) -> InitReport:
    """Copy ``weights`` into ``model`` by name; see the module docstring for the rules."""
    report = InitReport()
    own = model.state_dict()
    new = {}
    for key, dst in own.items():
        src = weights.get(key)
        if src is None:
            (report.head_replaced if key.startswith(HEAD) else report.missing).append(key)
        elif src.shape == dst.shape:
            new[key] = src
            report.loaded.append(key)
        elif key.startswith(HEAD):
            report.head_replaced.append(f"{key} {tuple(src.shape)} -> {tuple(dst.shape)}")
        elif src.numel() == dst.numel():
            new[key] = src.reshape(dst.shape)
            report.reshaped.append(f"{key} {tuple(src.shape)} -> {tuple(dst.shape)}")
        else:
            report.skipped.append(f"{key} {tuple(src.shape)} -> {tuple(dst.shape)}")
    report.unused = sorted(set(weights) - set(own))
    fits = [k for k in own if k.startswith("backbone.") and not k.endswith(NOT_WEIGHTS)]
    if sum(k in new for k in fits) < len(fits) / 2:
        raise SkelError(f"most backbone weights do not fit this model ({report.summary()}); is it the same "
                        "architecture and size?")
    model.load_state_dict(new, strict=False)
    return report


def log_report(path: Path, report: InitReport, *, named: bool = True) -> None:
    """One line of counts, then the keys that were not simply loaded; a head kept for volumes that name no classes
    (``named`` off) is said: its rows were taken in label order."""
    say(f"init from {path}: {report.summary()}")
    for kind in ("reshaped", "head_replaced", "skipped", "missing", "unused"):
        for key in getattr(report, kind):
            say(f"  {kind.replace('_', ' ')}: {key}")
    if not named and not report.head_replaced:
        log.warning("%s: these volumes name no classes: the checkpoint's head rows are taken in label order (label i "
                    "is its class i), as pyskl loads them; a 'classes' list in the pickle matches them by name", path)
