"""Shared fixtures: the ../shared resources (fail loudly when missing) and small synthetic data sets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKEL_SHARED", REPO.parent / "shared"))
SKEL = [sys.executable, "-m", "cli"]


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared resources not found at {SHARED} (set SKEL_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def penn_pkl(shared: Path) -> Path:
    path = shared / "data" / "penn_action" / "penn_action_coco17.pkl"
    if not path.is_file():
        pytest.fail(f"Penn Action pickle missing: {path}")
    return path


@pytest.fixture(scope="session")
def synth_pkl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """36 synthetic clips (6 actions x 6), some with two people."""
    from apps.synth import generate, write_pickle

    path = tmp_path_factory.mktemp("synth") / "synth.pkl"
    write_pickle(generate(6, seed=0), path)
    return path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """`skel demo` on a small synthetic set (trains both streams): its workdir and the finished process."""
    workdir = tmp_path_factory.mktemp("demo") / "w"
    return workdir, skel("demo", "-w", workdir, "--per-class", "6", "-j", "0")


def skel(
    *args: str | Path, cwd: Path = REPO, check: bool = True, env_extra: dict | None = None, **kw
) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (as a user would)."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO), **(env_extra or {})}
    proc = subprocess.run([*SKEL, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"skel {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc
