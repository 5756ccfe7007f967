"""Upstream baseline: pyskl's PoseC3D transforms as mmaction2 1.2.0 ships them, timed in their own venv.

Runs inside ``bench/.venv-baseline`` (``bash bench/baseline_venv.sh``; mmaction2 needs numpy<2), started as
a subprocess by the skel-side benchmarks through ``bench/baseline.py``, which writes the samples as an
.npz: ``n``, ``keypoint_<i>`` float32 [M, T, V, 2], ``keypoint_score_<i>`` float32 [M, T, V],
``img_shape_<i>`` (H, W), ``label_<i>``, and the layout skel uses: ``limbs`` [L, 2], ``left_kp``,
``right_kp``. Each mode prints one JSON object as its last stdout line.

    render IN OUT   GeneratePoseTarget on the given (already cropped) keypoints at their img_shape;
                    best-of-N ms per sample; OUT gets ``heatmap_<i>`` exactly as it returns them,
                    float32 [T, K, H, W].
    loader IN       clips/s of the PoseC3D training pipeline through mmaction2's own PoseDataset, one
                    thread: UniformSampleFrames(48) -> PoseDecode -> PoseCompact -> Resize(-1, 64) ->
                    RandomResizedCrop(0.56-1) -> Resize(56, 56) -> Flip(0.5) -> GeneratePoseTarget ->
                    FormatShape(NCTHW_Heatmap) -> PackActionInputs, each clip copied into a float32
                    batch slot as collate does.
    stage IN        the render stage's per-sample work with the upstream transforms: PoseCompact ->
                    Resize(64, 64) -> all frames up to --max-frames -> GeneratePoseTarget -> stored dtype;
                    per-sample ms; --output saves the volumes as ``volume_<i>`` [T, K, H, W].
    serve           renders requests from stdin (see ``serve``): the renderer ``bench/baseline.py`` swaps
                    into skel's own render stage, for the render-stage baseline.
    check           the transforms import; prints the versions.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmaction.datasets import PoseDataset  # noqa: E402
from mmaction.datasets.transforms import (  # noqa: E402
    Flip,
    FormatShape,
    GeneratePoseTarget,
    PackActionInputs,
    PoseCompact,
    PoseDecode,
    RandomResizedCrop,
    Resize,
    UniformSampleFrames,
)

PYSKL_EPS = 1e-3


def load_samples(path: Path) -> tuple[list[dict], dict]:
    """Samples as mmaction2 annotation dicts, and the layout (limbs, left/right keypoints)."""
    with np.load(path) as z:
        samples = [
            {
                "frame_dir": f"s{i:06d}",
                "keypoint": z[f"keypoint_{i}"].astype(np.float32),
                "keypoint_score": z[f"keypoint_score_{i}"].astype(np.float32),
                "img_shape": tuple(int(s) for s in z[f"img_shape_{i}"]),
                "original_shape": tuple(int(s) for s in z[f"img_shape_{i}"]),
                "total_frames": int(z[f"keypoint_{i}"].shape[1]),
                "label": int(z[f"label_{i}"]),
            }
            for i in range(int(z["n"]))
        ]
        layout = {
            "limbs": tuple(tuple(int(j) for j in lb) for lb in z["limbs"]),
            "left_kp": tuple(int(j) for j in z["left_kp"]),
            "right_kp": tuple(int(j) for j in z["right_kp"]),
        }
    return samples, layout


def heatmapper(kind: str, layout: dict, sigma: float, use_score: bool = True) -> GeneratePoseTarget:
    """GeneratePoseTarget for joint or limb heatmaps, with skel's limb list passed explicitly.

    pyskl skips points (and limbs) whose score is under its module constant EPS = 1e-3; mmaction2's port
    keeps the check but lowered the threshold to ``self.eps = 1e-4``, so the instance gets pyskl's back.
    """
    if kind not in ("joint", "limb"):
        raise SystemExit(f"kind must be joint or limb, got {kind!r}")
    gen = GeneratePoseTarget(sigma=sigma, use_score=use_score, with_kp=kind == "joint",
                             with_limb=kind == "limb", skeletons=layout["limbs"])
    gen.eps = PYSKL_EPS
    return gen


def best_ms(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):  # CPU time of this process: what a call costs one core, whatever else runs
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best * 1e3


def render(args: argparse.Namespace) -> dict:
    samples, layout = load_samples(args.input)
    gen = heatmapper(args.kind, layout, args.sigma, not args.no_score)

    def call(s: dict) -> np.ndarray:
        return gen({"keypoint": s["keypoint"], "keypoint_score": s["keypoint_score"],
                    "img_shape": s["img_shape"]})["imgs"]

    out = {f"heatmap_{i}": call(s) for i, s in enumerate(samples)}
    np.savez(args.output, n=len(samples), **out)
    return {"ms": [best_ms(lambda s=s: call(s), args.repeat) for s in samples], "layout": "[T, K, H, W]"}


def train_pipeline(kind: str, layout: dict, sigma: float, clip_len: int, stored: int, size: int) -> list:
    """The PoseC3D training pipeline of mmaction2's configs (minus nothing), as transform objects."""
    return [
        UniformSampleFrames(clip_len=clip_len),
        PoseDecode(),
        PoseCompact(hw_ratio=1.0, allow_imgpad=True),
        Resize(scale=(-1, stored)),
        RandomResizedCrop(area_range=(0.56, 1.0)),
        Resize(scale=(size, size), keep_ratio=False),
        Flip(flip_ratio=0.5, left_kp=layout["left_kp"], right_kp=layout["right_kp"]),
        heatmapper(kind, layout, sigma),
        FormatShape(input_format="NCTHW_Heatmap"),
        PackActionInputs(),
    ]


