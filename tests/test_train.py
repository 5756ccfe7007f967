"""Train stage: sampling, tensor transforms, streaming datasets, training, DDP, ONNX (resume: test_resume.py).

Everything runs on a tiny synthetic set (3 classes x 2 clips, 16 frames at 32 x 32, an 8-channel SlowOnly)
with one torch thread (on a shared 2-core machine two threads were ~10x slower), so the file stays short.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader

from apps import onnx_seal
from apps.export import export_onnx
from apps.predict.model import load_classifier
from inference import checkpoint
from inference.sampling import sample_test, sample_train
from inference.transforms import crop_box, flip, resize
from inference.views import EvalClips, eval_views
from pipeline.cluster import Cluster
from pipeline.errors import SkelError
from pipeline.lock import holder
from pipeline.runner import run_stage
from pipeline.workdir import load_output, newest_complete
from stages.render.heatmap import render_volume
from stages.test.params import TestParams
from stages.test.stage import TestStage
from stages.train import augment
from stages.train.dataset import PREFETCH, TrainClips
from stages.train.stage import TrainParams, TrainStage, newer_best
from stores.coco import KP_FLIP, LEFT_KP, LIMB_FLIP, LIMBS, RIGHT_KP
from stores.shard_codec import CHUNK_FILE
from stores.volumes import VolumeStore
from tests.support import MODEL_ARGS, N_CLASSES, REPO, SKEL, as_terminal_job, ctrl_c_when, error_line

pytestmark = pytest.mark.usefixtures("torch_threads")

CLI_MODEL = ["--base-channels", "8", "--stage-blocks", "1,1,1", "--clip-len", "16", "--input-size", "32",
             "--loader-workers", "0", "--threads", "1", "-q"]  # fmt: skip


# --- sampling ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_frames", [1, 5, 15, 16, 20, 31, 32, 33, 100, 300])
def test_train_indices_follow_pyskl_regimes(n_frames: int) -> None:
    rng = np.random.RandomState(0)
    for _ in range(20):
        inds = sample_train(n_frames, 16, rng)
        assert inds.shape == (16,) and inds.min() >= 0 and inds.max() < n_frames
        if n_frames < 16:  # loops the video: consecutive frames modulo T
            assert ((np.diff(inds) - 1) % n_frames == 0).all()
        elif n_frames < 32:  # every frame once or skipped once: steps of 1 or 2, T - 16 skips in all
            assert set(np.diff(inds)) <= {1, 2} and inds[-1] - inds[0] <= n_frames - 1
        else:  # one frame inside each of 16 equal segments
            bounds = np.arange(17) * n_frames // 16
            assert ((inds >= bounds[:-1]) & (inds < bounds[1:])).all()


def test_test_indices_are_pyskls_and_deterministic() -> None:
    # reference values computed with pyskl's UniformSampleFrames (test_mode, seed 255, clip_len 8)
    assert sample_test(5, 8, 2).tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [2, 3, 4, 0, 1, 2, 3, 4]]
    assert sample_test(20, 8, 2).tolist() == [[1, 3, 5, 8, 11, 12, 16, 18], [1, 2, 5, 9, 11, 13, 15, 17]]
    assert sample_test(40, 8, 1).tolist() == [[1, 5, 11, 17, 24, 26, 30, 39]]
    ten = sample_test(300, 48, 10)
    assert ten.shape == (10, 48) and (ten == sample_test(300, 48, 10)).all()
    assert len({tuple(c) for c in ten}) == 10  # ten different clips


def test_best_checkpoint_keeps_the_later_epoch_on_a_tie() -> None:
    best = (-1.0, -1)
    for epoch, score in enumerate([0.5, 1.0, 0.9, 1.0, 1.0, 0.95]):
        best = newer_best(best, score, epoch)
    assert best == (1.0, 4)  # the last epoch at the top score, not the first (1) nor the newest (5)
    assert newer_best((0.8, 2), None, 3) == (-1.0, 3)  # no validation: the newest epoch


# --- transforms --------------------------------------------------------------------------------------------

def test_crop_box_stays_inside_with_pyskl_area() -> None:
    rng = np.random.RandomState(1)
    for _ in range(200):
        top, left, h, w = crop_box(64, 64, rng)
        assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 64
        assert 0.5 * 64 * 64 <= h * w <= 64 * 64


@pytest.mark.parametrize("limbs, perm", [(None, KP_FLIP), (LIMBS, LIMB_FLIP)], ids=["joint", "limb"])
def test_flip_equals_rendering_the_mirrored_skeleton(limbs, perm) -> None:
    """flip(render(skeleton)) == render(mirrored skeleton with left/right joints exchanged)."""
    rng = np.random.default_rng(0)
    kp = rng.uniform(6, 26, size=(1, 3, 17, 2)).astype(np.float32)
    score = np.ones((1, 3, 17), np.float32)
    mirrored = kp.copy()
    mirrored[..., 0] = 31 - kp[..., 0]
    swap = list(range(17))
    for a, b in zip(LEFT_KP, RIGHT_KP, strict=True):
        swap[a], swap[b] = b, a
    mirrored = mirrored[:, :, swap]
    vol = torch.from_numpy(render_volume(kp, score, (32, 32), limbs=limbs))
    want = torch.from_numpy(render_volume(mirrored, score, (32, 32), limbs=limbs))
    got = flip(vol, perm)
    # equal up to pyskl's lopsided int() windows, which cut the Gaussian tails at slightly other places
    assert (got - want).abs().max() < 0.05
    assert (vol.flip(-1) - want).abs().max() > 0.5  # mirroring without the channel swap is wrong


# --- data --------------------------------------------------------------------------------------------------

def _volumes(workdir: Path) -> Path:
    return newest_complete(workdir, ("render",)).path


def test_train_clips_are_deterministic_per_epoch_and_worker_independent(tiny: Path) -> None:
    ds = TrainClips(_volumes(tiny), "train", clip_len=16, size=28, seed=3, repeat=2)
    assert len(ds) == 2 * N_CLASSES
    batch = ds[[1, 4, 2]]
    assert batch.clips.shape == (3, 16, 17, 32, 32) and batch.clips.dtype == torch.uint8
    assert batch.labels.tolist() == [ds.items[i % N_CLASSES].label for i in (1, 4, 2)]
    first = batch.clips.clone()  # batches live in a ring of reused buffers
    assert torch.equal(ds[[1, 4, 2]].clips, first) and torch.equal(ds[[4]].clips[0], first[1])
    ds.set_epoch(1)
    assert not torch.equal(ds[[1, 4, 2]].clips, first)
    sampler = BatchSampler(range(len(ds)), 4, drop_last=False)
    serial = [b.clips.clone() for b in DataLoader(ds, sampler=sampler, batch_size=None)]
    parallel = [b.clips.clone() for b in DataLoader(ds, sampler=sampler, batch_size=None, num_workers=2,
                                                    prefetch_factor=PREFETCH)]
    assert len(serial) == 2 and all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))


@pytest.mark.parametrize("path", [augment.matmuls, augment.two_taps], ids=["device matmuls", "cpu two taps"])
def test_device_augmentation_equals_the_per_clip_path(tiny: Path, path) -> None:
    """Both implementations of the batched crop/resize/mirror (matmuls on a GPU, the two-tap C kernel on a CPU) equal
    cropping, mirroring and resizing each float clip."""
    ds = TrainClips(_volumes(tiny), "train", clip_len=16, size=28, seed=5, repeat=4)
    indices = list(range(len(ds)))
    batch = ds[indices]
    x = path(batch.clips, batch.boxes, batch.mirror, 28, torch.tensor(ds.perm), ds.scale)
    labels = batch.labels
    assert x.shape == (len(ds), 17, 16, 28, 28) and x.is_contiguous(memory_format=torch.channels_last_3d)
    store = VolumeStore(_volumes(tiny))
    mirrored = 0
    for j, index in enumerate(indices):
        item = ds.items[index % len(ds.items)]
        rng = np.random.RandomState([5, 0, index])
        frames = sample_train(item.n_frames, 16, rng)
        top, left, h, w = crop_box(32, 32, rng)
        clip = torch.from_numpy(store.read(item.sample_id, frames))[:, :, top : top + h, left : left + w]
        if rng.rand() < 0.5:
            clip, mirrored = flip(clip, KP_FLIP), mirrored + 1
        torch.testing.assert_close(x[j], resize(clip, 28), rtol=0, atol=2e-6)
        assert labels[j] == item.label
    assert 0 < mirrored < len(indices)


@pytest.mark.parametrize("isa", [0, 1, 2], ids=["portable", "AVX2", "AVX-512"])
@pytest.mark.parametrize(("channels", "size"), [(17, 12), (17, 20), (19, 20), (5, 20)],
                         ids=["K 17 S 12", "K 17 S 20", "K 19 S 20", "K 5"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float16])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_cpu_augmentation_kernel_equals_torch_on_any_crop(isa: int, channels: int, size: int,
                                                          dtype: torch.dtype, sparse: bool) -> None:
    """Each vector path of the C kernel (where this CPU has it; a path takes the clips it can and leaves the rest
    to the narrower one) on crops narrower than its blocks, the whole frame (no resize), upscaling and
    downscaling, a crop over twice the output width, mirrored or not, every stored dtype: equal to torch's
    flip + resize of each crop. Sparse clips (stored rows zero in some channels, or in all of them, as heatmaps
    are) take the vector paths' shortcuts: output rows with no, a few and many channels to compute."""
    g = torch.Generator().manual_seed(channels)
    x = (torch.rand(7, 5, channels, 20, 48, generator=g) * 255).to(dtype)
    if sparse:
        rows = torch.rand(7, 5, 1, 20, 1, generator=g) < 0.5
        x = x * (rows & (torch.rand(7, 5, channels, 20, 1, generator=g) < 0.3)).to(dtype)
    boxes = torch.tensor([[0, 0, 20, 48], [3, 5, 4, 3], [1, 2, 17, 9], [0, 16, 20, 18], [7, 0, 13, 24], [2, 3, 12, 12],
                          [1, 20, 19, 21]])
    mirror = torch.tensor([False, True, True, False, True, True, True])
    perm = torch.randperm(channels, generator=g)
    ring = torch.full((7, channels, 5, size, size), float("nan")).contiguous(memory_format=torch.channels_last_3d)
    out = augment.two_taps(x, boxes, mirror, size, perm, 1 / 255, ring, isa=isa)
    assert out is ring and out.is_contiguous(memory_format=torch.channels_last_3d)
    for j, (top, left, h, w) in enumerate(boxes.tolist()):
        clip = x[j, :, :, top : top + h, left : left + w].transpose(0, 1).float()
        expected = resize(flip(clip, perm) if mirror[j] else clip, size) / 255
        torch.testing.assert_close(out[j], expected, rtol=0, atol=2e-6)
    if isa == 2:  # the 16-lane path is the 8-lane path's arithmetic in the same order: equal to the bit
        assert torch.equal(out, augment.two_taps(x, boxes, mirror, size, perm, 1 / 255, isa=1))


