"""A Dask scheduler of the user's own (``--scheduler``): the same output as the local cluster's; a scheduler
without workers, or left without them, is one line, not a run that waits for ever, and an unreachable one is
refused before the output is touched."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.synth import generate
from pipeline.cluster import Cluster
from pipeline.errors import SkelError
from pipeline.runner import run_stage
from pipeline.workdir import load_output
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


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[str]:
    address = f"tcp://127.0.0.1:{(port := _port())}"
    proc = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield address
    finally:
        proc.kill()
        proc.wait()


def _worker(address: str, cwd: Path, pythonpath: Path) -> subprocess.Popen:
    return subprocess.Popen([DASK, "worker", address, "--nthreads", "1", "--no-dashboard"], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(pythonpath)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


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
            run_stage(ImportStage(), tmp_path / "dask", params, cluster, quiet=True)
    finally:
        worker.kill()
    run_stage(ImportStage(), tmp_path / "local", params, Cluster(workers=0), quiet=True)
    assert output_files(tmp_path / "dask") == output_files(tmp_path / "local")


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
        with pytest.raises(SkelError, match=rf"the scheduler {scheduler} has had no worker for 2 s while \d+ "
                                            "shard\\(s\\) wait; a worker that cannot import skel"):
            with Cluster(workers=0, scheduler=scheduler, patience=2) as cluster:
                run_stage(ImportStage(), tmp_path / "w", ImportParams(source=str(pkl), part_size=4), cluster,
                          quiet=True)
    finally:
        worker.kill()
    (out,) = (tmp_path / "w" / "import").iterdir()
    assert load_output(out).state == "failed"  # the run ended, with shards undone: not 'interrupted'


def test_an_unreachable_scheduler_leaves_no_output(pkl: Path, tmp_path: Path) -> None:
    with pytest.raises(SkelError, match="import: .*Timed out trying to connect"):
        with Cluster(workers=0, scheduler=f"tcp://127.0.0.1:{_port()}") as cluster:
            import dask

            with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
                run_stage(ImportStage(), tmp_path / "w", ImportParams(source=str(pkl)), cluster, quiet=True)
    assert not (tmp_path / "w" / "import").exists()
