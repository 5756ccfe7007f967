"""The torch backend of predict: a train output's checkpoint as a `Net` (imported only when one is used)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from apps.predict.model import ModelSpec, Net
from inference import checkpoint
from models import uses_frames
from pipeline.checked import checked
from pipeline.errors import SkelError
from pipeline.workdir import load_output


def load_train_output(train_dir: Path, threads: int = 0, *, last: bool = False) -> tuple[ModelSpec, Net]:
    """The spec and network of a complete train output (its best checkpoint, or with ``last`` its last one,
    checked against the output's manifest before it is read)."""
    found = load_output(train_dir)
    if not found or found.stage != "train" or not found.complete:
        raise SkelError(f"{train_dir}: not a complete train output")
    model, config = checkpoint.load_model(checked(checkpoint.of(train_dir, checkpoint.which(last))))
    if uses_frames(config["model"]):
        raise SkelError(f"{train_dir}: {config['model']} needs RGB frames; predict takes pose models only")
    if threads:
        torch.set_num_threads(threads)

    @torch.no_grad()
    def net(x: np.ndarray) -> np.ndarray:
        return model.predict_proba(torch.from_numpy(x)[None])[0].numpy()

    return ModelSpec.from_train_output(train_dir, config), net
