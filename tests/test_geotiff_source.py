"""GeoTiffSource on generated rasters in two CRSs (UTM 33N and Web Mercator).

Each raster carries a bright 3x3 marker at a known spot. Where the marker
lands in a chip is checked against an independent pyproj computation, not
against graft.geometry, so a wrong transform, axis order or CRS handling in the
warp shows up as a displaced marker.
"""

from __future__ import annotations

import datetime as dt
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer

from graft.geometry import tile_grid_around
from graft.rejections import Rejections
from graft.sources.base import ChipRejected
from graft.sources.geotiff import GeoTiffConfig, GeoTiffSource

LAT0, LON0 = 48.2, 16.37  # Vienna, UTM zone 33N
UTM = "EPSG:32633"
MERC = "EPSG:3857"
A_RGB, B_RGB = (100, 110, 120), (30, 40, 50)
MARKER = 250


def _tf(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


def write_tif(path: Path, array: np.ndarray, crs: str | None, transform: Affine, **extra) -> Path:
    profile = dict(driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                   dtype=array.dtype.name, transform=transform, **extra)
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def with_marker(shape, rgb, dtype, marker_rc):
    arr = np.empty((3, *shape), dtype)
    for i, v in enumerate(rgb):
        arr[i] = v
    r, c = marker_rc
    arr[:, r - 1: r + 2, c - 1: c + 2] = MARKER
    return arr


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """File A in UTM 33N (10 m) and file B in Web Mercator (15 m ~ 10 m on the ground), overlapping slightly."""
    d = tmp_path_factory.mktemp("geotiffs")
    x0, y0 = _tf("EPSG:4326", UTM).transform(LON0, LAT0)
    a_tf = Affine(10.0, 0, float(np.floor(x0 - 1000)), 0, -10.0, float(np.floor(y0 + 1000)))
    a_marker_rc = (60, 70)
    write_tif(d / "a_utm.tif", with_marker((200, 200), A_RGB, np.uint8, a_marker_rc), UTM, a_tf)
    # B: lon 16.38..16.41, lat 48.19..48.21 in Web Mercator, 15 m pixels.
    to_merc = _tf("EPSG:4326", MERC)
    (bx0, bx1), (by0, by1) = zip(*[to_merc.transform(lo, la) for lo, la in [(16.38, 48.19), (16.41, 48.21)]],
                                 strict=True)
    b_w, b_h = int((bx1 - bx0) // 15), int((by1 - by0) // 15)
    b_tf = Affine(15.0, 0, bx0, 0, -15.0, by1)
    b_marker_rc = (b_h // 2, b_w // 2 + 20)
    write_tif(d / "b_merc.tif", with_marker((b_h, b_w), B_RGB, np.uint8, b_marker_rc), MERC, b_tf)

    def marker_lonlat(tf: Affine, crs: str, rc):
        x, y = tf @ (rc[1] + 0.5, rc[0] + 0.5)  # centre of the marker's middle pixel
        return _tf(crs, "EPSG:4326").transform(x, y)

    return {
        "dir": d,
        "a": str(d / "a_utm.tif"), "b": str(d / "b_merc.tif"),
        "a_marker": marker_lonlat(a_tf, UTM, a_marker_rc), "b_marker": marker_lonlat(b_tf, MERC, b_marker_rc),
        "a_tf": a_tf,
    }


def source(paths, **kw) -> GeoTiffSource:
    return GeoTiffSource(GeoTiffConfig(paths=[str(p) for p in paths], **{"gsd": 10.0, "size": 64, **kw}))


def expected_rc(grid, lon, lat):
    """Fractional (row, col) of lon/lat on the grid, with pyproj only."""
    x, y = _tf("EPSG:4326", grid.crs).transform(lon, lat)
    t = grid.transform
    return (t.f - y) / -t.e, (x - t.c) / t.a


def bright_centroid(chip) -> tuple[float, float]:
    rows, cols = np.nonzero(chip.array[0] > 200)
    assert rows.size, "marker not found in the chip"
    return rows.mean() + 0.5, cols.mean() + 0.5  # pixel centres


@pytest.mark.parametrize("which", ["a", "b"])
def test_marker_lands_where_geometry_says(world, which):
    lon, lat = world[f"{which}_marker"]
    src = source([world["a"], world["b"]])
    # Off-centre grids: the marker must land away from the middle, where a wrong transform would show.
    for dlat, dlon in [(0.0012, -0.0015), (-0.0010, 0.0018)]:
        grid = tile_grid_around(lat + dlat, lon + dlon, 64, 10.0)
        chip = src.fetch(grid, None)
        er, ec = expected_rc(grid, lon, lat)
        assert 5 < er < 59 and 5 < ec < 59 and (abs(er - 32) > 8 or abs(ec - 32) > 8)
        r, c = bright_centroid(chip)
        assert abs(r - er) <= 1.0 and abs(c - ec) <= 1.0, (which, (r, c), (er, ec))
        assert chip.meta["files"] == [world[which]]


def test_chip_is_on_the_grid_and_keeps_dtype(world):
    src = source([world["a"], world["b"]], date=dt.date(2020, 5, 1))
    grid = tile_grid_around(LAT0, LON0, 64, 10.0)
    chip = src.fetch(grid, dt.date(1999, 1, 1))
    assert chip.grid == grid and chip.grid.crs == UTM
    assert chip.array.shape == (3, 64, 64) and chip.array.dtype == np.uint8
    assert chip.bands == ["b1", "b2", "b3"] and chip.source == "geotiff"
    assert chip.date == dt.date(2020, 5, 1)  # the imagery's date, not the photo's
    assert [int(v) for v in chip.array[:, 5, 5]] == list(A_RGB)


def test_two_crs_merge_first_file_wins(world):
    src = source([world["a"], world["b"]])
    grid = tile_grid_around(LAT0, 16.3825, 64, 10.0)  # straddles A's east edge and B's west edge
    chip = src.fetch(grid, None)
    assert chip.meta["valid_fraction"] == 1.0
    assert chip.meta["files"] == [world["a"], world["b"]]
    a_east = _tf("EPSG:4326", UTM).transform(16.3825, LAT0)[0]
    red = chip.array[0]
    # Left edge: A only; right edge: B only; in the overlap A (listed first) wins.
    assert (red[:, 0] == A_RGB[0]).all() and (red[:, -1] == B_RGB[0]).all()
    overlap_col = int((max(_tf("EPSG:4326", UTM).transform(16.3805, LAT0)[0], grid.transform.c) - grid.transform.c)
                      // 10)
    assert (red[:, overlap_col] == A_RGB[0]).all()
    assert a_east > grid.transform.c
    # Reversed priority: B wins in the overlap.
    chip_b = source([world["b"], world["a"]]).fetch(grid, None)
    assert (chip_b.array[0][:, overlap_col] == B_RGB[0]).all()


def test_outside_coverage(world):
    src = source([world["a"], world["b"]])
    with pytest.raises(ChipRejected) as e:
        src.fetch(tile_grid_around(10.0, 10.0, 64, 10.0), None)
    assert e.value.reason == "outside_coverage"


def test_source_extent_edge_is_nodata_not_zeros(world):
    """A file without nodata or mask: pixels beyond its extent must count as missing, not as black."""
    src = source([world["a"]])
    a_west_lon, _ = _tf(UTM, "EPSG:4326").transform(world["a_tf"].c, world["a_tf"].f - 1000)
    grid = tile_grid_around(LAT0, a_west_lon, 64, 10.0)
    with pytest.raises(ChipRejected) as e:
        src.fetch(grid, None)
    assert e.value.reason == "nodata"
    chip = source([world["a"]], min_valid_fraction=0.3).fetch(grid, None)
    assert 0.4 < chip.meta["valid_fraction"] < 0.6
    assert (chip.array[:, :, 0] == 0).all() and (chip.array[0, :, -1] == A_RGB[0]).all()


def _half_blank(tmp_path: Path, name: str, **extra) -> tuple[str, float]:
    """A UTM file at lat ~48.5 whose north half is 0 (nodata/masked); returns its path and the split latitude."""
    x0, y0 = _tf("EPSG:4326", UTM).transform(16.37, 48.5)
    tf = Affine(10.0, 0, float(np.floor(x0 - 500)), 0, -10.0, float(np.floor(y0 + 500)))
    arr = np.full((3, 100, 100), 90, np.uint8)
    arr[:, :50] = 0
    path = write_tif(tmp_path / name, arr, UTM, tf, **extra)
    _, split_lat = _tf(UTM, "EPSG:4326").transform(tf.c + 500, tf.f - 500)
    return str(path), split_lat


def test_nodata_value_is_honoured(tmp_path):
    path, split_lat = _half_blank(tmp_path, "nodata.tif", nodata=0)
    grid = tile_grid_around(split_lat, 16.37, 64, 10.0)
    with pytest.raises(ChipRejected, match="nodata"):
        source([path]).fetch(grid, None)
    chip = source([path], min_valid_fraction=0.3).fetch(grid, None)
    assert 0.4 < chip.meta["valid_fraction"] < 0.6


def test_internal_mask_and_alpha_band_are_honoured(tmp_path):
    x0, y0 = _tf("EPSG:4326", UTM).transform(16.37, 48.5)
    tf = Affine(10.0, 0, float(np.floor(x0 - 500)), 0, -10.0, float(np.floor(y0 + 500)))
    rgba = np.full((4, 100, 100), 90, np.uint8)
    rgba[3] = 255
    rgba[3, :50] = 0
    alpha = write_tif(tmp_path / "alpha.tif", rgba, UTM, tf, photometric="RGB", alpha="YES")
    masked = tmp_path / "mask.tif"
    with rasterio.open(masked, "w", driver="GTiff", width=100, height=100, count=3, dtype="uint8", crs=UTM,
                       transform=tf) as dst:
        dst.write(np.full((3, 100, 100), 90, np.uint8))
        m = np.full((100, 100), 255, np.uint8)
        m[:50] = 0
        dst.write_mask(m)
    _, split_lat = _tf(UTM, "EPSG:4326").transform(tf.c + 500, tf.f - 500)
    grid = tile_grid_around(split_lat, 16.37, 64, 10.0)
    for path in (alpha, masked):
        chip = source([path], min_valid_fraction=0.3).fetch(grid, None)
        assert 0.4 < chip.meta["valid_fraction"] < 0.6, path
        assert chip.array.shape == (3, 64, 64)


def test_uint16_is_preserved(tmp_path):
    x0, y0 = _tf("EPSG:4326", UTM).transform(LON0, LAT0)
    tf = Affine(10.0, 0, float(np.floor(x0 - 1000)), 0, -10.0, float(np.floor(y0 + 1000)))
    arr = np.zeros((4, 200, 200), np.uint16)
    arr[0], arr[1], arr[2], arr[3] = 4000, 3000, 2000, 61000
    path = write_tif(tmp_path / "s2.tif", arr, UTM, tf)
    chip = source([path], bands=[4, 1], resampling="nearest").fetch(tile_grid_around(LAT0, LON0, 64, 10.0), None)
    assert chip.array.dtype == np.uint16 and chip.bands == ["b4", "b1"]
    assert (chip.array[0] == 61000).all() and (chip.array[1] == 4000).all()


def test_any_bands_named_as_configured(tmp_path):
    """A 5-band file: every band readable, in any order, under the names the config gives."""
    x0, y0 = _tf("EPSG:4326", UTM).transform(LON0, LAT0)
    tf = Affine(10.0, 0, float(np.floor(x0 - 1000)), 0, -10.0, float(np.floor(y0 + 1000)))
    arr = np.stack([np.full((200, 200), 1000 * (i + 1), np.uint16) for i in range(5)])
    path = write_tif(tmp_path / "ms.tif", arr, UTM, tf)
    chip = source([path], bands=[3, 2, 1, 5, 4], band_names=["B4", "B3", "B2", "B11", "B8"],
                  resampling="nearest").fetch(tile_grid_around(LAT0, LON0, 64, 10.0), None)
    assert chip.bands == ["B4", "B3", "B2", "B11", "B8"]
    assert [int(chip.array[i, 0, 0]) for i in range(5)] == [3000, 2000, 1000, 5000, 4000]
    with pytest.raises(ValueError, match="band_names must name each"):
        GeoTiffConfig(paths=[str(path)], gsd=10.0, bands=[1, 2, 3, 4], band_names=["R", "G", "B"])


def test_bad_files_are_counted_not_fatal(world, tmp_path):
    x0, y0 = _tf("EPSG:4326", UTM).transform(LON0, LAT0)
    tf = Affine(10.0, 0, x0, 0, -10.0, y0)
    write_tif(tmp_path / "no_crs.tif", np.ones((3, 10, 10), np.uint8), None, tf)
    (tmp_path / "garbage.tif").write_bytes(b"this is not a tiff")
    write_tif(tmp_path / "float.tif", np.ones((3, 10, 10), np.float32), UTM, tf)
    write_tif(tmp_path / "gray.tif", np.ones((1, 10, 10), np.uint8), UTM, tf)
    write_tif(tmp_path / "deep.tif", np.ones((3, 10, 10), np.uint16), UTM, tf)  # after uint8 A: mismatch
    ledger = Rejections()
    src = GeoTiffSource(GeoTiffConfig(paths=[world["a"], str(tmp_path / "*.tif"), str(tmp_path / "none_*.tif")],
                                      gsd=10.0, size=64), rejections=ledger)
    assert [r.path for r in src.rasters] == [world["a"]]
    assert ledger.counts == {"geotiff_no_crs": 1, "geotiff_unreadable": 1, "geotiff_dtype": 1,
                             "geotiff_band_count": 1, "geotiff_dtype_mismatch": 1, "geotiff_no_match": 1}
    no_crs = next(e for e in ledger.examples if e["reason"] == "geotiff_no_crs")
    assert no_crs["item"].endswith("no_crs.tif") and "gdal_edit" in no_crs["detail"]
    assert src.fetch(tile_grid_around(LAT0, LON0, 64, 10.0), None).array.shape == (3, 64, 64)


def test_nothing_usable_raises_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GeoTIFF matches"):
        source([tmp_path / "missing" / "*.tif"])
    write_tif(tmp_path / "no_crs.tif", np.ones((3, 10, 10), np.uint8), None, Affine(1, 0, 10, 0, -1, 10))
    with pytest.raises(ValueError, match="geotiff_no_crs"):
        source([tmp_path])  # a folder is searched for .tif files


def test_config_validation():
    from graft.config import ConfigError, validate

    with pytest.raises(ConfigError, match="resampling"):
        validate(GeoTiffConfig, {"paths": ["x.tif"], "gsd": 10, "resampling": "bilinearr"})
    with pytest.raises(ConfigError, match="1-based"):
        validate(GeoTiffConfig, {"paths": ["x.tif"], "gsd": 10, "bands": [0, 1, 2]})
    with pytest.raises(ConfigError, match="gsd"):
        validate(GeoTiffConfig, {"paths": ["x.tif"]})


def test_thread_safe_fetches_match_sequential(world):
    src = source([world["a"], world["b"]], max_open_per_thread=1)  # forces re-opening and eviction
    grids = [tile_grid_around(LAT0 + 0.001 * i, LON0 + 0.003 * i, 64, 10.0) for i in range(8)] * 3
    sequential = [source([world["a"], world["b"]]).fetch(g, None).array for g in grids]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda g: src.fetch(g, None).array, grids))
    for s, p in zip(sequential, parallel, strict=True):
        np.testing.assert_array_equal(s, p)
    src.close()
    # Usable again after close (datasets re-open lazily).
    np.testing.assert_array_equal(src.fetch(grids[0], None).array, sequential[0])


def test_pickles_for_ray(world):
    src = source([world["a"], world["b"]])
    grid = tile_grid_around(LAT0, LON0, 64, 10.0)
    before = src.fetch(grid, None).array
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone.fetch(grid, None).array, before)
