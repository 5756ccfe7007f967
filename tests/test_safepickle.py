"""stores.safepickle: loads annotation pickles, refuses code-executing ones without running them."""

from __future__ import annotations

import builtins
import collections
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import error_message
from stores.safepickle import UnsafePickleError, load_pickle


def _dump(obj: object, path: Path, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_loads_numpy2_arrays_and_scalars(tmp_path: Path, protocol: int) -> None:
    data = {
        "keypoint": np.arange(24, dtype=np.float32).reshape(1, 2, 6, 2),
        "label": np.arange(3, dtype=np.int64),
        "f32": np.float32(1.0),
        "i64": np.int64(3),
        "dtype": np.dtype("float16"),
        "dtype_cls": np.dtypes.Float32DType,
        "fortran": np.asfortranarray(np.ones((2, 3), dtype=np.int32)),
        "misc": (set([1]), frozenset([2]), slice(1, 2), 1 + 2j, b"raw", "text", None, True, 1.5),
        "ordered": collections.OrderedDict(a=1),
    }
    out = load_pickle(_dump(data, tmp_path / "ok.pkl", protocol))
    assert out["keypoint"].dtype == np.float32 and np.array_equal(out["keypoint"], data["keypoint"])
    assert out["label"].dtype == np.int64 and np.array_equal(out["label"], data["label"])
    assert type(out["f32"]) is np.float32 and out["f32"] == 1.0
    assert type(out["i64"]) is np.int64 and out["i64"] == 3
    assert out["dtype"] == np.float16 and out["dtype_cls"] is np.dtypes.Float32DType
    assert np.array_equal(out["fortran"], data["fortran"])
    assert out["misc"] == data["misc"] and out["ordered"] == data["ordered"]


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_a_defaultdict_and_pathlib_paths_load_as_a_dict_and_text(tmp_path: Path, protocol: int) -> None:
    """Splits built with ``defaultdict(list)`` and paths kept as ``pathlib`` objects are what users' scripts write:
    refused as unsafe, they failed the whole pickle. They load as plain values, calling nothing the pickle names."""
    import pathlib

    split = collections.defaultdict(list)
    split["train"] += ["a", "b"]
    data = {"split": split, "video": pathlib.PurePosixPath("/clips/a b.mp4"),
            "win": pathlib.PureWindowsPath("C:/clips/a.mp4"), "here": pathlib.Path("clips") / "c.mp4"}
    out = load_pickle(_dump(data, tmp_path / "ok.pkl", protocol))
    assert type(out["split"]) is dict and out["split"] == {"train": ["a", "b"]}
    assert (out["video"], out["win"], out["here"]) == ("/clips/a b.mp4", "C:\\clips\\a.mp4", "clips/c.mp4")


def test_a_defaultdicts_factory_is_never_called(tmp_path: Path) -> None:
    """list, int, str ... may be named as a defaultdict's factory; called, 60 bytes of pickle made a list of 2**27
    zeros (1 GB)."""
    path = tmp_path / "big.pkl"
    path.write_bytes(b"\x80\x02c__builtin__\nlist\nc__builtin__\nbytearray\nJ\x00\x00\x00\x08\x85R\x85R.")
    with pytest.raises(ValueError, match="builtins.list may name a defaultdict's factory only"):
        load_pickle(path)


def test_a_gzipped_pickle_is_named_as_such(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "data.pkl"
    path.write_bytes(gzip.compress(pickle.dumps({"annotations": []}, protocol=4)))
    with pytest.raises(ValueError, match=rf"^{path}: gzip-compressed, not a pickle: gunzip it first$"):
        load_pickle(path)


def test_loads_penn_action(penn_pkl: Path) -> None:
    data = load_pickle(penn_pkl)
    assert len(data["annotations"]) == 2326 and len(data["classes"]) == 15
    ann = data["annotations"][0]
    assert ann["keypoint"].dtype == np.float32 and ann["keypoint"].shape[2:] == (17, 2)


class _Payload:
    """Pickles as a call of `func(*args)` — what a malicious pickle does."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, object]:
    shell = f"touch {marker}"
    return {
        "os.system": _Payload(os.system, shell),
        "builtins.eval": _Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": _Payload(subprocess.Popen, ["touch", str(marker)]),
        "numpy.load": _Payload(np.load, str(marker)),
        "builtins.getattr": _Payload(getattr, "text", "upper"),
        # Hidden inside an otherwise valid annotation dict.
        "nested": {"annotations": [{"keypoint": np.zeros(2), "x": _Payload(os.system, shell)}]},
    }


@pytest.mark.parametrize("name", list(_payloads(Path("m"))))
def test_refuses_malicious(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    path = _dump(_payloads(marker)[name], tmp_path / "evil.pkl")
    with pytest.raises(UnsafePickleError, match="refusing to load") as err:
        load_pickle(path)
    assert str(err.value).startswith(f"{path}: refusing to load ") and isinstance(err.value, ValueError)
    assert error_message(err.value) == str(err.value)  # the CLI's line, without the exception's class name
    assert not marker.exists()


def test_refuses_protocol0_global(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil0.pkl"
    path.write_bytes(f"cos\nsystem\n(Vtouch {marker}\ntR.".encode())
    with pytest.raises(UnsafePickleError, match=r"os\.system|posix\.system"):
        load_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("blob", [b"", b"\x80\x04\x95", b"not a pickle at all", b"\x80\x04K\x01"])
def test_corrupt_pickles(tmp_path: Path, blob: bytes) -> None:
    good = pickle.dumps({"a": np.ones(100, np.float32)}, protocol=4)
    path = tmp_path / "bad.pkl"
    path.write_bytes(blob or good[: len(good) // 2])
    with pytest.raises(ValueError, match="not a readable pickle") as err:
        load_pickle(path)
    assert not isinstance(err.value, UnsafePickleError)
