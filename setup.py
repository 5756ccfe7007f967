"""Build hook: compiles the C kernels, each with the sha256 of its source baked in, so that an edited source
that was not rebuilt is detected when the kernel is first used (pipeline/native.py)."""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

KERNELS = {"stages.render._heatmap": "stages/render/_heatmap.c", "stages.train._augment": "stages/train/_augment.c"}


def kernel(name: str, source: str) -> Extension:
    digest = hashlib.sha256((Path(__file__).parent / source).read_bytes()).hexdigest()
    return Extension(name, [source], extra_compile_args=["-O3", "-ffp-contract=off"],
                     define_macros=[("SKEL_SOURCE_SHA256", f'"{digest}"')])


setup(ext_modules=[kernel(name, source) for name, source in KERNELS.items()])
