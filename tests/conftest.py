"""Shared fixtures: the ../shared resources (fail loudly when missing) and small synthetic data sets. Plain
helpers and constants are in tests/support.py."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import N_CLASSES, NTU_VIDEO, SHARED, needs_shared, skel


@pytest.fixture(scope="module")
def torch_threads(request: pytest.FixtureRequest):
    """The module's ``TORCH_THREADS`` torch threads (default 1) while its tests run, the count restored after,
    so no module's choice leaks into the next: `pytestmark = pytest.mark.usefixtures("torch_threads")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(getattr(request.module, "TORCH_THREADS", 1))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared() -> Path:
    needs_shared(SHARED)
    return SHARED


@pytest.fixture(scope="session")
def penn_pkl(shared: Path) -> Path:
    path = shared / "data" / "penn_action" / "penn_action_coco17.pkl"
    needs_shared(path)
    return path


@pytest.fixture(scope="session")
def synth_pkl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """36 synthetic clips (6 actions x 6), some with two people."""
    from apps.synth import generate
    from stores.safepickle import dump_pickle

    path = tmp_path_factory.mktemp("synth") / "synth.pkl"
    dump_pickle(generate(6, seed=0), path)
    return path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """`skel demo` on a small synthetic set (trains both streams): its workdir and the finished process. Run once
    for all xdist workers (the first to need it runs it, under a lock; the others read its workdir, as two users of
    one workdir may), not once per worker: it is the suite's longest setup."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # shared by this run's workers
    workdir, done = root / "demo" / "w", root / "demo" / "process.json"
    done.parent.mkdir(exist_ok=True)
    with open(root / "demo" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            proc = skel("demo", "-w", workdir, "--per-class", "6", "-j", "0")
            done.write_text(json.dumps([proc.args, proc.returncode, proc.stdout, proc.stderr]))
    args, code, out, err = json.loads(done.read_text())
    return workdir, subprocess.CompletedProcess(args, code, out, err)


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A 64 MB tmpfs (needs root and mount rights: skipped with the reason otherwise), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workdir with imported and rendered (joint, 32 x 32, <= 48 frames) synthetic clips of 3 classes.

    sigma 2.5 (not 0.6) makes the heatmaps dense enough for BatchNorm's running statistics, which start at
    var 1 and move 10% per step, to match the batch statistics after a few dozen steps; with sparse 0.6
    heatmaps eval-mode predictions stay at chance for ~100 steps although training accuracy is 100%.
    """
    from apps.synth import generate
    from pipeline.cluster import Cluster
    from pipeline.runner import run_stage
    from stages.import_pkl import ImportParams, ImportStage
    from stages.render.stage import RenderParams, RenderStage
    from stores.safepickle import dump_pickle

    workdir = tmp_path_factory.mktemp("tiny")
    data = generate(2, seed=0)
    data["annotations"] = [a for a in data["annotations"] if a["label"] < N_CLASSES]
    data["classes"] = data["classes"][:N_CLASSES]
    keep = {a["frame_dir"] for a in data["annotations"]}
    data["split"] = {name: [s for s in ids if s in keep] for name, ids in data["split"].items()}
    dump_pickle(data, workdir / "synth.pkl")
    run_stage(ImportStage(), workdir, ImportParams(source=str(workdir / "synth.pkl")), Cluster(workers=0), quiet=True)
    run_stage(RenderStage(), workdir, RenderParams(size=32, max_frames=48, sigma=2.5), Cluster(workers=0), quiet=True)
    return workdir


@pytest.fixture(scope="module")
def extract_models(shared: Path):
    """The default extract stage's detector (CenterNet + MultiPose, fused) and Thunder, on the CPU, 1 thread."""
    from stages.extract.stage import ExtractStageParams, estimators

    models = shared / "models"
    needs_shared(*(models / f"{m}.onnx" for m in ("movenet-thunder", "movenet-multipose", "mb3-centernet")))
    return estimators(ExtractStageParams(models=str(models), device="cpu", threads=1))


@pytest.fixture(scope="module")
def ntu_frame(shared: Path):
    """The first frame (RGB, 1920×1080) of the shared NTU sample: one person, hand-boxed at `NTU_BOX`."""
    from stages.extract.video import VideoReader

    needs_shared(shared / "media" / NTU_VIDEO)
    return next(iter(VideoReader(str(shared / "media" / NTU_VIDEO))))[1]
