"""A tiny generated world for the dataset-build tests: geotagged JPEGs and a GeoTIFF mosaic.

Everything is written by code (Pillow, rasterio) into a temporary folder; no
network, no downloaded data. The mosaic is in Web Mercator (EPSG:3857) so the
build really reprojects onto the tiles' UTM grids, and its bands are linear
in the map coordinates, so a tile's value at a point says where on the ground
that point is (used by the georeference test).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer

from graft.demo.exif import encode_photo, gps_exif

REGION = [9.0, 45.0, 9.08, 45.06]  # min_lon, min_lat, max_lon, max_lat (about 6.3 x 6.7 km, UTM 32N)
CLUSTER = (45.03, 9.04)  # a dense spot with more photos than one tile may keep
MOSAIC_BOUNDS_LONLAT = (8.99, 44.99, 9.09, 45.07)
MOSAIC_RES = 20.0  # EPSG:3857 units per pixel (about 14 m on the ground at 45 N)
GRADIENT = 100.0  # DN per mosaic pixel: a 10 m tile pixel is ~70 DN


@dataclass
class World:
    root: Path
    photos_dir: Path
    mosaic: Path
    photos: dict[str, tuple[float, float]] = field(default_factory=dict)  # file name -> (lat, lon)
    n_cluster: int = 0
    n_valid: int = 0  # photos that should survive the scan (inside the region, unique, readable)


def jpeg_with_gps(rgb: np.ndarray, lat: float | None, lon: float | None, taken: dt.datetime | None) -> bytes:
    """JPEG bytes with EXIF GPS (when lat/lon are given) and DateTimeOriginal (when taken is given)."""
    has_gps = lat is not None and lon is not None
    exif = gps_exif(lat if has_gps else None, lon if has_gps else None, taken, make="graft-test", second_digits=6)
    return encode_photo(rgb, exif, quality=90)


def _photo_pixels(rng: np.random.Generator) -> np.ndarray:
    """48x64 RGB: a random base colour plus noise, so every photo has distinct bytes."""
    base = rng.integers(30, 220, 3)
    noise = rng.integers(-25, 25, (48, 64, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _mosaic_grid() -> tuple[Affine, int, int]:
    to_merc = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    x0, y0 = to_merc.transform(MOSAIC_BOUNDS_LONLAT[0], MOSAIC_BOUNDS_LONLAT[1])
    x1, y1 = to_merc.transform(MOSAIC_BOUNDS_LONLAT[2], MOSAIC_BOUNDS_LONLAT[3])
    w, h = int((x1 - x0) / MOSAIC_RES), int((y1 - y0) / MOSAIC_RES)
    return Affine(MOSAIC_RES, 0, x0, 0, -MOSAIC_RES, y1), w, h


def write_mosaic(path: Path) -> Path:
    """A 3-band uint16 GeoTIFF in EPSG:3857 whose bands are linear in the map coordinates.

    Band 1 = ``GRADIENT`` x (pixel column), band 2 = ``GRADIENT`` x (pixel row), at pixel
    centres; band 3 is flat. Bilinear resampling of a linear field is exact, so a
    tile's value at any point says precisely where on the ground that point is.
    """
    transform, w, h = _mosaic_grid()
    cols, rows = np.meshgrid(np.arange(w, dtype=float), np.arange(h, dtype=float))
    data = np.stack([GRADIENT * cols, GRADIENT * rows, np.full((h, w), 1000.0)]).astype(np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint16", crs="EPSG:3857",
                       transform=transform, compress="deflate") as dst:
        dst.write(data)
    return path


def mosaic_expected(lat: float, lon: float) -> np.ndarray:
    """Bands 1-2 of the mosaic at an exact WGS84 point, computed from the field's formula (not read)."""
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(lon, lat)
    transform, _, _ = _mosaic_grid()
    col, row = ~transform @ (x, y)
    return np.array([GRADIENT * (col - 0.5), GRADIENT * (row - 0.5)])


def bilinear(band: np.ndarray, row: float, col: float) -> float:
    """Bilinear value of a (H, W) raster at fractional pixel position (row, col), pixel centres at +0.5."""
    r, c = row - 0.5, col - 0.5
    r0 = int(np.clip(np.floor(r), 0, band.shape[0] - 2))
    c0 = int(np.clip(np.floor(c), 0, band.shape[1] - 2))
    fr, fc = r - r0, c - c0
    b = band.astype(float)
    return float((1 - fr) * ((1 - fc) * b[r0, c0] + fc * b[r0, c0 + 1])
                 + fr * ((1 - fc) * b[r0 + 1, c0] + fc * b[r0 + 1, c0 + 1]))