def test_cpu_augmentation_refuses_a_box_outside_the_frame() -> None:
    x = torch.zeros(1, 2, 17, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"boxes\[0\].*not a crop of 16 x 16"):
        augment.two_taps(x, torch.tensor([[4, 4, 13, 8]]), torch.tensor([False]), 8, torch.arange(17))


def test_cpu_model_input_buffers_alternate_and_hold_the_batch(tiny: Path) -> None:
    """On a CPU the model input comes from two reused buffers: a batch survives making the next one (the
    training loop still holds it then) and equals a fresh augmentation."""
    ds = TrainClips(_volumes(tiny), "train", clip_len=8, size=24, seed=1, repeat=2)
    cpu = torch.device("cpu")
    first_batch, second_batch = ds[[0, 1, 2]], ds[[3, 4, 5]]
    first, _ = ds.on_device(first_batch, cpu)
    kept = first.clone()
    second, _ = ds.on_device(second_batch, cpu)
    assert first.data_ptr() != second.data_ptr() and torch.equal(first, kept)
    fresh = augment.two_taps(second_batch.clips, second_batch.boxes, second_batch.mirror, 24, torch.tensor(ds.perm),
                             ds.scale)
    assert torch.equal(second, fresh)
    third, _ = ds.on_device(ds[[0, 1, 2]], cpu)
    assert third.data_ptr() == first.data_ptr()


