"""Upstream ST-GCN++ (mmaction2 1.2.0's own config, Runner, train and test loops) on Penn-short.

Runs with the baseline venv's python (``bash bench/baseline_venv.sh`` builds ``bench/.venv-baseline``), one
thread, CPU. The config is mmaction2's own file, loaded from the installed package
(``mmaction/.mim/configs/skeleton/stgcnpp/stgcnpp_8xb16-joint-u100-80e_ntu60-xsub-keypoint-2d.py``) and run
by mmengine's Runner (train, then test): model (RecognizerGCN, STGCN gcn_adaptive='init', gcn_with_res,
mstcn, COCO spatial graph, GCNHead), pipelines (PreNormalize2D -> GenSkeFeat j -> UniformSampleFrames 100
-> PoseDecode -> FormatGCNInput -> PackActionInputs), RepeatDataset times=5 x 16 epochs (the "80e" of its
name), SGD lr 0.1 momentum 0.9 nesterov wd 5e-4, cosine to 0 per iteration, batch 16; test 10 clips of
100 frames, batch 1, the weights after the last epoch. Changed here, all printed into the log:

* the annotation file and splits (``--split`` for training, ``test`` for testing), ``num_classes=15``,
  the seed (``randomness.seed``), the work dir;
* ``FormatGCNInput(num_person=1)`` instead of 2 (``--num-person``): every Penn clip has one person, so
  the config's second slot would only be zeros, and it costs 2.5x the time per step here;
* no validation loop: the config validates every epoch on NTU's xsub_val (its test split) and
  ``save_best='auto'`` keeps the best of those; here nothing is scored on the test split while training,
  and the test scores the last epoch's weights (one checkpoint, saved at the end);
* data loading in the main process (``num_workers=0``, one core);
* ``--epochs`` scales the 16 epochs (and the cosine T_max) down if time forces; RepeatDataset stays 5x.

The mmaction2 1.2.0 wheel cannot ``import mmaction.models`` as shipped (a missing ``localizers/drn``
package and an undeclared ``importlib_metadata`` dependency); stand-ins are put in ``sys.modules`` below.

    OMP_NUM_THREADS=1 bench/.venv-baseline/bin/python bench/stgcn_baseline.py --split train10 --seed 0 \\
        --work-dir /tmp/stgcn/train10_s0 2>&1 | tee /tmp/stgcn/train10_s0.log
    OMP_NUM_THREADS=1 bench/.venv-baseline/bin/python bench/stgcn_baseline.py --split train20 --seed 0 \\
        --work-dir /tmp/stgcn/train20_s0 2>&1 | tee /tmp/stgcn/train20_s0.log
    OMP_NUM_THREADS=1 bench/.venv-baseline/bin/python bench/stgcn_baseline.py --split train --seed 0 \\
        --work-dir /tmp/stgcn/train_s0 2>&1 | tee /tmp/stgcn/train_s0.log

``--test-only`` re-tests the work dir's last checkpoint (``epoch_N.pth``). The last stdout line is a JSON
object: split, train clips, epochs, seed, top-1 / top-5 / mean class accuracy on the test split, train and
test wall time, ``uptime`` before and after. It is also written to ``WORK_DIR/result.json``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import mmaction  # noqa: E402
import torch  # noqa: E402

# The mmaction2 1.2.0 wheel lacks mmaction/models/localizers/drn/ (a temporal grounding model), which
# mmaction/models/localizers/__init__.py imports, so ``import mmaction.models`` fails. A stand-in module
# lets the package import; nothing here uses DRN, and the skeleton code is untouched.
for _name in ("mmaction.models.localizers.drn", "mmaction.models.localizers.drn.drn"):
    if _name not in sys.modules:
        sys.modules[_name] = types.ModuleType(_name)
sys.modules["mmaction.models.localizers.drn.drn"].DRN = type("DRN", (), {})
# mmaction/utils/dependency.py (imported by mmaction.models.multimodal) needs the importlib_metadata
# backport, which the wheel does not require; the standard library's importlib.metadata has the same API.
try:
    import importlib_metadata  # noqa: F401
except ImportError:
    import importlib.metadata
    sys.modules["importlib_metadata"] = importlib.metadata
from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

CONFIG = "skeleton/stgcnpp/stgcnpp_8xb16-joint-u100-80e_ntu60-xsub-keypoint-2d.py"
DATA = Path("/work/shared/data/penn_short/penn_short.pkl")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def build_config(args: argparse.Namespace) -> Config:
    path = Path(mmaction.__file__).parent / ".mim" / "configs" / CONFIG
    cfg = Config.fromfile(str(path))
    cfg.model.cls_head.num_classes = args.num_classes
    for pipeline in (cfg.train_dataloader.dataset.dataset.pipeline, cfg.test_dataloader.dataset.pipeline,
                     cfg.train_pipeline, cfg.val_pipeline, cfg.test_pipeline):
        for step in pipeline:
            if step.type == "FormatGCNInput":
                step.num_person = args.num_person
    for loader in ("train_dataloader", "test_dataloader"):
        dl = cfg[loader]
        dl.num_workers = args.num_workers
        dl.persistent_workers = args.num_workers > 0
    ds = cfg.train_dataloader.dataset.dataset  # inside RepeatDataset(times=5)
    ds.ann_file = str(args.data)
    ds.split = args.split
    cfg.test_dataloader.dataset.ann_file = str(args.data)
    cfg.test_dataloader.dataset.split = "test"
    cfg.test_dataloader.batch_size = args.test_batch
    # No validation: the config's val split is NTU's test split (see the docstring).
    cfg.val_dataloader = None
    cfg.val_cfg = None
    cfg.val_evaluator = None
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=args.epochs, val_begin=1,
                         val_interval=10 ** 9)
    cfg.param_scheduler[0].T_max = args.epochs
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=args.epochs, save_best=None,
                                        max_keep_ckpts=1)
    cfg.default_hooks.logger.interval = args.log_interval
    cfg.randomness = dict(seed=args.seed, deterministic=False)
    cfg.work_dir = str(args.work_dir)
    if args.test_only:
        cfg.load_from = str(args.work_dir / f"epoch_{args.epochs}.pth")
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="train10", help="training split: train10 | train20 | train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=16, help="epochs of the 5x RepeatDataset (config: 16)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--num-classes", type=int, default=15)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--test-batch", type=int, default=1, help="config: 1 (also the fastest per clip here)")
    ap.add_argument("--num-person", type=int, default=1, help="FormatGCNInput slots (config: 2)")
    ap.add_argument("--log-interval", type=int, default=20)
    ap.add_argument("--test-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)

    with args.data.open("rb") as f:
        split = pickle.load(f)["split"]
    n_train, n_test = len(split[args.split]), len(split["test"])

    cfg = build_config(args)
    print(cfg.pretty_text, flush=True)
    load_before = uptime()
    print("uptime before:", load_before, flush=True)
    runner = Runner.from_cfg(cfg)
    train_s = None
    if not args.test_only:
        t0 = time.perf_counter()
        runner.train()
        train_s = time.perf_counter() - t0
        load_mid = uptime()
        print(f"train wall {train_s:.1f} s; uptime: {load_mid}", flush=True)
    else:
        load_mid = None
    t0 = time.perf_counter()
    metrics = runner.test()  # the weights in memory: the last epoch's (or --test-only's load_from)
    test_s = time.perf_counter() - t0
    load_after = uptime()
    result = {
        "split": args.split, "train_clips": n_train, "test_clips": n_test,
        "epochs": args.epochs, "repeat": cfg.train_dataloader.dataset.times,
        "effective_epochs": args.epochs * cfg.train_dataloader.dataset.times, "seed": args.seed,
        "top1": metrics.get("acc/top1"), "top5": metrics.get("acc/top5"),
        "mean_class": metrics.get("acc/mean1"), "train_s": train_s, "test_s": test_s,
        "uptime_before": load_before, "uptime_after_train": load_mid, "uptime_after_test": load_after,
        "config": CONFIG, "num_person": args.num_person, "torch_threads": torch.get_num_threads(),
    }
    (args.work_dir / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
