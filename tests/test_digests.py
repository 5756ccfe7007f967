"""The workdir's digest store (`pipeline.digests`): a digest is reused only for the bytes it was taken of."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

import pipeline.digests as digests
from pipeline.digests import DIGESTS, file_digest, kept_in
from pipeline.integrity import sha256

SETTLED_S = 0.05


@pytest.fixture(autouse=True)
def settled_sooner(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files count as settled after 25 ms (a minute in use); each test waits 50 ms after writing one it hashes."""
    monkeypatch.setattr(digests, "SETTLED_NS", int(SETTLED_S * 1e9) // 2)


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    time.sleep(SETTLED_S)
    return path


def _digest(workdir: Path, path: Path) -> str:
    """The digest as a new run takes it (the store read from disk, no memo of this process)."""
    digests._hash.cache_clear()
    with kept_in(workdir):
        return file_digest(path)


def _same_times(path: Path, data: bytes) -> None:
    """Write other bytes of the same size into ``path`` and set its times back, as ``cp -p`` leaves them."""
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


def test_a_digest_is_kept_and_reused_for_the_same_file(tmp_path: Path) -> None:
    video = _written(tmp_path / "v.mp4", b"a" * 1000)
    assert _digest(tmp_path, video) == sha256(video)
    store = json.loads((tmp_path / DIGESTS).read_text())
    assert store[str(video)][-1] == sha256(video)
    store[str(video)][-1] = "kept"  # what the store holds is what a later run takes, not a fresh hash
    (tmp_path / DIGESTS).write_text(json.dumps(store))
    assert _digest(tmp_path, video) == "kept"


def test_the_entries_of_files_gone_are_dropped_when_the_store_is_written(tmp_path: Path) -> None:
    """A collection moved or deleted leaves no entries behind once a run keeps a new digest."""
    old, kept = _written(tmp_path / "old.mp4", b"a" * 10), _written(tmp_path / "kept.mp4", b"b" * 10)
    _digest(tmp_path, old), _digest(tmp_path, kept)
    old.unlink()
    _digest(tmp_path, _written(tmp_path / "new.mp4", b"c" * 10))
    assert set(json.loads((tmp_path / DIGESTS).read_text())) == {str(kept), str(tmp_path / "new.mp4")}


@pytest.mark.parametrize("how", ["rewritten", "copied over", "renamed over"])
def test_other_bytes_of_the_same_size_and_times_get_their_own_digest(tmp_path: Path, how: str) -> None:
    video = _written(tmp_path / "v.mp4", b"a" * 1000)
    first = _digest(tmp_path, video)
    other = _written(tmp_path / "other.bin", b"b" * 1000)
    os.utime(other, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns))
    if how == "rewritten":
        _same_times(video, other.read_bytes())
    elif how == "copied over":
        shutil.copy2(other, video)  # cp -p
    else:
        os.replace(other, video)
    assert _digest(tmp_path, video) == sha256(video) != first


def test_a_touch_hashes_once_more_and_keeps_the_digest(tmp_path: Path) -> None:
    video = _written(tmp_path / "v.mp4", b"a" * 1000)
    first = _digest(tmp_path, video)
    video.touch()
    time.sleep(SETTLED_S)
    assert _digest(tmp_path, video) == first
    assert json.loads((tmp_path / DIGESTS).read_text())[str(video)][1] == video.stat().st_mtime_ns  # kept anew


def test_a_file_changed_just_now_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second write within the filesystem's timestamp granularity would leave the same times: a file this fresh
    is hashed each time, not kept."""
    monkeypatch.setattr(digests, "SETTLED_NS", 3_600 * 10**9)
    video = tmp_path / "v.mp4"
    video.write_bytes(b"a" * 1000)
    assert _digest(tmp_path, video) == sha256(video)
    assert not (tmp_path / DIGESTS).exists()


@pytest.mark.parametrize("damage", ["not json", "a list", "a directory"])
def test_a_damaged_or_unwritable_store_is_left_aside(tmp_path: Path, damage: str) -> None:
    video = _written(tmp_path / "v.mp4", b"a" * 1000)
    store = tmp_path / DIGESTS
    if damage == "a directory":
        store.mkdir()
    else:
        store.write_text("{" if damage == "not json" else "[1]")
    assert _digest(tmp_path, video) == sha256(video)
    assert _digest(tmp_path, video) == sha256(video)


def test_runs_keep_each_others_digests(tmp_path: Path) -> None:
    """Two runs that read the store before either wrote it: the second's write keeps the first's entries."""
    a, b = (_written(tmp_path / f"{n}.mp4", n.encode() * 100) for n in "ab")
    first, second = digests._Store(tmp_path / DIGESTS), digests._Store(tmp_path / DIGESTS)
    first.digest(a)
    second.digest(b)
    first.save()
    second.save()
    assert set(json.loads((tmp_path / DIGESTS).read_text())) == {str(a), str(b)}



def test_a_plan_makes_no_workdir(tmp_path: Path) -> None:
    video = _written(tmp_path / "v.mp4", b"a" * 1000)
    assert _digest(tmp_path / "typo", video) == sha256(video)
    assert not (tmp_path / "typo").exists()
