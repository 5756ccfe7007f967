"""Checkpoints of a train output, read back: loaded on CPU and turned into a network ready to run.

``last.pt`` holds everything needed to resume (model, optimizer, scheduler, grad scaler, RNG states,
epoch, step); ``best.pt`` holds the model with the best validation top-1. Both carry ``config``, the
model recipe and data facts that `skel test`, `skel export` and `skel predict` need to rebuild the network
(stages.train.checkpoint writes them).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from models import build_model
from models.layers import fold_batch_norms
from pipeline.errors import SkelError

if TYPE_CHECKING:
    from models.registry import Recognizer

LAST = "last.pt"
BEST = "best.pt"


def which(last: bool) -> str:
    """The checkpoint a ``--last`` flag chooses (test, export, predict): ``last``, else ``best``."""
    return "last" if last else "best"


def of(train_dir: Path, which: str = "best") -> Path:
    """A train output's checkpoint file: ``best`` (best.pt, the default everywhere) or ``last`` (last.pt)."""
    if which not in ("best", "last"):
        raise SkelError(f"checkpoint must be best or last, got {which!r}")
    return train_dir / (BEST if which == "best" else LAST)


def load(path: Path) -> dict:
    if not path.is_file():
        raise SkelError(f"{path}: no such checkpoint")
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_config(config: dict) -> Recognizer:
    """A fresh network as described by a checkpoint's ``config``."""
    return build_model(config["model"], num_classes=config["num_classes"], in_channels=config["in_channels"],
                       dropout=config["dropout"], **config["model_args"])


def for_inference(model: Recognizer, device: torch.device | str = "cpu") -> Recognizer:
    """A loaded network made fast to run: eval mode, BatchNorms folded into the convs, channels_last_3d
    weights on ``device`` (feed it channels_last_3d clips: ``inference.device.to_device``). Scores equal
    the plain eval network's up to float rounding (about 1e-7)."""
    return fold_batch_norms(model.eval()).to(device, memory_format=torch.channels_last_3d)


def model_from_state(state: dict) -> Recognizer:
    """The trained network of a loaded checkpoint, in eval mode."""
    model = model_from_config(state["config"])
    model.load_state_dict(state["model"])
    return model.eval()


def load_model(path: Path) -> tuple[Recognizer, dict]:
    """The trained network of a checkpoint (in eval mode) and its config."""
    state = load(path)
    return model_from_state(state), state["config"]
