"""Helpers and constants the tests share (fixtures are in conftest.py): the real CLI in a subprocess, the
../shared resources, independent references (heatmaps, network sizes) written from pyskl's formulas, and an
extract output from given skeletons (bench/bench_rgbpose.py uses it too; the package ships no fixtures)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.atomic import write_json
from pipeline.integrity import data_files
from pipeline.workdir import MANIFEST
from stores.triplets import Skeleton, finalize_tables, part_name, sample_table, write_part

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKEL_SHARED", REPO.parent / "shared"))
SKEL = [sys.executable, "-m", "cli"]

N_CLASSES = 3  # classes of the `tiny` fixture's data set
NTU_VIDEO = "mmaction2_ntu_S001C001P001R001A001_rgb.avi"  # ../shared/media: one person, 1920×1080
NTU_BOX = (980, 286, 1114, 741)  # that person on frame 0, hand-checked (tests/data/person_boxes.json)
MODEL_ARGS = {"base_channels": 8, "stage_blocks": (1, 1, 1)}  # a SlowOnly small enough to train in tests


# --- the CLI and ../shared -----------------------------------------------------------------------------------

def needs_shared(*paths: Path) -> None:
    """Stop a test whose ../shared files are missing: a failure in CI (CI=true), where they must be there,
    a skip elsewhere (a checkout without them still runs the rest of the suite)."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            f"shared resources missing: {missing[0]} (set SKEL_SHARED)")


