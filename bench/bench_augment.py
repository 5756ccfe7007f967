"""The training batch's crop / resize / mirror on a CPU: the two-tap C kernel `augment` takes there, against the
batched matmuls it takes on a GPU and the per-clip torch path (`transforms.flip` + `transforms.resize` of each
crop, the CPU path before the kernel), same batch, one thread, CPU seconds, best of 3; the kernel as this CPU
runs it (its widest vector path) and capped at AVX2. The kernel writes into
a reused output, as training on a CPU does (stages/train/dataset.py: a fresh 164 MB batch costs more in page
faults than the kernel).

    .venv/bin/python -m bench.bench_augment
"""

from __future__ import annotations

import time
from functools import partial

import torch

from inference.transforms import flip, resize
from stages.train.augment import matmuls, two_taps
from stores.coco import KP_FLIP

SHAPES = [(48, 64, 56), (16, 32, 32)]  # (clip frames, stored side, input side): paper size, the CPU recipe
BATCH = 16


def torch_per_clip(x, boxes, mirror, size, perm, scale):
    """Each clip's crop mirrored and resized by torch (the reference the tests hold both paths to)."""
    out = torch.empty((x.shape[0], x.shape[2], x.shape[1], size, size), memory_format=torch.channels_last_3d)
    for j, (top, left, h, w) in enumerate(boxes.tolist()):
        clip = x[j, :, :, top : top + h, left : left + w].transpose(0, 1)
        out[j] = resize((flip(clip, perm) if mirror[j] else clip).float(), size) * scale
    return out


def main() -> None:
    torch.set_num_threads(1)
    perm = torch.tensor(KP_FLIP)
    paths = {"matmuls": matmuls, "torch per clip": torch_per_clip, "two taps (C, AVX2)": partial(two_taps, isa=1),
             "two taps (C)": two_taps}
    print("| clips | " + " | ".join(f"{p} (clips/CPU-s)" for p in paths) + " | C / matmuls | C / per clip | "
          "max \\|C - per clip\\| |")
    print("| --- " * (len(paths) + 4) + "|")
    for t, stored, size in SHAPES:
        g = torch.Generator().manual_seed(1)
        x = (torch.rand(BATCH, t, 17, stored, stored, generator=g) * 255).to(torch.uint8)
        h = torch.randint(int(stored * 0.75), stored + 1, (BATCH,), generator=g)
        w = torch.randint(int(stored * 0.75), stored + 1, (BATCH,), generator=g)
        top = (torch.rand(BATCH, generator=g) * (stored - h + 1)).long()
        left = (torch.rand(BATCH, generator=g) * (stored - w + 1)).long()
        boxes, mirror = torch.stack([top, left, h, w], 1), torch.rand(BATCH, generator=g) < 0.5
        ring = torch.empty((BATCH, 17, t, size, size), memory_format=torch.channels_last_3d)
        best = dict.fromkeys(paths, 0.0)
        for _ in range(3):
            for name, path in paths.items():
                start = time.process_time()
                path(x, boxes, mirror, size, perm, 1 / 255, *([ring] if name.startswith("two taps") else []))
                best[name] = max(best[name], BATCH / (time.process_time() - start))
        diff = (two_taps(x, boxes, mirror, size, perm, 1 / 255) - torch_per_clip(x, boxes, mirror, size, perm, 1 / 255))
        c = best["two taps (C)"]
        print(f"| {t}x{size}² from {stored}², batch {BATCH} | " + " | ".join(f"{v:.1f}" for v in best.values()) +
              f" | {c / best['matmuls']:.1f}x | {c / best['torch per clip']:.1f}x | {diff.abs().max():.1e} |")


if __name__ == "__main__":
    main()
