"""Build hook: compiles the C kernels, each with the sha256 of its source and pipeline/native.h baked in, so that
an edited source that was not rebuilt is detected when the kernel is first used (pipeline/native.py)."""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

KERNELS = {"stages.render._heatmap": "stages/render/_heatmap.c", "stages.train._augment": "stages/train/_augment.c",
           "stores._frames": "stores/_frames.c", "models._maxpool": "models/_maxpool.c"}


def kernel(name: str, source: str) -> Extension:
    here = Path(__file__).parent
    digest = hashlib.sha256((here / source).read_bytes() + (here / "pipeline/native.h").read_bytes()).hexdigest()
    return Extension(name, [source], depends=["pipeline/native.h"], extra_compile_args=["-O3", "-ffp-contract=off"],
                     define_macros=[("SKEL_SOURCE_SHA256", f'"{digest}"')])


setup(ext_modules=[kernel(name, source) for name, source in KERNELS.items()])
