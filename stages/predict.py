"""`skel predict`: a video -> people -> skeletons -> heatmap volume -> top-k action labels, in one call.

The trained model comes from a train output (``--run WORKDIR`` picks the newest one); the render
parameters it was trained with (kind, sigma, size, crop) are read from that output's manifest chain,
so a prediction sees exactly what training saw. Long videos are classified in sliding windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import read_json
from pipeline.errors import SkelError
from pipeline.workdir import MANIFEST, load_output, newest_complete
from stages.render.heatmap import render_volume
from stages.render.stage import RenderParams, prepare
from stages.train import checkpoint
from stages.train.data import uses_frames
from stages.train.dataset import test_views


@dataclass
class Classifier:
    """A trained network with the render parameters and test-time views it expects."""

    model: torch.nn.Module
    config: dict
    render: RenderParams
    num_clips: int = 10
    flip: bool = True

    @classmethod
    def from_train_output(cls, train_dir: Path, *, which: str = "last", **views: object) -> Classifier:
        manifest = read_json(train_dir / MANIFEST)
        if not manifest or manifest.get("stage") != "train" or manifest.get("state") != "complete":
            raise SkelError(f"{train_dir}: not a complete train output")
        volumes = load_output(Path(manifest["inputs"]["volumes"]["path"]))
        if volumes is None:
            raise SkelError(f"{train_dir}: its render output {manifest['inputs']['volumes']['path']} is gone")
        render = RenderParams(**volumes.manifest["params"])
        model, config = checkpoint.load_model(train_dir / (checkpoint.BEST if which == "best" else checkpoint.LAST))
        if uses_frames(config["model"]):
            raise SkelError(f"{train_dir}: {config['model']} needs RGB frames; predict takes pose models only")
        return cls(model, config, render, **views)

    @property
    def classes(self) -> list[str]:
        return self.config.get("classes") or [str(i) for i in range(self.config["num_classes"])]

    @torch.no_grad()
    def probs(self, keypoint: np.ndarray, score: np.ndarray, img_shape: tuple[int, int]) -> np.ndarray:
        """Class probabilities for one skeleton sequence [M, T, 17, 2] / [M, T, 17] (test-time views averaged)."""
        r = self.render
        kp, frames, _ = prepare(keypoint, img_shape, r)
        volume = render_volume(kp, score[:, frames], (r.size, r.size), sigma=r.sigma, limbs=r.limbs,
                               use_score=r.use_score)
        x = test_views(torch.from_numpy(volume), self.config["clip_len"], self.num_clips, size=self.config["test_size"],
                       flip=self.flip, perm=self.config["flip_perm"])
        return self.model.predict_proba(x[None])[0].numpy()


def find_train_output(workdir: Path) -> Path:
    found = newest_complete(workdir, ("train",))
    if found is None:
        raise SkelError(f"no complete train output in {workdir} (run `skel train` or a workflow first)")
    return found.path


def windows(n_frames: int, window: int | None, stride: int | None) -> list[tuple[int, int]]:
    """[start, stop) frame ranges: the whole video, or sliding windows that cover it to the end."""
    if not window or n_frames <= window:
        return [(0, n_frames)]
    stride = stride or max(1, window // 2)
    starts = list(range(0, n_frames - window + 1, stride))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    return [(s, s + window) for s in starts]


@dataclass(frozen=True)
class Window:
    start: int
    stop: int
    probs: np.ndarray

    def top(self, k: int) -> list[tuple[int, float]]:
        order = np.argsort(-self.probs)[:k]
        return [(int(i), float(self.probs[i])) for i in order]


def classify(
    clf: Classifier, keypoint: np.ndarray, score: np.ndarray, img_shape: tuple[int, int],
    *, window: int | None = None, stride: int | None = None,
) -> list[Window]:
    """Probabilities per window (one window covering everything unless ``window`` is set)."""
    if keypoint.shape[0] == 0 or not (score > 0).any():
        raise SkelError("no person was found in the video")
    return [Window(a, b, clf.probs(keypoint[:, a:b], score[:, a:b], img_shape))
            for a, b in windows(keypoint.shape[1], window, stride)]
