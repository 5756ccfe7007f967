"""The training batch's crop / resize / mirror on a CPU: the per-clip path `augment` takes there against the
batched matmuls it takes on a GPU (the CPU path before), same batch, one thread, CPU seconds, best of 3.

    .venv/bin/python -m bench.bench_augment
"""

from __future__ import annotations

import time

import torch

from stages.train.augment import matmuls, per_clip
from stores.coco import KP_FLIP

SHAPES = [(48, 64, 56), (16, 32, 32)]  # (clip frames, stored side, input side): paper size, the CPU recipe
BATCH = 16


def main() -> None:
    torch.set_num_threads(1)
    perm = torch.tensor(KP_FLIP)
    print("| clips | matmuls (clips/CPU-s) | per clip (clips/CPU-s) | speed-up | max \\|difference\\| |")
    print("| --- | --- | --- | --- | --- |")
    for t, stored, size in SHAPES:
        g = torch.Generator().manual_seed(1)
        x = (torch.rand(BATCH, t, 17, stored, stored, generator=g) * 255).to(torch.uint8)
        h = torch.randint(int(stored * 0.75), stored + 1, (BATCH,), generator=g)
        w = torch.randint(int(stored * 0.75), stored + 1, (BATCH,), generator=g)
        top = (torch.rand(BATCH, generator=g) * (stored - h + 1)).long()
        left = (torch.rand(BATCH, generator=g) * (stored - w + 1)).long()
        boxes, mirror = torch.stack([top, left, h, w], 1), torch.rand(BATCH, generator=g) < 0.5
        best = {}
        for _ in range(3):
            for path in (matmuls, per_clip):
                start = time.process_time()
                path(x, boxes, mirror, size, perm, 1 / 255)
                best[path] = max(best.get(path, 0.0), BATCH / (time.process_time() - start))
        diff = (matmuls(x, boxes, mirror, size, perm, 1 / 255) - per_clip(x, boxes, mirror, size, perm, 1 / 255)).abs()
        print(f"| {t}x{size}² from {stored}², batch {BATCH} | {best[matmuls]:.1f} | {best[per_clip]:.1f} | "
              f"{best[per_clip] / best[matmuls]:.2f}x | {diff.max():.1e} |")


if __name__ == "__main__":
    main()
