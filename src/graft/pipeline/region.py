"""The build region and its partition into geographic blocks.

A region is a WGS84 bbox or a polygon file. It is cut into square blocks of
``block_km`` on a side in the region's UTM zone (the zone of its centroid).
A block is the unit of work (one partition of ``graft build``) and the unit of
the train/val/test split. Block ids are row-major over the block grid, so
they depend only on the region and ``block_km``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import shapely
from pydantic import field_validator, model_validator
from shapely.geometry import box, shape
from shapely.ops import unary_union

from graft.config import StrictModel
from graft.geometry import TileGrid, crs_to_lonlat, lonlat_to_crs, utm_epsg


class RegionConfig(StrictModel):
    """Where to build: exactly one of ``bbox`` and ``polygon``.

    Attributes:
        bbox: ``[min_lon, min_lat, max_lon, max_lat]`` in WGS84 degrees.
        polygon: path to a GeoJSON file (any CRS-less GeoJSON is WGS84), or a
            shapefile/GeoPackage when ``pyogrio`` or ``fiona`` is installed.
        block_km: side of the square blocks the region is cut into (partitions
            and split units).
    """

    bbox: list[float] | None = None
    polygon: str | None = None
    block_km: float = 50.0

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if len(v) != 4:
            raise ValueError(f"bbox must be [min_lon, min_lat, max_lon, max_lat], got {len(v)} numbers")
        min_lon, min_lat, max_lon, max_lat = v
        if not (-180 <= min_lon < max_lon <= 180 and -90 <= min_lat < max_lat <= 90):
            raise ValueError(
                f"bbox {v} must satisfy -180 <= min_lon < max_lon <= 180 and -90 <= min_lat < max_lat <= 90 "
                "(regions crossing the antimeridian are not supported: split them into two builds)"
            )
        return v

    @field_validator("polygon")
    @classmethod
    def _polygon(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).expanduser().is_file():
            raise ValueError(f"polygon file {v} does not exist")
        return v

    @field_validator("block_km")
    @classmethod
    def _block(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"block_km must be positive, got {v}")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> RegionConfig:
        if (self.bbox is None) == (self.polygon is None):
            raise ValueError("give exactly one of region.bbox ([min_lon, min_lat, max_lon, max_lat]) "
                             "and region.polygon (path to a GeoJSON file)")
        return self


def read_polygon(path: str | os.PathLike) -> shapely.Geometry:
    """Read the union of the polygons in a GeoJSON (or, with pyogrio/fiona, any OGR) file, in WGS84."""
    path = Path(path).expanduser()
    if path.suffix.lower() in (".geojson", ".json"):
        data = json.loads(path.read_text())
        if data.get("type") == "FeatureCollection":
            geoms = [shape(f["geometry"]) for f in data.get("features", []) if f.get("geometry")]
        elif data.get("type") == "Feature":
            geoms = [shape(data["geometry"])]
        else:
            geoms = [shape(data)]
    else:
        geoms = _read_ogr(path)
    polys = [g for g in geoms if g.geom_type in ("Polygon", "MultiPolygon")]
    if not polys:
        raise ValueError(f"region polygon file {path} holds no Polygon/MultiPolygon geometry")
    region = unary_union(polys)
    if not region.is_valid:
        region = shapely.make_valid(region)
    if region.is_empty or region.area <= 0:
        # A polygon drawn with collinear or repeated points repairs to a line or a point: every photo
        # would be "outside the region" and Flickr query points could not be sampled at all.
        raise ValueError(f"region polygon file {path} has zero area (it is a {region.geom_type} once repaired); "
                         "check that its rings have at least three distinct, non-collinear points")
    minx, miny, maxx, maxy = region.bounds
    if not (-180 <= minx and maxx <= 180 and -90 <= miny and maxy <= 90):
        raise ValueError(f"region polygon {path} has bounds {region.bounds}, which are not WGS84 degrees; "
                         "GeoJSON must be in EPSG:4326 (lon, lat)")
    return region


def _read_ogr(path: Path) -> list[shapely.Geometry]:
    try:
        import pyogrio.raw  # noqa: PLC0415 - optional dependency
    except ImportError:
        pyogrio = None
    if pyogrio is not None:
        meta, _, wkb, _ = pyogrio.raw.read(path)
        geoms = list(shapely.from_wkb(wkb))
        return _to_wgs84(geoms, meta.get("crs"))
    try:
        import fiona  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise ValueError(
            f"region polygon {path}: only GeoJSON (.geojson/.json) can be read without an OGR library; "
            "install pyogrio (pip install pyogrio) to read shapefiles/GeoPackages, or convert it to GeoJSON "
            "(ogr2ogr -t_srs EPSG:4326 region.geojson input.shp)"
        ) from None
    with fiona.open(path) as src:
        geoms = [shape(f["geometry"]) for f in src if f["geometry"]]
        crs = src.crs.to_string() if src.crs else None
    return _to_wgs84(geoms, crs)


def _to_wgs84(geoms: list[shapely.Geometry], crs: str | None) -> list[shapely.Geometry]:
    if not crs:
        return geoms
    from pyproj import CRS  # noqa: PLC0415

    if CRS.from_user_input(crs).to_epsg() == 4326:
        return geoms
    return [shapely.transform(g, lambda x, y: crs_to_lonlat(x, y, crs), interleaved=False) for g in geoms]


@dataclass(frozen=True)
class Block:
    """One square block of the partition grid."""

    block_id: int
    ix: int
    iy: int
    bounds: tuple[float, float, float, float]  # (minx, miny, maxx, maxy) in the region CRS


class Region:
    """A WGS84 region, its UTM CRS and its block grid.

    Args:
        geometry: the region in WGS84 (lon, lat).
        block_km: block side in kilometres.
    """

    def __init__(self, geometry: shapely.Geometry, block_km: float):
        self.geometry = geometry
        shapely.prepare(self.geometry)
        self.block_m = float(block_km) * 1000.0
        c = geometry.centroid
        self.crs = f"EPSG:{utm_epsg(c.y, c.x)}"
        # Densify before projecting so long bbox edges follow their true curved shape in UTM.
        step = max(min(geometry.bounds[2] - geometry.bounds[0], geometry.bounds[3] - geometry.bounds[1]) / 50, 1e-4)
        dense = shapely.segmentize(geometry, step)
        self.geometry_utm = shapely.transform(dense, lambda x, y: lonlat_to_crs(x, y, self.crs), interleaved=False)
        shapely.prepare(self.geometry_utm)
        # A metre of slack: a point on the region's border, projected on its own, may land a hair
        # outside the densified outline's bounds; it must still fall in a block.
        minx, miny, maxx, maxy = np.asarray(self.geometry_utm.bounds) + np.array([-1.0, -1.0, 1.0, 1.0])
        self.x0 = math.floor(minx / self.block_m) * self.block_m
        self.y0 = math.floor(miny / self.block_m) * self.block_m
        self.nx = int((maxx - self.x0) // self.block_m) + 1
        self.ny = int((maxy - self.y0) // self.block_m) + 1

    @classmethod
    def from_config(cls, cfg: RegionConfig) -> Region:
        geom = box(*cfg.bbox) if cfg.bbox is not None else read_polygon(cfg.polygon)
        return cls(geom, cfg.block_km)

    @property
    def area_km2(self) -> float:
        return float(self.geometry_utm.area) / 1e6

    def block(self, block_id: int) -> Block:
        iy, ix = divmod(int(block_id), self.nx)
        b = (self.x0 + ix * self.block_m, self.y0 + iy * self.block_m,
             self.x0 + (ix + 1) * self.block_m, self.y0 + (iy + 1) * self.block_m)
        return Block(int(block_id), ix, iy, b)

    @cached_property
    def block_ids(self) -> list[int]:
        """Ids of the blocks that intersect the region, ascending."""
        ix, iy = np.meshgrid(np.arange(self.nx), np.arange(self.ny))
        ix, iy = ix.ravel(), iy.ravel()
        boxes = shapely.box(self.x0 + ix * self.block_m, self.y0 + iy * self.block_m,
                            self.x0 + (ix + 1) * self.block_m, self.y0 + (iy + 1) * self.block_m)
        hit = shapely.intersects(self.geometry_utm, boxes)
        return sorted(int(i) for i in (iy * self.nx + ix)[hit])

    def contains(self, lat, lon) -> np.ndarray:
        """Boolean mask: which WGS84 points lie inside (or on the border of) the region."""
        return np.asarray(shapely.intersects_xy(self.geometry, np.asarray(lon, float), np.asarray(lat, float)))

    def block_of(self, lat, lon) -> np.ndarray:
        """Block id of each WGS84 point (int64 array); -1 for points outside the block grid."""
        x, y = lonlat_to_crs(np.asarray(lon, float), np.asarray(lat, float), self.crs)
        ix = np.floor((np.asarray(x) - self.x0) / self.block_m).astype(np.int64)
        iy = np.floor((np.asarray(y) - self.y0) / self.block_m).astype(np.int64)
        ok = (ix >= 0) & (ix < self.nx) & (iy >= 0) & (iy < self.ny)
        return np.where(ok, iy * self.nx + ix, -1)

    def footprint(self, grid: TileGrid) -> shapely.Geometry:
        """A tile's footprint in the region's CRS (edges densified: the tile may sit in another UTM zone)."""
        left, bottom, right, top = grid.bounds
        ring = shapely.segmentize(box(left, bottom, right, top), (right - left) / 8)
        if grid.crs == self.crs:
            return ring
        lon_lat = shapely.transform(ring, lambda x, y: crs_to_lonlat(x, y, grid.crs), interleaved=False)
        return shapely.transform(lon_lat, lambda x, y: lonlat_to_crs(x, y, self.crs), interleaved=False)

    def blocks_under(self, footprint_utm: shapely.Geometry) -> list[int]:
        """Ids of the grid blocks whose interior a geometry (in the region's CRS) overlaps with positive area."""
        minx, miny, maxx, maxy = footprint_utm.bounds
        ix0, ix1 = math.floor((minx - self.x0) / self.block_m), math.floor((maxx - self.x0) / self.block_m)
        iy0, iy1 = math.floor((miny - self.y0) / self.block_m), math.floor((maxy - self.y0) / self.block_m)
        out = []
        for iy in range(max(iy0, 0), min(iy1, self.ny - 1) + 1):
            for ix in range(max(ix0, 0), min(ix1, self.nx - 1) + 1):
                b = iy * self.nx + ix
                if footprint_utm.intersection(box(*self.block(b).bounds)).area > 0:
                    out.append(b)
        return out

    def sample_points(self, n: int, rng: np.random.Generator,
                      within: tuple[float, float, float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points uniform (in the UTM plane) inside the region, or inside region ∩ ``within`` bounds.

        Returns (lat, lon) arrays. Rejection sampling in batches; raises
        ValueError if the area is empty.
        """
        area = self.geometry_utm if within is None else self.geometry_utm.intersection(box(*within))
        if n <= 0:
            return np.empty(0), np.empty(0)
        if area.is_empty or area.area <= 0:
            raise ValueError("cannot sample points in an empty area")
        minx, miny, maxx, maxy = area.bounds
        frac = area.area / max((maxx - minx) * (maxy - miny), 1e-9)
        shapely.prepare(area)
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        got = 0
        while got < n:
            m = int((n - got) / max(frac, 1e-3) * 1.2) + 16
            x = rng.uniform(minx, maxx, m)
            y = rng.uniform(miny, maxy, m)
            ok = shapely.intersects_xy(area, x, y)
            xs.append(x[ok])
            ys.append(y[ok])
            got += int(ok.sum())
        x = np.concatenate(xs)[:n]
        y = np.concatenate(ys)[:n]
        lon, lat = crs_to_lonlat(x, y, self.crs)
        return np.asarray(lat), np.asarray(lon)

    def outlines(self) -> list[np.ndarray]:
        """Exterior rings of the region as (N, 2) lon/lat arrays (for maps)."""
        polys = getattr(self.geometry, "geoms", [self.geometry])
        return [np.asarray(p.exterior.coords) for p in polys if p.geom_type == "Polygon"]

    def block_area_km2(self, block_id: int) -> float:
        return float(self.geometry_utm.intersection(box(*self.block(block_id).bounds)).area) / 1e6
