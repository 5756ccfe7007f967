"""skel side of the upstream baseline: hands samples to ``bench/mm_baseline.py`` in its own venv, reads back.

mmaction2 1.2.0 (which ships pyskl's PoseC3D transforms) needs numpy<2, so it lives in
``bench/.venv-baseline`` (``bash bench/baseline_venv.sh``) and runs as a subprocess; samples travel as an
.npz. Without that venv, ``available()`` is False and ``run_baseline`` raises ``BaselineMissing`` with the
command to build it, for benchmarks to print and skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.paths import SHARED
from pipeline.cluster import Cluster
from pipeline.runner import run_stage
from stages.render.stage import RenderParams, RenderStage
from stores.coco import LEFT_KP, LIMBS, RIGHT_KP

BENCH = Path(__file__).resolve().parent
VENV = Path(os.environ.get("SKEL_BASELINE_VENV", BENCH / ".venv-baseline"))
PYTHON = VENV / "bin" / "python"
MISSING = f"upstream baseline venv missing ({VENV}): build it with `bash bench/baseline_venv.sh`"
PENN = SHARED / "data" / "penn_action" / "penn_action_coco17.pkl"


class BaselineMissing(RuntimeError):
    """The baseline venv is not built."""


def available() -> bool:
    return PYTHON.exists()


def _one_thread_env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def write_samples(path: Path, samples: Sequence[tuple[np.ndarray, np.ndarray, tuple[int, int], int]]) -> None:
    """(keypoint [M, T, V, 2], score [M, T, V], img_shape (H, W), label) samples + skel's COCO layout."""
    arrays: dict[str, np.ndarray] = {"n": np.array(len(samples)), "limbs": np.array(LIMBS),
                                     "left_kp": np.array(LEFT_KP), "right_kp": np.array(RIGHT_KP)}
    for i, (kp, score, img_shape, label) in enumerate(samples):
        arrays[f"keypoint_{i}"] = np.asarray(kp, np.float32)
        arrays[f"keypoint_score_{i}"] = np.asarray(score, np.float32)
        arrays[f"img_shape_{i}"] = np.asarray(img_shape, np.int64)
        arrays[f"label_{i}"] = np.array(label)
    np.savez(path, **arrays)


