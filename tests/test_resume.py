"""Resume at every boundary: a recipe run (import -> render -> train -> test) killed with SIGKILL at each
shard commit, between a shard's files and its commit, mid-epoch and inside each finalize, then rerun ONCE,
ends with every output byte-identical to an uninterrupted run's.

The kills land at exact points through crash points (``SKEL_CRASH_AT``, pipeline/faults.py): the process
kills itself there as ``kill -9`` would, so no test races a timer.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from apps.synth import generate
from stores.safepickle import dump_pickle
from tests.support import RESUME_RECIPE, output_files, skel

STAGES = ("import", "render", "train", "test")
# Every boundary of the run above: import (1 shard), render (4 shards of 5 samples or fewer), train (4 epochs of 3
# steps), test (3 shards): each commit, files written but not committed, mid-epoch, each finalize's files.
POINTS = [
    ("import", "commit:import/00000"), ("import", "finalized:import"),
    ("render", "commit:render/00000"), ("render", "uncommitted:render/00001"), ("render", "commit:render/00003"),
    ("render", "wrote:index.parquet"), ("render", "finalized:render"),
    ("train", "commit:train/epoch-000"), ("train", "commit:train/epoch-001"), ("train", "commit:train/epoch-002"),
    ("train", "commit:train/epoch-003"), ("train", "uncommitted:train/epoch-001"), ("train", "step:5"),
    ("train", "wrote:003.pt"), ("train", "wrote:last.pt"), ("train", "wrote:best.pt"),
    ("train", "wrote:metrics.jsonl"), ("train", "finalized:train"),
    ("test", "commit:test/00000"), ("test", "uncommitted:test/00002"), ("test", "wrote:scores.parquet"),
    ("test", "finalized:test"),
]  # fmt: skip


def _recipe(root: Path, upto: str, pkl: Path) -> None:
    """The recipe's steps up to and including stage ``upto`` (a kill in render needs no training after it)."""
    root.mkdir(parents=True, exist_ok=True)
    steps = RESUME_RECIPE.split("\n[[step]]\n")
    keep = steps[: 1 + STAGES.index(upto) + 1]
    (root / "recipe.toml").write_text("\n[[step]]\n".join(keep).format(pkl=pkl))


def _run(workdir: Path, crash_at: str | None = None):
    env = {"SKEL_CRASH_AT": crash_at} if crash_at else None
    return skel("run", workdir / "recipe.toml", "-w", workdir / "w", "-j", "0", "-q", check=crash_at is None,
                env_extra=env)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recipe over 18 synthetic clips (6 classes x 3), not run yet."""
    root = tmp_path_factory.mktemp("resume")
    dump_pickle(generate(3, seed=0), root / "synth.pkl")
    (root / "recipe.toml").write_text(RESUME_RECIPE.format(pkl=root / "synth.pkl"))
    return root


@pytest.fixture(scope="module")
def whole(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workdir of an uninterrupted run."""
    root = tmp_path_factory.mktemp("whole")
    shutil.copy(prepared / "recipe.toml", root / "recipe.toml")
    _run(root)
    return root


def test_the_boundaries_exist(whole: Path) -> None:
    """The run has the shards and files the kill points name (else a kill point would never fire)."""
    files = output_files(whole)
    assert {"index.parquet", "003.pt", "last.pt", "best.pt", "metrics.jsonl", "scores.parquet"} <= {
        Path(p).name for p in files}
    assert sum("/epochs/" in p and p.endswith(".jsonl") for p in files) == 4
    shards = {p.relative_to(whole / "w").as_posix() for p in (whole / "w").glob("*/*/_shards/*.json")}
    for stage, point in POINTS:
        if point.startswith(("commit:", "uncommitted:")):
            assert any(s.startswith(f"{stage}/") and s.endswith(f"/{point.split('/')[1]}.json") for s in shards), point


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "point"), POINTS, ids=[p for _, p in POINTS])
def test_killed_at_any_boundary_one_rerun_gives_the_same_bytes(prepared: Path, whole: Path, tmp_path: Path,
                                                               stage: str, point: str) -> None:
    _recipe(tmp_path / "run", stage, prepared / "synth.pkl")  # the same source path: samples.parquet records it
    for done in STAGES[: STAGES.index(stage)]:  # the stages before the killed one, as the whole run left them
        shutil.copytree(whole / "w" / done, tmp_path / "run" / "w" / done)
    killed = _run(tmp_path / "run", crash_at=point)
    assert killed.returncode == -signal.SIGKILL, f"never reached {point}: {killed.stderr[-2000:]}"
    _run(tmp_path / "run")  # one rerun
    got = output_files(tmp_path / "run")
    want = {p: data for p, data in output_files(whole).items() if p.split("/")[0] in STAGES[: STAGES.index(stage) + 1]}
    assert sorted(got) == sorted(want)
    assert [p for p in want if got[p] != want[p]] == []


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated, rerun", "flipped, verify --repair"])
def test_a_damaged_state_file_held_twice_is_put_back_not_retrained(whole: Path, tmp_path: Path, how: str) -> None:
    """The newest epoch's state file of a complete training is ``last.pt`` byte for byte; damaged, it made the
    rerun (and verify --repair) train every epoch again, the earlier states being released: one damaged file cost
    a whole training. It is copied back from its twin now, and no epoch reruns."""
    shutil.copytree(whole, tmp_path / "run")
    (state,) = (tmp_path / "run" / "w" / "train").glob("*/epochs/003.pt")
    data = bytearray(state.read_bytes())
    if how.startswith("truncated"):
        state.write_bytes(data[: len(data) // 2])
        proc = _run(tmp_path / "run")
    else:
        data[len(data) // 2] ^= 0x01
        state.write_bytes(data)
        proc = skel("verify", "-w", tmp_path / "run" / "w", "--repair", "-j", "0", "-q")
    assert "1 damaged file(s) of" in proc.stderr and "put back from identical copies" in proc.stderr, proc.stderr
    assert "epoch 1/" not in proc.stderr and "training clips x" not in proc.stderr  # no epoch trained again
    got, want = output_files(tmp_path / "run"), output_files(whole)
    assert sorted(got) == sorted(want) and [p for p in want if got[p] != want[p]] == []


@pytest.mark.slow
def test_one_repair_mends_damage_along_a_chain_of_outputs(whole: Path, tmp_path: Path) -> None:
    """Damage in the import, the render and the test of a model trained on that render: the test's repair checks
    its model's volumes too, and ran before the render's was repaired (a second --repair was needed). Outputs are
    repaired after all those they were made from."""
    shutil.copytree(whole, tmp_path / "run")
    w = tmp_path / "run" / "w"
    damage = {"import/*/triplets/*.parquet": 0.5, "render/*/index.parquet": 0.5, "test/*/scores.parquet": 0.0}
    for path, keep in ((next(w.glob(pattern)), keep) for pattern, keep in damage.items()):
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
    proc = skel("verify", "-w", w, "--repair", "-j", "0", "-q", check=False)
    assert proc.returncode == 0, proc.stderr
    got, want = output_files(tmp_path / "run"), output_files(whole)
    assert sorted(got) == sorted(want) and [p for p in want if got[p] != want[p]] == []
