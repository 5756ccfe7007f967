"""A Dask scheduler of the user's own (``--scheduler``): the same output as the local cluster's; a scheduler
without workers, or left without them, is one line, not a run that waits for ever, and an unreachable one is
refused before the output is touched."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from distributed import Client

from apps.synth import generate
from pipeline.cluster import Cluster, SchedulerLost
from pipeline.errors import SkelError
from pipeline.runner import run_stage
from pipeline.workdir import SHARDS, load_output
from stages.import_pkl import ImportParams, ImportStage
from stores.safepickle import dump_pickle
from tests.support import REPO, output_files

DASK = Path(sys.executable).parent / "dask"
HIDE_SKEL = """
import sys

class Hide:  # a worker whose environment lacks skel
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"apps", "cli", "inference", "models", "pipeline", "stages", "stores"}:
            raise ImportError(f"no module named {name!r} here")

sys.meta_path.insert(0, Hide())
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _scheduler(cwd: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A `dask scheduler` process, once it listens: its address and the process."""
    address = f"tcp://127.0.0.1:{(port := _port())}"
    proc = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield address, proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[str]:
    with _scheduler(tmp_path) as (address, _):
        yield address


def _worker(address: str, cwd: Path, pythonpath: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([DASK, "worker", address, "--nthreads", "1", "--no-dashboard", "--no-nanny", *extra],
                            cwd=cwd, env={**os.environ, "PYTHONPATH": str(pythonpath), **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def pkl(tmp_path: Path) -> Path:
    dump_pickle(generate(1, seed=0), tmp_path / "synth.pkl")
    return tmp_path / "synth.pkl"


@pytest.mark.slow
def test_a_scheduler_with_workers_gives_the_local_output(scheduler: str, pkl: Path, tmp_path: Path) -> None:
    (elsewhere := tmp_path / "worker").mkdir()  # a worker in another directory: paths must not be relative
    worker = _worker(scheduler, elsewhere, REPO)
    try:
        params = ImportParams(source=str(pkl), part_size=4)
        with Cluster(workers=0, scheduler=scheduler) as cluster:
            run_stage(ImportStage(), tmp_path / "dask" / "w", params, cluster, quiet=True)
    finally:
        worker.kill()
    run_stage(ImportStage(), tmp_path / "local" / "w", params, Cluster(workers=0), quiet=True)
    assert output_files(tmp_path / "dask") == output_files(tmp_path / "local") != {}


@pytest.mark.slow
def test_a_worker_running_other_skel_code_commits_nothing(scheduler: str, pkl: Path, tmp_path: Path) -> None:
    """A worker imports the skel of its own environment (another version, a tree being edited): its shards were
    committed under the command's fingerprint, the output complete and verified with another code's bytes."""
    other = tmp_path / "other"
    for package in ("apps", "cli", "inference", "models", "pipeline", "stages", "stores"):
        shutil.copytree(REPO / package, other / package, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    with open(other / "stages" / "import_pkl.py", "a") as f:
        f.write("# another version\n")
    worker = _worker(scheduler, tmp_path, other)
    try:
        with pytest.raises(SkelError, match=r"shard\(s\) failed; 00000: .*: this worker runs other skel code than "
                                            r"the command \(sources \w{12}, the command's \w{12}\): give every "
                                            "worker the same skel"):
            with Cluster(workers=0, scheduler=scheduler) as cluster:
                run_stage(ImportStage(), tmp_path / "w", ImportParams(source=str(pkl), part_size=4), cluster,
                          quiet=True)
    finally:
        worker.kill()
    (out,) = (tmp_path / "w" / "import").iterdir()
    assert load_output(out).state == "failed" and not list((out / SHARDS).glob("*.json"))


@pytest.mark.slow
def test_a_scheduler_without_workers_is_one_line_before_any_output(scheduler: str, pkl: Path,
                                                                   tmp_path: Path) -> None:
    with pytest.raises(SkelError, match=rf"the scheduler {scheduler} has no worker \(waited 2 s\): start one"):
        with Cluster(workers=0, scheduler=scheduler, patience=2) as cluster:
            run_stage(ImportStage(), tmp_path / "w", ImportParams(source=str(pkl)), cluster, quiet=True)
    assert not (tmp_path / "w" / "import").exists()


@pytest.mark.slow
def test_a_scheduler_left_without_workers_is_one_line_not_a_wait_for_ever(scheduler: str, pkl: Path,
                                                                          tmp_path: Path) -> None:
    """Its only worker cannot import skel: it ends on its first task, and the shards would wait for ever."""
    (hidden := tmp_path / "hide").mkdir()
    (hidden / "sitecustomize.py").write_text(HIDE_SKEL)
    worker = _worker(scheduler, tmp_path, hidden)
    try:
        with Client(scheduler) as client:  # it joins before the run's 2 s at connect run out, on a busy machine too
            client.wait_for_workers(1, timeout=60)
        with pytest.raises(SkelError, match=rf"the scheduler {scheduler} has had no worker for 2 s while \d+ "
                                            "shard\\(s\\) wait: its workers ended \\(killed, out of memory, or "
                                            "unable to import skel"):
            with Cluster(workers=0, scheduler=scheduler, patience=2) as cluster:
                run_stage(ImportStage(), tmp_path / "w", ImportParams(source=str(pkl), part_size=4), cluster,
                          quiet=True)
    finally:
        worker.kill()
    (out,) = (tmp_path / "w" / "import").iterdir()
    assert load_output(out).state == "failed"  # the run ended, with shards undone: not 'interrupted'


def test_an_unreachable_scheduler_leaves_no_output(pkl: Path, tmp_path: Path) -> None:
    with pytest.raises(SkelError, match="cannot reach the scheduler tcp://.*Timed out trying to connect"):
        with Cluster(workers=0, scheduler=f"tcp://127.0.0.1:{_port()}") as cluster:
            import dask

            with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
                run_stage(ImportStage(), tmp_path / "w", ImportParams(source=str(pkl)), cluster, quiet=True)
    assert not (tmp_path / "w" / "import").exists()


def _lose_after_first_commit(workdir: Path, worker: subprocess.Popen, scheduler: subprocess.Popen) -> None:
    """Stop the worker once a shard is committed, then kill the scheduler: the run is cut off with shards left."""
    deadline = time.monotonic() + 120
    while not list(workdir.glob(f"import/*/{SHARDS}/*.json")) and time.monotonic() < deadline:
        time.sleep(0.005)
    worker.send_signal(signal.SIGSTOP)
    scheduler.kill()


@pytest.mark.slow
def test_a_lost_scheduler_interrupts_the_run_and_the_same_command_resumes(scheduler: str, tmp_path: Path) -> None:
    """Each shard the lost scheduler left was recorded as a failed shard, and the output marked failed: it was
    interrupted, not failed, and a run on a scheduler that is back resumes from the commits."""
    dump_pickle(generate(4, seed=0), pkl := tmp_path / "many.pkl")
    params, w = ImportParams(source=str(pkl), part_size=1), tmp_path / "w"  # 24 shards
    with _scheduler(tmp_path) as (doomed, proc):
        worker = _worker(doomed, tmp_path, REPO)
        threading.Thread(target=_lose_after_first_commit, args=(w, worker, proc), daemon=True).start()
        try:
            with pytest.raises(SchedulerLost, match=rf"^the scheduler {doomed} was lost with \d+ shard\(s\) "
                                                    "outstanding; the same command resumes from what was committed$"):
                with Cluster(workers=0, scheduler=doomed) as cluster:
                    run_stage(ImportStage(), w, params, cluster, quiet=True)
        finally:
            worker.kill()
            worker.wait()
    (out,) = (w / "import").iterdir()
    assert load_output(out).state == "interrupted" and "failures" not in load_output(out).manifest
    worker = _worker(scheduler, tmp_path, REPO)
    try:
        with Cluster(workers=0, scheduler=scheduler) as cluster:
            run_stage(ImportStage(), w, params, cluster, quiet=True)
    finally:
        worker.kill()
    manifest = load_output(out).manifest
    assert manifest["state"] == "complete" and manifest["shards"]["resumed"] >= 1


def _when_planned(*workdirs: Path) -> None:
    """Wait until each workdir's import output has its plan (its run has taken the lock and goes on to submit)."""
    for _ in range(600):
        if all(list((w / "import").glob("*/plan.json")) for w in workdirs):
            time.sleep(2)  # the submissions follow the plan
            return
        time.sleep(0.05)
    raise AssertionError("no plan.json")


@pytest.mark.slow
def test_two_workdirs_of_one_fingerprint_on_one_scheduler_each_get_their_files(scheduler: str, pkl: Path,
                                                                               tmp_path: Path) -> None:
    """Two users import the same pickle into their own workdirs through one scheduler, at the same time: the shard
    keys were equal, so the scheduler gave the second run the first one's tasks, whose files went to the first
    workdir, and the second output was complete without them."""
    worker = _worker(scheduler, tmp_path, REPO)
    params = ImportParams(source=str(pkl), part_size=2)
    workdirs = [tmp_path / "a" / "w", tmp_path / "b" / "w"]

    def run(w: Path) -> None:
        with Cluster(workers=0, scheduler=scheduler) as cluster:
            run_stage(ImportStage(), w, params, cluster, quiet=True)

    try:
        with Client(scheduler) as client:
            client.wait_for_workers(1, timeout=60)
        os.kill(worker.pid, signal.SIGSTOP)  # both runs submit before either's shards run
        threads = [threading.Thread(target=run, args=(w,)) for w in workdirs]
        for t in threads:
            t.start()
        _when_planned(*workdirs)
        os.kill(worker.pid, signal.SIGCONT)
        for t in threads:
            t.join(timeout=120)
    finally:
        worker.kill()
    run_stage(ImportStage(), tmp_path / "local" / "w", params, Cluster(workers=0), quiet=True)
    want = output_files(tmp_path / "local")
    assert output_files(tmp_path / "a") == want and output_files(tmp_path / "b") == want and want


@pytest.mark.slow
def test_a_shard_left_running_on_a_worker_after_ctrl_c_commits_nothing(scheduler: str, pkl: Path,
                                                                        tmp_path: Path) -> None:
    """Ctrl-C ends the run and lets go of the output, but a shard already on a worker of the user's scheduler runs
    on: it committed its record into the output afterwards, beside (or under) a later run's. Now it finds that its
    run no longer holds the lock and commits nothing; the same command then gives the local output."""
    worker = _worker(scheduler, tmp_path, REPO)
    w = tmp_path / "run" / "w"
    cmd = [sys.executable, "-m", "cli", "import", pkl, "-w", w, "--scheduler", scheduler, "-q"]
    try:
        with Client(scheduler) as client:
            client.wait_for_workers(1, timeout=60)
        os.kill(worker.pid, signal.SIGSTOP)  # the shards wait on it
        run = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _when_planned(w)
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=60) == 130, run.stderr.read()
        os.kill(worker.pid, signal.SIGCONT)  # the worker runs what it was given before the run ended
        time.sleep(5)
        assert not list(w.glob(f"import/*/{SHARDS}/*.json"))
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    finally:
        worker.kill()
    run_stage(ImportStage(), tmp_path / "local" / "w", ImportParams(source=str(pkl)), Cluster(workers=0), quiet=True)
    assert output_files(tmp_path / "run") == output_files(tmp_path / "local") != {}


