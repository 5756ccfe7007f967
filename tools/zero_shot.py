"""Score a checkpoint as it is (no training) on one split of a render output: 10 clips x flip, top-1 and NLL.

    python tools/zero_shot.py models/pretrained/penn-joint-s16.pt RUNS/render/FP --on holdout

For the Penn-short model card: what the pretrained model does on short clips before any fine-tuning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from stages.test.metrics import top_k_accuracy
from stages.train import checkpoint, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("volumes", type=Path, help="a render output")
    ap.add_argument("--on", required=True, help="split to score")
    ap.add_argument("--clips", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, config = checkpoint.load_model(a.checkpoint)
    clips = data.eval_set(config, {"volumes": a.volumes}, a.on, num_clips=a.clips, flip=True,
                          size=config["input_size"])
    probs, labels = [], []
    with torch.no_grad():
        for i in range(len(clips)):
            x, label = clips[i]
            probs.append(model.predict_proba(x[None]).float()[0].numpy())
            labels.append(label)
    p, y = np.stack(probs), np.array(labels)
    nll = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    print(f"{a.checkpoint} on {a.on} ({len(y)} clips, {a.clips} clips x flip): top-1 {top_k_accuracy(p, y, 1):.2%}, "
          f"NLL {nll:.3f}")


if __name__ == "__main__":
    main()
