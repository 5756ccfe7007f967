"""Volume storage: shard arrays that plain zarr reads, a handful of files per shard, checked chunks."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import google_crc32c
import numcodecs.blosc
import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from pipeline.cluster import Cluster
from pipeline.errors import SkelError
from pipeline.native import load_kernel
from pipeline.runner import run_stage
from stages.import_pkl import ImportParams, ImportStage
from stages.render.stage import RenderParams, RenderStage
from stores import shard_codec
from stores.shard_codec import CHUNK_FILE, FrameChunks, write_frames
from stores.volumes import GROUP, VolumeStore


@pytest.fixture(scope="module")
def rendered(synth_pkl: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("vol")
    run_stage(ImportStage(), w, ImportParams(source=str(synth_pkl)), Cluster(workers=0), quiet=True)
    return run_stage(RenderStage(), w, RenderParams(kind="limb", samples_per_shard=8), Cluster(workers=0), quiet=True)


def test_readme_snippet_reads_a_sample_with_plain_zarr(rendered: Path) -> None:
    out, sid = str(rendered), VolumeStore(rendered).index.column("sample_id")[5].as_py()
    # --- the README's snippet -------------------------------------------------------------------------
    row = pq.read_table(f"{out}/index.parquet", filters=[("sample_id", "==", sid)]).to_pylist()[0]
    arr = zarr.open_array(f"{out}/volumes.zarr/{row['array']}", mode="r")
    volume = arr[row["offset"] : row["offset"] + row["n_frames"]]  # [T, K, H, W] uint8, heatmap x 255
    # ---------------------------------------------------------------------------------------------------
    assert volume.dtype == np.uint8 and volume.shape == (row["n_frames"], 17, 64, 64) and volume.max() > 100
    np.testing.assert_array_equal(volume.transpose(1, 0, 2, 3) * np.float32(1 / 255), VolumeStore(rendered).read(sid))


def test_a_garbled_store_metadata_file_is_named(rendered: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(rendered, tmp_path / "copy")
    meta = copy / GROUP / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:40])
    with pytest.raises(SkelError, match=rf"{meta}: cannot read the store's metadata \(JSONDecodeError"):
        assert VolumeStore(copy).attrs is None


def test_files_grow_with_shards_not_samples(rendered: Path) -> None:
    store = VolumeStore(rendered)
    shards = sorted(set(store.index.column("array").to_pylist()))
    assert len(shards) == -(-store.index.num_rows // 8) == 5  # 36 samples, 8 per shard
    files = sorted(str(p.relative_to(rendered / GROUP)) for p in (rendered / GROUP).rglob("*"))
    assert files == sorted(["zarr.json"] + [f"{s}{f}" for s in shards for f in ("", f"/{CHUNK_FILE}", "/zarr.json")])
    offsets = {}
    for row in store.rows.values():  # each shard's samples tile its frames without gaps or overlaps
        offsets.setdefault(row["array"], []).append((row["offset"], row["n_frames"]))
    for name, spans in offsets.items():
        spans.sort()
        assert spans[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:], strict=False))
        assert spans[-1][0] + spans[-1][1] == zarr.open_array(str(rendered / GROUP / name), mode="r").shape[0]


def test_writer_bytes_equal_zarrs_own_writer(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 4, (7, 3, 16, 16)).astype(np.uint8) * 60
    write_frames(tmp_path, "ours", frames)
    ref = zarr.create_array(
        store=str(tmp_path / "zarr"), shape=frames.shape, chunks=(1, 3, 16, 16), shards=frames.shape, dtype="uint8",
        compressors=[BloscCodec(cname="lz4", clevel=9, shuffle="noshuffle"), Crc32cCodec()], fill_value=0,
        dimension_names=("frame", "k", "y", "x"), zarr_format=3,
        chunk_key_encoding={"name": "default", "separator": "."},
        config={"write_empty_chunks": True},
    )  # fmt: skip
    ref[...] = frames
    for name in (CHUNK_FILE, "zarr.json"):
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "zarr" / name).read_bytes()


def test_a_missing_chunk_is_an_error_not_the_fill_value(tmp_path: Path) -> None:
    """An index entry marked empty (what zarr writes for an absent chunk) must not read as zeros."""
    frames = np.full((4, 2, 8, 8), 9, np.uint8)
    write_frames(tmp_path, "a", frames)
    path = tmp_path / "a" / CHUNK_FILE
    data = bytearray(path.read_bytes())
    start = len(data) - 4 - 16 * 4
    index = bytearray(data[start:-4])
    index[16 * 2 : 16 * 3] = b"\xff" * 16  # frame 2: absent
    data[start:] = bytes(index) + struct.pack("<I", google_crc32c.value(bytes(index)))
    path.write_bytes(bytes(data))
    assert zarr.open_array(str(tmp_path / "a"), mode="r")[2].max() == 0  # plain zarr: the fill value
    out = np.empty((2, 8, 8), np.uint8)
    FrameChunks(tmp_path / "a").decode(1, out)
    assert out.max() == 9
    with pytest.raises(SkelError, match="frame 2 is missing"):
        FrameChunks(tmp_path / "a").decode(2, out)
    with pytest.raises(IndexError, match=r"frame -1 outside 0\.\.3"):  # not Python's last item
        FrameChunks(tmp_path / "a").decode(-1, out)


def _frames_kernel():
    return load_kernel("stores._frames", "the frame decoder")


def _sparse(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Mostly zeros with a few blobs, as heatmap frames are."""
    x = np.zeros(shape, dtype)
    for _ in range(5):
        k, y, z = (int(rng.integers(0, max(n - 4, 1))) for n in shape)
        x[k, y : y + 4, z : z + 4] = rng.integers(1, 250)
    return x


