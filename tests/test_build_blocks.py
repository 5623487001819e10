"""graft build across blocks: tiles never cross a split, and no photo found in the region is lost to ownership."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from affine import Affine
from helpers_build import build_config, make_world, shared_dataset

from graft.config import validate
from graft.dataset.shards import iter_tiles_with_photos
from graft.geometry import TileGrid
from graft.pipeline.build import BuildConfig, build_dataset
from graft.pipeline.region import Region

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _footprints(out_dir, region: Region) -> list[tuple[str, object, int]]:
    """(split, footprint in the region's CRS, partition) of every written tile, from the part tile tables."""
    rows = [r for p in sorted((out_dir / "parts").glob("part-*")) for r in pq.read_table(p / "tiles.parquet").to_pylist()]
    return [(r["split"], region.footprint(TileGrid(r["crs"], Affine(*r["transform"][:6]), r["size"])), r["partition"])
            for r in rows]


def test_no_train_tile_footprint_overlaps_a_val_or_test_footprint(tmp_path):
    # Dense photos and large tiles (640 m on 1 km blocks): many tiles reach into a neighbouring block.
    world = make_world(tmp_path / "world", n_scattered=160, n_cluster=5)
    cfg = validate(BuildConfig, build_config(world, tmp_path / "ds", **{
        "region.block_km": 1.0, "satellite.tile_size": 64, "split": {"train": 0.5, "val": 0.25, "test": 0.25}}))
    summary = build_dataset(cfg)
    region = Region.from_config(cfg.region)
    tiles = _footprints(tmp_path / "ds", region)
    assert len({p for _, _, p in tiles}) >= 10 and {s for s, _, _ in tiles} == {"train", "val", "test"}
    crossing = summary.stats["rejections"]["counts"].get("tile_crosses_split", 0)
    assert crossing > 0 and summary.stats["counts"]["tiles_crossing_split"] > 0  # the guard had work to do
    train = [f for s, f, _ in tiles if s == "train"]
    held_out = [(s, f) for s, f, _ in tiles if s != "train"]
    for f in train:
        for _, g in held_out:
            assert f.intersection(g).area == 0, "a train tile overlaps a val/test tile"
    for i, (s, f) in enumerate(held_out):
        for t, g in held_out[i + 1:]:
            assert s == t or f.intersection(g).area == 0, "a val tile overlaps a test tile"


def test_shard_max_tiles_writes_several_aligned_shards_per_block(tmp_path, tmp_path_factory):
    base = shared_dataset(tmp_path_factory)
    cfg = validate(BuildConfig, build_config(base.world, tmp_path / "ds", shard_max_tiles=2))
    build_dataset(cfg)
    manifest = pq.read_table(tmp_path / "ds" / "manifest.parquet").to_pylist()
    by_part: dict[int, set[str]] = {}
    for r in manifest:
        by_part.setdefault(r["partition"], set()).add(r["tile_shard"])
    assert max(len(v) for v in by_part.values()) >= 2, "no partition was split into several shards"
    shard_of_tile = {r["tile_id"]: r["tile_shard"] for r in manifest}
    n_tiles = 0
    for shard in sorted({r["tile_shard"] for r in manifest}):
        tiles = list(iter_tiles_with_photos(tmp_path / "ds" / shard))  # raises if the photo shard is misaligned
        assert 1 <= len(tiles) <= 2
        for _, record, images in tiles:
            assert shard_of_tile[record["tile_id"]] == shard and len(images) == len(record["photos"])
        n_tiles += len(tiles)
    assert n_tiles == len(shard_of_tile)
    # The same photos and tiles as the build with one shard per block.
    assert sorted((r["photo_id"], r["tile_id"]) for r in manifest) == sorted(
        (r["photo_id"], r["tile_id"]) for r in pq.read_table(f"{base.cfg.out_dir}/manifest.parquet").to_pylist())
