"""graft build across blocks: tiles never cross a split, and no photo found in the region is lost to ownership."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from affine import Affine
from helpers_build import build_config, make_world

from graft.config import validate
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