def test_damaged_chunk_is_an_error_naming_the_sample_not_zeros(tiny: Path, tmp_path: Path) -> None:
    out = shutil.copytree(_volumes(tiny), tmp_path / "render")
    store = VolumeStore(out)
    row = store.rows[store.index.column("sample_id")[0].as_py()]
    chunk = out / "volumes.zarr" / row["array"] / CHUNK_FILE
    off, _ = store.chunks(row["array"]).index[row["offset"] + 1]
    data = bytearray(chunk.read_bytes())
    data[int(off) + 20] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(SkelError, match=f"sample {row['sample_id']}.*frame {row['offset'] + 1} checksum"):
        VolumeStore(out).read(row["sample_id"])
    chunk.write_bytes(bytes(data[: len(data) // 2]))  # truncated: the index at the end is gone
    with pytest.raises(SkelError, match="index checksum|truncated"):
        VolumeStore(out).read(row["sample_id"])


def test_test_clips_add_mirrored_clips(tiny: Path) -> None:
    ds = EvalClips(_volumes(tiny), "test", clip_len=16, num_clips=3, flip=True)
    x, _ = ds[0]
    assert x.shape == (6, 17, 16, 32, 32)
    assert torch.equal(x[3:], flip(x[:3], KP_FLIP))
    assert torch.equal(ds[0][0], x)
    volume = torch.from_numpy(VolumeStore(_volumes(tiny)).read(ds.items[0].sample_id))  # the whole clip in memory
    assert torch.equal(eval_views(volume, 16, 3, flip=True, perm=KP_FLIP), x)


# --- training ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny: Path) -> Path:
    params = TrainParams(model_args=MODEL_ARGS, dropout=0.0, clip_len=16, input_size=32, epochs=5, repeat=20,
                         batch_size=6, lr=0.1, train_split="train", val_split="train", workers=0, threads=1)
    return run_stage(TrainStage(), tiny, params, Cluster(workers=0), quiet=True)


@pytest.mark.slow
def test_overfits_tiny_set(tiny: Path, trained: Path) -> None:
    manifest = json.loads((trained / "manifest.json").read_text())
    assert manifest["state"] == "complete" and manifest["summary"]["steps"] == 5 * 10  # 3 clips x 20 / 6 per epoch
    assert manifest["summary"]["last_top1"] == 1.0
    epochs = [json.loads(ln) for ln in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs if e.get("kind") == "epoch"] == [0, 1, 2, 3, 4]
    out = run_stage(TestStage(), tiny, TestParams(split="train", num_clips=2, checkpoint="last", threads=1),
                    Cluster(workers=0), quiet=True)
    assert json.loads((out / "metrics.json").read_text())["top1"] == 1.0


@pytest.mark.slow
def test_ctrl_c_says_the_command_resumes_and_it_does(tiny: Path, tmp_path: Path) -> None:
    w = _copy_data(tiny, tmp_path / "w")
    args = _train_cli(w, "--epochs", "60", *CLI_MODEL)
    # SIGINT as a terminal delivers it: a background job of a shell (a test run started with &) ignores it, and
    # so would the child, which inherits that
    run = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for _ in range(600):  # the first committed epoch, then Ctrl-C
            if list(w.glob("train/*/_shards/*.json")) or run.poll() is not None:
                break
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 130 and "interrupted: the same command resumes" in err and "Traceback" not in err, err
    (out,) = w.glob("train/*")
    assert load_output(out).state == "interrupted" and holder(out) is None
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=_env())
    assert again.returncode == 0 and "resuming, " in again.stderr and "trained 60 epochs" in again.stderr, again.stderr


_FORK_WINDOW = """
import os, sys, time
from pathlib import Path
import torch
from stages.train.fit import loader

def in_child():  # the first worker, inside Python's at-fork hooks, waits there for the Ctrl-C
    if not os.path.exists(sys.argv[1]):
        Path(sys.argv[1]).touch()
        time.sleep(5)

os.register_at_fork(after_in_child=in_child)
try:
    for _ in range(3):  # three epochs' workers
        for _ in loader([torch.zeros(2)] * 4, workers=2, batch_size=None):
            pass
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_while_an_epochs_loader_workers_fork_stops_the_trainer_quietly(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the whole process group, loader workers being forked too: the trainer stops
    (exit 130) with nothing printed. Without SIGINT blocked over the fork, a worker took it inside Python's at-fork
    hooks ('Exception ignored ... KeyboardInterrupt') and the trainer went on as if never interrupted."""
    script, mark = tmp_path / "window.py", tmp_path / "forking"
    script.write_text(_FORK_WINDOW)
    run = as_terminal_job([sys.executable, script, mark], stderr=subprocess.PIPE, env=_env())
    err = ctrl_c_when(run, mark.exists, timeout=60)
    assert mark.exists() and (run.returncode, err) == (130, ""), err


def test_a_process_count_the_run_was_not_started_with_is_refused_before_its_output_exists(
        tiny: Path, tmp_path: Path) -> None:
    """A recipe step (or a repair) runs one process: a training of two is refused before its output is touched. It
    was refused once the epochs were planned, marking the output failed: a repair of an interrupted DDP training so
    turned it into a failed one."""
    w = _copy_data(tiny, tmp_path / "w")
    params = TrainParams(model_args=MODEL_ARGS, clip_len=16, input_size=32, epochs=1, batch_size=6, nproc=2,
                         workers=0, threads=1)
    with pytest.raises(SkelError, match=r"nproc 2: this training runs in 1 process"):
        run_stage(TrainStage(), w, params, Cluster(workers=0), quiet=True)
    assert not (w / "train").exists()


def test_omp_num_threads_sets_the_trainings_threads(tiny: Path, tmp_path: Path) -> None:
    """OMP_NUM_THREADS, which PyTorch and pyskl honour (a laptop user keeping cores free), sets the training's
    threads when --threads does not; it was cores / nproc whatever the environment said."""
    w = _copy_data(tiny, tmp_path / "w")
    args = _train_cli(w, "--epochs", "1")
    del args[args.index("--threads"):args.index("--threads") + 2]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env={**_env(), "OMP_NUM_THREADS": "3"})
    assert proc.returncode == 0, proc.stderr
    (record,) = (w / "train").glob("*/_shards/epoch-000.json")
    assert json.loads(record.read_text())["threads"] == 3


def test_a_killed_loader_worker_fails_the_run_for_the_machine(tiny: Path, tmp_path: Path) -> None:
    """A DataLoader worker killed from outside (the OOM killer, ``kill``) failed the run as a fault of its work,
    torch raising a RuntimeError: ``skel verify`` exited 0 on it and ``--repair`` left it. It failed for the
    machine: verify says it is unfinished (exit 1), and the repair finishes it."""
    w = _copy_data(tiny, tmp_path / "w")
    killed = subprocess.run(_train_cli(w, "--epochs", "1", "--loader-workers", "1"), cwd=REPO, capture_output=True,
                            text=True, env={**_env(), "SKEL_CRASH_AT": "loader-worker"})
    assert killed.returncode == 1, killed.stderr
    assert "DataLoader worker" in killed.stderr and "out of memory" in killed.stderr, killed.stderr
    (out,) = (w / "train").iterdir()
    assert load_output(out).failed_for_machine
    verify = subprocess.run([*SKEL, "verify", "-w", str(w)], cwd=REPO, capture_output=True, text=True, env=_env())
    assert verify.returncode == 1 and "--repair" in verify.stdout + verify.stderr, verify.stdout + verify.stderr
    repair = subprocess.run([*SKEL, "verify", "-w", str(w), "--repair", "-q"], cwd=REPO, capture_output=True,
                            text=True, env=_env())
    assert repair.returncode == 0, repair.stderr
    assert load_output(out).state == "complete"


@pytest.mark.parametrize("quiet", [pytest.param(True), pytest.param(False, marks=pytest.mark.slow)])
def test_train_output_off_a_terminal_is_its_plan_and_result(tiny: Path, tmp_path: Path, quiet: bool) -> None:
    """Progress bars that vanish on a terminal (each epoch's) print nothing to a pipe or log, and --quiet turns
    every bar off: a log holds the plan, a line per epoch (a log held the plan and nothing else for the hours of an
    NTU-sized epoch, nor did a terminal keep any epoch's loss) and the result, not a blank line per epoch."""
    w = _copy_data(tiny, tmp_path / "w")
    args = [*_train_cli(w, "--epochs", "3", *CLI_MODEL)]
    proc = subprocess.run([arg for arg in args if quiet or arg != "-q"], cwd=REPO, capture_output=True, text=True,
                          env=_env())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "" not in lines and lines[0].startswith("plan: "), lines
    epochs = [ln.split()[1:3] for ln in lines if ln.split()[1:2] in (["epoch"],)]
    assert epochs == [["epoch", "1/3:"], ["epoch", "2/3:"], ["epoch", "3/3:"]], lines
    assert all(" clips/s, " in ln for ln in lines if ln.split()[1:2] == ["epoch"]), lines
    done = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith("trained 3 epochs")]
    assert len(done) == 1 and "no validation clips" in done[0], done
    bars = [ln for ln in lines if "━" in ln]
    assert bars == [] if quiet else len(bars) == 1 and "3/3" in bars[0], lines  # the stage's bar: its last state


