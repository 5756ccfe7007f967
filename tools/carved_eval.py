"""Score train outputs' checkpoints on the clips their run carved from the training split.

    python tools/carved_eval.py RUNS/train/FP [RUNS/train/FP ...] [--clips 10] [--threads 2]
    python tools/carved_eval.py RUNS/train/FP ... --on train --minus train600

The carved clips are the ones the train stage held out (its own `select` on its recorded params); with
``--on SPLIT --minus SPLIT`` they are instead the clips of one split of the run's volumes that are not in
another (the small-data proxies: Penn's training clips that neither subset trains on). Scored with the
test stage's views (``--clips`` clips x flip, mean softmax): top-1 and the mean negative log-likelihood of
the true class, a finer measure than top-1 on a hundred clips. For choosing a recipe's settings without
the test split (docs/small_data.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from inference import checkpoint
from inference.data import eval_set
from inference.device import autocast
from inference.splits import split_items
from pipeline.atomic import read_json
from pipeline.inputs import inputs_of
from pipeline.workdir import MANIFEST
from stages.test.metrics import mean_nll, top_k_accuracy
from stages.train.params import TrainParams
from stages.train.stage import select


def carved_scores(train_dir: Path, num_clips: int, on: str | None = None, minus: str | None = None,
                  save: Path | None = None, bf16: bool = False,
                  which: tuple[str, ...] = (checkpoint.BEST, checkpoint.LAST)) -> dict[str, tuple[float, float, int]]:
    """{checkpoint (``which``: best.pt, last.pt): (top-1, mean NLL, clips)} on the run's carved validation
    clips, or on the clips of split ``on`` not in split ``minus``; with ``save``, each checkpoint's per-clip
    probabilities go to ``save/<run>_<checkpoint>.npz`` (for fusing streams on the same clips)."""
    params = TrainParams(**{**read_json(train_dir / MANIFEST)["params"], "device": "cpu"})
    config = checkpoint.load(train_dir / checkpoint.LAST)["config"]
    clips = eval_set(config, inputs_of(train_dir), on or params.train_split, num_clips=num_clips, flip=True,
                          size=params.input_size)
    if on is None:
        ids = {it.sample_id for it in select(params, clips.items)[1]}
    else:
        used = {it.sample_id for it in split_items(clips.store, minus)} if minus else set()
        ids = {it.sample_id for it in clips.items} - used
    models = {name: checkpoint.load_model(train_dir / name)[0] for name in which}
    return score(models, clips, ids, save and save / train_dir.name, bf16)


def score(models: dict[str, torch.nn.Module], clips: Dataset, ids: set[str] | None = None,
          save: Path | None = None, bf16: bool = False) -> dict[str, tuple[float, float, int]]:
    """{name: (top-1, mean NLL, clips)} of each model on the test views of ``clips`` (those of ``ids``; None:
    all), each clip read once and scored by every model; with ``save``, the probabilities, labels and sample
    ids go to ``<save>_<name>.npz``; ``bf16`` as ``skel test --bf16``."""
    probs: dict[str, list[np.ndarray]] = {name: [] for name in models}
    labels, scored = [], []
    with torch.no_grad(), autocast(torch.device("cpu"), bf16_on_cpu=bf16):
        for i, item in enumerate(clips.items):
            if ids is None or item.sample_id in ids:
                x, label = clips[i]
                labels.append(label)
                scored.append(item.sample_id)
                for name, model in models.items():
                    probs[name].append(model.predict_proba(x[None]).float()[0].numpy())
    y = np.array(labels)
    scores = {}
    for name, rows in probs.items():
        p = np.stack(rows)
        if save:
            save.parent.mkdir(parents=True, exist_ok=True)
            np.savez(f"{save}_{Path(name).stem}.npz", probs=p, labels=y, ids=np.array(scored))
        scores[name] = (top_k_accuracy(p, y, 1), mean_nll(p, y), len(y))
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train_dirs", nargs="+", type=Path)
    ap.add_argument("--clips", type=int, default=10, help="clips per sample (each also flipped)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--on", help="score the clips of this split of the run's volumes (default: its carved clips)")
    ap.add_argument("--minus", help="with --on: leave out the clips of this split")
    ap.add_argument("--save", type=Path, help="write each checkpoint's per-clip probabilities here (.npz)")
    ap.add_argument("--bf16", action="store_true", help="score in bf16 autocast, as skel test --bf16")
    ap.add_argument("--checkpoints", nargs="+", choices=[checkpoint.BEST, checkpoint.LAST],
                    default=[checkpoint.BEST, checkpoint.LAST],
                    help="which to score (last.pt alone halves the work when the run had no validation)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.minus and not args.on:
        ap.error("--minus needs --on")
    print("| train output | checkpoint | scored clips | top-1 | NLL |\n| --- | --- | --- | --- | --- |")
    for d in args.train_dirs:
        for which, (acc, nll, n) in carved_scores(d, args.clips, args.on, args.minus, args.save, args.bf16,
                                                   tuple(args.checkpoints)).items():
            print(f"| {d.name} | {which} | {n} | {acc:.2%} | {nll:.3f} |", flush=True)


if __name__ == "__main__":
    main()