def loader(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    np.random.seed(args.seed)
    random.seed(args.seed)
    samples, layout = load_samples(args.input)
    with tempfile.TemporaryDirectory() as tmp:
        ann = Path(tmp) / "ann.pkl"
        with ann.open("wb") as f:
            pickle.dump(samples, f)
        ds = PoseDataset(str(ann), train_pipeline(args.kind, layout, args.sigma, args.clip_len, args.stored,
                                                   args.size))
        first = ds[0]["inputs"]
        slot = torch.empty(first.shape[1:], dtype=torch.float32)  # one batch slot: [K, T, H, W]
        rates, cpu_rates, spent = [], [], 0.0
        while spent < args.seconds or not rates:
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(len(ds)):
                slot.copy_(ds[i]["inputs"][0])
            elapsed = time.perf_counter() - start
            spent += elapsed
            rates.append(len(ds) / elapsed)
            cpu_rates.append(len(ds) / (time.process_time() - cpu))
    return {"clips_per_s": max(rates), "clips_per_cpu_s": max(cpu_rates), "passes": len(rates), "clips": len(ds),
            "clip_shape": list(first.shape)}


def stage_volume(gen: GeneratePoseTarget, s: dict, size: int, max_frames: int, dtype: str) -> np.ndarray:
    """One sample through the render stage's steps with the upstream transforms, [T, K, H, W] as stored."""
    r = {"keypoint": s["keypoint"].copy(), "keypoint_score": s["keypoint_score"], "img_shape": s["img_shape"]}
    r = PoseCompact(hw_ratio=1.0, allow_imgpad=True)(r)
    r = Resize(scale=(size, size), keep_ratio=False)(r)
    t = r["keypoint"].shape[1]
    r["frame_inds"] = np.arange(t) if t <= max_frames else (np.arange(max_frames) * t) // max_frames
    r = gen(PoseDecode()(r))
    return to_stored(r["imgs"], dtype)


def stage(args: argparse.Namespace) -> dict:
    samples, layout = load_samples(args.input)
    gen = heatmapper(args.kind, layout, args.sigma)
    start = time.perf_counter()
    volumes = [stage_volume(gen, s, args.stored, args.max_frames, args.dtype) for s in samples]
    seconds = time.perf_counter() - start
    if args.output:
        np.savez(args.output, n=len(volumes), **{f"volume_{i}": v for i, v in enumerate(volumes)})
    return {"ms_per_sample": seconds * 1e3 / len(samples), "samples": len(samples), "seconds": seconds}


def to_stored(volume: np.ndarray, dtype: str) -> np.ndarray:
    """float32 heatmaps in a stored dtype with numpy, as a stage built on this renderer would store them
    (uint8: ``clip(rint(v * 255))``)."""
    if dtype == "uint8":
        return np.clip(np.rint(volume * 255), 0, 255).astype(np.uint8)
    return volume.astype(dtype)


def serve(_: argparse.Namespace) -> None:
    """Render requests from stdin until EOF, for a skel process that swaps its renderer for this one.

    Request: a JSON line (``shape`` [M, T, V], ``img_shape``, ``sigma``, ``limbs`` or null, ``use_score``,
    ``dtype``, ``layout`` "kthw" or "tkhw") then the float32 keypoint and score bytes. Reply: a JSON line
    (``shape`` or ``error``) then the volume's bytes. stdout is kept for replies; anything printed goes to stderr.
    """
    reply = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    for line in iter(requests.readline, b""):
        req = json.loads(line)
        m, t, v = req["shape"]
        kp = np.frombuffer(requests.read(m * t * v * 8), np.float32).reshape(m, t, v, 2)
        score = np.frombuffer(requests.read(m * t * v * 4), np.float32).reshape(m, t, v)
        try:
            kind = "joint" if req["limbs"] is None else "limb"
            gen = heatmapper(kind, {"limbs": tuple(map(tuple, req["limbs"] or ()))}, req["sigma"], req["use_score"])
            heat = gen({"keypoint": kp, "keypoint_score": score, "img_shape": tuple(req["img_shape"])})["imgs"]
            heat = heat.transpose(1, 0, 2, 3) if req["layout"] == "kthw" else heat
            vol = np.ascontiguousarray(to_stored(heat, req["dtype"]))
            reply.write(json.dumps({"shape": vol.shape, "dtype": str(vol.dtype)}).encode() + b"\n")
            reply.write(vol.tobytes())
        except Exception as exc:  # noqa: BLE001 - the caller gets the message and decides
            reply.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
        reply.flush()


def check(_: argparse.Namespace) -> dict:
    import mmaction
    import mmcv
    import mmengine

    return {"mmaction2": mmaction.__version__, "mmcv": mmcv.__version__, "mmengine": mmengine.__version__,
            "numpy": np.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    modes = {"render": render, "loader": loader, "stage": stage, "serve": serve, "check": check}
    parsers = {name: sub.add_parser(name) for name in modes}
    for name in ("render", "loader", "stage"):
        parsers[name].add_argument("input", type=Path)
    parsers["render"].add_argument("output", type=Path)
    for name in ("render", "loader", "stage"):
        p = parsers[name]
        p.add_argument("--kind", choices=("joint", "limb"), default="joint")
        p.add_argument("--sigma", type=float, default=0.6)
    parsers["render"].add_argument("--repeat", type=int, default=5)
    parsers["render"].add_argument("--no-score", action="store_true", help="use_score=False")
    parsers["loader"].add_argument("--seconds", type=float, default=6.0, help="time budget (best pass wins)")
    parsers["loader"].add_argument("--clip-len", type=int, default=48)
    parsers["loader"].add_argument("--size", type=int, default=56)
    parsers["loader"].add_argument("--seed", type=int, default=0)
    for name in ("loader", "stage"):
        parsers[name].add_argument("--stored", type=int, default=64, help="side of the stored/resized frame")
    parsers["stage"].add_argument("--max-frames", type=int, default=300)
    parsers["stage"].add_argument("--output", type=Path, help="save the volumes, [T, K, H, W], as volume_<i>")
    parsers["stage"].add_argument("--dtype", choices=("uint8", "float16", "float32"), default="uint8")
    args = ap.parse_args()
    result = modes[args.mode](args)
    if result is not None:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
