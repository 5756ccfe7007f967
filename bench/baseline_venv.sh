#!/usr/bin/env bash
# Builds bench/.venv-baseline: upstream's PoseC3D transforms (mmaction2 1.2.0, which ships pyskl's) that
# the benchmarks measure skel against, in a venv of their own since mmaction2 needs numpy<2. skel is not
# installed there: bench/baseline.py talks to bench/mm_baseline.py through a subprocess.
#     bash bench/baseline_venv.sh        # ~1.6 GB; BASELINE_VENV=path to build elsewhere
# opencv is capped below 4.12 (whose wheels need numpy>=2), which spares pip's resolver from downloading
# and rejecting each newer opencv-contrib-python wheel (~80 MB apiece) that mmaction2 pulls in.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${BASELINE_VENV:-$here/.venv-baseline}"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install -q mmaction2==1.2.0 mmcv-lite==2.1.0 mmengine "numpy<2" torch==2.13.0 \
    "opencv-python<4.12" "opencv-contrib-python<4.12"
"$venv/bin/python" "$here/mm_baseline.py" check