def run_baseline(mode: str, *args: str | Path, timeout: float | None = None) -> dict:
    """Run ``mm_baseline.py MODE ARGS...`` in the baseline venv (one thread) and return its JSON result."""
    if not available():
        raise BaselineMissing(MISSING)
    proc = subprocess.run([str(PYTHON), str(BENCH / "mm_baseline.py"), mode, *map(str, args)], env=_one_thread_env(),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"mm_baseline.py {mode} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def render_baseline(
    samples: Sequence[tuple[np.ndarray, np.ndarray, tuple[int, int]]], *, limbs: bool = False, repeat: int = 5,
    sigma: float = 0.6, use_score: bool = True,
) -> tuple[list[np.ndarray], list[float]]:
    """mmaction2's GeneratePoseTarget on each (keypoint, score, img_shape): float32 [K, T, H, W] volumes
    (transposed from its [T, K, H, W]) and best-of-``repeat`` ms per call. Limbs are skel's ``LIMBS``."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        write_samples(src, [(kp, sc, shape, 0) for kp, sc, shape in samples])
        extra = ["--no-score"] if not use_score else []
        res = run_baseline("render", src, dst, "--kind", "limb" if limbs else "joint", "--repeat", str(repeat),
                           "--sigma", str(sigma), *extra)
        with np.load(dst) as z:
            volumes = [z[f"heatmap_{i}"].transpose(1, 0, 2, 3) for i in range(len(samples))]
    return volumes, res["ms"]


class BaselineRenderer:
    """``render_volume``'s signature, rendered by mmaction2's GeneratePoseTarget in a ``mm_baseline.py serve``
    process started on first use (one per calling process, e.g. per Dask worker; it ends with it)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None

    def _server(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            if not available():
                raise BaselineMissing(MISSING)
            self._proc = subprocess.Popen([str(PYTHON), str(BENCH / "mm_baseline.py"), "serve"], env=_one_thread_env(),
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return self._proc

    def __call__(self, keypoint: np.ndarray, score: np.ndarray, img_shape: tuple[int, int], *, sigma: float = 0.6,
                 limbs: Sequence[tuple[int, int]] | None = None, use_score: bool = True,
                 dtype: np.dtype | type = np.float32, layout: str = "kthw",
                 out: np.ndarray | None = None) -> np.ndarray:
        kp = np.ascontiguousarray(keypoint, np.float32)
        sc = np.ascontiguousarray(score, np.float32)
        proc = self._server()
        req = {"shape": kp.shape[:3], "img_shape": [int(n) for n in img_shape], "sigma": float(sigma),
               "limbs": None if limbs is None else [[int(a), int(b)] for a, b in limbs],
               "use_score": bool(use_score), "dtype": np.dtype(dtype).name, "layout": layout}
        proc.stdin.write(json.dumps(req).encode() + b"\n" + kp.tobytes() + sc.tobytes())
        proc.stdin.flush()
        head = json.loads(proc.stdout.readline() or b'{"error": "baseline renderer exited"}')
        if "error" in head:
            raise RuntimeError(f"baseline renderer: {head['error']}")
        shape, vol_dtype = tuple(head["shape"]), np.dtype(head["dtype"])
        vol = np.frombuffer(proc.stdout.read(int(np.prod(shape)) * vol_dtype.itemsize), vol_dtype).reshape(shape)
        if out is None:
            return vol.copy()
        out[...] = vol
        return out


baseline_render = BaselineRenderer()


def _start_renderer() -> None:
    """Start this process's baseline renderer (on a Dask worker: by reference, so its own global starts)."""
    baseline_render(np.zeros((1, 1, 17, 2), np.float32), np.ones((1, 1, 17), np.float32), (8, 8))


class BaselineRenderStage(RenderStage):
    """skel's render stage with ``baseline_render`` as its renderer; its own version, so its own fingerprint."""

    version = f"{RenderStage.version}+mmaction2"

    def render(self, keypoint: np.ndarray, score: np.ndarray, p: RenderParams, out: np.ndarray) -> np.ndarray:
        return baseline_render(keypoint, score, (p.size, p.size), sigma=p.sigma, limbs=p.limbs, use_score=p.use_score,
                               dtype=out.dtype, layout="tkhw", out=out)


def run_render_stage(workdir: Path, params: RenderParams, workers: int) -> dict:
    """The render stage with the baseline renderer on ``workers`` Dask workers: seconds of the stage itself,
    after the cluster is up and every worker's renderer has started (its imports take seconds)."""
    if not available():
        raise BaselineMissing(MISSING)
    with Cluster(workers=workers) as cluster:
        start = time.perf_counter()
        if cluster.inline:
            _start_renderer()
        else:
            cluster.client.run(_start_renderer)
        started = time.perf_counter() - start
        start = time.perf_counter()
        out = run_stage(BaselineRenderStage(), workdir, params, cluster, quiet=True)
        seconds = time.perf_counter() - start
    summary = json.loads((out / "manifest.json").read_text()).get("summary", {})
    return {"seconds": seconds, "start_seconds": started, "out": out, "summary": summary}


def penn_samples(n: int, workdir: Path) -> list[tuple[np.ndarray, np.ndarray, tuple[int, int], int]]:
    """``n`` Penn Action clips spread over the set, imported by skel's import stage into ``workdir``."""
    from stages.import_pkl import ImportParams, ImportStage
    from stores.triplets import TripletStore

    out = run_stage(ImportStage(), workdir, ImportParams(source=str(PENN)), Cluster(workers=0), quiet=True)
    store = TripletStore(out)
    ids = store.ids()[:: max(1, len(store.ids()) // n)][:n]
    samples = []
    for sid in ids:
        sk, meta = store.read(sid), store.meta(sid)
        samples.append((sk.keypoint, sk.score, (meta["img_h"], meta["img_w"]), meta["label"]))
    return samples


def main() -> None:
    """Agreement of skel's renderer and render-stage steps with mmaction2's on real Penn Action clips."""
    import argparse

    from stages.render.heatmap import render_volume
    from stages.render.stage import prepare
    from stores.triplets import Skeleton

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--clips", type=int, default=50)
    args = ap.parse_args()
    if not available():
        raise SystemExit(f"skipped: {MISSING}")
    with tempfile.TemporaryDirectory() as tmp:
        raw = penn_samples(args.clips, Path(tmp))
        frames = [kp.shape[1] for kp, *_ in raw]
        print(f"{len(raw)} Penn Action clips, {min(frames)}-{max(frames)} frames; 64x64, sigma 0.6, float32")
        src, dst = Path(tmp) / "raw.npz", Path(tmp) / "stage.npz"
        write_samples(src, raw)
        for kind in ("joint", "limb"):
            p = RenderParams(kind=kind, dtype="float32")
            cropped = []
            for kp, sc, shape, _ in raw:
                k, s, _, _ = prepare(Skeleton(kp, sc), shape, p)
                cropped.append((k, s, (p.size, p.size)))
            theirs, _ = render_baseline(cropped, limbs=kind == "limb", repeat=1)
            ours = [render_volume(k, sc, shape, limbs=p.limbs) for k, sc, shape in cropped]
            run_baseline("stage", src, "--kind", kind, "--dtype", "float32", "--output", dst)
            with np.load(dst) as z:
                staged = [z[f"volume_{i}"].transpose(1, 0, 2, 3) for i in range(len(raw))]
            for what, vols in (("GeneratePoseTarget on skel's crop", theirs),
                               ("PoseCompact+Resize+GeneratePoseTarget", staged)):
                errs = [float(np.abs(a - b).max()) for a, b in zip(vols, ours, strict=True)]
                print(f"{kind}: {what} vs skel: max abs err {max(errs):.2e}, "
                      f"{sum(e > 1e-5 for e in errs)}/{len(errs)} clips over 1e-5")

if __name__ == "__main__":
    main()
