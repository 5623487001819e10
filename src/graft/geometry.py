"""Shared geometry: UTM zones, tile grids, and photo <-> tile pixel positions.

Every place in graft that turns a lat/lon into a tile position, or builds the
north-up grid a satellite chip is resampled onto, goes through this module, so
the manifest's ``row``/``col`` and the GeoTIFF's transform can never disagree.

Conventions (the manifest contract in DESIGN.md):
    ``(col, row) = ~transform * (x, y)`` in the tile's CRS, fractional, as
    rasterio computes it. Pixel (0, 0)'s top-left corner is at ``transform * (0, 0)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from affine import Affine
from pyproj import CRS, Transformer

WGS84 = "EPSG:4326"


def utm_epsg(lat: float, lon: float) -> int:
    """EPSG code of the UTM zone holding (lat, lon) (WGS84 datum, 326xx north / 327xx south)."""
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError(f"lat/lon out of range: ({lat}, {lon}); expected lat in [-90, 90], lon in [-180, 180]")
    zone = int((lon + 180.0) // 6.0) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


@lru_cache(maxsize=256)
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(CRS.from_user_input(src), CRS.from_user_input(dst), always_xy=True)


def lonlat_to_crs(lon, lat, crs: str):
    """Project WGS84 lon/lat (scalars or arrays) into ``crs``; returns (x, y)."""
    return _transformer(WGS84, str(crs)).transform(lon, lat)


def crs_to_lonlat(x, y, crs: str):
    """Inverse of :func:`lonlat_to_crs`; returns (lon, lat)."""
    return _transformer(str(crs), WGS84).transform(x, y)


@dataclass(frozen=True)
class TileGrid:
    """A north-up square pixel grid in a projected CRS.

    Attributes:
        crs: e.g. ``"EPSG:32633"``.
        transform: affine pixel->CRS transform (GDAL/rasterio order).
        size: width = height in pixels.
    """

    crs: str
    transform: Affine
    size: int

    @property
    def gsd(self) -> float:
        return float(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        left, top = self.transform.c, self.transform.f
        return (left, top - self.size * self.gsd, left + self.size * self.gsd, top)

    def pixel_of(self, lat, lon):
        """Fractional (row, col) of WGS84 points on this grid (scalars or arrays)."""
        x, y = lonlat_to_crs(lon, lat, self.crs)
        return pixel_of_xy(self.transform, x, y)

    def latlon_of(self, row, col):
        """WGS84 (lat, lon) of fractional pixel positions on this grid."""
        x, y = self.transform @ (np.asarray(col, dtype=float), np.asarray(row, dtype=float))
        lon, lat = crs_to_lonlat(x, y, self.crs)
        return lat, lon

    def contains(self, row, col) -> np.ndarray:
        row, col = np.asarray(row, dtype=float), np.asarray(col, dtype=float)
        return (row >= 0) & (row < self.size) & (col >= 0) & (col < self.size)

    def to_json(self) -> dict:
        return {"crs": self.crs, "transform": list(self.transform)[:6], "size": self.size}

    @classmethod
    def from_json(cls, d: dict) -> TileGrid:
        return cls(crs=d["crs"], transform=Affine(*d["transform"][:6]), size=int(d["size"]))


def pixel_of_xy(transform: Affine, x, y):
    """Fractional (row, col) of CRS coordinates: ``(col, row) = ~transform * (x, y)``."""
    col, row = ~transform @ (np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return row, col


def tile_grid_around(lat: float, lon: float, size: int, gsd: float, crs: str | None = None) -> TileGrid:
    """The north-up ``size``x``size`` grid at ``gsd`` metres centred on (lat, lon).

    The grid is in the point's UTM zone unless ``crs`` is given. Its origin is
    snapped to whole multiples of ``gsd`` so that neighbouring tiles share a
    pixel lattice (no half-pixel resampling seams between overlapping tiles).
    """
    crs = crs or f"EPSG:{utm_epsg(lat, lon)}"
    x, y = lonlat_to_crs(lon, lat, crs)
    half = size * gsd / 2.0
    left = math.floor((x - half) / gsd) * gsd
    top = math.floor((y + half) / gsd) * gsd
    return TileGrid(crs=crs, transform=Affine(gsd, 0.0, left, 0.0, -gsd, top), size=size)


def haversine_m(lat1, lon1, lat2, lon2):
    """Great-circle distance in metres (arrays broadcast)."""
    r = 6371008.8
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * r * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