@pytest.mark.slow
def test_onnx_export_matches_torch(trained: Path, tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (stale := tmp_path / f".model.onnx.tmp-{dead.pid}").write_bytes(b"a killed export's")  # kill -9 leaves it
    (other := tmp_path / f".other.onnx.tmp-{dead.pid}").write_bytes(b"not this export's")
    result = export_onnx(trained / checkpoint.BEST, tmp_path / "model.onnx")
    assert not stale.exists() and other.exists()
    assert result.max_abs_diff <= 1e-4 and not list(tmp_path.glob("*.data"))
    assert onnx_seal.intact((tmp_path / "model.onnx").read_bytes()) is True  # sealed, as predict --onnx checks
    model, _ = checkpoint.load_model(trained / checkpoint.BEST)
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 4):  # dynamic batch
        x = torch.rand(batch, *result.input_shape[1:])
        (probs,) = sess.run(None, {"x": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(probs, model(x).softmax(-1).numpy(), atol=1e-4)
    # exported at another clip length and size, its predict metadata says so (it said the training's: predict
    # then fed the network views of the wrong shape)
    export_onnx(trained / checkpoint.BEST, tmp_path / "other.onnx", clip_len=8, size=24, train_dir=trained)
    spec = load_classifier(onnx=tmp_path / "other.onnx").spec
    assert (spec.clip_len, spec.size) == (8, 24)
    # the file is put in place only once onnxruntime agrees with torch: a failed check (or Ctrl-C before it ended)
    # left an unchecked file under the name, which a rerun then refused to replace without --force
    with pytest.raises(SkelError, match="onnxruntime"):
        export_onnx(trained / checkpoint.BEST, tmp_path / "unchecked.onnx", tol=-1.0)
    assert [p.name for p in tmp_path.iterdir() if "unchecked" in p.name] == []


def test_a_ctrl_c_inside_a_held_block_is_raised_when_it_ends() -> None:
    """torch's ONNX exporter turned a Ctrl-C into an AttributeError's traceback (1 export in 6): the export runs
    with Ctrl-C held, and the interrupt is raised once it returns; a second Ctrl-C there ends the process."""
    code = ("import os, signal, time\nfrom pipeline.errors import interrupts_held\nended = False\ntry:\n"
            "    with interrupts_held():\n        os.kill(os.getpid(), signal.SIGINT)\n        time.sleep(0.2)\n"
            "        ended = True\nexcept KeyboardInterrupt:\n    print('raised after the block:', ended)\n"
            "with interrupts_held():\n    os.kill(os.getpid(), signal.SIGINT)\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(5)\nprint('not reached')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (130, "raised after the block: True\n", "")


# --- processes: DDP ------------------------------------------------------------------------------------------

def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}


def _copy_data(src: Path, dst: Path) -> Path:
    for stage in ("import", "render"):
        shutil.copytree(src / stage, dst / stage)
    return dst


def _train_cli(workdir: Path, *extra: str) -> list[str]:
    return [*SKEL, "train", "-w", str(workdir), *CLI_MODEL, "-b", "6", "--lr", "0.1", "--val-split", "",
            "--repeat", "2", *extra]


@pytest.mark.slow
def test_ddp_two_processes_keep_identical_replicas(tiny: Path, tmp_path: Path) -> None:
    workdir = _copy_data(tiny, tmp_path / "ddp")
    one = subprocess.run(_train_cli(workdir, "--epochs", "2", "-q"), env=_env(), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    (single,) = workdir.glob("train/*")
    proc = subprocess.run(_train_cli(workdir, "--epochs", "2", "--nproc", "2"), env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out,) = set(workdir.glob("train/*")) - {single}  # not a cache hit of the one-process run: other weights
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["state"] == "complete" and manifest["summary"]["steps"] == 2  # 3 clips x 2 / 6 per epoch
    for shard in sorted((out / "_shards").glob("*.json")):
        digests = json.loads(shard.read_text())["weight_digests"]
        assert len(digests) == 2 and digests[0] == digests[1]
    assert checkpoint.load(out / checkpoint.LAST)["world_size"] == 2
    assert "Traceback" not in proc.stderr and "OMP_NUM_THREADS" not in proc.stderr and "Grad strides" not in proc.stderr


def _processes(part: str) -> list[str]:
    """Command lines (NUL-separated, as /proc holds them) of the live processes that contain ``part``."""
    texts = (_read(cmdline).decode(errors="replace") for cmdline in Path("/proc").glob("[0-9]*/cmdline"))
    return [text for text in texts if part in text]


@pytest.mark.slow
def test_ddp_refuses_once_and_dies_with_skel(tiny: Path, tmp_path: Path) -> None:
    """What every rank would refuse is refused once, before torchrun starts; kill -9 of skel takes the launcher and
    every rank with it, and the next run resumes."""
    workdir = _copy_data(tiny, tmp_path / "ddp")
    bad = subprocess.run(_train_cli(workdir, "-b", "5", "--nproc", "2"), env=_env(), capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: batch size 5 does not split over 2 processes (--nproc)"
    run = subprocess.Popen(_train_cli(workdir, "--epochs", "200", "--nproc", "2", "-q"), env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = workdir / "train"
    while not list(shards.glob("*/_shards/epoch-000.json")):  # the first committed epoch
        assert run.poll() is None
        time.sleep(0.2)
    assert len(_processes(f"cli\0train\0-w\0{workdir}")) >= 3  # skel and its two ranks (torchrun: -m cli too)
    run.kill()
    run.wait()
    for _ in range(50):  # the launcher and the ranks get SIGKILL as their parent dies
        ranks = _processes(f"cli\0train\0-w\0{workdir}")
        if not ranks:
            break
        time.sleep(0.1)
    assert not ranks, ranks
    (out,) = shards.iterdir()
    for _ in range(50):  # a dying process's cmdline reads empty before it is gone and lets go of the lock
        if load_output(out).state != "running":
            break
        time.sleep(0.1)
    assert load_output(out).state == "interrupted"


@pytest.mark.slow
@pytest.mark.parametrize("target", ["rank 1", "launcher", "ctrl-c"])
def test_ddp_rank_killed_or_launcher_stopped_is_one_line(tiny: Path, tmp_path: Path, target: str) -> None:
    """kill -9 of one rank: the other fails for it (gloo: connection closed); the user gets one line, the killed
    rank's, not one per rank. SIGTERM to torchrun's launcher stops the ranks, and a terminal's Ctrl-C reaches skel,
    the launcher and every rank: one ``interrupted`` line, not torch's SignalException traceback or a line per
    process."""
    workdir = _copy_data(tiny, tmp_path / "ddp")
    run = as_terminal_job(_train_cli(workdir, "--epochs", "200", "--nproc", "2", "-q"), env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not list((workdir / "train").glob("*/_shards/epoch-000.json")):
        assert run.poll() is None
        time.sleep(0.2)
    part, mark = (b"-m\0stages.train.torchrun\0", b"") if target == "launcher" else (b"", b"\0LOCAL_RANK=1\0")
    (pid,) = [int(env.parent.name) for env in Path("/proc").glob("[0-9]*/environ")
              if f"cli\0train\0-w\0{workdir}".encode() in (cmdline := _read(env.parent / "cmdline"))
              and part in cmdline and mark in b"\0" + _read(env)
              and (target != "rank 1" or b"stages.train.torchrun" not in cmdline)]
    if target == "ctrl-c":
        os.killpg(run.pid, signal.SIGINT)
    else:
        os.kill(pid, signal.SIGKILL if target == "rank 1" else signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    if target == "rank 1":
        line = error_line(subprocess.CompletedProcess(run.args, run.returncode, "", stderr))
        assert line.startswith("error: training rank 1 was killed: Signal 9 (SIGKILL)"), stderr
        # a rank lost is a failure of the machine, which verify counts unfinished; its repair would train in one
        # process: refused in one line, and the output is left for `skel train --nproc 2` to resume
        (out,) = (workdir / "train").iterdir()
        assert load_output(out).state == "interrupted" or load_output(out).failed_for_machine
        verify = subprocess.run([*SKEL, "verify", "-w", str(workdir)], capture_output=True, text=True, env=_env())
        assert verify.returncode == 1, verify.stdout + verify.stderr
        state = load_output(out).manifest
        repair = subprocess.run([*SKEL, "verify", "-w", str(workdir), "--repair", "-q"], capture_output=True,
                                text=True, env=_env())
        assert repair.returncode == 1 and "only `skel train --nproc 2` starts them" in repair.stderr, repair.stderr
        assert load_output(out).manifest == state
    else:
        signum = signal.SIGINT if target == "ctrl-c" else signal.SIGTERM
        assert run.returncode == 128 + signum and "Traceback" not in stderr and "signal" not in stderr, stderr
        assert stderr.count("interrupted: the same command resumes") == 1, stderr


def test_a_rank_that_failed_for_its_work_is_told_from_one_killed(tmp_path: Path, monkeypatch) -> None:
    """A rank that fails for its work (a bad sample: each rank reads its own) writes its line to its error file
    before it ends, which rank 0, whose collective fails for it, reads: a failure of the work, not a rank lost to
    the machine (it was recorded as 'killed from outside', and verify sent the user to a repair that repeats it)."""
    from stages.train.dist import LOST_RANK, peer_error

    attempt = tmp_path / "attempt_0"
    for rank in ("0", "1"):
        (attempt / rank).mkdir(parents=True)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(attempt / "0" / "error.json"))
    assert peer_error() is None  # killed: it said nothing
    (attempt / "0" / "error.json").write_text(json.dumps({"message": "rank 0's own line"}))
    assert peer_error() is None
    (attempt / "1" / "error.json").write_text(json.dumps({"message": f"train: epoch-001: {LOST_RANK}"}))
    assert peer_error() is None  # with three ranks, a second rank told a third was lost
    (attempt / "2").mkdir()
    (attempt / "2" / "error.json").write_text(json.dumps({"message": "walk_001: a bad volume", "timestamp": 1}))
    assert peer_error() == "training rank 2: walk_001: a bad volume"


def test_the_killed_rank_is_named_though_the_launcher_stopped_another_before_it_wrote_its_line(tmp_path: Path) -> None:
    """torchrun lists the rank killed first, then the ranks it stopped (SIGTERM) once it saw that; a stopped rank
    can die before it writes its error line (the CI run of 24bc292 named rank 0's SIGTERM for a kill -9 of rank 1),
    and a rank the launcher stopped is not named over one that said why it failed (a second run on the output)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from stages.train.torchrun import first_error

    def failure(rank: int, exitcode: int) -> ProcessFailure:
        return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode, error_file=str(tmp_path / "none"))

    line = first_error(ChildFailedError("cli", {1: failure(1, -signal.SIGKILL), 0: failure(0, -signal.SIGTERM)}))
    assert line == "training rank 1 was killed: Signal 9 (SIGKILL) received by PID 101"
    # a rank that said why it failed (another run holds the output), the other stopped by the launcher
    said = tmp_path / "said.json"
    said.write_text(json.dumps({"message": "another skel run is writing w/train/x", "timestamp": 1, "skel_ns": 1}))
    reported = ProcessFailure(local_rank=0, pid=100, exitcode=1, error_file=str(said))
    line = first_error(ChildFailedError("cli", {0: reported, 1: failure(1, -signal.SIGTERM)}))
    assert line == "another skel run is writing w/train/x"


@pytest.mark.slow
def test_ddp_launcher_killed_while_the_ranks_start_leaves_no_rank(tiny: Path, tmp_path: Path) -> None:
    """kill -9 of torchrun while its ranks import (their first seconds): each tied its life to its parent only
    once it had started, by then init (pid 1), and both ran on for good; the user got exit 247 and no line."""
    workdir = _copy_data(tiny, tmp_path / "ddp")
    run = as_terminal_job(_train_cli(workdir, "--epochs", "200", "--nproc", "2", "-q"), env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    mine = f"cli\0train\0-w\0{workdir}".encode()
    for _ in range(1200):
        procs = {int(d.name): _read(d / "cmdline") for d in Path("/proc").glob("[0-9]*")}
        launcher = [pid for pid, cmd in procs.items() if mine in cmd and b"stages.train.torchrun" in cmd]
        ranks = [pid for pid, cmd in procs.items() if mine in cmd and b"stages.train.torchrun" not in cmd
                 and pid != run.pid]
        if launcher and len(ranks) == 2:
            break
        time.sleep(0.05)
    os.kill(launcher[0], signal.SIGKILL)

    def left() -> list[int]:
        return [pid for pid in ranks if mine in _read(Path(f"/proc/{pid}/cmdline"))]

    try:
        for _ in range(1200):  # each rank ends once it would join the group (its imports done), at the latest
            if not left():
                break
            time.sleep(0.1)
        assert not left()  # an orphan rank holds skel's stderr open too: skel would not end
        _, stderr = run.communicate(timeout=120)
    finally:
        for pid in left():
            os.kill(pid, signal.SIGKILL)
        run.kill()
    line = error_line(subprocess.CompletedProcess(run.args, run.returncode, "", stderr))
    assert line == ("error: the training launcher (torchrun) was killed (SIGKILL): the same command resumes from what "
                    "was committed")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return b""


def test_a_training_split_of_one_class_is_refused_before_an_epoch(tmp_path: Path) -> None:
    """One class trains to loss 0 and tests at 100% on itself: refused, naming the split and the class."""
    from apps.synth import generate
    from stages.import_pkl import ImportParams, ImportStage
    from stages.render.stage import RenderParams, RenderStage
    from stores.safepickle import dump_pickle

    data = generate(1, seed=0)
    data["split"]["one"] = [a["frame_dir"] for a in data["annotations"] if a["label"] == 2]
    dump_pickle(data, tmp_path / "one.pkl")
    run_stage(ImportStage(), tmp_path, ImportParams(source=str(tmp_path / "one.pkl")), Cluster(workers=0), quiet=True)
    run_stage(RenderStage(), tmp_path, RenderParams(size=32, max_frames=16), Cluster(workers=0), quiet=True)
    params = TrainParams(model_args=MODEL_ARGS, train_split="one", epochs=1, batch_size=2, workers=0, threads=1)
    with pytest.raises(SkelError, match=rf"training split \(one\) holds one class \({data['classes'][2]}\)"):
        run_stage(TrainStage(), tmp_path, params, Cluster(workers=0), quiet=True)
    assert not list((tmp_path / "train").glob("*/_shards/*.json"))


def test_data_without_splits_trains_and_tests_on_every_labelled_sample(tmp_path: Path) -> None:
    """Folder-per-class data has no splits: the default splits are refused before an output exists, saying what to
    pass, and '' means every labelled sample in train and test alike."""
    from apps.synth import generate
    from stages.import_pkl import ImportParams, ImportStage
    from stages.render.stage import RenderParams, RenderStage
    from stores.safepickle import dump_pickle

    data = generate(1, seed=0)
    del data["split"]
    dump_pickle(data, tmp_path / "nosplit.pkl")
    cluster = Cluster(workers=0)
    run_stage(ImportStage(), tmp_path, ImportParams(source=str(tmp_path / "nosplit.pkl")), cluster, quiet=True)
    run_stage(RenderStage(), tmp_path, RenderParams(size=32, max_frames=16), cluster, quiet=True)
    params = TrainParams(model_args=MODEL_ARGS, clip_len=8, input_size=32, epochs=1, batch_size=2, workers=0,
                         threads=1)
    with pytest.raises(SkelError, match=r"no labelled samples in split 'train' \(labelled splits: none\); pass "
                                        r"--train-split '' for every labelled sample, or .*split column"):
        run_stage(TrainStage(), tmp_path, params, cluster, quiet=True)
    assert not (tmp_path / "train").exists()
    run_stage(TrainStage(), tmp_path, TrainParams(**{**params.__dict__, "train_split": None}), cluster, quiet=True)
    test = TestParams(num_clips=1, flip=False, threads=1)
    with pytest.raises(SkelError, match=r"no labelled samples in split 'test' .*; pass --split '' for every"):
        run_stage(TestStage(), tmp_path, test, cluster, quiet=True)
    assert not (tmp_path / "test").exists()
    out = run_stage(TestStage(), tmp_path, TestParams(split="", num_clips=1, flip=False, threads=1), cluster,
                    quiet=True)
    assert load_output(out).manifest["summary"]["samples"] == len(data["annotations"])


def test_test_warns_when_the_split_holds_samples_the_model_trained_on(tmp_path: Path, caplog) -> None:
    """A pickle that lists a name in both splits: its scores are not held out, and the user is told."""
    from apps.synth import generate
    from stages.import_pkl import ImportParams, ImportStage
    from stages.render.stage import RenderParams, RenderStage
    from stores.safepickle import dump_pickle

    data = generate(4, seed=0)  # three training clips a class: one of each is carved for validation
    data["split"]["test"].append(data["split"]["train"][0])
    dump_pickle(data, tmp_path / "both.pkl")
    cluster = Cluster(workers=0)
    run_stage(ImportStage(), tmp_path, ImportParams(source=str(tmp_path / "both.pkl")), cluster, quiet=True)
    run_stage(RenderStage(), tmp_path, RenderParams(size=32, max_frames=16, sigma=2.5), cluster, quiet=True)
    params = TrainParams(model_args=MODEL_ARGS, clip_len=8, input_size=32, epochs=1, batch_size=2, val_split=None,
                         workers=0, threads=1)
    trained = run_stage(TrainStage(), tmp_path, params, cluster, quiet=True)
    with caplog.at_level("WARNING", logger="skel"):
        run_stage(TestStage(), tmp_path, TestParams(num_clips=1, flip=False, threads=1), cluster, quiet=True)
    n = len(data["split"]["test"])
    assert f"1 of the {n} samples of split 'test' are in the training split (train) too, e.g. " \
           f"{data['split']['train'][0]}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="skel"):  # the training split itself, as class folders without splits do
        run_stage(TestStage(), tmp_path, TestParams(num_clips=1, flip=False, threads=1, split="train"), cluster,
                  quiet=True)
    carved = load_output(trained).manifest["summary"]["val_samples"]  # the carved clips are held out: said
    assert carved > 0 and ("the model trained on train, the split scored here: its scores are not held out (a training "
                           f"accuracy; only the {carved} clips carved from it for validation were not trained on)"
                           ) in caplog.text


def test_an_init_that_is_no_checkpoint_is_refused_when_planned(tmp_path: Path) -> None:
    """An exported .onnx as --init failed inside the first epoch and left a failed output: it is refused by the
    plan's check now, before any output exists."""
    (onnx := tmp_path / "m.onnx").write_bytes(b"\x08\x07\x12\x04skel")
    with pytest.raises(SkelError, match="m.onnx: not a loadable weights-only checkpoint"):
        TrainStage().check(TrainParams(init=str(onnx), model_args=MODEL_ARGS))


def test_the_plan_line_says_the_share_carved_and_why_it_is_more(tmp_path: Path) -> None:
    """15 classes x 4 clips carve 14 (23%, one of each class at least); --val-fraction's 10% said nothing of it."""
    from stages.train.fit import _share

    assert _share(TrainParams(), 46, 14) == "23% of 60, one clip of each class with two or more at least"
    assert _share(TrainParams(), 1131, 127) == "10% of 1258"