def test_a_listener_that_is_not_a_scheduler_is_one_line(tmp_path: Path) -> None:
    """A --scheduler port where another service listens (it accepts, and never answers Dask's handshake): Dask's
    Client waited for ever; now one line after twice the connect timeout, before any output."""
    import dask

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
            with pytest.raises(SkelError, match=rf"^the scheduler {address} did not answer within 2 s: is it a Dask"):
                Cluster(workers=0, scheduler=address).client  # noqa: B018


def test_a_listener_that_answers_in_another_protocol_is_one_line(tmp_path: Path) -> None:
    """A --scheduler port of a web server or proxy (it answers Dask's handshake with an HTTP 400): its bytes were
    read as a frame's length, and the line said the machine was out of memory (3 EiB to allocate)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def answer() -> None:
            with listener.accept()[0] as conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4)

        threading.Thread(target=answer, daemon=True).start()
        address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(SkelError, match=rf"^{address} is no Dask scheduler: it answers in another protocol \(a "
                                            r"web server, a proxy\?\); is it a Dask scheduler's address"):
            Cluster(workers=0, scheduler=address).client  # noqa: B018


@pytest.mark.slow
def test_a_paused_worker_holding_the_shards_is_said(scheduler: str, pkl: Path, tmp_path: Path, caplog) -> None:
    """A worker stopped (SIGSTOP, swapping) with the run's shards: the run waited without a word; after five times
    its patience without a finished shard it says so, and goes on when the worker does."""
    worker = _worker(scheduler, tmp_path, REPO)
    w = tmp_path / "run" / "w"
    try:
        with Client(scheduler) as client:
            client.wait_for_workers(1, timeout=60)
        os.kill(worker.pid, signal.SIGSTOP)
        with caplog.at_level("WARNING", logger="skel"):
            run = threading.Thread(target=lambda: run_stage(
                ImportStage(), w, ImportParams(source=str(pkl)), Cluster(workers=0, scheduler=scheduler, patience=1),
                quiet=True))
            run.start()
            for _ in range(600):
                if "no shard has finished for" in caplog.text:
                    break
                time.sleep(0.1)
            os.kill(worker.pid, signal.SIGCONT)
            run.join(timeout=120)
    finally:
        worker.kill()
    assert "no shard has finished for" in caplog.text and "a paused or overloaded worker may hold them" in caplog.text
    (out,) = (w / "import").iterdir()
    assert load_output(out).state == "complete"


@pytest.mark.slow
def test_workers_that_stay_paused_for_memory_end_the_run_in_one_line(scheduler: str, pkl: Path,
                                                                      tmp_path: Path) -> None:
    """Dask pauses a worker over its memory's pause share, and one idle at it never runs a task again: the run
    said it waited and waited for ever. Every worker paused, it ends, failed for the machine (the same command, or
    a repair, resumes)."""
    # paused at 1% of its memory limit, as a worker idle over its pause share is, and never ended for it
    memory = {f"DASK_DISTRIBUTED__WORKER__MEMORY__{k}": v for k, v in (("PAUSE", "0.01"), ("TERMINATE", "False"),
                                                                        ("TARGET", "False"), ("SPILL", "False"))}
    worker = _worker(scheduler, tmp_path, REPO, "--memory-limit", "4GB", env=memory)
    w = tmp_path / "run" / "w"
    try:
        with Client(scheduler) as client:
            client.wait_for_workers(1, timeout=60)
            with pytest.raises(SkelError, match=r"every Dask worker \(1\) has stayed paused for want of memory"):
                run_stage(ImportStage(), w, ImportParams(source=str(pkl)),
                          Cluster(workers=0, scheduler=scheduler, patience=1), quiet=True)
    finally:
        worker.kill()
    (out,) = (w / "import").iterdir()
    assert load_output(out).failed_for_machine
