"""Build hook: compiles the heatmap kernel with the sha256 of its source baked in, so that an edited
``_heatmap.c`` that was not rebuilt is detected when rendering starts (stages/render/heatmap.py)."""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "stages/render/_heatmap.c"
DIGEST = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()

setup(ext_modules=[Extension("stages.render._heatmap", [SOURCE], extra_compile_args=["-O3", "-ffp-contract=off"],
                             define_macros=[("SKEL_SOURCE_SHA256", f'"{DIGEST}"')])])