def _decode_in_c(chunk: bytes, nbytes: int) -> bytes | None:
    """One blosc chunk (its crc32c appended, as a shard holds it) through the C decoder: its bytes, or None when
    the decoder hands it back."""
    data = chunk + struct.pack("<I", google_crc32c.value(chunk))
    out = np.zeros((1, nbytes), np.uint8)
    done = _frames_kernel().decode(out, data, np.array([[0, len(data)]], np.uint64), np.array([0]), 0, len(data))
    return out.tobytes() if done == 1 else None


@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32])
def test_the_c_frame_decoder_reads_every_blosc_frame_the_writer_makes(tmp_path: Path, dtype: type) -> None:
    """stores/_frames.c decodes, without handing any back, what numcodecs' blosc lz4 writes: sparse frames, noise
    it stores uncompressed, frames too small to compress, one or several blocks (a shorter last one), split per
    byte of a wider dtype; and a shard's frames in any order, repeated, to the written bytes."""
    rng = np.random.default_rng(np.dtype(dtype).itemsize)
    for shape in [(17, 64, 64), (4, 120, 100), (1, 2, 3)]:
        noise = (rng.random(shape) * 255).astype(dtype)
        for x in (_sparse(rng, shape, dtype), noise):
            for blocksize in (0, 4000):  # blosc's own choice (one block here), several blocks
                chunk = numcodecs.blosc.compress(x, b"lz4", 9, numcodecs.blosc.NOSHUFFLE, blocksize)
                assert _decode_in_c(chunk, x.nbytes) == x.tobytes(), (shape, blocksize)
    frames = np.stack([_sparse(rng, (17, 32, 32), dtype) for _ in range(9)])
    write_frames(tmp_path, "a", frames)
    chunks = FrameChunks(tmp_path / "a")
    rows = np.array([8, 0, 3, 3, 7, 1])
    out = np.empty((len(rows), 17, 32, 32), dtype)
    flat = out.reshape(len(rows), -1).view(np.uint8)
    assert _frames_kernel().decode(flat, chunks._map, chunks.index, rows, 0, chunks._data_end) == len(rows)
    assert out.tobytes() == frames[rows].tobytes()


def test_a_damaged_lz4_stream_under_a_valid_checksum_is_an_error_or_numcodecs_bytes(tmp_path: Path) -> None:
    """Bytes changed inside a chunk whose crc32c is made to match again: the C decoder never reads or writes out of
    bounds (no crash), and what it decodes is what numcodecs decodes; the rest it hands back, and reading the
    frame then gives numcodecs' bytes or the frame's one-line error."""
    rng = np.random.default_rng(3)
    x = _sparse(rng, (17, 32, 32), np.uint8)
    chunk = numcodecs.blosc.compress(x, b"lz4", 9, numcodecs.blosc.NOSHUFFLE)
    decoded = handed_back = 0
    for trial in range(600):
        damaged = bytearray(chunk)
        for _ in range(int(rng.integers(1, 4))):
            damaged[int(rng.integers(16, len(chunk)))] = int(rng.integers(0, 256))
        ours = _decode_in_c(bytes(damaged), x.nbytes)
        ref = np.empty(x.nbytes, np.uint8)
        try:
            numcodecs.blosc.decompress(bytes(damaged), ref)
        except Exception:  # noqa: BLE001 - numcodecs' own verdict on the damaged chunk
            ref = None
        if ours is not None:
            decoded += 1
            assert ref is not None and ours == ref.tobytes(), trial
        else:
            handed_back += 1
    assert decoded > 0 and handed_back > 0
    write_frames(tmp_path, "a", np.stack([x, x]))
    path = tmp_path / "a" / CHUNK_FILE
    data = bytearray(path.read_bytes())
    first = struct.unpack("<Q", data[-4 - 32 : -4 - 24])[0]  # frame 0's offset in the index
    data[first + 20 : first + 24] = b"\xff\xff\xff\x7f"  # its lz4 block's size: past the chunk
    size = struct.unpack("<Q", data[-4 - 24 : -4 - 16])[0]
    crc = google_crc32c.value(bytes(data[first : first + size - 4]))
    data[first + size - 4 : first + size] = struct.pack("<I", crc)
    path.write_bytes(bytes(data))
    out = np.empty((2, 17, 32, 32), np.uint8)
    with pytest.raises(SkelError, match="frame 0 does not decode"):
        FrameChunks(tmp_path / "a").decode_rows(np.array([1, 0]), out)
    assert out[0].tobytes() == x.tobytes()  # frame 1, read before


def test_frames_of_another_blosc_kind_are_read_through_numcodecs(tmp_path: Path, monkeypatch) -> None:
    """A shard whose chunks use another blosc codec and shuffle (not what skel writes, but valid Zarr): the C
    decoder hands every frame back and each is read through numcodecs."""
    frames = np.stack([_sparse(np.random.default_rng(i), (5, 16, 16), np.float32) for i in range(4)])
    monkeypatch.setattr(shard_codec, "_BLOSC", {"cname": b"zstd", "clevel": 3, "shuffle": numcodecs.blosc.BITSHUFFLE})
    write_frames(tmp_path, "a", frames)
    monkeypatch.undo()
    chunks = FrameChunks(tmp_path / "a")
    rows = np.array([3, 1, 2])
    out = np.empty((3, 5, 16, 16), np.float32)
    flat = out.reshape(3, -1).view(np.uint8)
    assert _frames_kernel().decode(flat, chunks._map, chunks.index, rows, 0, chunks._data_end) == 0
    chunks.decode_rows(rows, out)
    assert out.tobytes() == frames[rows].tobytes()