def make_world(root: Path, seed: int = 0, n_scattered: int = 50, n_cluster: int = 30) -> World:
    """Photos scattered over REGION, a dense cluster, and a few that the build must reject.

    Rejects: one without GPS (``no_gps``), one outside the region (``outside_region``),
    one byte-identical copy (``duplicate_content``) and one that is not an image.
    """
    rng = np.random.default_rng(seed)
    photos_dir = root / "photos"
    photos_dir.mkdir(parents=True, exist_ok=True)
    world = World(root=root, photos_dir=photos_dir, mosaic=write_mosaic(root / "mosaic.tif"))
    t0 = dt.datetime(2021, 5, 1, 12, 0, 0)

    def add(name: str, lat: float | None, lon: float | None, day: int) -> bytes:
        data = jpeg_with_gps(_photo_pixels(rng), lat, lon, t0 + dt.timedelta(days=day))
        (photos_dir / name).write_bytes(data)
        if lat is not None:
            world.photos[name] = (lat, lon)
        return data

    min_lon, min_lat, max_lon, max_lat = REGION
    for i in range(n_scattered):
        lat = rng.uniform(min_lat + 0.002, max_lat - 0.002)
        lon = rng.uniform(min_lon + 0.002, max_lon - 0.002)
        add(f"scatter_{i:03d}.jpg", lat, lon, int(rng.integers(0, 60)))
    for i in range(n_cluster):
        # within ~40 m of the cluster centre: all fall into the tile centred on any one of them
        lat = CLUSTER[0] + rng.uniform(-3e-4, 3e-4)
        lon = CLUSTER[1] + rng.uniform(-4e-4, 4e-4)
        add(f"cluster_{i:03d}.jpg", lat, lon, int(rng.integers(0, 60)))
    world.n_cluster = n_cluster
    world.n_valid = n_scattered + n_cluster
    # rejects
    add("zz_no_gps.jpg", None, None, 0)
    add("zz_outside.jpg", 45.2, 9.3, 0)
    (photos_dir / "zz_copy_of_scatter_000.jpg").write_bytes((photos_dir / "scatter_000.jpg").read_bytes())
    (photos_dir / "zz_not_an_image.jpg").write_bytes(b"this is not a JPEG")
    return world


def build_config(world: World, out_dir: Path, **overrides) -> dict:
    """A build config dict for ``world`` (filter off, small tiles, 2 km blocks)."""
    cfg = {
        "out_dir": str(out_dir),
        "region": {"bbox": list(REGION), "block_km": 2.0},
        "ground": {"kind": "folder", "folder": {"root": str(world.photos_dir), "workers": 2},
                   "max_per_tile": 25, "short_side": 64},
        "filter": {"kind": "none"},
        "satellite": {"kind": "geotiff", "geotiff": {"paths": [str(world.mosaic)], "gsd": 10.0},
                      "tile_size": 32},
        "split": {"train": 0.6, "val": 0.2, "test": 0.2, "seed": 0},
        "fetch_workers": 4,
        "seed": 0,
    }
    for key, value in overrides.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


class CountingSource:
    """Wraps a satellite source and records every fetch (grid key, date)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.rejections = getattr(inner, "rejections", None)
        self.calls: list[tuple] = []

    def fetch(self, grid, date):
        self.calls.append((grid.crs, tuple(grid.transform), grid.size))
        return self.inner.fetch(grid, date)


@dataclass
class Built:
    world: World
    cfg: object  # BuildConfig
    summary: object  # BuildSummary
    source: CountingSource


_SHARED: dict[str, Built] = {}


def shared_dataset(tmp_path_factory) -> Built:
    """One dataset built from the default world, shared by every test module of the session (read-only:
    tests that modify a dataset copy it first)."""
    if "base" not in _SHARED:
        from graft.config import validate
        from graft.pipeline.build import BuildConfig, build_dataset
        from graft.sources.geotiff import GeoTiffSource

        root = tmp_path_factory.mktemp("shared-build")
        world = make_world(root / "world")
        cfg = validate(BuildConfig, build_config(world, root / "dataset"))
        source = CountingSource(GeoTiffSource(cfg.satellite.geotiff))
        summary = build_dataset(cfg, satellite=source)
        _SHARED["base"] = Built(world=world, cfg=cfg, summary=summary, source=source)
    return _SHARED["base"]

