"""Workdir integrity: damaged files found and repaired, one writer per output, failed stages never used as
inputs, numerical guards, one-line errors for bad environments and recipes, a readable status.

Render tests use only the CLI and the files under the output (whatever the volume format), through a
clean reference run that every damaged or contended run must equal byte for byte.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.atomic import write_bytes
from pipeline.cluster import Cluster
from pipeline.digests import file_digest
from pipeline.errors import SkelError
from pipeline.faults import VAR as CRASH
from pipeline.fingerprint import fingerprint
from pipeline.inputs import Upstream, find_output
from pipeline.integrity import data_files, digests
from pipeline.lock import alive, holder, output_lock
from pipeline.runner import _execute, make_plan, run_plan, run_stage
from pipeline.stage import Context, Shard, Stage
from pipeline.workdir import MANIFEST, SHARDS, load_output, write_manifest
from pipeline.workflow import load_recipe
from stages import get_stage
from stages.import_pkl import ImportParams, ImportStage
from stages.render.stage import RenderParams, RenderStage
from stages.test.params import TestParams
from stages.test.stage import TestStage
from stages.train.stage import TrainParams, TrainStage
from stores.safepickle import load_pickle
from stores.triplets import TripletStore
from tests.support import REPO, SKEL, error_line, remount, skel

TINY = ["--base-channels", "4", "--stage-blocks", "1,1,1", "--clip-len", "8", "--input-size", "32", "-b", "6",
        "--epochs", "1", "--val-split", "", "--loader-workers", "0", "--threads", "1", "-q"]


def _data(out: Path) -> dict[str, bytes]:
    """The output's data files (not the runner's manifest, plan, shard records, lock or usage marker)."""
    return {rel: (out / rel).read_bytes() for rel in data_files(out)}


def _changed(out: Path, clean: dict[str, bytes]) -> list[str]:
    """The data files of ``out`` that are not as in ``clean``: gone, not a file, or other bytes."""
    return [rel for rel in clean if not (out / rel).is_file() or (out / rel).read_bytes() != clean[rel]]


def _only(workdir: Path, stage: str) -> Path:
    (out,) = (workdir / stage).iterdir()
    return out


def _status(workdir: Path) -> dict[str, list[str]]:
    rows = json.loads(skel("status", "-w", workdir, "--json").stdout)
    states: dict[str, list[str]] = {}
    for r in rows:
        states.setdefault(r["stage"], []).append(r["state"])
    return states


def _one_line(proc: subprocess.CompletedProcess) -> str:
    """The error of a failed command, checked to be one line without a traceback; all of stderr, unwrapped."""
    error_line(proc)
    return proc.stderr.replace("\n", " ")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, synth_pkl: Path) -> Path:
    """A clean workdir: import + joint render of the synthetic set (the byte-exact reference)."""
    w = tmp_path_factory.mktemp("ref") / "w"
    skel("import", synth_pkl, "-w", w, "-j", "0", "-q")
    skel("render", "-w", w, "-j", "0", "-q")
    return w


def _copy(reference: Path, dst: Path, stages: tuple[str, ...] = ("import", "render")) -> Path:
    for stage in stages:
        shutil.copytree(reference / stage, dst / stage)
    return dst


# --- the damage matrix ---------------------------------------------------------------------------------------

def _chunk(out: Path) -> Path:
    """The largest data file of the volumes (a chunk or zarr shard file, whatever the layout)."""
    files = [p for p in (out / "volumes.zarr").rglob("*") if p.is_file() and p.name != "zarr.json"]
    return max(files, key=lambda p: (p.stat().st_size, str(p)))


def _array_meta(out: Path) -> Path:
    """zarr.json of the array holding that chunk."""
    return out / "volumes.zarr" / _chunk(out).relative_to(out / "volumes.zarr").parts[0] / "zarr.json"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    path.write_bytes(bytes(data))


DAMAGE = {
    "delete chunk": lambda out: _chunk(out).unlink(),
    "truncate chunk": lambda out: os.truncate(_chunk(out), _chunk(out).stat().st_size // 2),
    "flip 16 bytes of a chunk": lambda out: _flip(_chunk(out)),
    "delete array zarr.json": lambda out: _array_meta(out).unlink(),
    "delete group zarr.json": lambda out: (out / "volumes.zarr" / "zarr.json").unlink(),
    "delete index.parquet": lambda out: (out / "index.parquet").unlink(),
    "garble manifest": lambda out: (out / "manifest.json").write_bytes(b'{"stage": "ren\x01der", "sta'),
    "empty manifest": lambda out: (out / "manifest.json").write_bytes(b""),
    "delete manifest": lambda out: (out / "manifest.json").unlink(),
    "a manifest file entry without its size": lambda out: _drop_size(out / "manifest.json"),
    "edit a parameter in the manifest": lambda out: _edit(out / "manifest.json", b'"crop_padding": 0.25',
                                                          b'"crop_padding": 0.27'),
    "a directory where the manifest was": lambda out: _to_dir(out / "manifest.json"),
    "a directory where a chunk was": lambda out: _to_dir(_chunk(out)),
}


def _edit(path: Path, old: bytes, new: bytes) -> None:
    """Replace the first ``old`` (a manifest holds its parameters twice: its own and its plan's)."""
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


def _to_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _drop_size(manifest: Path) -> None:
    doc = json.loads(manifest.read_text())
    del next(iter(doc["files"].values()))["size"]
    manifest.write_text(json.dumps(doc))


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_verify_finds_damage_and_repair_is_byte_identical(reference: Path, tmp_path: Path, damage: str) -> None:
    w = _copy(reference, tmp_path / "w")
    out, clean = _only(w, "render"), _data(_only(reference, "render"))
    DAMAGE[damage](out)
    assert _data(out) != clean or "manifest" in damage

    found = skel("verify", "-w", w, check=False)
    said = found.stdout + found.stderr  # the listing on stdout (`skel verify | grep`), warnings on stderr
    assert found.returncode == 1 and "render" in found.stdout and "Traceback" not in found.stderr
    assert "damaged" in said or "corrupt" in said
    assert _status(w)["import"] == ["complete"]  # the rest of the workdir is unaffected
    if "manifest" in damage:
        assert str(out / "manifest.json") in said.replace("\n", "")
    else:
        lost = _changed(out, clean)
        assert any(rel in found.stdout.replace("\n", "") for rel in lost), said

    skel("verify", "-w", w, "--repair", "-j", "0", "-q")
    assert _data(out) == clean
    assert set(json.loads((out / "manifest.json").read_text())["files"]) == set(clean)  # every file still covered
    assert _status(w) == {"import": ["complete"], "render": ["complete"]}
    assert skel("verify", "-w", w).returncode == 0


RUNS_OWN = {  # damage to the run's own files (not in the file table) -> the file verify names
    "flip 16 bytes of plan.json": (lambda out: _flip(out / "plan.json"), "plan.json"),
    "delete plan.json": (lambda out: (out / "plan.json").unlink(), "plan.json"),
    # valid JSON, a parameter the fingerprint leaves out, and a chunk damaged too: the repair regrouped every sample
    # into shards of 16 under the same fingerprint (other bytes, and verify then said ok)
    "regroup in plan.json, flip a chunk": (
        lambda out: (_edit(out / "plan.json", b'"samples_per_shard": 64', b'"samples_per_shard": 16'),
                     _flip(_chunk(out))), "plan.json"),
    "flip 16 bytes of a shard record": (lambda out: _flip(out / SHARDS / "00000.json"), "_shards/00000.json"),
    # verify stopped at it, naming nothing else, and so did --repair
    "plan.json a directory": (lambda out: _to_dir(out / "plan.json"), "plan.json: a directory, not a file"),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(RUNS_OWN))
def test_damage_to_the_runs_own_files_is_named_and_repaired(reference: Path, tmp_path: Path, damage: str) -> None:
    """plan.json (what a repair redoes) and the shard records are checked by verify too (it said ok), and a repair
    takes the plan from the sealed manifest: the output and its plan.json come back byte for byte."""
    w = _copy(reference, tmp_path / "w")
    out, ref = _only(w, "render"), _only(reference, "render")
    harm, named = RUNS_OWN[damage]
    harm(out)
    found = skel("verify", "-w", w, check=False)
    assert found.returncode == 1 and named in found.stdout.replace("\n", "") and "Traceback" not in found.stderr
    skel("verify", "-w", w, "--repair", "-j", "0", "-q")
    assert _data(out) == _data(ref) and (out / "plan.json").read_bytes() == (ref / "plan.json").read_bytes()
    assert skel("verify", "-w", w).returncode == 0


def test_an_output_moved_to_other_storage_and_linked_back_is_the_workdirs(reference: Path, tmp_path: Path) -> None:
    """A large render moved elsewhere and linked back: train took it, but `skel test` and `predict --run`, which
    name their inputs by path, refused it as another workdir's (and named the wrong one to use)."""
    w = _copy(reference, tmp_path / "w")
    out = _only(w, "render")
    (tmp_path / "big").mkdir()
    shutil.move(out, tmp_path / "big" / out.name)
    out.symlink_to(tmp_path / "big" / out.name)
    assert find_output(w, ("render",), str(out)).path == out
    assert find_output(w, ("render",), out.name[:8]).path == out
    with pytest.raises(SkelError, match=f"an output of workdir {w}, not of {tmp_path}"):  # a path of another's
        find_output(tmp_path, ("render",), str(out))
    (tmp_path / "else").mkdir()
    (tmp_path / "else" / "lnk").symlink_to(out)  # a link to the workdir's link: it named the folder above the store
    with pytest.raises(SkelError, match=f"an output of workdir {w}, not of {tmp_path}: run with -w {w}$"):
        find_output(tmp_path, ("render",), str(tmp_path / "else" / "lnk"))


def test_a_stage_folder_holding_a_link_loop_hides_no_output(reference: Path, tmp_path: Path) -> None:
    """A link in a loop beside the outputs made the whole stage folder read as one output (stage 'w', fingerprint
    'render', interrupted), and the render beside it vanished from status, verify and every input lookup."""
    w = _copy(reference, tmp_path / "w")
    (w / "render" / "loopaaaa").symlink_to("loopaaaa")
    assert _status(w) == {"import": ["complete"], "render": ["complete"]}
    assert load_output(find_output(w, ("render",)).path).state == "complete"
    assert skel("verify", "-w", w).returncode == 0


def test_a_damaged_usage_mark_is_no_damage(reference: Path, tmp_path: Path) -> None:
    """``.used`` (when an output was last used) not UTF-8: every command that listed outputs failed on it, for
    the whole workdir; it is only a timestamp."""
    w = _copy(reference, tmp_path / "w")
    (_only(w, "import") / ".used").write_bytes(b"2026-12-07T03:00\xc5\xff")
    assert _status(w) == {"import": ["complete"], "render": ["complete"]}
    assert skel("verify", "-w", w).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("damage", [d for d in DAMAGE if "manifest" not in d])
def test_train_on_damaged_volumes_fails_naming_the_file(reference: Path, tmp_path: Path, damage: str) -> None:
    w = _copy(reference, tmp_path / "w")
    out = _only(w, "render")
    clean = _data(out)
    DAMAGE[damage](out)
    (rel,) = _changed(out, clean)
    assert _status(w)["render"] == ["complete" if "flip" in damage else "damaged"]  # status only stats files
    text = _one_line(subprocess.run([*SKEL, "train", "-w", str(w), *TINY], cwd=REPO, capture_output=True,
                                    text=True, env={**os.environ, "COLUMNS": "300"}))
    assert str(out) in text and rel in text and "damaged" in text and "skel verify --repair" in text
    assert not (w / "train").exists()


@pytest.mark.slow
def test_test_refuses_its_models_damaged_volumes(reference: Path, tmp_path: Path) -> None:
    """A test reads the volumes behind its model: a flipped byte there (the index's labels parse still) is
    refused, not scored into a complete output under the clean result's fingerprint; so is a damaged checkpoint
    of an output that ``--init`` names."""
    trained = _copy(reference, tmp_path / "trained")
    skel("train", "-w", trained, *TINY)
    for name, damage in {"chunk": DAMAGE["flip 16 bytes of a chunk"], "index": lambda out: _flip(out / "index.parquet")
                         }.items():  # fmt: skip
        w = _copy(trained, tmp_path / name, ("import", "render", "train"))
        out = _only(w, "render")
        clean = _data(out)
        damage(out)
        (rel,) = _changed(out, clean)
        test = skel("test", "-w", w, "--num-clips", "1", "-j", "0", check=False, env_extra={"COLUMNS": "300"})
        text = _one_line(test)
        assert str(out) in text and rel in text and "damaged" in text, text
        assert not (w / "test").exists()
    # --init names another training's best.pt: read only as its manifest records it (a flipped byte trained on)
    best = next((trained / "train").glob("*/best.pt"))
    _flip(best)
    init = _one_line(skel("train", "-w", trained, "--init", best, *TINY, "--epochs", "2", check=False,
                          env_extra={"COLUMNS": "300"}))
    assert f"{best}: digest mismatch" in init and "verify --repair" in init, init
    assert len(list((trained / "train").iterdir())) == 1


@pytest.mark.slow
def test_repair_mends_inputs_first_and_goes_on_past_what_it_cannot_mend(reference: Path, tmp_path: Path) -> None:
    """Repairs run in dependency order, whatever order the outputs were last used in (a repair reads its inputs
    and refuses a damaged one); an output that cannot be repaired is one error line and the others are done."""
    w = _copy(reference, tmp_path / "w")
    imp, ren = _only(w, "import"), _only(w, "render")
    clean = {out: _data(out) for out in (imp, ren)}
    skel("import", load_pickle_source(imp), "-w", w, "-j", "0", "-q")  # a cache hit: import is the newest used
    part = next((imp / "triplets").glob("*.parquet"))
    os.truncate(part, part.stat().st_size // 2)
    DAMAGE["delete chunk"](ren)
    skel("verify", "-w", w, "--repair", "-j", "0", "-q")
    assert {out: _data(out) for out in (imp, ren)} == clean

    DAMAGE["delete chunk"](ren)
    shutil.copytree(ren, w / "render" / "0000000000000000")  # a second damaged output, without a plan to redo:
    (w / "render" / "0000000000000000" / "plan.json").unlink()  # neither plan.json nor a readable manifest's copy
    DAMAGE["garble manifest"](w / "render" / "0000000000000000")
    proc = skel("verify", "-w", w, "--repair", "-j", "0", "-q", check=False)
    assert proc.returncode == 1 and "no plan.json" in proc.stderr and "Traceback" not in proc.stderr
    assert _data(ren) == clean[ren]
    assert "no such workdir" in error_line(skel("verify", "-w", tmp_path / "nosuch", check=False))
    assert "no such workdir" in error_line(skel("status", "-w", tmp_path / "nosuch", check=False))


def load_pickle_source(imp: Path) -> str:
    """The pickle an import output was made from (its plan records it)."""
    return json.loads((imp / "plan.json").read_text())["params"]["source"]


def test_rendering_again_repairs_a_damaged_output(reference: Path, tmp_path: Path) -> None:
    """A cache hit on a damaged output redoes the shards behind the damage instead of trusting it."""
    w = _copy(reference, tmp_path / "w")
    out = _only(w, "render")
    DAMAGE["delete chunk"](out)
    proc = skel("render", "-w", w, "-j", "0")
    assert "damaged" in proc.stderr and "cache hit" not in proc.stderr
    assert _data(out) == _data(_only(reference, "render"))


@pytest.mark.slow
def test_a_corrupt_manifest_is_named_and_a_rerun_repairs_it(reference: Path, tmp_path: Path) -> None:
    w = _copy(reference, tmp_path / "w")
    out = _only(w, "render")
    DAMAGE["garble manifest"](out)
    assert _status(w) == {"import": ["complete"], "render": ["corrupt"]}
    said = skel("status", "-w", w)
    assert str(out / "manifest.json") in (said.stdout + said.stderr).replace("\n", "")
    skel("render", "-w", w, "-j", "0", "-q")
    assert _status(w)["render"] == ["complete"] and _data(out) == _data(_only(reference, "render"))


# root reads any directory: a run as root, without the capabilities that bypass file permissions, reads as a user
AS_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--inh-caps=-all"] if (
    os.geteuid() == 0) else []


@pytest.mark.parametrize("which", ["render", "train"])
def test_an_output_that_cannot_be_read_is_named_by_status_and_verify(reference: Path, tmp_path: Path,
                                                                      which: str) -> None:
    """An output directory without read permission is listed (corrupt, its path named) and fails verify; a glob
    passed over it, and status and verify said nothing of it."""
    if AS_USER and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: permissions cannot be taken away")
    w = _copy(reference, tmp_path / "w")
    out = _only(w, "render") if which == "render" else w / "train" / "0123456789abcdef"
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").touch()
    out.chmod(0)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300"}
        status, verify = (subprocess.run([*AS_USER, *SKEL, *args], cwd=REPO, env=env, text=True, capture_output=True)
                          for args in (("status", "-w", w, "--json"), ("verify", "-w", w)))
    finally:
        out.chmod(0o755)
    rows = json.loads(status.stdout)
    assert [(r["stage"], r["state"]) for r in rows if r["path"] == str(out)] == [(which, "corrupt")], rows
    assert verify.returncode != 0 and str(out) in (verify.stdout + verify.stderr).replace("\n", ""), verify.stderr


# --- one writer per output -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_renders_at_once_give_one_clean_output(reference: Path, tmp_path: Path) -> None:
    clean = _data(_only(reference, "render"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for trial in range(10):
        w = _copy(reference, tmp_path / f"w{trial}", ("import",))
        procs = [subprocess.Popen([*SKEL, "render", "-w", str(w), "-j", "0", "-q"], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        for rc, err in results:  # each run either rendered, hit the cache or saw the other writer
            assert rc == 0 or ("another skel run (pid" in err and "is writing" in err), err
        assert any(rc == 0 for rc, _ in results)
        assert _status(w)["render"] == ["complete"]
        assert _data(_only(w, "render")) == clean, f"trial {trial}"
        assert not list(_only(w, "render").rglob(".*.tmp-*"))


@pytest.mark.slow
def test_a_held_lock_names_the_other_run(reference: Path, tmp_path: Path) -> None:
    w = _copy(reference, tmp_path / "w", ("import",))
    out = make_plan(RenderStage(), w, RenderParams()).out
    with output_lock(out):
        text = _one_line(skel("render", "-w", w, "-j", "0", check=False))
    assert f"another skel run (pid {os.getpid()}, host " in text and str(out) in text
    skel("render", "-w", w, "-j", "0", "-q")  # released: the next run goes ahead
    assert _status(w)["render"] == ["complete"]


@pytest.mark.slow
def test_a_killed_run_is_interrupted_then_taken_over(reference: Path, tmp_path: Path, caplog) -> None:
    w = _copy(reference, tmp_path / "w", ("import",))
    code = ("from pathlib import Path; from pipeline.cluster import Cluster; from pipeline.runner import run_stage;"
            "from stages.render.stage import RenderParams, RenderStage;"
            f"run_stage(RenderStage(), Path({str(w)!r}), RenderParams(samples_per_shard=8), Cluster(workers=0),"
            " quiet=True)")
    killed = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, CRASH: "commit:render/00001"})
    assert killed.returncode == -signal.SIGKILL
    assert _status(w)["render"] == ["interrupted"]
    with caplog.at_level("INFO", logger="skel"):
        run_stage(RenderStage(), w, RenderParams(samples_per_shard=8), Cluster(workers=0), quiet=True)
    assert "taking over from a killed run" in caplog.text and "resuming, 2 of 5 shards" in caplog.text
    assert _status(w)["render"] == ["complete"] and skel("verify", "-w", w).returncode == 0


def test_a_killed_holder_left_a_zombie_is_not_running(tmp_path: Path) -> None:
    """A killed run nobody has reaped (its parent busy, or an orphan under an init that does not reap) keeps its
    pid as a zombie: it must not count as running (``skel status``: interrupted); the next run takes over from it."""
    out = tmp_path / "out"
    code = ("import sys, time; from pathlib import Path; from pipeline.lock import output_lock;"
            "lock = output_lock(Path(sys.argv[1])); lock.__enter__(); print('held', flush=True); time.sleep(60)")
    run = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline() == "held\n"
        assert alive(out)
        run.kill()
        for _ in range(100):  # not waited for: a zombie until the wait below
            if (Path("/proc") / str(run.pid) / "stat").read_text().rpartition(") ")[2][:1] == "Z":
                break
            time.sleep(0.05)
        assert not alive(out), "a zombie lock holder counts as running"
        with output_lock(out) as previous:
            assert previous == {"pid": run.pid, "host": socket.gethostname()}  # taken over from a killed run
    finally:
        run.kill()
        run.wait()


def _hold_lock(out: Path) -> subprocess.Popen:
    """Another process holding the output's write lock (as a run writing it does) until it is killed."""
    code = ("import sys, time; from pathlib import Path; from pipeline.lock import output_lock;"
            "lock = output_lock(Path(sys.argv[1])); lock.__enter__(); print('held', flush=True); time.sleep(120)")
    run = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert run.stdout.readline() == "held\n"
    return run


@pytest.mark.slow
def test_a_copied_lock_of_a_killed_run_is_interrupted(reference: Path, tmp_path: Path) -> None:
    """A workdir copied to another machine carries the lock files of its killed runs, naming pids and hosts of
    that machine: nobody holds such a lock, so the run is interrupted (status said running for ever, verify had
    nothing to repair, and no later stage could read it), while a run that holds its lock is running."""
    w = _copy(reference, tmp_path / "w", ("import",))
    killed = skel("render", "-w", w, "-j", "0", "-q", check=False, env_extra={CRASH: "commit:render/00000"})
    assert killed.returncode == -signal.SIGKILL
    out = _only(w, "render")
    writer = _hold_lock(out)
    try:
        assert alive(out) and _status(w)["render"] == ["running"]
        checked = skel("verify", "-w", w)  # being written: nothing to repair, and not counted as verified
        assert checked.stdout.splitlines()[-1] == f"verified 1 output(s) in {w}; 1 being written by another run, " \
                                                   "not checked", checked.stdout
        assert f"another skel run (pid {writer.pid}, host " in _one_line(skel("render", "-w", w, "-j", "0",
                                                                              check=False))
    finally:
        writer.kill()
        writer.wait()
    (out / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": "old-machine"}))  # a pid alive here, too
    assert not alive(out) and _status(w)["render"] == ["interrupted"]
    with pytest.raises(SkelError, match="interrupted render output cannot be an input"):
        find_output(w, ("render",), out.name)
    found = skel("verify", "-w", w, check=False)
    assert found.returncode == 1 and "interrupted, not complete" in found.stdout + found.stderr
    repaired = skel("verify", "-w", w, "--repair", "-j", "0")
    assert f"taking over from a killed run (pid {os.getpid()}, host old-machine)" in repaired.stderr
    assert _status(w)["render"] == ["complete"] and holder(out) is None
    assert _data(out) == _data(_only(reference, "render"))


@pytest.mark.slow
@pytest.mark.parametrize("point", ["uncommitted:render/00000", "commit:render/00000", "wrote:index.parquet",
                                   "finalized:render"])
def test_a_killed_repair_is_finished_by_the_next_repair(reference: Path, tmp_path: Path, point: str) -> None:
    w = _copy(reference, tmp_path / "w")
    out, clean = _only(w, "render"), _data(_only(reference, "render"))
    DAMAGE["flip 16 bytes of a chunk"](out)
    killed = skel("verify", "-w", w, "--repair", "-j", "0", "-q", check=False, env_extra={CRASH: point})
    assert killed.returncode == -signal.SIGKILL
    assert skel("verify", "-w", w, check=False).returncode == 1  # not complete: still reported
    skel("verify", "-w", w, "--repair", "-j", "0", "-q")
    assert _data(out) == clean and _status(w)["render"] == ["complete"]
    assert skel("verify", "-w", w).returncode == 0


def _made_by(out: Path, version: str) -> Path:
    """``out`` as another version of its stage made it: under that version's fingerprint, its manifest rewritten
    (and sealed) as skel writes one."""
    m = json.loads((out / MANIFEST).read_text())
    fp = fingerprint(m["stage"], version, m["params"], {k: v["fingerprint"] for k, v in m["inputs"].items()},
                     m["external"])
    old = out.rename(out.with_name(fp))
    write_manifest(old, m | {"version": version, "fingerprint": fp})
    assert load_output(old).corrupt is None
    return old


OLD = {
    "complete": lambda ref, w: _copy(ref, w),
    "damaged": lambda ref, w: DAMAGE["flip 16 bytes of a chunk"](_only(_copy(ref, w), "render")),
    "interrupted": lambda ref, w: skel("render", "-w", _copy(ref, w, ("import",)), "-j", "0", "-q", check=False,
                                       env_extra={CRASH: "commit:render/00000"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(OLD))
def test_an_output_of_an_older_stage_version_is_stale(reference: Path, tmp_path: Path, case: str) -> None:
    """An output made by another version of its stage (skel upgraded since) is stale, whatever its run left: no
    run of this skel can finish or repair it (its fingerprint has the old version in it). Interrupted or damaged,
    status said so for ever, verify exited 1 and --repair failed saying its inputs had changed."""
    w = tmp_path / "w"
    OLD[case](reference, w)
    old = str(int(RenderStage.version) - 1)
    out = _made_by(_only(w, "render"), old)
    assert _status(w)["render"] == ["stale"]
    rows = json.loads(skel("status", "-w", w, "--json").stdout)
    why = (f"made by render version {old}; this skel makes version {RenderStage.version}: rerun `skel render` for "
           f"a current one")
    assert [r["stale"] for r in rows if r["stage"] == "render"] == [why]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for args in ((), ("--repair", "-j", "0")):
        proc = skel("verify", "-w", w, *args)  # exit 0: nothing this skel can repair
        assert f"render {out.name[:8]}: stale, left as it is: {why}" in proc.stdout + proc.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # left as it is
    skel("render", "-w", w, "-j", "0", "-q")  # a current one, beside it
    assert sorted(_status(w)["render"]) == ["complete", "stale"]
    assert _data(next(p for p in (w / "render").iterdir() if p != out)) == _data(_only(reference, "render"))


@pytest.mark.slow
def test_an_edited_shard_record_is_not_taken(reference: Path, tmp_path: Path) -> None:
    """A record edited to list fewer samples (still valid JSON) no longer matches its digest: its shard reruns."""
    w = _copy(reference, tmp_path / "w", ("import",))
    killed = skel("render", "-w", w, "-j", "0", "-q", check=False, env_extra={CRASH: "commit:render/00000"})
    assert killed.returncode == -signal.SIGKILL
    record = next((w / "render").glob("*/_shards/00000.json"))
    rec = json.loads(record.read_text())
    rec["rows"] = rec["rows"][:5]
    record.write_text(json.dumps(rec))
    rerun = skel("render", "-w", w, "-j", "0")
    assert "edited or damaged" in rerun.stderr
    out = _only(w, "render")
    assert json.loads((out / "manifest.json").read_text())["summary"]["samples"] == 36
    assert _data(out) == _data(_only(reference, "render"))


@pytest.mark.slow
def test_status_fits_80_columns_and_tells_states_apart(reference: Path, synth_pkl: Path, tmp_path: Path) -> None:
    w = _copy(reference, tmp_path / "w")
    DAMAGE["delete chunk"](_only(w, "render"))
    skel("import", _all_bad(synth_pkl, tmp_path), "-w", w, "-j", "0", "-q", check=False)  # failed
    (w / "render" / "0123456789abcdef").mkdir()
    (w / "render" / "0123456789abcdef" / "manifest.json").write_text(json.dumps(
        {"stage": "render", "fingerprint": "0123456789abcdef", "state": "running", "params": {}}))
    (w / "render" / "0123456789abcdef" / ".lock").write_text(json.dumps({"pid": 2**22 + 7, "host": os.uname()[1]}))
    text = skel("status", "-w", w, env_extra={"COLUMNS": "80"}).stdout
    assert all(len(line) <= 80 for line in text.splitlines()) and "…" not in text
    states = sorted(cells[2] for cells in map(str.split, text.splitlines()) if cells[:1] in (["import"], ["render"])
                    and len(cells) > 2 and not cells[1].endswith(":"))
    assert states == ["complete", "damaged", "failed", "interrupted"], text


# --- failed stages are not complete; which output is an input -----------------------------------------------

@pytest.mark.slow
def _all_bad(synth_pkl: Path, tmp_path: Path) -> Path:
    """The synthetic pickle with every label out of range: every sample of its import fails."""
    data = load_pickle(synth_pkl)
    for ann in data["annotations"]:
        ann["label"] = 99
    (path := tmp_path / "all_bad.pkl").write_bytes(pickle.dumps(data, protocol=4))
    return path


def test_a_stage_where_every_sample_failed_is_failed_and_never_an_input(
        reference: Path, synth_pkl: Path, tmp_path: Path) -> None:
    w = _copy(reference, tmp_path / "w")
    good = _only(w, "import")
    text = _one_line(skel("import", _all_bad(synth_pkl, tmp_path), "-w", w, "-j", "0", "-q", check=False))
    assert "all 36 samples failed" in text and "errors.parquet" in text
    assert sorted(_status(w)["import"]) == ["complete", "failed"]
    bad = next(p for p in (w / "import").iterdir() if p != good)
    assert load_output(bad).state == "failed"
    assert make_plan(RenderStage(), w, RenderParams(sigma=1.0)).inputs["triplets"].path == good
    text = _one_line(skel("render", "-w", w, "--from", bad.name[:8], "-j", "0", "-q", check=False))
    assert "failed import output cannot be an input (its samples failed: see its errors.parquet)" in text


def test_an_import_cache_hit_on_a_flipped_samples_table_names_it(reference: Path, synth_pkl: Path,
                                                                tmp_path: Path) -> None:
    """The command's summary read samples.parquet unchecked: pyarrow's 'Unexpected end of stream', naming nothing."""
    w = _copy(reference, tmp_path / "w", ("import",))
    _flip(samples := _only(w, "import") / "samples.parquet")
    text = _one_line(skel("import", synth_pkl, "-w", w, "-j", "0", "-q", check=False))
    assert f"{samples}: digest mismatch" in text and "verify --repair" in text, text


@pytest.mark.slow
def test_what_from_and_the_splits_name_must_exist_and_fit(reference: Path, tmp_path: Path) -> None:
    """--from with --limb names limb volumes; --from names an output of this workdir (what reads the result
    finds its inputs there); a validation split that does not exist fails before the first epoch; --train-split
    '' trains on every labelled sample."""
    w, other = _copy(reference, tmp_path / "w"), _copy(reference, tmp_path / "other")
    joint = _only(w, "render")
    line = error_line(skel("train", "-w", w, "--from", joint.name[:8], "--limb", *TINY, check=False))
    assert "a render output with kind joint, where kind limb is asked for" in line, line
    line = error_line(skel("train", "-w", w, "--from", _only(other, "render"), *TINY, check=False))
    assert f"an output of workdir {other.resolve()}" in line and "run with -w" in line, line
    assert not (w / "train").exists()
    line = error_line(skel("train", "-w", w, *TINY, "--val-split", "nosuch", check=False))
    assert "no labelled samples in split 'nosuch'" in line, line
    assert not list((w / "train").glob(f"*/{SHARDS}/*.json"))  # refused before an epoch was trained
    everything = skel("train", "-w", w, *TINY, "--train-split", "").stderr
    n = len(load_pickle(json.loads((_only(w, "import") / "plan.json").read_text())["params"]["source"])["annotations"])
    plan = re.search(r"plan: (\d+) training clips .* (\d+) validation clips \(carved from every labelled sample: ",
                     " ".join(everything.split()))
    assert plan and int(plan[1]) + int(plan[2]) == n, everything


TINY_RECIPE = """[[step]]
id = "import"
stage = "import"
source = "%s"
[[step]]
id = "render"
stage = "render"
[[step]]
id = "train"
stage = "train"
model_args = { base_channels = 4, stage_blocks = [1, 1, 1] }
clip_len = 8
input_size = 32
batch_size = 6
epochs = 3
val_split = ""
workers = 0
threads = 1
log_every = %d
"""


@pytest.mark.slow
def test_a_resume_keeps_the_runs_threads_and_logging_interval(reference: Path, synth_pkl: Path,
                                                              tmp_path: Path) -> None:
    """A resume trains on the thread count and logs at the interval its run began with, whatever the rerun asks
    (neither is in the fingerprint): one with threads 2, or with another log_every, finished a training of mixed
    bytes as complete, which the first command then took as a cache hit."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE % (synth_pkl, 1))
    clean = _copy(reference, tmp_path / "clean")
    skel("run", recipe, "-w", clean, "-j", "0", "-q")
    for case, (changed, asked) in {"threads": ((synth_pkl, 1), ("--set", "train.threads=2")),
                                   "log_every": ((synth_pkl, 2), ())}.items():
        w = _copy(reference, tmp_path / case)
        recipe.write_text(TINY_RECIPE % (synth_pkl, 1))
        killed = skel("run", recipe, "-w", w, "-j", "0", "-q", check=False,
                      env_extra={CRASH: "commit:train/epoch-000"})
        assert killed.returncode == -signal.SIGKILL
        recipe.write_text(TINY_RECIPE % changed)
        said = " ".join(skel("run", recipe, "-w", w, "-j", "0", *asked).stderr.split())
        if case == "threads":  # once, not at each of the two epochs resumed
            assert said.count("resuming on 1 threads, as the run began (threads 2 applies to a new run") == 1, said
        assert _data(_only(w, "train")) == _data(_only(clean, "train")), case


@pytest.mark.slow
def test_the_error_budget(synth_pkl: Path, tmp_path: Path) -> None:
    data = load_pickle(synth_pkl)
    for ann in data["annotations"][:6]:  # 6 of 36 fail: over 10% (3.6, rounded up: 4)
        ann["label"] = 99
    pkl = tmp_path / "bad.pkl"
    pkl.write_bytes(pickle.dumps(data, protocol=4))
    text = _one_line(skel("import", pkl, "-w", tmp_path / "w", "-j", "0", "-q", check=False))
    assert "6 of 36 samples failed, more than --max-errors 0.1" in text
    assert _status(tmp_path / "w")["import"] == ["failed"]
    skel("import", pkl, "-w", tmp_path / "w", "-j", "0", "-q", "--max-errors", "0.2")  # same output, now complete
    assert _status(tmp_path / "w")["import"] == ["complete"]
    # the budget is not in the fingerprint: a cache hit is held to the one asked now (it passed under any)
    again = _one_line(skel("import", pkl, "-w", tmp_path / "w", "-j", "0", "-q", check=False))
    assert "6 of 36 samples failed, more than --max-errors 0.1 allows (its complete output" in again, again
    assert _status(tmp_path / "w")["import"] == ["complete"]
    assert "--max-errors" in skel("render", "--help").stdout and "0.1" in skel("render", "--help").stdout


@pytest.mark.slow
def test_extract_of_no_readable_video_fails(tmp_path: Path, shared: Path) -> None:
    empty = tmp_path / "zero.mp4"
    empty.write_bytes(b"")
    text = _one_line(skel("extract", empty, "-w", tmp_path / "w", "--models", shared / "models", "-j", "0",
                          "--device", "cpu", "-q", check=False))
    assert "extract: all 1 samples failed" in text or "extract: no samples" in text
    assert _status(tmp_path / "w")["extract"] == ["failed"]
    line = _one_line(skel("render", "-w", tmp_path / "w", check=False, env_extra={"COLUMNS": "300"}))
    assert "no complete import or extract output" in line and f"(run `skel import -w {tmp_path / 'w'}` first)" in line


@pytest.mark.slow
def test_a_cache_hit_makes_an_output_the_default_and_from_names_one(reference: Path, tmp_path: Path) -> None:
    w = _copy(reference, tmp_path / "w")
    first = _only(w, "render")
    skel("render", "-w", w, "-j", "0", "--sigma", "1.0", "-q")
    second = next(p for p in (w / "render").iterdir() if p != first)
    assert find_output(w, ("render",)).path == second
    skel("render", "-w", w, "-j", "0", "-q")  # cache hit on the first
    assert find_output(w, ("render",)).path == first
    assert make_plan(TrainStage(), w, TrainParams(clip_len=8)).inputs["volumes"].path == first
    assert find_output(w, ("render",), second.name[:6]).path == second
    assert find_output(w, ("render",), str(second)).path == second
    imp = _only(w, "import").name
    assert "cache hit" in skel("render", "-w", w, "-j", "0", "--from", imp[:5]).stderr
    assert "0 import or extract outputs match 'zz'" in _one_line(skel("render", "-w", w, "--from", "zz", check=False))


# --- numerical guards ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_diverging_training_stops_and_commits_nothing(reference: Path, tmp_path: Path) -> None:
    """An lr of 1e30 makes the loss NaN within a few steps (an lr of NaN itself is refused before any)."""
    w = _copy(reference, tmp_path / "w")
    proc = subprocess.run([*SKEL, "train", "-w", str(w), *TINY, "--lr", "1e30"], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "300"})
    text = _one_line(proc)
    assert "epoch 1/1 step " in text and "loss is nan (lr " in text and "nothing of this epoch is kept" in text
    out = _only(w, "train")
    assert load_output(out).state == "failed"
    assert not list((out / SHARDS).glob("*.json")) and not (out / "last.pt").exists()
    # failed for its work, not the machine: a repair would diverge again, so verify lists it and exits 0 (it
    # called it unfinished, and --repair failed so each time)
    found = skel("verify", "-w", w)
    said = " ".join(found.stdout.split())
    assert "failed while it ran (epoch-000: " in said and "--repair runs it again" not in said, said
    text = _one_line(skel("test", "-w", w, "-j", "0", "--from", out.name[:8], check=False))
    assert "failed train output cannot be an input (it failed: epoch 1/1 step " in text, text


def test_test_refuses_non_finite_scores(reference: Path, tmp_path: Path) -> None:
    w = _copy(reference, tmp_path / "w")
    params = TrainParams(model_args={"base_channels": 4, "stage_blocks": (1, 1, 1)}, clip_len=8, input_size=32,
                         epochs=1, batch_size=6, val_split=None, workers=0, threads=1)
    out = run_stage(TrainStage(), w, params, Cluster(workers=0), quiet=True)
    state = torch.load(out / "best.pt", weights_only=True)
    state["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    torch.save(state, out / "best.pt")
    manifest = json.loads((out / "manifest.json").read_text())  # as if training had written these weights
    manifest["files"]["best.pt"].update(digests(out, ["best.pt"])["best.pt"])
    write_manifest(out, manifest)
    with pytest.raises(SkelError, match="non-finite scores for sample"):
        run_stage(TestStage(), w, TestParams(num_clips=1, flip=False, threads=1), Cluster(workers=0), quiet=True,
                  inputs={"model": Upstream.of(load_output(out))})


# --- import validation ---------------------------------------------------------------------------------------

IMPORT_CASES = {
    "unknown class name": lambda a: a.update(label="no_such_class"),
    "list label": lambda a: a.update(label=[1]),
    "label 99": lambda a: a.update(label=99),
    "label -1": lambda a: a.update(label=-1),
    "label 2.5": lambda a: a.update(label=2.5),
    "label 2.0": lambda a: a.update(label=2.0),
    "T = 0": lambda a: a.update(keypoint=a["keypoint"][:, :0], keypoint_score=a["keypoint_score"][:, :0],
                                total_frames=0),
    "M = 0": lambda a: a.update(keypoint=a["keypoint"][:0], keypoint_score=a["keypoint_score"][:0]),
    "all -500": lambda a: a.update(keypoint=np.full_like(a["keypoint"], -500.0)),
    "1e30": lambda a: a["keypoint"].__setitem__((0, 0, 0, 0), 1e30),
    "img_shape text": lambda a: a.update(img_shape=("240", "320")),
}


def test_each_bad_import_sample_is_recorded_and_the_rest_imports(synth_pkl: Path, tmp_path: Path, caplog) -> None:
    data = load_pickle(synth_pkl)
    anns = data["annotations"]
    cases = dict(zip([a["frame_dir"] for a in anns], IMPORT_CASES.items(), strict=False))
    for ann in anns:
        if ann["frame_dir"] in cases:
            cases[ann["frame_dir"]][1](ann)
    named = anns[len(cases)]
    named["label"] = data["classes"][named["label"]]  # a class name maps through the class list
    pkl = tmp_path / "bad.pkl"
    pkl.write_bytes(pickle.dumps(data, protocol=4))
    with caplog.at_level("WARNING", logger="skel"):
        out = run_stage(ImportStage(), tmp_path / "w", ImportParams(source=str(pkl)), Cluster(workers=0), quiet=True)
    store = TripletStore(out)
    errors = {e["sample_id"]: e["message"] for e in store.errors.to_pylist()}
    assert f"import: {len(cases)} of {len(anns)} samples skipped (first: " in caplog.text  # said, not only stored
    assert set(errors) == set(cases), {cases[s][0]: m for s, m in errors.items()}
    for sid, (case, _) in cases.items():
        assert errors[sid], case
    assert "2.5" in errors[next(s for s, c in cases.items() if c[0] == "label 2.5")]
    assert store.samples.num_rows == len(anns) - len(cases)
    assert store.meta(named["frame_dir"])["label"] == data["classes"].index(named["label"])

    data["annotations"] = [named]  # a name without a class list
    del data["classes"]
    pkl.write_bytes(pickle.dumps(data, protocol=4))
    text = _one_line(skel("import", pkl, "-w", tmp_path / "w2", "-j", "0", "-q", check=False))
    assert "all 1 samples failed" in text and "no 'classes' list" in text


# --- environment errors --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_workdir_or_target_under_a_file_is_one_line(reference: Path, synth_pkl: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    text = _one_line(skel("import", synth_pkl, "-w", blocker / "w", "-j", "0", check=False))
    assert str(blocker) in text and "Not a directory" in text
    text = _one_line(skel("export-pkl", blocker / "x.pkl", "-w", reference, check=False))  # before any work
    assert text.strip() == f"error: {blocker / 'x.pkl'}: {blocker} is not a directory", text


@pytest.mark.slow
def test_read_only_workdir_is_one_line_then_resumes(reference: Path, tmp_path: Path, request) -> None:
    if os.geteuid() == 0:
        root = request.getfixturevalue("tmpfs")
        w = _copy(reference, root / "w", ("import",))
        remount(root, "ro")
        make_writable = lambda: remount(root, "rw")  # noqa: E731
    else:
        w = _copy(reference, tmp_path / "w", ("import",))
        (w / "import").chmod(0o555)
        os.chmod(w, 0o555)
        make_writable = lambda: os.chmod(w, 0o755)  # noqa: E731
    text = _one_line(skel("render", "-w", w, "-j", "0", "-q", check=False))
    assert str(w) in text and ("Read-only file system" in text or "Permission denied" in text)
    make_writable()
    skel("render", "-w", w, "-j", "0", "-q")
    assert _data(_only(w, "render")) == _data(_only(reference, "render"))


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_full_disk_is_one_line_then_resumes(reference: Path, tmpfs: Path, workers: str) -> None:
    w = _copy(reference, tmpfs / "w", ("import",))
    used = sum(f.stat().st_size for f in (w / "import").rglob("*") if f.is_file())
    remount(tmpfs, f"size={used + 1_000_000}")  # room for about half the volumes
    text = _one_line(skel("render", "-w", w, "-j", workers, "-q", check=False))
    assert "No space left on device" in text and str(w) in text
    assert _status(w)["render"] == ["failed"]  # the run ended: neither "running" nor "interrupted"
    remount(tmpfs, "size=64m")
    # failed while it ran, not over its error budget: unfinished, as a killed run (verify said ok, exit 0, and
    # --repair did nothing, though a repair that had failed so left a damaged train output unusable)
    found = skel("verify", "-w", w, check=False)
    assert found.returncode == 1 and "failed while it ran (" in found.stdout and "No space left" in found.stdout
    assert "; --repair runs it again" in " ".join(found.stdout.split())
    assert error_line(found).startswith(f"error: 1 unfinished output(s) in {w}; `skel verify --repair")
    if workers == "0":
        skel("verify", "-w", w, "--repair", "-j", "0", "-q")
    else:
        skel("render", "-w", w, "-j", "0", "-q")
    assert _data(_only(w, "render")) == _data(_only(reference, "render"))
    assert skel("verify", "-w", w).returncode == 0


@pytest.mark.slow
def test_a_shard_whose_workers_keep_dying_interrupts_the_run(reference: Path, tmp_path: Path) -> None:
    """A shard whose Dask workers die each time Dask runs it (killed again and again, out of memory) ends in Dask's
    KilledWorker: the output was marked failed, the shard counted as an error in status and no word of resuming,
    though nothing of the work had failed (then a warning of leaked semaphores). It is an interruption now, as a
    lost scheduler is."""
    w = _copy(reference, tmp_path / "w", ("import",))
    proc = skel("render", "-w", w, "-j", "2", "-q", check=False, env_extra={CRASH: "uncommitted:render/00000"})
    assert proc.returncode == 1 and error_line(proc) == (
        "error: render: 1 shard(s) lost: the Dask workers running them died (killed, or out of memory: see the "
        "workers' logs); the same command resumes from what was committed"), proc.stderr
    assert "Warning" not in proc.stderr  # not multiprocessing's either, of the semaphores the dead workers left
    assert _status(w)["render"] == ["interrupted"]
    assert error_line(skel("verify", "-w", w, check=False)) == (  # to finish, not damaged
        f"error: 1 unfinished output(s) in {w}; `skel verify --repair -w {w}` redoes what they lost and finishes them")
    skel("render", "-w", w, "-j", "0", "-q")
    assert _data(_only(w, "render")) == _data(_only(reference, "render"))


def test_a_file_the_plan_hashed_that_changes_before_its_step_runs_is_refused(synth_pkl: Path, tmp_path: Path) -> None:
    """A recipe plans every step at its start: a pickle (an --init checkpoint) replaced while earlier steps ran was
    used under the fingerprint of its old content, and a later request for the old content got it as a cache hit."""
    pkl = tmp_path / "s.pkl"
    shutil.copy(synth_pkl, pkl)
    plan = make_plan(ImportStage(), tmp_path / "w", ImportParams(source=str(pkl)))
    data = load_pickle(pkl)
    data["annotations"] = data["annotations"][:10]
    pkl.write_bytes(pickle.dumps(data, protocol=4))
    with pytest.raises(SkelError, match=r"^import: source_sha256 changed since this step was planned: run the command "
                                        r"again \(the steps done are kept\)$"):
        run_plan(plan, tmp_path / "w", Cluster(workers=0), quiet=True)
    assert not plan.out.exists()
    out = run_stage(ImportStage(), tmp_path / "w", ImportParams(source=str(pkl)), Cluster(workers=0), quiet=True)
    assert out != plan.out and TripletStore(out).samples.num_rows == 10


def test_an_unfinished_newer_output_is_named_beside_the_input_taken(reference: Path, tmp_path: Path, caplog) -> None:
    """A render killed at sigma 1.0, then `skel train`: it trained on the older sigma-0.6 render, as documented
    (interrupted outputs are never inputs), without naming either; the newer, unfinished one is said now."""
    w = _copy(reference, tmp_path / "w")
    killed = skel("render", "-w", w, "--sigma", "1.0", "-j", "0", "-q", check=False,
                  env_extra={CRASH: "commit:render/00000"})
    assert killed.returncode == -signal.SIGKILL
    done, cut = sorted((o for o in (w / "render").iterdir()), key=lambda o: load_output(o).state)
    with caplog.at_level("WARNING", logger="skel"):
        assert find_output(w, ("render",)).path == done
    assert caplog.messages == [f"render {cut.name[:8]}, started after render {done.name[:8]}, is interrupted: using "
                               f"{done.name[:8]}, the newest complete one (finish the other by running its command "
                               "again, or name one with --from)"]


@dataclass(frozen=True)
class _NoParams:
    pass


class _FillsTheDisk(Stage):
    """One shard that fills the disk with a file of the workdir's that no run removes, then fails for want of
    room: the failed mark cannot be written either."""

    name, version, Params = "fill", "1", _NoParams

    def shards(self, ctx: Context) -> list[Shard]:
        return [Shard("00000")]

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        with open(ctx.workdir / "ballast", "wb") as f:
            while True:
                f.write(bytes(2**20))


def test_an_output_that_cannot_be_marked_failed_says_so_in_its_line(tmpfs: Path) -> None:
    with pytest.raises(SkelError) as err:
        run_stage(_FillsTheDisk(), tmpfs / "w", _NoParams(), Cluster(workers=0), quiet=True)
    assert str(err.value).startswith("fill: 1 shard(s) failed; 00000: ")
    assert str(err.value).endswith("No space left on device; the output could not be marked failed (No space left "
                                   "on device): skel status shows it interrupted")
    assert load_output(_only(tmpfs / "w", "fill")).state == "interrupted"


class _TakesAFile(Stage):
    """Two shards, each writing a file; while ``vandal`` lies in the workdir, the second removes the first's, as
    something outside the run would (the committed record then names a file that is gone)."""

    name, version, Params = "take", "1", _NoParams

    def shards(self, ctx: Context) -> list[Shard]:
        return [Shard("00000"), Shard("00001")]

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        write_bytes(ctx.out / f"{shard.id}.bin", shard.id.encode() * 100)
        if shard.id == "00001" and (ctx.workdir / "vandal").exists():
            (ctx.out / "00000.bin").unlink()
        return {}


@pytest.mark.parametrize("stage", ["take", "render"])
def test_a_shard_that_outlives_its_run_replaces_nothing(synth_pkl: Path, tmp_path: Path, stage: str) -> None:
    """A run ended (Ctrl-C) may leave a shard running on a --scheduler's worker while a later run takes the output
    and commits the same files. The orphan wrote over them when it finished (only its commit record was refused):
    each of its renames into place is refused now, a file's (atomic_path) and a zarr array's directory (atomic_dir)."""
    w = tmp_path / "w"
    out = w / stage / ("0" * 16)
    if stage == "take":
        ctx, shard, held = Context(w, out, _NoParams(), run="ended"), Shard("00000"), out / "00000.bin"
    else:
        imported = run_stage(ImportStage(), w, ImportParams(source=str(synth_pkl)), Cluster(workers=0), quiet=True)
        ctx = Context(w, out, RenderParams(samples_per_shard=4), {"triplets": imported}, run="ended")
        shard = RenderStage().shards(ctx)[0]
        held = out / "volumes.zarr" / shard.id / "zarr.json"
    held.parent.mkdir(parents=True)
    held.write_bytes(b"the later run's")
    with output_lock(out, "later"):
        with pytest.raises(SkelError, match=f"shard {shard.id} finished after its run ended"):
            _execute(type(get_stage(stage)) if stage == "render" else _TakesAFile, ctx, shard)
    assert held.read_bytes() == b"the later run's" and not (out / SHARDS).exists()


@dataclass(frozen=True)
class _Source:
    path: str


class _SourceReplacedWhileStarting(Stage):
    """A stage whose fingerprint holds a file outside the workdir, replaced by its shards() the first time: a file
    replaced while a run starts (its cluster's workers starting), after the plan's check."""

    name, version, Params = "source", "1", _Source

    def external(self, params: _Source) -> dict:
        return {"source_sha256": file_digest(Path(params.path))}

    def shards(self, ctx: Context) -> list[Shard]:
        if (ctx.workdir / "replace").exists():
            Path(ctx.params.path).write_bytes(b"other bytes")
            (ctx.workdir / "replace").unlink()
        return [Shard("00000")]

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        write_bytes(ctx.out / "copy.bin", Path(ctx.params.path).read_bytes())
        return {}


def test_a_file_replaced_while_a_run_starts_fails_it_and_is_never_done_under_the_old_fingerprint(
        tmp_path: Path) -> None:
    """Its shards saw other bytes than the fingerprint holds (extract's and import's runs completed so, exit 0):
    the run checks the files outside the workdir again once its shards are listed."""
    w, source = tmp_path / "w", tmp_path / "source.bin"
    w.mkdir()
    source.write_bytes(b"planned bytes")
    (w / "replace").touch()
    with pytest.raises(SkelError, match="source: source_sha256 changed since this step was planned"):
        run_stage(_SourceReplacedWhileStarting(), w, _Source(str(source)), Cluster(workers=0), quiet=True)
    out = _only(w, "source")
    assert load_output(out).state == "failed" and not (out / "copy.bin").exists()
    source.write_bytes(b"planned bytes")  # put back: the same output, done now
    assert run_stage(_SourceReplacedWhileStarting(), w, _Source(str(source)), Cluster(workers=0), quiet=True) == out
    assert (out / "copy.bin").read_bytes() == b"planned bytes"


def test_a_file_gone_before_the_run_ends_fails_the_run_and_the_rerun_redoes_it(tmp_path: Path) -> None:
    """The last check before an output is marked complete: a committed file gone is never a complete output."""
    w = tmp_path / "w"
    w.mkdir()
    (w / "vandal").touch()
    with pytest.raises(SkelError) as err:
        run_stage(_TakesAFile(), w, _NoParams(), Cluster(workers=0), quiet=True)
    assert str(err.value) == ("take: 1 file(s) written by this run changed before it ended (e.g. 00000.bin missing); "
                              "shard(s) 00000 dropped: run the command again to redo them")
    out = _only(w, "take")
    assert load_output(out).state == "failed" and not (out / SHARDS / "00000.json").exists()
    (w / "vandal").unlink()
    run_stage(_TakesAFile(), w, _NoParams(), Cluster(workers=0), quiet=True)
    assert load_output(out).state == "complete"
    assert _data(out) == {"00000.bin": b"00000" * 100, "00001.bin": b"00001" * 100}


# --- recipes -------------------------------------------------------------------------------------------------

RECIPES = {
    "undefined": ('[[step]]\nid = "i"\nstage = "import"\nsource = "${NOPE}"\n',
                  "undefined variable ${NOPE} (define it in [vars]; the environment sets only names [vars] defines"),
    "no steps": ('[workflow]\nname = "x"\n', "no [[step]] tables"),
    "wrong type": ('[[step]]\nid = "r"\nstage = "render"\nsize = "big"\n',
                   "step 'r': parameter size = 'big' should be int"),
    "duplicate id": ('[[step]]\nid = "a"\nstage = "import"\nsource = "x.pkl"\n'
                     '[[step]]\nid = "a"\nstage = "render"\n', "duplicate step id 'a'"),
}


@pytest.mark.parametrize("case", list(RECIPES))
def test_recipe_errors_are_literal_and_precise(tmp_path: Path, case: str) -> None:
    text, message = RECIPES[case]
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    with pytest.raises(SkelError) as err:
        load_recipe(recipe, get_stage)
    assert message in str(err.value)
    assert message in _one_line(skel("run", recipe, "-w", tmp_path / "w", "--dry-run", check=False))


def test_a_run_killed_before_its_manifest_is_interrupted_not_corrupt(reference: Path, tmp_path: Path) -> None:
    """Killed between plan.json and manifest.json: nothing is damaged, the run was cut short (status said
    corrupt); the same command takes over."""
    w = _copy(reference, tmp_path / "w", ("import",))
    killed = skel("render", "-w", w, "-j", "0", "-q", check=False, env_extra={CRASH: "wrote:plan.json"})
    assert killed.returncode == -signal.SIGKILL and not list((w / "render").glob(f"*/{MANIFEST}"))
    assert _status(w)["render"] == ["interrupted"]
    skel("render", "-w", w, "-j", "0", "-q")
    assert _data(_only(w, "render")) == _data(_only(reference, "render"))


def test_a_file_made_meanwhile_is_kept_when_it_may_not_be_overwritten(tmp_path: Path) -> None:
    """Two `skel export` to one path, both started before either wrote it: each found no file at its start, and
    the second replaced the first's without --force. Without overwrite, the path is linked in only if free."""
    from pipeline.atomic import atomic_path

    final = tmp_path / "model.onnx"
    with pytest.raises(FileExistsError, match="made meanwhile by another command"):
        with atomic_path(final, overwrite=False) as tmp:
            tmp.write_bytes(b"mine")
            final.write_bytes(b"theirs")  # the other export, done first
    assert final.read_bytes() == b"theirs" and sorted(tmp_path.iterdir()) == [final]
    with atomic_path(final) as tmp:  # --force
        tmp.write_bytes(b"mine")
    assert final.read_bytes() == b"mine" and sorted(tmp_path.iterdir()) == [final]


def test_an_output_folder_without_its_manifest_is_named_as_such(tmp_path: Path) -> None:
    """`predict --model W/train/FP` (or --from) of an output whose manifest.json was lost said '0 train outputs
    match W/train/FP', as if the path were a mistyped fingerprint."""
    from pipeline.inputs import find_output

    out = tmp_path / "w" / "train" / "c8acf0925a414bd9"
    out.mkdir(parents=True)
    (out / "best.pt").write_bytes(b"weights")
    with pytest.raises(SkelError, match=rf"^{out}: no manifest.json: not a stage output, or one whose manifest was "
                                        "lost$"):
        find_output(tmp_path / "w", ("train",), str(out))


def test_a_command_suggested_for_a_workdir_with_spaces_can_be_pasted(tmp_path: Path) -> None:
    """The commands an error suggests quote a path that a shell would split (``skel verify --repair -w wd Ü``)."""
    w = tmp_path / "my runs Ü"
    w.mkdir()
    with pytest.raises(SkelError) as err:
        find_output(w, ("render",))
    assert f"(run `skel render -w '{w}'` first)" in str(err.value)
