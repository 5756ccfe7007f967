"""Training checkpoints: written atomically, loaded on CPU, and turned back into a model.

``last.pt`` holds everything needed to resume (model, optimizer, scheduler, grad scaler, RNG states,
epoch, step); ``best.pt`` holds the model with the best validation top-1. Both carry ``config``, the
model recipe and data facts that `skel test` and `skel export` need to rebuild the network.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from models import Recognizer3D, build_model
from models.layers import fold_batch_norms
from pipeline.atomic import write_bytes
from pipeline.errors import SkelError

LAST = "last.pt"
BEST = "best.pt"


def of(train_dir: Path, which: str = "best") -> Path:
    """A train output's checkpoint file: ``best`` (best.pt, the default everywhere) or ``last`` (last.pt)."""
    if which not in ("best", "last"):
        raise SkelError(f"checkpoint must be best or last, got {which!r}")
    return train_dir / (BEST if which == "best" else LAST)


def save(path: Path, state: dict) -> None:
    """Serialise in memory, then write atomically: the bytes depend only on ``state`` (torch names the archive
    after the file it writes, here a pid-named temporary), and a full disk is an OSError naming ``path``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getvalue())


def load(path: Path) -> dict:
    if not path.is_file():
        raise SkelError(f"{path}: no such checkpoint")
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_config(config: dict) -> Recognizer3D:
    """A fresh network as described by a checkpoint's ``config``."""
    return build_model(config["model"], num_classes=config["num_classes"], in_channels=config["in_channels"],
                       dropout=config["dropout"], **config["model_args"])


def for_inference(model: Recognizer3D, device: torch.device | str = "cpu") -> Recognizer3D:
    """A loaded network made fast to run: eval mode, BatchNorms folded into the convs, channels_last_3d
    weights on ``device`` (feed it channels_last_3d clips: ``stages.train.loop.to_device``). Scores equal
    the plain eval network's up to float rounding (about 1e-7)."""
    return fold_batch_norms(model.eval()).to(device, memory_format=torch.channels_last_3d)


def load_model(path: Path) -> tuple[Recognizer3D, dict]:
    """The trained network of a checkpoint (in eval mode) and its config."""
    state = load(path)
    model = model_from_config(state["config"])
    model.load_state_dict(state["model"])
    return model.eval(), state["config"]
