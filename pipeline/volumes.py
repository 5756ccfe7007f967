"""Zarr v3 stores of rendered outputs: heatmap volumes (one array per stage shard) and per-sample arrays.

Heatmap volumes (docs/architecture.md, Volumes)::

    volumes.zarr/              zarr group; attributes describe the whole set (kind, sigma, flip_perm, ...)
    volumes.zarr/<shard>/      one array per stage shard: [F, K, H, W], the frames of all its samples
                               one after another; one inner chunk per frame (blosc lz4 + crc32c) inside
                               a single zarr shard file, so a shard of 64 samples is two files
    index.parquet              sample_id, array, offset (first frame row), n_frames, label, split, crop box

A frame is the unit every reader wants (a training clip is a set of frames), so each frame is its own
chunk; its K channels are contiguous, which compresses and decodes faster than channels-last pixels.
Workers write whole shard arrays with ``write_frames`` (the zarr shard file is laid out by us, to the
sharding codec's specification, because zarr-python's write path costs ~1 ms per chunk); any zarr
reader opens them. The training loader decodes frames straight into its batch buffer with
``VolumeStore.read_frames``; every chunk's crc32c is checked there, and a missing or damaged chunk is an
error naming the output, sample and file, never zeros.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shutil
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import google_crc32c
import numcodecs.blosc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from pipeline.atomic import atomic_path, temp_name
from pipeline.errors import SkelError
from pipeline.triplets import write_errors
from pipeline.workdir import dir_size

GROUP = "volumes.zarr"
INDEX = "index.parquet"
CHUNK_FILE = "c.0.0.0.0"  # the one zarr shard of a [F, K, H, W] array (chunk keys separated by ".")
EMPTY = 2**64 - 1  # the sharding index's offset/nbytes of an absent chunk

INDEX_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("array", pa.string()),
        ("offset", pa.int64()),
        ("n_frames", pa.int32()),
        ("label", pa.int32()),
        ("split", pa.string()),
        ("nbytes", pa.int64()),
        ("img_shape", pa.list_(pa.int32())),
        ("crop_box", pa.list_(pa.int32())),
        ("frames", pa.list_(pa.int32())),
    ]
)

# Stored dtype -> factor that turns stored values back into heatmap values in [0, 1].
SCALES = {"float16": 1.0, "float32": 1.0, "uint8": 1.0 / 255.0}

# One thread per codec call: workers and loader processes are the parallelism, and blosc's global
# thread pool would add locking and idle spinning to every small frame.
numcodecs.blosc.use_threads = False
# lz4 at level 9 encodes as fast as level 1 on heatmap frames, and is smaller and faster to decode.
_BLOSC = {"cname": b"lz4", "clevel": 9, "shuffle": numcodecs.blosc.NOSHUFFLE}


def sample_name(sample_id: str) -> str:
    """A filesystem-safe, collision-free file or array name for a sample id."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id)[:60]
    return f"{safe}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}"


def create_group(out: Path, attributes: dict, group: str = GROUP) -> None:
    """Create (or reopen) the arrays' group with its set-wide attributes. Driver only."""
    zarr.open_group(out / group, mode="a", zarr_format=3, attributes=attributes)


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
        self.tmp = temp_name(self.final)
        self.frame_shape, self.dtype = tuple(frame_shape), np.dtype(dtype)
        shutil.rmtree(self.tmp, ignore_errors=True)
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
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        return dir_size(self.final)

    def abort(self) -> None:
        self._file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_frames(group: Path, name: str, frames: np.ndarray, attributes: dict | None = None) -> int:
    """Write ``frames`` [F, K, H, W] as ``group/name`` in one go (``FrameWriter``); return bytes on disk."""
    writer = FrameWriter(group, name, frames.shape[1:], frames.dtype)
    writer.add(frames)
    return writer.close(attributes)


def write_array(
    group: Path, name: str, data: np.ndarray, attributes: dict, *, chunks: tuple[int, ...],
    dimension_names: tuple[str, ...], shards: tuple[int, ...] | None = None,
) -> int:
    """Write ``group/name`` through zarr, atomically (temporary array, then rename), zstd-compressed;
    return its bytes on disk. For per-sample arrays (RGB frames)."""
    final = group / name
    tmp = temp_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    arr = zarr.create_array(
        store=str(tmp), shape=data.shape, chunks=chunks, shards=shards, dtype=data.dtype,
        compressors=ZstdCodec(level=3), fill_value=0, dimension_names=dimension_names, attributes=attributes,
        zarr_format=3,
        # Skipping zarr's all-zero check triples write speed; frame chunks are rarely all zero.
        config={"write_empty_chunks": True},
    )  # fmt: skip
    arr[...] = data
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return dir_size(final)


def write_index(out: Path, rows: list[dict], schema: pa.Schema = INDEX_SCHEMA) -> None:
    """Write index.parquet (driver only), atomically."""
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(out / INDEX) as tmp:
        pq.write_table(table, tmp)


