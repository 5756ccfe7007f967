"""Training steps that do not need each other run side by side (the recipe's ``workflow.side_by_side = 2``, or
``skel run --side-by-side 2``: one process per step, each on its share of the cores). Killed at every training
boundary, or the ``skel run`` above them killed with SIGKILL, one rerun ends with every output byte-identical to
an uninterrupted side-by-side run's; the steps' own output (their plans) still reaches the user."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torch.utils.data import Dataset

from apps.synth import generate
from pipeline.lock import alive, running
from pipeline.together import core_shares
from pipeline.workdir import MANIFEST
from stores.safepickle import dump_pickle
from tests.support import REPO, RESUME_RECIPE, SKEL, as_terminal_job, ctrl_c_when, output_files, skel

TRAIN = """
[[step]]
id = "{id}"
stage = "train"
inputs = {{ volumes = "render" }}
model_args = {{ base_channels = 8, stage_blocks = [1, 1, 1] }}
clip_len = 16
input_size = 32
epochs = 3
batch_size = 4
lr = 0.1
seed = {seed}
"""
RECIPE = "[workflow]\nside_by_side = 2\n" + "\n[[step]]\n".join(RESUME_RECIPE.split("\n[[step]]\n")[:3]) + \
    TRAIN.format(id="train_a", seed=0) + TRAIN.format(id="train_b", seed=1)  # import and render as test_resume's
POINTS = ["commit:train/epoch-000", "uncommitted:train/epoch-001", "step:4", "commit:train/epoch-002",
          "wrote:last.pt", "wrote:best.pt", "finalized:train"]


def _run(root: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {"SKEL_CRASH_AT": crash_at} if crash_at else None
    return skel("run", root / "recipe.toml", "-w", root / "w", "-j", "0", check=crash_at is None, env_extra=env)


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("side")
    dump_pickle(generate(3, seed=0), root / "synth.pkl")
    (root / "recipe.toml").write_text(RECIPE.replace("{pkl}", str(root / "synth.pkl")))
    root.joinpath("stderr.txt").write_text(_run(root).stderr)
    return root


def _copy_upto_render(whole: Path, root: Path) -> None:
    shutil.copy(whole / "recipe.toml", root / "recipe.toml")
    for stage in ("import", "render"):
        shutil.copytree(whole / "w" / stage, root / "w" / stage)


def test_core_shares_split_the_cores() -> None:
    cores = os.sched_getaffinity(0)
    for n in range(1, len(cores) + 1):
        shares = core_shares(n)
        assert len(shares) == n and all(shares) and set().union(*shares) == cores
        assert sum(map(len, shares)) == len(cores)


@pytest.mark.slow
def test_two_trainings_run_side_by_side(whole: Path) -> None:
    text = " ".join(whole.joinpath("stderr.txt").read_text().split())
    cores = len(os.sched_getaffinity(0))
    if cores > 1:
        assert "train_a (train) + train_b (train), side by side on 2 shares of the cores" in text
    # each child's own output reaches the user, and says whose it is
    whose = sorted(re.findall(r"(train_[ab]: )?plan: \d+ training clips", text))
    assert whose == (["train_a: ", "train_b: "] if cores > 1 else ["", ""]), text
    assert "DataLoader will create" not in text  # no more loader processes (default 2) than the child's cores
    assert len([m for m in (whole / "w" / "train").glob(f"*/{MANIFEST}")
                if json.loads(m.read_text())["state"] == "complete"]) == 2


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core runs the trainings one after another")
@pytest.mark.parametrize("point", POINTS)
def test_side_by_side_killed_at_every_boundary_one_rerun_gives_the_same_bytes(whole: Path, tmp_path: Path,
                                                                              point: str) -> None:
    """Both trainings die at the same boundary (both are train stages); ``skel run`` fails with one line
    naming them, and one rerun resumes both."""
    _copy_upto_render(whole, tmp_path)
    killed = _run(tmp_path, crash_at=point)
    assert killed.returncode == 1, killed.stderr[-2000:]
    assert "train_a (exit -9), train_b (exit -9) failed" in killed.stderr
    _run(tmp_path)
    got, want = output_files(tmp_path), output_files(whole)
    assert sorted(got) == sorted(want)
    assert [p for p in want if got[p] != want[p]] == []


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core runs the trainings one after another")
def test_ctrl_c_side_by_side_is_one_line_and_one_rerun_gives_the_same_bytes(whole: Path, tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches ``skel run`` and both training processes: one ``interrupted`` line, not a
    KeyboardInterrupt traceback per training."""
    _copy_upto_render(whole, tmp_path)
    args = [*SKEL, "run", tmp_path / "recipe.toml", "-w", tmp_path / "w", "-j", "0"]
    run = as_terminal_job(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    err = ctrl_c_when(run, lambda: len(list((tmp_path / "w" / "train").glob("*/_shards/epoch-000.json"))) == 2)
    assert run.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.count("interrupted: the same command resumes") == 1, err[-3000:]
    _run(tmp_path)
    got, want = output_files(tmp_path), output_files(whole)
    assert [p for p in want if got.get(p) != want[p]] == []


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core runs the trainings one after another")
def test_ctrl_c_twice_side_by_side_is_still_one_line(whole: Path, tmp_path: Path) -> None:
    """A second Ctrl-C while ``skel run`` waits for its trainings on its way out printed multiprocessing's
    KeyboardInterrupt traceback after the ``interrupted`` line; it now ends the process at once, as kill -9 would."""
    _copy_upto_render(whole, tmp_path)
    (tmp_path / "recipe.toml").write_text((whole / "recipe.toml").read_text().replace("epochs = 3", "epochs = 30"))
    args = [*SKEL, "run", tmp_path / "recipe.toml", "-w", tmp_path / "w", "-j", "0"]
    run = as_terminal_job(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    err = ctrl_c_when(run, lambda: len(list((tmp_path / "w" / "train").glob("*/_shards/epoch-000.json"))) == 2,
                      again=0.3)
    assert run.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.count("interrupted: the same command resumes") == 1, err[-3000:]


def _live_tree(mark: str) -> list[int]:
    """Live (not zombie) processes whose environment carries ``SKEL_TEST_TREE=mark``: a run and every process
    under it, loader workers included."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            marked = f"SKEL_TEST_TREE={mark}".encode() in environ.read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if marked and running(int(environ.parent.name)):
            pids.append(int(environ.parent.name))
    return pids


TRAINER = """
import os, sys, time
from torch.utils.data import Dataset
from stages.train.fit import loader

class Stuck(Dataset):  # a worker busy in an item, where torch's own watchdog never looks
    def __len__(self):
        return 1
    def __getitem__(self, i):
        open(sys.argv[1], "w").write(str(os.getpid()))
        time.sleep(600)

next(iter(loader(Stuck(), workers=1, batch_size=None)))
"""


def test_a_loader_worker_dies_with_its_killed_trainer(tmp_path: Path) -> None:
    """The training's DataLoader workers get SIGKILL when their trainer dies, even in the middle of an item."""
    pid_file = tmp_path / "worker.pid"
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, str(pid_file)], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    for _ in range(1200):
        if pid_file.exists() and pid_file.read_text():
            break
        assert trainer.poll() is None, "the trainer ended before its worker took an item"
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    trainer.kill()
    trainer.wait()
    for _ in range(600):
        if not running(worker):
            break
        time.sleep(0.1)
    assert not running(worker), f"loader worker {worker} outlived its trainer"


class _Marked(Dataset):
    mark = "as imported"

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> str:
        return type(self).mark


def _what_a_worker_sees(queue: multiprocessing.Queue) -> None:
    """In a spawned process, as a side-by-side training under `skel run` is: a loader worker's view of a class
    attribute set after import (a forked worker shares it, a spawned one imports the class anew)."""
    from stages.train.fit import loader

    _Marked.mark = "set in the trainer"
    queue.put(next(iter(loader(_Marked(), workers=1, batch_size=None))))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked loader workers are for Linux")
def test_a_spawned_trainers_loader_workers_are_forked() -> None:
    """Spawned, a process's default start method is spawn, and a spawned loader worker imports torch anew every
    epoch: the training loader forks its workers all the same."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    trainer = ctx.Process(target=_what_a_worker_sees, args=(queue,))
    trainer.start()
    try:
        assert queue.get(timeout=300) == "set in the trainer"
    finally:
        trainer.join()


@pytest.mark.slow
def test_kill_9_of_skel_run_takes_its_side_by_side_trainings_with_it(whole: Path, tmp_path: Path) -> None:
    """kill -9 of `skel run` mid-epoch: the trainings and their loader workers go with it, nothing is marked
    complete, and the rerun's outputs equal an uninterrupted run's."""
    _copy_upto_render(whole, tmp_path)
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO), "SKEL_TEST_TREE": str(tmp_path)}
    cmd = [*SKEL, "run", tmp_path / "recipe.toml", "-w", tmp_path / "w", "-j", "0", "--side-by-side", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    shards = tmp_path / "w" / "train"
    while not list(shards.glob("*/_shards/epoch-000.json")):  # the first committed epoch of either training
        assert proc.poll() is None, "the run ended before its first epoch"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    outs = [p for p in shards.iterdir() if p.is_dir()]
    for _ in range(600):  # the children go with their parent (PR_SET_PDEATHSIG): their lock files name dead pids
        if not any(alive(out) for out in outs):
            break
        time.sleep(0.1)
    assert not any(alive(out) for out in outs)
    for _ in range(600):  # a loader worker's own watchdog would leave it blocked for good
        if not _live_tree(str(tmp_path)):
            break
        time.sleep(0.1)
    assert _live_tree(str(tmp_path)) == []
    assert not any(json.loads((out / MANIFEST).read_text()).get("state") == "complete"
                   for out in outs if (out / MANIFEST).exists())
    _run(tmp_path)
    got, want = output_files(tmp_path), output_files(whole)
    assert sorted(got) == sorted(want) and [p for p in want if got[p] != want[p]] == []


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to share")
def test_a_training_resumed_alone_keeps_its_side_by_side_threads(tmp_path: Path) -> None:
    """Side by side, a 1-epoch and a 3-epoch training start on one core each; killed after its second epoch, the
    long one resumes alone (all cores free) yet with the thread count it started with, so its bytes equal an
    uninterrupted run's (float sums depend on the thread count)."""
    dump_pickle(generate(3, seed=0), tmp_path / "synth.pkl")
    recipe = RECIPE.replace("{pkl}", str(tmp_path / "synth.pkl")).replace("epochs = 3", "epochs = 1", 1)
    for name in ("whole", "run"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "recipe.toml").write_text(recipe)
    _run(tmp_path / "whole")
    _copy_upto_render(tmp_path / "whole", tmp_path / "run")
    killed = _run(tmp_path / "run", crash_at="commit:train/epoch-001")
    assert "train_b (exit -9) failed" in killed.stderr and "train_a (exit" not in killed.stderr
    rerun = _run(tmp_path / "run")
    assert "side by side" not in " ".join(rerun.stderr.split())  # train_b alone this time
    got, want = output_files(tmp_path / "run"), output_files(tmp_path / "whole")
    assert sorted(got) == sorted(want) and [p for p in want if got[p] != want[p]] == []


def test_a_failed_side_by_side_step_is_one_line_of_text(whole: Path, tmp_path: Path) -> None:
    """A step's error is printed by its own process, as text: a message holding ``[/b]`` (here the workdir's path,
    ``w[/b]``, in each training's error about the damaged volumes both read) used to raise rich's MarkupError there,
    a traceback instead of the line."""
    w = tmp_path / "w[" / "b]"
    for stage in ("import", "render"):
        shutil.copytree(whole / "w" / stage, w / stage)
    [chunk] = [f for f in (w / "render").rglob("volumes.zarr/00000/c.*") if f.is_file()]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same size: the run's quick check passes it, a training's full read does not
    chunk.write_bytes(bytes(data))
    proc = skel("run", whole / "recipe.toml", "-w", w, "-j", "0", check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "MarkupError" not in proc.stderr
    for step in ("train_a", "train_b"):
        lines = [line for line in proc.stderr.splitlines() if line.startswith(f"error: {step}: ")]
        assert len(lines) == 1 and f"{w}/render" in lines[0] and "is damaged" in lines[0], proc.stderr