def skel(
    *args: str | Path, cwd: Path = REPO, check: bool = True, env_extra: dict | None = None, **kw
) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (as a user would)."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO), **(env_extra or {})}
    proc = subprocess.run([*SKEL, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"skel {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def as_terminal_job(args: list, **kw) -> subprocess.Popen:
    """``args`` as a terminal's foreground job: a process group of its own, which ``os.killpg`` signals as a
    terminal's Ctrl-C does, with SIGINT's default action (a test run started with & ignores SIGINT, and so would
    its children)."""
    return subprocess.Popen(args, cwd=REPO, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


def ctrl_c_when(run: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120, again: float | None = None
                ) -> str:
    """Ctrl-C to ``run``'s process group once ``ready()`` (or once it ended), and ``again`` seconds later another
    (if it still runs); its stderr."""
    try:
        for _ in range(1200):
            if ready() or run.poll() is not None:
                break
            time.sleep(0.05)
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGINT)
        if again is not None and run.poll() is None:
            time.sleep(again)
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGINT)
        _, err = run.communicate(timeout=timeout)
    finally:
        run.kill()
    return err


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a failed command (checked: non-zero exit, one such line, no traceback)."""
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def remount(path: Path, options: str) -> None:
    """Change a mounted tmpfs's options (``size=…``, ``ro``, ``rw``) with its files on it."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


# --- heatmaps: a per-pixel reference -------------------------------------------------------------------------

f32 = np.float32
EPS = 1e-3


def _window(lo: np.float32, hi: np.float32, sigma: float, n: int) -> range:
    # pyskl runs on NumPy 1, where a float32 scalar minus a python float is float64; int() truncates
    # toward zero; end exclusive.
    return range(max(int(float(lo) - 3 * sigma), 0), min(int(float(hi) + 3 * sigma) + 1, n))


def _ref_joint(frame: np.ndarray, x: np.float32, y: np.float32, c: np.float32, sigma: float) -> None:
    if c < EPS:
        return
    for i in _window(y, y, sigma, frame.shape[0]):
        for j in _window(x, x, sigma, frame.shape[1]):
            dx, dy = f32(j) - x, f32(i) - y
            value = np.exp(-(dx * dx + dy * dy) / 2 / sigma**2) * c  # float32 throughout
            frame[i, j] = max(frame[i, j], value)


def _ref_limb(frame: np.ndarray, a: np.ndarray, b: np.ndarray, ca: np.float32, cb: np.float32, sigma: float) -> None:
    c = min(ca, cb)
    if c < EPS:
        return
    rows = _window(min(a[1], b[1]), max(a[1], b[1]), sigma, frame.shape[0])
    cols = _window(min(a[0], b[0]), max(a[0], b[0]), sigma, frame.shape[1])
    if not (len(rows) and len(cols)):
        return
    d2_ab64 = float(a[0] - b[0]) ** 2 + float(a[1] - b[1]) ** 2  # NumPy 1: float32 scalar ** 2 is float64
    d2_ab = f32(d2_ab64)  # and float32 again where it meets the float32 arrays
    if d2_ab64 < 1:
        _ref_joint(frame, a[0], a[1], ca, sigma)
        return
    for i in rows:
        for j in cols:
            x, y = f32(j), f32(i)
            d2_a = (x - a[0]) * (x - a[0]) + (y - a[1]) * (y - a[1])
            d2_b = (x - b[0]) * (x - b[0]) + (y - b[1]) * (y - b[1])
            t = (d2_a - d2_b + d2_ab) / 2 / d2_ab
            if t <= 0:
                d2 = d2_a
            elif t >= 1:
                d2 = d2_b
            else:
                px, py = x - (a[0] + t * (b[0] - a[0])), y - (a[1] + t * (b[1] - a[1]))
                d2 = px * px + py * py
            # pyskl's int64 segment mask promotes the distance to float64 before exp.
            value = np.exp(-np.float64(d2) / 2 / sigma**2) * np.float64(c)
            frame[i, j] = max(frame[i, j], f32(value))


def reference_heatmaps(kp, score, shape, *, sigma=0.6, limbs=None, use_score=True) -> np.ndarray:
    """[K, T, H, W] heatmaps computed pixel by pixel from pyskl's formulas (docs/architecture.md, Heatmaps)."""
    kp, score = np.asarray(kp, f32), np.asarray(score, f32)
    if not use_score:
        score = np.ones_like(score)
    m_len, t_len, v_len, _ = kp.shape
    k_len = v_len if limbs is None else len(limbs)
    out = np.zeros((k_len, t_len, *shape), f32)
    for k in range(k_len):
        for t in range(t_len):
            for m in range(m_len):
                if limbs is None:
                    _ref_joint(out[k, t], kp[m, t, k, 0], kp[m, t, k, 1], score[m, t, k], sigma)
                else:
                    a, b = limbs[k]
                    _ref_limb(out[k, t], kp[m, t, a], kp[m, t, b], score[m, t, a], score[m, t, b], sigma)
    return out


# --- network sizes -------------------------------------------------------------------------------------------

# Independent counts: parameters and MACs (conv + linear multiply-adds, the fvcore/mmcv convention) of the
# paper configurations, written out layer by layer from pyskl's configs (docs/architecture.md, Models), not from
# our modules. A conv is cin/groups * cout * prod(kernel) weights (no bias) + 2 * cout BN affine parameters.


def conv(cin: int, cout: int, kernel: tuple[int, ...], out: tuple[int, ...], groups: int = 1,
         bn: bool = True) -> tuple[int, int]:
    """(params, MACs) of a bias-free conv (+ BN) with output shape ``out``."""
    weights = cin // groups * cout * math.prod(kernel)
    return weights + (2 * cout if bn else 0), weights * math.prod(out)


def strided(n: int, s: int) -> int:
    """Output length of a "same"-padded conv or pool with stride ``s``."""
    return (n - 1) // s + 1


def resnet3d_counts(cin: int, base: int, blocks: tuple[int, ...], inflate: tuple[int, ...],
                    spatial: tuple[int, ...], temporal: tuple[int, ...], extra: tuple[int, ...] | None = None,
                    clip: tuple[int, int, int] = (48, 56, 56)) -> tuple[int, int, int]:
    """(params, MACs, out channels) of a pyskl ResNet3d with bottlenecks (expansion 4), 1x7x7 stem and pool at
    stride 1; ``extra[i]`` lateral channels are concatenated to stage i's input (RGBPose)."""
    layers = [conv(cin, base, (1, 7, 7), clip)]
    shape, inp = clip, base
    for i, n in enumerate(blocks):
        planes, out_c = base * 2**i, base * 2**i * 4
        inp += extra[i] if extra else 0
        for b in range(n):
            s, t = (spatial[i], temporal[i]) if b == 0 else (1, 1)
            out = (strided(shape[0], t), strided(shape[1], s), strided(shape[2], s))
            layers += [conv(inp, planes, (3 if inflate[i] else 1, 1, 1), shape), conv(planes, planes, (1, 3, 3), out),
                       conv(planes, out_c, (1, 1, 1), out)]
            if b == 0 and (s, t, inp) != (1, 1, out_c):
                layers.append(conv(inp, out_c, (1, 1, 1), out))  # projection shortcut
            inp, shape = out_c, out
    return sum(p for p, _ in layers), sum(m for _, m in layers), inp


# --- resume: the recipe and the files compared -------------------------------------------------------------

# import -> render -> train -> test on a synthetic pickle ({pkl}): the recipe killed at every boundary
RESUME_RECIPE = """
[[step]]
id = "import"
stage = "import"
source = "{pkl}"

[[step]]
id = "render"
stage = "render"
size = 32
max_frames = 48
sigma = 2.5
samples_per_shard = 5

[[step]]
id = "train"
stage = "train"
model_args = {{ base_channels = 8, stage_blocks = [1, 1, 1] }}
clip_len = 16
input_size = 32
epochs = 4
batch_size = 4
lr = 0.1
repeat = 2
workers = 0
threads = 1

[[step]]
id = "test"
stage = "test"
inputs = {{ model = "train" }}
num_clips = 2
samples_per_shard = 2
threads = 1
"""


def output_files(workdir: Path) -> dict[str, bytes]:
    """Every data file of every output (not manifests, plans, shard records, locks), by path."""
    found = {}
    for manifest in sorted((workdir / "w").glob(f"*/*/{MANIFEST}")):
        out = manifest.parent
        assert json.loads(manifest.read_text())["state"] == "complete", out
        found.update({f"{out.parent.name}/{out.name}/{rel}": (out / rel).read_bytes() for rel in data_files(out)})
    return found


# --- an extract output from given skeletons (tests and bench/bench_rgbpose.py, downstream of extract) --------

def extract_output(workdir: Path, samples: dict[str, tuple[dict, Skeleton]], fingerprint: str = "0" * 16,
                   fps: float | None = None) -> Path:
    """``<workdir>/extract/<fingerprint>``: one part with every sample, as ``skel extract`` writes it for videos
    whose keypoints are known (none is decoded), for the stages downstream of extract on real videos.

    ``samples`` maps a sample id to (its row: label, split, img_h, img_w, fps, source, ...; the part,
    row group, frame and person counts are filled in) and its skeleton; ``fps`` its frame selection's ``--fps``.
    """
    out = workdir / "extract" / fingerprint
    part, rows = part_name("00000"), []
    for i, (sid, (row, skel)) in enumerate(samples.items()):
        persons, frames = skel.keypoint.shape[:2]
        rows.append({"extra": None, **row, "sample_id": sid, "n_frames": frames, "n_persons": persons,
                     "part": part, "row_group": i})
    write_part(out / part, [sample_table(sid, skel) for sid, (_, skel) in samples.items()])
    finalize_tables(out, {"00000": {"samples": rows, "errors": []}}, "extract")
    write_json(out / "manifest.json", {"stage": "extract", "fingerprint": out.name, "state": "complete",
                                       "params": {"stride": 1, "fps": fps}, "finished": "2026-01-01T00:00:00"})
    return out
