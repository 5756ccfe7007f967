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


@pytest.fixture(scope="module")
def torch_threads(request: pytest.FixtureRequest):
    """The module's ``TORCH_THREADS`` torch threads (default 1) while its tests run, the count restored after,
    so no module's choice leaks into the next: `pytestmark = pytest.mark.usefixtures("torch_threads")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(getattr(request.module, "TORCH_THREADS", 1))
    yield
    torch.set_num_threads(before)


def needs_shared(*paths: Path) -> None:
    """Stop a test whose ../shared files are missing: a failure in CI (CI=true), where they must be there,
    a skip elsewhere (a checkout without them still runs the rest of the suite)."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            f"shared resources missing: {missing[0]} (set SKEL_SHARED)")


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


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a failed command (checked: non-zero exit, one such line, no traceback)."""
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def remount(path: Path, options: str) -> None:
    """Change a mounted tmpfs's options (``size=…``, ``ro``, ``rw``) with its files on it."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


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
