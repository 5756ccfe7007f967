"""Score a checkpoint as it is (no training) on one split of a render output: 10 clips x flip, top-1 and NLL.

    python tools/zero_shot.py models/pretrained/penn-joint-s16.pt RUNS/render/FP --on holdout

For the Penn-short model card: what the pretrained model does on short clips before any fine-tuning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from carved_eval import score  # tools/ is the script's directory, first on sys.path

from inference import checkpoint
from inference.data import eval_set


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
    clips = eval_set(config, {"volumes": a.volumes}, a.on, num_clips=a.clips, flip=True,
                          size=config["input_size"])
    ((acc, nll, n),) = score({"model": model}, clips).values()
    print(f"{a.checkpoint} on {a.on} ({n} clips, {a.clips} clips x flip): top-1 {acc:.2%}, NLL {nll:.3f}")

if __name__ == "__main__":
    main()
