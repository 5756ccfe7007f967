"""Restricted unpickling for user-supplied pickles (pyskl annotation files), and their atomic writing.

`pickle.load` runs whatever callable a pickle names, so a downloaded `.pkl` can execute code. Annotation
files only need plain containers, numbers, strings and numpy arrays; `load_pickle` resolves exactly the
globals those need from a fixed table (it never imports a module a pickle names) and refuses the rest.
`dump_pickle` writes one (protocol 4, as pyskl's) under a temporary name, renamed into place.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
from collections.abc import Callable
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any, BinaryIO

import numpy as np
from numpy._core import multiarray as _multiarray
from numpy._core import numeric as _numeric

from pipeline.atomic import write_bytes
from pipeline.digests import check_planned
from pipeline.errors import FileError

__all__ = ["UnsafePickleError", "dump_pickle", "load_pickle"]


class UnsafePickleError(FileError):
    """A pickle names a global outside the allow-list (possible code execution)."""


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object for everything numpy arrays, scalars and dtypes pickle to."""
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        # a defaultdict (splits built with defaultdict(list)) loads as a plain dict of its items
        ("collections", "defaultdict"): _plain_dict,
        # Protocol <= 2 stores bytes (e.g. an array's buffer) as _codecs.encode(str, 'latin1').
        ("_codecs", "encode"): _latin1_encode,
    }
    for name in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"):
        for module in ("pathlib", "pathlib._local"):  # Python 3.13 pickles name pathlib._local
            table[(module, name)] = _path_text(PureWindowsPath if "Windows" in name else PurePosixPath)
    for name in ("list", "dict", "tuple", "int", "float", "str", "bool"):  # a defaultdict's factory, never called
        for module in ("builtins", "__builtin__"):
            table[(module, name)] = _FactoryOnly(name)
    for builtin in (set, frozenset, slice, complex, bytearray):
        # Protocol <= 2 pickles spell the module the Python 2 way.
        for module in ("builtins", "__builtin__"):
            table[(module, builtin.__name__)] = builtin
    # NumPy 1.x pickles name numpy.core, NumPy 2 names numpy._core; both resolve to the same objects.
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        table[(f"{core}.multiarray", "scalar")] = _multiarray.scalar
        table[(f"{core}.numeric", "_frombuffer")] = _numeric._frombuffer  # protocol 5
    # Pickling a dtype class (NumPy 2) references numpy.dtypes.<Name>DType.
    for name in dir(np.dtypes):
        obj = getattr(np.dtypes, name)
        if name.endswith("DType") and isinstance(obj, type) and issubclass(obj, np.dtype):
            table[("numpy.dtypes", name)] = obj
    return table


class _FactoryOnly:
    """A builtin type a pickle may name as a defaultdict's factory (``_plain_dict`` drops it) but not call: a
    ``list(bytearray(2**30))`` of some 60 bytes would take 8 GB."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *_: object) -> None:
        raise pickle.UnpicklingError(f"builtins.{self.name} may name a defaultdict's factory only")


def _plain_dict(default_factory: object = None, *_: object) -> dict:
    return {}


def _path_text(flavour: type[PurePath]) -> Callable[..., str]:
    """A pickled ``pathlib`` path of that flavour as its text."""

    def text(*parts: str) -> str:
        if not all(isinstance(part, str) for part in parts):
            raise pickle.UnpicklingError("a pathlib path of other parts than strings")
        return str(flavour(*parts))

    return text


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` restricted to the text encodings protocol-2 pickles use for bytes."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591", "ascii", "utf8"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode(encoding)


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose globals come only from `_ALLOWED`; no persistent ids."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # latin1: reads Python 2 pickles of numpy arrays
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                self._path, f"refusing to load {module}.{name} — pickles may only hold numbers, strings, lists, "
                "dicts and numpy arrays"
            ) from None


class _Hashed(io.RawIOBase):
    """A file read through sha256: what was unpickled is known to be the bytes of that digest."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.hash = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.f.readinto(buffer)
        self.hash.update(memoryview(buffer)[:n])
        return n

    def hexdigest(self) -> str:
        while self.read(1 << 20):  # whatever follows the pickle's end counts too
            pass
        return self.hash.hexdigest()


def load_pickle(path: Path, sha256: str | None = None) -> object:
    """Load a pickle that may only contain builtin containers/scalars and numpy arrays.

    Raises `UnsafePickleError` (a ValueError) when it names anything else, and `ValueError` when the file
    is truncated or corrupt. A missing file raises the usual `OSError`. With ``sha256``, the bytes read must have
    that digest (a file planned by its digest and replaced since is refused: `SkelError`), checked as they are read.
    """
    path = Path(path)
    with path.open("rb") as f:
        try:
            if sha256 is None:
                return _RestrictedUnpickler(f, path).load()
            hashed = _Hashed(f)
            data = _RestrictedUnpickler(io.BufferedReader(hashed), path).load()
            check_planned(path, hashed.hexdigest(), sha256)
            return data
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, UnicodeDecodeError, OverflowError, MemoryError) as e:  # fmt: skip
            f.seek(0)
            if f.read(2) == b"\x1f\x8b":
                raise ValueError(f"{path}: gzip-compressed, not a pickle: gunzip it first") from None
            raise ValueError(f"{path}: not a readable pickle: {type(e).__name__}: {e}") from e


def dump_pickle(obj: object, path: Path, *, overwrite: bool = True) -> None:
    """Write ``obj`` as a protocol-4 pickle (what pyskl writes), atomically: a killed writer leaves no
    half-written pickle under ``path``, and the next write of ``path`` removes the temporary it left.
    ``overwrite`` off: a file made at ``path`` meanwhile is kept (pipeline.atomic.atomic_path)."""
    write_bytes(Path(path), pickle.dumps(obj, protocol=4), reclaim=True, overwrite=overwrite)
