"""The Zarr v3 shard file of a [F, K, H, W] frame array, written and read by hand (docs/architecture.md,
Volumes).

Each frame is one inner chunk (blosc lz4 + crc32c) inside a single zarr shard file, laid out to the sharding
codec's specification: zarr-python's write path is slow per chunk (bench/README.md, Render stage on Penn
Action), and the training loader wants to decode chosen frames straight into its batch buffer. Any zarr reader
opens the arrays written here. Every chunk's crc32c is checked on read, and a missing or damaged chunk is an
error naming the file and frame, never zeros.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import struct
from contextlib import ExitStack
from pathlib import Path

import google_crc32c
import numcodecs.blosc
import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from pipeline.atomic import atomic_dir
from pipeline.errors import SkelError
from pipeline.native import load_kernel
from pipeline.workdir import dir_size

CHUNK_FILE = "c.0.0.0.0"  # the one zarr shard of a [F, K, H, W] array (chunk keys separated by ".")
EMPTY = 2**64 - 1  # the sharding index's offset/nbytes of an absent chunk

# One thread per codec call: workers and loader processes are the parallelism, and blosc's global
# thread pool would add locking and idle spinning to every small frame.
numcodecs.blosc.use_threads = False
# lz4 at level 9 encodes as fast as level 1 on heatmap frames, and is smaller and faster to decode.
_BLOSC = {"cname": b"lz4", "clevel": 9, "shuffle": numcodecs.blosc.NOSHUFFLE}


def _encode_chunk(frame: np.ndarray) -> bytes:
    """One inner chunk as the codecs [bytes, blosc, crc32c] store it."""
    data = numcodecs.blosc.compress(frame, **_BLOSC)
    return data + struct.pack("<I", google_crc32c.value(data))


class FrameWriter:
    """Write ``group/name``, one [F, K, H, W] array, as frames arrive: each frame is compressed into the
    shard file at once (a stage shard's volumes never sit in memory together), and ``close`` adds the
    chunk index and zarr.json and renames the array into place. Deterministic: the same frames give the
    same bytes. An existing array of that name is replaced (a redone shard overwrites a killed run's)."""

    def __init__(self, group: Path, name: str, frame_shape: tuple[int, int, int], dtype: np.dtype) -> None:
        self.final = group / name
        self._commit = ExitStack()  # close() leaves the atomic_dir block (the rename), abort() never does
        self.tmp = self._commit.enter_context(atomic_dir(self.final))
        self.frame_shape, self.dtype = tuple(frame_shape), np.dtype(dtype)
        self.tmp.mkdir(parents=True)
        self._file = open(self.tmp / CHUNK_FILE, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._index: list[tuple[int, int]] = []
        self._pos = 0

    @property
    def frames(self) -> int:
        return len(self._index)

    def add(self, frames: np.ndarray) -> int:
        """Append [T, K, H, W] frames of the stored dtype; return the compressed bytes they took."""
        if frames.shape[1:] != self.frame_shape or frames.dtype != self.dtype:
            raise ValueError(f"frames must be {self.dtype} [T, {', '.join(map(str, self.frame_shape))}]")
        start = self._pos
        for frame in frames:
            chunk = _encode_chunk(frame)
            self._file.write(chunk)
            self._index.append((self._pos, len(chunk)))
            self._pos += len(chunk)
        return self._pos - start

    def close(self, attributes: dict | None = None) -> int:
        """Finish the shard file and zarr.json, rename into place; return the array's bytes on disk."""
        raw = np.asarray(self._index, "<u8").reshape(-1, 2).tobytes()
        self._file.write(raw + struct.pack("<I", google_crc32c.value(raw)))
        self._file.close()
        shape = (self.frames, *self.frame_shape)
        meta = self.tmp / ".meta"
        zarr.create_array(
            store=str(meta), shape=shape, chunks=(1, *self.frame_shape), shards=shape, dtype=self.dtype,
            compressors=[BloscCodec(cname="lz4", clevel=_BLOSC["clevel"], shuffle="noshuffle"), Crc32cCodec()],
            fill_value=0, dimension_names=("frame", "k", "y", "x"), attributes=attributes or {}, zarr_format=3,
            chunk_key_encoding={"name": "default", "separator": "."},
        )  # fmt: skip
        os.replace(meta / "zarr.json", self.tmp / "zarr.json")
        meta.rmdir()
        self._commit.close()
        return dir_size(self.final)

    def abort(self) -> None:
        self._file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_frames(group: Path, name: str, frames: np.ndarray, attributes: dict | None = None) -> int:
    """Write ``frames`` [F, K, H, W] as ``group/name`` in one go (``FrameWriter``); return bytes on disk."""
    writer = FrameWriter(group, name, frames.shape[1:], frames.dtype)
    writer.add(frames)
    return writer.close(attributes)


class FrameChunks:
    """One [F, K, H, W] shard array of a volume store, memory-mapped: decode any frames into a buffer.

    The sharding index (and its crc32c) is checked on open; each chunk's crc32c on every read.
    """

    def __init__(self, path: Path) -> None:
        meta = json.loads((path / "zarr.json").read_text())
        self.path = path
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["data_type"])
        file = path / CHUNK_FILE
        with open(file, "rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        n = self.shape[0]
        size = 16 * n + 4
        if len(self._map) < size:
            raise SkelError(f"{file}: truncated ({len(self._map)} bytes, its index alone needs {size})")
        raw = self._map[len(self._map) - size : len(self._map) - 4]
        (crc,) = struct.unpack("<I", self._map[len(self._map) - 4 :])
        if google_crc32c.value(raw) != crc:
            raise SkelError(f"{file}: chunk index checksum mismatch (damaged or truncated file)")
        self.index = np.frombuffer(raw, "<u8").reshape(n, 2)
        self._data_end = len(self._map) - size

    def decode_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Decode frames ``rows`` (int64, each inside the array) into ``out`` [len(rows), K, H, W] of the stored
        dtype: in one C call (stores/_frames.c), which hands any frame it does not decode (a missing or damaged
        chunk, a blosc frame of another kind) to ``decode``, for its error or its other format."""
        kernel = load_kernel("stores._frames", "the frame decoder")
        rows = np.ascontiguousarray(rows, np.int64)
        if not out.flags.c_contiguous or len(out) != len(rows):
            raise ValueError(f"out: expected a C-contiguous buffer of {len(rows)} frames")
        flat = out.reshape(len(rows), -1).view(np.uint8)
        start = 0
        while (start := kernel.decode(flat, self._map, self.index, rows, start, self._data_end)) < len(rows):
            self.decode(int(rows[start]), out[start])
            start += 1

    def decode(self, row: int, out: memoryview | np.ndarray) -> None:
        """Decode frame ``row`` into ``out`` (a writable buffer of one frame) through numcodecs."""
        if not 0 <= row < len(self.index):
            raise IndexError(f"{self.path / CHUNK_FILE}: frame {row} outside 0..{len(self.index) - 1}")
        off, nbytes = (int(v) for v in self.index[row])  # python ints: a damaged index must not wrap around
        if off == EMPTY:
            raise SkelError(f"{self.path / CHUNK_FILE}: frame {row} is missing")
        if nbytes < 4 or off + nbytes > self._data_end:
            raise SkelError(f"{self.path / CHUNK_FILE}: frame {row} lies outside the file (damaged index)")
        chunk = self._map[off : off + nbytes - 4]
        if google_crc32c.value(chunk) != struct.unpack("<I", self._map[off + nbytes - 4 : off + nbytes])[0]:
            raise SkelError(f"{self.path / CHUNK_FILE}: frame {row} checksum mismatch (damaged chunk)")
        try:
            numcodecs.blosc.decompress(chunk, out)
        except Exception as exc:  # noqa: BLE001 - any codec failure is a damaged chunk
            raise SkelError(f"{self.path / CHUNK_FILE}: frame {row} does not decode ({exc})") from None