def finalize_arrays(out: Path, records: dict[str, dict], stage: str, attributes: dict, group: str = GROUP,
                    schema: pa.Schema = INDEX_SCHEMA) -> dict:
    """Driver: the group with its set-wide attributes, index.parquet and errors.parquet from the shard
    records (``rows`` and ``errors`` lists); returns the manifest summary."""
    rows = [r for sid in sorted(records) for r in records[sid]["rows"]]
    errors = [e for sid in sorted(records) for e in records[sid]["errors"]]
    create_group(out, attributes, group)
    write_index(out, rows, schema)
    write_errors(out, errors, stage)
    nbytes = [r["nbytes"] for r in rows]
    return {
        "samples": len(rows),
        "errors": len(errors),
        "bytes": int(sum(nbytes)),
        "bytes_per_sample": int(np.mean(nbytes)) if nbytes else 0,
    }


@dataclass
class ArrayStore:
    """Read side of an output of per-sample arrays (RGB frames): the index, set attributes, opened arrays."""

    path: Path
    group: ClassVar[str] = GROUP

    @cached_property
    def index(self) -> pa.Table:
        try:
            return pq.read_table(self.path / INDEX)
        except (OSError, pa.ArrowInvalid) as exc:
            raise SkelError(f"{self.path / INDEX}: cannot read the index ({exc})") from None

    @cached_property
    def attrs(self) -> dict:
        meta = json.loads((self.path / self.group / "zarr.json").read_text())
        return meta.get("attributes", {})

    @cached_property
    def _arrays(self) -> dict[str, zarr.Array]:
        return {}

    def array(self, name: str) -> zarr.Array:
        """The sample's array, opened once per store object (opening costs more than a small read)."""
        if name not in self._arrays:
            self._arrays[name] = zarr.open_array(store=str(self.path / self.group / name), mode="r")
        return self._arrays[name]


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
        self._spans = self.index.tolist()  # python ints: the per-frame lookup is on the loader's hot path
        self._data_end = len(self._map) - size

    def decode(self, row: int, out: memoryview | np.ndarray) -> None:
        """Decode frame ``row`` into ``out`` (a writable buffer of one frame)."""
        off, nbytes = self._spans[row]
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


@dataclass
class VolumeStore(ArrayStore):
    """Heatmap volumes of a render output: per-sample rows of the index, frames decoded on demand."""

    @cached_property
    def rows(self) -> dict[str, dict]:
        """sample_id -> its index row (without the long ``frames`` list)."""
        cols = [c for c in self.index.column_names if c != "frames"]
        return {r["sample_id"]: r for r in self.index.select(cols).to_pylist()}

    @cached_property
    def _full_rows(self) -> dict[str, dict]:
        return {r["sample_id"]: r for r in self.index.to_pylist()}

    def meta(self, sample_id: str) -> dict:
        """The sample's full index row, with ``frames`` (the original frame indices kept)."""
        return self._full_rows[sample_id]

    @cached_property
    def scale(self) -> float:
        return SCALES[self.attrs.get("dtype", "uint8")]

    @cached_property
    def _chunks(self) -> dict[str, FrameChunks]:
        return {}

    def chunks(self, array: str) -> FrameChunks:
        """A shard array, opened (mapped, index checked) once per store object."""
        if array not in self._chunks:
            path = self.path / self.group / array
            try:
                self._chunks[array] = FrameChunks(path)
            except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
                raise SkelError(f"{path}: cannot open volume array ({type(exc).__name__}: {exc})") from None
        return self._chunks[array]

    def read_frames(self, sample_id: str, frames: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Decode the sample's ``frames`` (indices into its own frames) into ``out`` [len(frames), K, H, W]
        of the stored dtype: no conversion, no intermediate copy."""
        row = self.rows[sample_id]
        arr = self.chunks(row["array"])
        for j, t in enumerate(frames.tolist()):
            if not 0 <= t < row["n_frames"]:
                raise IndexError(f"{sample_id}: frame {t} outside 0..{row['n_frames'] - 1}")
            try:
                arr.decode(row["offset"] + t, out[j])
            except SkelError as exc:
                raise SkelError(f"{self.path.name} sample {sample_id}: {exc}") from None
        return out

    def read(self, sample_id: str, frames: np.ndarray | None = None) -> np.ndarray:
        """float32 [K, T', H, W] heatmap values of the given frames (all when None)."""
        row = self.rows[sample_id]
        frames = np.arange(row["n_frames"]) if frames is None else np.asarray(frames, np.int64)
        arr = self.chunks(row["array"])
        uniq, inverse = np.unique(frames, return_inverse=True)  # test views share frames: decode each once
        raw = self.read_frames(sample_id, uniq, np.empty((len(uniq), *arr.shape[1:]), arr.dtype))
        out = raw[inverse].transpose(1, 0, 2, 3).astype(np.float32)
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out
