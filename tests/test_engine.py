"""The stage engine on real stores: cache hits, fingerprints, resume after kill -9, Dask clusters."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.cluster import Cluster
from pipeline.runner import make_plan, run_stage
from pipeline.workdir import SHARDS, outputs
from stages.import_pkl import ImportParams, ImportStage
from stages.render.stage import RenderParams, RenderStage
from stores.volumes import VolumeStore
from tests.support import REPO, SKEL, as_terminal_job, ctrl_c_when, skel


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_cache_hit_and_sigma_change_rerun_only_render(synth_pkl: Path, tmp_path: Path) -> None:
    w = tmp_path / "w"
    with Cluster(workers=2) as cluster:  # real LocalCluster with worker processes
        imp = run_stage(ImportStage(), w, ImportParams(source=str(synth_pkl)), cluster, quiet=True)
        ren = run_stage(RenderStage(), w, RenderParams(samples_per_shard=8), cluster, quiet=True)
    first = {p: p.stat().st_mtime_ns for p in (imp / "manifest.json", ren / "manifest.json")}

    # same command again: both stages are hits, nothing rewritten
    proc = skel("render", "-w", w, "-j", "0")
    assert "cache hit" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in first} == first

    # a new sigma: new render output, the import is reused (same fingerprint, untouched)
    plan = make_plan(RenderStage(), w, RenderParams(sigma=1.0))
    assert not plan.cached and plan.out != ren and plan.inputs["triplets"].path == imp
    skel("render", "-w", w, "-j", "0", "--sigma", "1.0")
    assert (imp / "manifest.json").stat().st_mtime_ns == first[imp / "manifest.json"]
    renders = [o for o in outputs(w) if o.stage == "render"]
    assert sorted(o.manifest["params"]["sigma"] for o in renders) == [0.6, 1.0]
    assert len([o for o in outputs(w) if o.stage == "import"]) == 1

    # the import's fingerprint follows the pickle's content, not its path
    copy = tmp_path / "copy.pkl"
    copy.write_bytes(synth_pkl.read_bytes())
    assert make_plan(ImportStage(), w, ImportParams(source=str(copy))).cached


def _crop_and_resize(kp: np.ndarray, img_shape: tuple[int, int], size: int) -> np.ndarray:
    """The subject crop and resize as docs/architecture.md (PoseCompact, Resize) states them, in float32."""
    kp = np.nan_to_num(kp.astype(np.float32))
    x, y = kp[..., 0], kp[..., 1]
    xs, ys = x[x != 0], y[y != 0]
    h, w = img_shape
    if xs.size and ys.size and np.ptp(xs) >= 10 and np.ptp(ys) >= 10:
        half = max(np.ptp(xs) / 2 * 1.25, np.ptp(ys) / 2 * 1.25)  # grown 25 %, then square
        cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
        x0, x1, y0, y1 = int(cx - half), int(cx + half), int(cy - half), int(cy + half)
        x[x != 0] -= x0
        y[y != 0] -= y0
        h, w = y1 - y0, x1 - x0
    return kp * np.array([size / w, size / h], np.float32)


def test_render_output_matches_an_independent_reference(synth_pkl: Path, tmp_path: Path) -> None:
    """The render stage's stored volumes equal crop + resize + frame cap + per-pixel Gaussians computed here
    from the raw pickle (no skel code on the expected side but the spec-derived reference of tests/support.py)."""
    from tests.support import reference_heatmaps

    anns = {a["frame_dir"]: a for a in pickle.loads(synth_pkl.read_bytes())["annotations"]}
    w = tmp_path / "w"
    run_stage(ImportStage(), w, ImportParams(source=str(synth_pkl)), Cluster(workers=0), quiet=True)
    for kind in ("joint", "limb"):
        p = RenderParams(kind=kind, dtype="float32", max_frames=40)
        store = VolumeStore(run_stage(RenderStage(), w, p, Cluster(workers=0), quiet=True))
        assert store.index.num_rows == len(anns) and store.attrs["kind"] == kind
        for row in store.index.to_pylist()[:3]:
            ann = anns[row["sample_id"]]
            t = ann["total_frames"]
            frames = np.arange(t) if t <= 40 else np.arange(40) * t // 40  # all frames, else 40 spread evenly
            kp = _crop_and_resize(ann["keypoint"], ann["img_shape"], 64)
            got = store.read(row["sample_id"])
            assert got.shape == (17, len(frames), 64, 64) and row["n_frames"] == len(frames)
            first = frames[:4]  # the reference is per pixel in Python: a few frames suffice
            want = reference_heatmaps(kp[:, first], ann["keypoint_score"][:, first], (64, 64), limbs=p.limbs)
            np.testing.assert_allclose(got[:, :4], want, rtol=0, atol=1e-5)
            assert got.max() > 0.5  # the subject is inside the crop


def _render_subprocess(workdir: Path, workers: int) -> subprocess.Popen:
    code = (
        "from pathlib import Path; from pipeline.cluster import Cluster; from pipeline.runner import run_stage;"
        "from stages.render.stage import RenderParams, RenderStage;"
        f"c = Cluster(workers={workers}); c.__enter__();"
        f"run_stage(RenderStage(), Path({str(workdir)!r}), RenderParams(kind='limb', samples_per_shard=1), c,"
        " quiet=True)"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])  # 2: a LocalCluster
def test_kill_9_then_resume_is_byte_identical(synth_pkl: Path, tmp_path: Path, workers: int) -> None:
    ref, w = tmp_path / "ref", tmp_path / "w"
    for d in (ref, w):
        run_stage(ImportStage(), d, ImportParams(source=str(synth_pkl)), Cluster(workers=0), quiet=True)
    ref_out = run_stage(RenderStage(), ref, RenderParams(kind="limb", samples_per_shard=1), Cluster(workers=0),
                        quiet=True)

    proc = _render_subprocess(w, workers)
    out = make_plan(RenderStage(), w, RenderParams(kind="limb", samples_per_shard=1)).out
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / SHARDS).glob("*.json"))) < 4:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-run
    proc.wait()
    committed = {p.name: p.stat().st_mtime_ns for p in (out / SHARDS).glob("*.json")}
    assert 4 <= len(committed) < 36, "kill came too late to test a resume"
    assert _manifest(out)["state"] == "running"

    run_stage(RenderStage(), w, RenderParams(kind="limb", samples_per_shard=1), Cluster(workers=0), quiet=True)
    m = _manifest(out)
    assert m["state"] == "complete" and m["shards"]["resumed"] >= len(committed)
    for name, mtime in committed.items():  # committed shards were not redone
        assert (out / SHARDS / name).stat().st_mtime_ns == mtime
    assert _tree_bytes(out / "volumes.zarr") == _tree_bytes(ref_out / "volumes.zarr")
    assert VolumeStore(out).index.equals(VolumeStore(ref_out).index)
    assert not list(out.rglob(".*.tmp-*"))


@pytest.mark.slow
def test_render_on_an_existing_dask_cluster(synth_pkl: Path, tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    scheduler = subprocess.Popen(
        [bindir / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", sched_file], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker = None
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        (tmp_path / "elsewhere").mkdir()  # the workers' current directory is not skel's
        worker = subprocess.Popen(
            [bindir / "dask", "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
            env=env, cwd=tmp_path / "elsewhere", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        w = "w"  # relative: the shards must still write under skel's workdir, not the workers' directory
        skel("import", synth_pkl, "-w", w, "--scheduler", address, cwd=tmp_path)
        skel("render", "-w", w, "--scheduler", address, "--limb", cwd=tmp_path)
        status = json.loads(skel("status", "-w", w, "--json", cwd=tmp_path).stdout)
        assert [(s["stage"], s["state"]) for s in status] == [("import", "complete"), ("render", "complete")]
        assert status[1]["shards"]["total"] >= 1
        assert VolumeStore(tmp_path / status[1]["path"]).index.num_rows == 36
        skel("verify", "-w", w, cwd=tmp_path)
        assert not list((tmp_path / "elsewhere").iterdir())
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


@pytest.mark.slow
def test_status_table(synth_pkl: Path, tmp_path: Path) -> None:
    w = tmp_path / "w"
    skel("import", synth_pkl, "-w", w, "-j", "0")
    proc = skel("status", "-w", w)
    (out,) = (w / "import").iterdir()
    (row,) = [ln.split() for ln in proc.stdout.splitlines() if ln.split()[:1] == ["import"] and ":" not in ln]
    assert row[:3] == ["import", out.name[:8], "complete"]  # the output's table row: stage, fingerprint, state


def test_off_a_terminal_long_work_says_how_far_it_is(synth_pkl: Path, tmp_path: Path, monkeypatch,
                                                     caplog) -> None:
    """Off a terminal (a log file, a batch job) a stage's bar draws nothing until it ends: an 80 s render left a log
    without a line until then. A line comes every HEARTBEAT_S seconds (here: every shard)."""
    from pipeline import progress

    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.0)
    run_stage(ImportStage(), tmp_path / "w", ImportParams(source=str(synth_pkl)), Cluster(workers=0), quiet=True)
    with caplog.at_level("INFO", logger="skel"):
        run_stage(RenderStage(), tmp_path / "w", RenderParams(samples_per_shard=12), Cluster(workers=0))
    assert [m for m in caplog.messages if m.startswith("render: ")] == [
        f"render: {i} of 3 shards done" for i in (1, 2, 3)], caplog.messages


def _allocator_env() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}


def test_a_local_cluster_leaves_this_process_environment_alone() -> None:
    """Dask's nanny writes its workers' variables into the process that starts it; processes started after a
    stage ran on the cluster (side-by-side trainings) inherited MALLOC_TRIM_THRESHOLD_, which pins glibc's mmap
    threshold and made their torch steps ~1.8x slower. The environment is restored, and the workers run
    without it."""
    before = dict(os.environ)
    with Cluster(workers=2) as cluster:
        workers = cluster.client.run(_allocator_env)
        assert dict(os.environ) == before
    assert len(workers) == 2 and all(env["MALLOC_TRIM_THRESHOLD_"] is None for env in workers.values())
    assert all(env["OMP_NUM_THREADS"] == "1" for env in workers.values())  # Dask's other worker settings stay


def _command(pid: int) -> bytes:
    """A process's command line (empty: gone, or a zombie)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _children(pid: int) -> list[tuple[int, bytes]]:
    """The pids and command lines of ``pid``'s child processes."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append((int(stat.parent.name), (stat.parent / "cmdline").read_bytes()))
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return found


@pytest.mark.slow
def test_ctrl_c_while_the_workers_start_stops_the_run(synth_pkl: Path, tmp_path: Path) -> None:
    """SIGINT is ignored while Dask's workers start, so that they inherit it ignored and leave a Ctrl-C to skel: one
    pressed then was dropped, and the run (a recipe: the rest of it) went on to the end, exit 0. It is answered once
    they have started: exit 130, nothing committed, no worker's traceback."""
    w = tmp_path / "w"
    skel("import", synth_pkl, "-w", w, "-j", "0", "-q")
    run = as_terminal_job([*SKEL, "render", "-w", str(w), "-j", "2", "--size", "32"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    err = ctrl_c_when(run, lambda: any(cmd.startswith(b"cat\0") for _, cmd in _children(run.pid)))
    assert run.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert not [o for o in outputs(w) if o.stage == "render" and o.complete]

    # kill -9 while they start: the witness (it reads a pipe of skel's) ends with skel, not a day later
    run = as_terminal_job([*SKEL, "render", "-w", str(w), "-j", "2", "--size", "32"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    for _ in range(1200):
        if witness := [pid for pid, cmd in _children(run.pid) if cmd.startswith(b"cat\0")]:
            break
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # skel and its workers, as a terminal's kill of the job
    run.wait()
    for _ in range(600):  # gone, or a zombie (no command line) until init reaps it
        if not _command(witness[0]):
            break
        time.sleep(0.1)
    assert not _command(witness[0])


@pytest.mark.slow
def test_dask_is_imported_by_work_on_a_cluster_only_and_stays_quiet(synth_pkl: Path, tmp_path: Path) -> None:
    """Importing Dask's ``distributed`` took 0.5 s of every command, though most (train, test, status, -j 0) run
    nothing on it; it is imported when a cluster starts. Its import sets its loggers' levels, so a cluster started
    after skel's logging is set must not bring Dask's INFO lines (the nanny's, the scheduler's) back."""
    w = tmp_path / "w"
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom cli import app\n"
            f"r = CliRunner().invoke(app, ['import', {str(synth_pkl)!r}, '-w', {str(w)!r}, '-j', '0', '-q'])\n"
            "assert r.exit_code == 0, r.output\nprint('distributed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    lines = skel("render", "-w", w, "-j", "2", "--size", "32", "-q").stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rendered 36 joint volumes"), lines[:20]


def test_a_shard_computed_again_by_dask_leaves_its_committed_files_alone(synth_pkl: Path, tmp_path: Path) -> None:
    """Dask computes a task again when the worker that held its result dies; the shard, committed already, was
    redone and replaced its files, and a second kill then left a complete output without one (an audit: 4 runs in
    6 on a cluster whose workers were killed again and again). Run again, a committed shard returns its record."""
    from pipeline.runner import _execute

    w = tmp_path / "w"
    run_stage(ImportStage(), w, ImportParams(source=str(synth_pkl)), Cluster(workers=0), quiet=True)
    plan = make_plan(RenderStage(), w, RenderParams(samples_per_shard=8))
    run_stage(RenderStage(), w, RenderParams(samples_per_shard=8), Cluster(workers=0), quiet=True)
    ctx = plan.context(w)
    shard = RenderStage().shards(ctx)[0]
    files = sorted(p for p in (plan.out / "volumes.zarr" / shard.id).rglob("*") if p.is_file())
    before = {p: p.stat().st_ino for p in files}
    record = json.loads((plan.out / SHARDS / f"{shard.id}.json").read_text())
    again = _execute(RenderStage, ctx, shard)  # as a Dask worker runs it
    assert {p: p.stat().st_ino for p in files} == before  # not rewritten
    assert again == {k: v for k, v in record.items() if k != "digest"}


def test_a_worker_that_cannot_see_the_output_says_so(synth_pkl: Path, tmp_path: Path) -> None:
    """A Dask worker of the user's scheduler without the workdir's filesystem: its shards failed as if their run had
    ended ('finished after its run ended'), or with a bare path. It names the worker and the folder it cannot see."""
    import socket

    from pipeline.errors import SkelError
    from pipeline.runner import _execute

    w = tmp_path / "w"
    run_stage(ImportStage(), w, ImportParams(source=str(synth_pkl)), Cluster(workers=0), quiet=True)
    plan = make_plan(RenderStage(), w, RenderParams(samples_per_shard=8))
    ctx = plan.context(w)  # planned, not started: the worker finds no output folder, as one on another machine would
    with pytest.raises(SkelError, match=rf"^{socket.gethostname()} \(pid {os.getpid()}\): this worker cannot see "
                                        rf"{plan.out}: is the workdir on a filesystem every worker shares\?$"):
        _execute(RenderStage, ctx, RenderStage().shards(ctx)[0])
