"""WebDataset shards: writing, reading back, and refusing unsafe members."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds

from graft.dataset.layout import photo_shard_for
from graft.dataset.members import UnsafeShardMember, check_key, split_member_name
from graft.dataset.shards import (
    index_tile_shard,
    iter_photo_samples,
    iter_raw_samples,
    iter_tile_samples,
    photo_sample,
    tile_sample,
    write_samples,
)
from graft.geometry import tile_grid_around
from graft.imagery import encode_geotiff


def _tile_sample(key: str, n_photos: int = 2) -> dict:
    grid = tile_grid_around(45.0, 9.0, 16, 10.0)
    arr = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16)
    meta = {"tile_id": key, "grid": grid.to_json(), "bands": ["B4", "B3", "B2"], "date": "2021-05-01",
            "source": "test", "split": "train",
            "photos": [{"photo_id": f"p-{key}-{i}", "row": 1.5 + i, "col": 2.5} for i in range(n_photos)]}
    return tile_sample(key, encode_geotiff(arr, grid), meta)


def test_roundtrip_and_webdataset_reads_it(tmp_path):
    path = tmp_path / "tiles" / "tiles-00003.tar"
    n = write_samples(path, [_tile_sample("t-00003-00000"), _tile_sample("t-00003-00001", 3)])
    assert n == 2 and path.is_file()
    assert not list(path.parent.glob(".*.tmp")), "the atomic writer left a temp file behind"

    ours = list(iter_tile_samples(path))
    assert [s.tile_id for s in ours] == ["t-00003-00000", "t-00003-00001"]
    assert ours[1].array.dtype == np.uint16 and ours[1].array.shape == (3, 16, 16)
    assert np.array_equal(ours[0].array, np.arange(3 * 16 * 16).reshape(3, 16, 16))
    assert ours[0].grid == tile_grid_around(45.0, 9.0, 16, 10.0)
    assert len(ours[1].record["photos"]) == 3 and ours[0].emb is None

    indexed = list(index_tile_shard(path))
    assert [t.tile_id for t in indexed] == ["t-00003-00000", "t-00003-00001"] and all(t.complete for t in indexed)
    assert indexed[1].tif.read() == ours[1].tif and indexed[1].record == ours[1].record

    theirs = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in theirs] == ["t-00003-00000", "t-00003-00001"]
    assert json.loads(theirs[0]["json"])["tile_id"] == "t-00003-00000"
    assert set(theirs[0]) >= {"tif", "json"}


def test_shards_are_deterministic(tmp_path):
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    write_samples(a, [_tile_sample("t-1")])
    write_samples(b, [_tile_sample("t-1")])
    assert a.read_bytes() == b.read_bytes(), "same content must give byte-identical shards (fixed mtime, owner)"


def test_photo_samples_and_shard_pairing(tmp_path):
    path = tmp_path / "photos" / "photos-00007.tar"
    write_samples(path, [photo_sample("flickr-123", b"\xff\xd8jpeg", {"photo_id": "flickr-123"})])
    (s,) = list(iter_photo_samples(path))
    assert s.photo_id == "flickr-123" and s.image == b"\xff\xd8jpeg" and s.ext == "jpg"
    assert s.row == {"photo_id": "flickr-123"}
    assert photo_shard_for(tmp_path / "tiles" / "tiles-00007.tar") == path
    with pytest.raises(ValueError, match="not a tile shard name"):
        photo_shard_for(tmp_path / "x.tar")


@pytest.mark.parametrize("key", ["a.b", "a/b", "../x", "", "a b", "é", "x\n"])
def test_writer_refuses_bad_keys(tmp_path, key):
    with pytest.raises(ValueError, match="invalid shard sample key"):
        write_samples(tmp_path / "s.tar", [{"__key__": key, "json": {}}])
    assert not (tmp_path / "s.tar").exists(), "a failed write must not leave a shard"


@pytest.mark.parametrize("name", [
    "../evil.json", "/etc/passwd.json", "a/b.json", "..json", "key", "a.b/../c.json", "bad key.json",
    "k.ext/x", "C:\\x.json", "t-1..json",
])
def test_member_name_sanitiser_rejects(name):
    with pytest.raises(UnsafeShardMember):
        split_member_name(name)


@pytest.mark.parametrize(("name", "expected"), [
    ("t-00001-00002.tif", ("t-00001-00002", "tif")),
    ("t-00001-00002.emb.npy", ("t-00001-00002", "emb.npy")),
    ("flickr-123_x.jpg", ("flickr-123_x", "jpg")),
])
def test_member_name_sanitiser_accepts(name, expected):
    assert split_member_name(name) == expected
    assert check_key(expected[0]) == expected[0]


def _raw_tar(path, members):
    """Write a tar with hand-made members: (name, bytes) regular files or (name, TarInfo type, linkname)."""
    with tarfile.open(path, "w") as tar:
        for m in members:
            info = tarfile.TarInfo(m[0])
            if len(m) == 2:
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
            else:
                info.type, info.linkname = m[1], m[2]
                tar.addfile(info)


@pytest.mark.parametrize("members", [
    [("ok.json", b"{}"), ("../escape.json", b"{}")],
    [("/abs.json", b"{}")],
    [("dir/inner.json", b"{}")],
    [("link.json", tarfile.SYMTYPE, "/etc/passwd")],
    [("hard.json", tarfile.LNKTYPE, "ok.json")],
    [("a.json", b"{}"), ("b.json", b"{}"), ("a.tif", b"x")],  # a sample split across the shard
    [("a.json", b"{}"), ("a.json", b"{}")],  # duplicate member
])
def test_reader_refuses_unsafe_shards(tmp_path, members):
    path = tmp_path / "bad.tar"
    _raw_tar(path, members)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(UnsafeShardMember, match="bad.tar"):
        list(iter_raw_samples(path))
    with pytest.raises(UnsafeShardMember, match="bad.tar"):
        list(index_tile_shard(path))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "reading must never write files"
