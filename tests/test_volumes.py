"""Volume storage: shard arrays that plain zarr reads, a handful of files per shard, checked chunks."""

from __future__ import annotations

import struct
from pathlib import Path

import google_crc32c
import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from pipeline.cluster import Cluster
from pipeline.errors import SkelError
from pipeline.runner import run_stage
from stages.import_pkl import ImportParams, ImportStage
from stages.render.stage import RenderParams, RenderStage
from stores.shard_codec import CHUNK_FILE, write_frames
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
    from stores.shard_codec import FrameChunks

    out = np.empty((2, 8, 8), np.uint8)
    FrameChunks(tmp_path / "a").decode(1, out)
    assert out.max() == 9
    with pytest.raises(SkelError, match="frame 2 is missing"):
        FrameChunks(tmp_path / "a").decode(2, out)
