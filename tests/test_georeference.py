"""Every photo's stored (row, col) maps back to its lat/lon through its tile's own GeoTIFF georeferencing.

Checked independently of graft.geometry: the transform and CRS are read from
the tile GeoTIFF with rasterio and the projection is done with pyproj.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from helpers_build import bilinear, mosaic_expected, shared_dataset
from pyproj import Geod, Transformer

from graft.dataset.shards import iter_photo_samples, iter_tile_samples

GEOD = Geod(ellps="WGS84")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    b = shared_dataset(tmp_path_factory)
    return b.world, b.cfg


def test_row_col_map_back_to_lat_lon_within_one_pixel(dataset):
    world, cfg = dataset
    manifest = {r["photo_id"]: r for r in pq.read_table(f"{cfg.out_dir}/manifest.parquet").to_pylist()}
    checked = 0
    for shard in sorted({r["tile_shard"] for r in manifest.values()}):
        for tile in iter_tile_samples(f"{cfg.out_dir}/{shard}", decode_tif=False):
            with rasterio.MemoryFile(io.BytesIO(tile.tif).getvalue()) as mem, mem.open() as src:
                transform, crs = src.transform, src.crs.to_string()
                assert (src.width, src.height) == (32, 32)
                pixel_m = abs(transform.a)
            assert pixel_m == pytest.approx(10.0)
            to_wgs = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
            for p in tile.record["photos"]:
                row = manifest[p["photo_id"]]
                assert (row["row"], row["col"]) == (p["row"], p["col"])
                assert row["tile_crs"] == crs
                x, y = transform @ (p["col"], p["row"])
                lon, lat = to_wgs.transform(x, y)
                _, _, dist = GEOD.inv(lon, lat, row["lon"], row["lat"])
                assert dist < pixel_m, f"{p['photo_id']}: {dist:.3f} m from its lat/lon"
                assert 0 <= p["row"] < 32 and 0 <= p["col"] < 32
                checked += 1
    assert checked == len(manifest) > 50


def test_tile_pixels_show_the_ground_under_each_photo(dataset):
    """The mosaic's bands are linear in its map coordinates: the tile, interpolated at a photo's (row, col),
    must carry the value the mosaic has at the photo's lat/lon, i.e. the chip is cut where the photo was taken
    and (row, col) points at the photo's spot in it. One tile pixel of error would be ~70 DN."""
    _, cfg = dataset
    manifest = {r["photo_id"]: r for r in pq.read_table(f"{cfg.out_dir}/manifest.parquet").to_pylist()}
    errors = []
    for shard in sorted({r["tile_shard"] for r in manifest.values()}):
        for tile in iter_tile_samples(f"{cfg.out_dir}/{shard}"):
            assert tile.array.dtype == np.uint16
            for p in tile.record["photos"]:
                got = np.array([bilinear(tile.array[b], p["row"], p["col"]) for b in (0, 1)])
                want = mosaic_expected(manifest[p["photo_id"]]["lat"], manifest[p["photo_id"]]["lon"])
                errors.append(np.abs(got - want).max())
    assert max(errors) < 5.0, f"tile values under the photos are off by up to {max(errors):.1f} DN (70 DN = 1 px)"


def test_photo_shard_is_in_tile_order_and_rows_match_manifest(dataset):
    _, cfg = dataset
    manifest = {r["photo_id"]: r for r in pq.read_table(f"{cfg.out_dir}/manifest.parquet").to_pylist()}
    for shard in sorted({r["tile_shard"] for r in manifest.values()}):
        expected = [p["photo_id"] for t in iter_tile_samples(f"{cfg.out_dir}/{shard}", decode_tif=False)
                    for p in t.record["photos"]]
        photo_shard = shard.replace("tiles", "photos")
        got = list(iter_photo_samples(f"{cfg.out_dir}/{photo_shard}"))
        assert [s.photo_id for s in got] == expected
        for s in got:
            row = manifest[s.photo_id]
            assert s.row["tile_id"] == row["tile_id"] and s.row["split"] == row["split"]
            assert s.row["lat"] == row["lat"] and s.image[:2] == b"\xff\xd8"
