"""The region a map search looks at, cut into tiles: a GeoTIFF/COG on a tile grid, or a built dataset's tiles.

Every tile knows its georeferencing (CRS, affine transform of its own pixels,
side in pixels), so any per-patch score over it maps back to the ground.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine

from graft.dataset.shards import MemberLocation
from graft.geometry import TileGrid, crs_to_lonlat
from graft.imagery import decode_geotiff, tile_to_rgb8


class RegionError(ValueError):
    """The region cannot be searched; the message names the input and what was expected."""


@dataclass(frozen=True)
class MapTile:
    """One tile of a region.

    Attributes:
        tile_id: unique, URL-safe name.
        crs: the tile's CRS (e.g. ``EPSG:32633``).
        transform: affine transform of the tile's own pixel grid (pixel (0, 0) = its top-left).
        size: side in pixels.
        row0, col0: offset of the tile in the region raster (raster regions; 0 for dataset tiles).
        valid: fraction of the tile's pixels inside the raster (edge tiles are padded with zeros).
    """

    tile_id: str
    crs: str
    transform: Affine
    size: int
    row0: int = 0
    col0: int = 0
    valid: float = 1.0

    def latlon(self, row: float, col: float) -> tuple[float, float]:
        """WGS84 (lat, lon) of a fractional pixel position in the tile."""
        x, y = self.transform @ (col, row)
        lon, lat = crs_to_lonlat(x, y, self.crs)
        return float(lat), float(lon)


class RasterRegion:
    """A GeoTIFF/COG cut into ``tile_px`` x ``tile_px`` tiles on its own pixel grid (edge tiles zero-padded)."""

    kind = "raster"

    def __init__(self, path: str | Path, tile_px: int):
        import rasterio

        self.path = Path(path)
        if tile_px < 1:
            raise RegionError(f"tile size must be >= 1 pixel, got {tile_px}")
        try:
            with rasterio.open(self.path) as src:
                self.crs = src.crs.to_string() if src.crs else None
                self.transform = src.transform
                self.height, self.width, self.count, self.dtype = src.height, src.width, src.count, src.dtypes[0]
        except rasterio.errors.RasterioIOError as e:
            raise RegionError(f"{self.path}: not a readable GeoTIFF/COG ({e})") from e
        if self.crs is None:
            raise RegionError(f"{self.path} has no CRS; map search needs a georeferenced raster")
        if self.count < 3 or self.dtype not in ("uint8", "uint16"):
            raise RegionError(f"{self.path}: expected >= 3 bands of uint8 or uint16 (RGB first), got {self.count} "
                              f"band(s) of {self.dtype}")
        self.tile_px = int(tile_px)
        self.n_rows = math.ceil(self.height / self.tile_px)
        self.n_cols = math.ceil(self.width / self.tile_px)
        self.tiles = [self._tile(i, j) for i in range(self.n_rows) for j in range(self.n_cols)]
        self._by_id = {t.tile_id: t for t in self.tiles}

    def _tile(self, i: int, j: int) -> MapTile:
        r0, c0 = i * self.tile_px, j * self.tile_px
        inside = (min(self.height, r0 + self.tile_px) - r0) * (min(self.width, c0 + self.tile_px) - c0)
        return MapTile(f"r{i:04d}c{j:04d}", self.crs, self.transform @ Affine.translation(c0, r0), self.tile_px,
                       r0, c0, inside / self.tile_px ** 2)

    def tile(self, tile_id: str) -> MapTile:
        if tile_id not in self._by_id:
            raise KeyError(f"no tile {tile_id!r} in {self.path}")
        return self._by_id[tile_id]

    def read_rgb(self, tile: MapTile) -> np.ndarray:
        """(tile_px, tile_px, 3) uint8; pixels outside the raster are 0."""
        import rasterio
        from rasterio.windows import Window

        with rasterio.open(self.path) as src:
            arr = src.read([1, 2, 3], window=Window(tile.col0, tile.row0, tile.size, tile.size), boundless=True,
                           fill_value=0)
        return tile_to_rgb8(arr)

    def preview(self, max_px: int = 1024) -> np.ndarray:
        """The whole region as (h, w, 3) uint8, downsampled so the long side is at most ``max_px``."""
        import rasterio

        scale = max(1.0, max(self.height, self.width) / max_px)
        h, w = max(1, round(self.height / scale)), max(1, round(self.width / scale))
        with rasterio.open(self.path) as src:
            arr = src.read([1, 2, 3], out_shape=(3, h, w))
        return tile_to_rgb8(arr)

    def fingerprint(self) -> dict:
        st = self.path.stat()
        return {"kind": self.kind, "path": str(self.path.resolve()), "bytes": st.st_size,
                "mtime": int(st.st_mtime), "tile_px": self.tile_px}

    def describe(self) -> dict:
        left, top = self.transform.c, self.transform.f
        corners = [self.transform @ (c, r) for r, c in ((0, 0), (0, self.width), (self.height, 0),
                                                        (self.height, self.width))]
        lon, lat = crs_to_lonlat([x for x, _ in corners], [y for _, y in corners], self.crs)
        return {"kind": self.kind, "name": self.path.name, "crs": self.crs, "width": self.width,
                "height": self.height, "tile_px": self.tile_px, "n_rows": self.n_rows, "n_cols": self.n_cols,
                "n_tiles": len(self.tiles), "origin": [left, top],
                "bbox_lonlat": [float(min(lon)), float(min(lat)), float(max(lon)), float(max(lat))]}


class DatasetRegion:
    """The tiles of a dataset folder written by ``graft build`` (read through :mod:`graft.dataset`)."""

    kind = "dataset"

    def __init__(self, root: str | Path):
        from graft.dataset.layout import tile_shards
        from graft.dataset.shards import index_tile_shard

        self.root = Path(root)
        self.shards = tile_shards(self.root)
        if not self.shards:
            raise RegionError(f"{self.root} has no tile shards; give a dataset folder written by 'graft build' "
                              "or a GeoTIFF")
        self._tif: dict[str, MemberLocation] = {}
        self.tiles: list[MapTile] = []
        for shard in self.shards:
            for t in index_tile_shard(shard):
                if not t.complete:
                    raise RegionError(f"{shard}: tile {t.tile_id!r} lacks its record or GeoTIFF (has {t.members}); "
                                      "rebuild that partition")
                grid = TileGrid.from_json(t.record["grid"])
                self.tiles.append(MapTile(t.tile_id, grid.crs, grid.transform, grid.size))
                self._tif[t.tile_id] = t.tif
        self._by_id = {t.tile_id: t for t in self.tiles}
        self.tile_px = max(t.size for t in self.tiles)

    def tile(self, tile_id: str) -> MapTile:
        if tile_id not in self._by_id:
            raise KeyError(f"no tile {tile_id!r} in {self.root}")
        return self._by_id[tile_id]

    def read_rgb(self, tile: MapTile) -> np.ndarray:
        arr, _ = decode_geotiff(self._tif[tile.tile_id].read())
        return tile_to_rgb8(arr)

    def fingerprint(self) -> dict:
        h = hashlib.sha256()
        for s in self.shards:
            st = s.stat()
            h.update(f"{s.name}|{st.st_size}|{int(st.st_mtime)}".encode())
        return {"kind": self.kind, "path": str(self.root.resolve()), "shards": h.hexdigest()[:16]}

    def describe(self) -> dict:
        lat, lon = zip(*(t.latlon(t.size / 2, t.size / 2) for t in self.tiles), strict=True)
        return {"kind": self.kind, "name": self.root.name, "n_tiles": len(self.tiles), "tile_px": self.tile_px,
                "bbox_lonlat": [min(lon), min(lat), max(lon), max(lat)]}


def open_region(path: str | Path, tile_px: int | None, default_tile_px: int) -> RasterRegion | DatasetRegion:
    """A raster file or a dataset folder; ``tile_px`` (raster only) defaults to ``default_tile_px``."""
    path = Path(path)
    if path.is_dir():
        if tile_px is not None:
            raise RegionError("--tile-px applies to a raster region; a dataset's tiles keep their own size")
        return DatasetRegion(path)
    if not path.is_file():
        raise FileNotFoundError(f"region {path} not found (expected a GeoTIFF/COG or a dataset folder)")
    return RasterRegion(path, tile_px or default_tile_px)


def png_bytes(rgb: np.ndarray) -> bytes:
    """(h, w, 3|4) uint8 -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
