"""Satellite chips cut from local GeoTIFF / COG files, in any CRS.

A user's own imagery is the most common satellite source after Earth Engine:
a folder of orthophotos or scenes, each in whatever CRS it was delivered in.
:class:`GeoTiffSource` indexes every file's footprint once (in WGS84, in a
shapely STRtree) and cuts each chip by warping the intersecting files onto the
tile's north-up UTM grid with ``rasterio.vrt.WarpedVRT``, so the chip has
exactly the lattice :mod:`graft.geometry` computed for the tile, whatever the
input projection.

Files that cannot be used (no CRS, unreadable, wrong dtype, too few bands) go
into a :class:`~graft.rejections.Rejections` ledger at indexing time and are
never read again; they do not stop the build.
"""

from __future__ import annotations

import datetime as dt
import glob
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from pydantic import Field, field_validator, model_validator
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from shapely.geometry import Polygon
from tqdm import tqdm

from graft.config import StrictModel
from graft.geometry import TileGrid, crs_to_lonlat
from graft.rejections import Rejections
from graft.sources.base import ChipRejected, SatelliteChip

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = ("uint8", "uint16")
_TIFF_SUFFIXES = (".tif", ".tiff")
# Points per footprint edge: enough for a curved edge after reprojection to stay
# within a pixel or so of the true footprint at tile scale.
_DENSIFY = 21


class GeoTiffConfig(StrictModel):
    """Local GeoTIFF/COG imagery.

    Attributes:
        paths: files, folders (searched recursively for .tif/.tiff) or glob patterns
            (``**`` recurses). GDAL virtual paths (``/vsicurl/...``, ``/vsis3/...``)
            and URLs are used as given.
        size: chip side in pixels (the build passes it to ``tile_grid_around``).
        gsd: metres per chip pixel.
        bands: 1-based band indexes of the chip, in order; default the first three. Any
            number of bands, read at the file's full precision.
        band_names: names of those bands, recorded on every tile (``bands`` in its json) and
            used by models to find them, e.g. ``[R, G, B, N]`` or ``[B4, B3, B2, B8]``;
            default ``b1, b2, ...`` after the band indexes (then R, G, B are the first three).
        resampling: a rasterio resampling name (``nearest``, ``bilinear``, ``cubic``,
            ``average``, ...). ``average`` suits downsampling much finer imagery.
        min_valid_fraction: reject a chip with a smaller share of pixels holding data.
        date: acquisition date of the imagery, if known (recorded on every chip).
        max_open_per_thread: open datasets kept per worker thread (LRU); a continent
            build calls ``fetch`` millions of times, mostly on the same few files.
    """

    paths: list[str] = Field(min_length=1)
    size: int = Field(448, gt=0)
    gsd: float = Field(gt=0)
    bands: list[int] | None = None
    band_names: list[str] | None = None
    resampling: str = "bilinear"
    min_valid_fraction: float = Field(0.9, ge=0, le=1)
    date: dt.date | None = None
    max_open_per_thread: int = Field(64, ge=1)

    @field_validator("bands")
    @classmethod
    def _bands_positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(b < 1 for b in v)):
            raise ValueError(f"bands are 1-based band indexes, e.g. [1, 2, 3]; got {v}")
        return v

    @model_validator(mode="after")
    def _one_name_per_band(self) -> GeoTiffConfig:
        n = len(self.bands or [1, 2, 3])
        names = self.band_names
        if names is not None and (len(names) != n or len(set(names)) != n or not all(names)):
            raise ValueError(f"geotiff.band_names must name each of the {n} bands {self.bands or [1, 2, 3]} once; "
                             f"got {names}")
        return self

    @field_validator("resampling")
    @classmethod
    def _known_resampling(cls, v: str) -> str:
        if v not in Resampling.__members__:
            raise ValueError(f"unknown resampling {v!r}; expected one of {sorted(Resampling.__members__)}")
        return v


@dataclass(frozen=True)
class IndexedRaster:
    """One usable file: where it is, its CRS, WGS84 footprint and how its validity mask is read."""

    path: str
    crs: str
    footprint: Polygon
    dtype: str
    has_alpha: bool


def expand_paths(patterns: list[str], rejections: Rejections | None = None) -> list[str]:
    """Files named by ``patterns`` (files, folders, globs, GDAL virtual paths), deduplicated, in order.

    A pattern that names nothing is recorded as ``geotiff_no_match``.
    """
    out: dict[str, None] = {}
    for pattern in patterns:
        if pattern.startswith("/vsi") or "://" in pattern:
            out[pattern] = None
            continue
        p = os.path.expanduser(pattern)
        if any(c in p for c in "*?["):
            found = [f for f in sorted(glob.glob(p, recursive=True)) if os.path.isfile(f)]
        elif os.path.isdir(p):
            found = sorted(str(f) for f in Path(p).rglob("*") if f.suffix.lower() in _TIFF_SUFFIXES and f.is_file())
        else:
            found = [p] if os.path.exists(p) else []
        if not found:
            log.warning("GeoTIFF path %r matches no file", pattern)
            if rejections is not None:
                rejections.add("geotiff_no_match", pattern, "no file matches this path or pattern")
        for f in found:
            out[f] = None
    return list(out)


def _edge_points(width: float, height: float, n: int = _DENSIFY) -> tuple[np.ndarray, np.ndarray]:
    """(col, row) points around a width x height pixel rectangle, closed, ``n`` per edge."""
    t = np.linspace(0.0, 1.0, n)
    cols = np.concatenate([t * width, np.full(n, width), (1 - t) * width, np.zeros(n)])
    rows = np.concatenate([np.zeros(n), t * height, np.full(n, height), (1 - t) * height])
    return cols, rows


def _lonlat_polygon(transform, width: float, height: float, crs: str) -> Polygon:
    cols, rows = _edge_points(width, height)
    # Written out rather than `transform * (cols, rows)`: affine 3 deprecates `*`, older versions lack `@`.
    x = transform.a * cols + transform.b * rows + transform.c
    y = transform.d * cols + transform.e * rows + transform.f
    lon, lat = crs_to_lonlat(np.asarray(x), np.asarray(y), crs)
    lon, lat = np.asarray(lon), np.asarray(lat)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise ValueError("footprint does not project to WGS84 (outside the CRS's area of use?)")
    poly = Polygon(np.column_stack([lon, lat]))
    return poly if poly.is_valid else shapely.make_valid(poly)


def grid_footprint(grid: TileGrid) -> Polygon:
    """The WGS84 footprint of a tile grid (densified edges)."""
    return _lonlat_polygon(grid.transform, grid.size, grid.size, grid.crs)


class GeoTiffSource:
    """Chips warped from local GeoTIFF/COG files onto each tile's grid.

    Args:
        cfg: files and chip settings.
        rejections: ledger for unusable files (a new one if omitted; see ``self.rejections``).

    Raises:
        FileNotFoundError: ``cfg.paths`` names no file at all.
        ValueError: files were found but none is usable (the message counts why).
    """

    name = "geotiff"

    def __init__(self, cfg: GeoTiffConfig, rejections: Rejections | None = None):
        self.cfg = cfg
        self.rejections = rejections if rejections is not None else Rejections()
        self.band_indexes = list(cfg.bands or [1, 2, 3])
        self.band_names = list(cfg.band_names or [f"b{i}" for i in self.band_indexes])
        self._resampling = Resampling[cfg.resampling]
        files = expand_paths(cfg.paths, self.rejections)
        if not files:
            raise FileNotFoundError(f"no GeoTIFF matches geotiff.paths {cfg.paths}; check the paths and patterns")
        before = self.rejections.to_json()["counts"]
        self.rasters: list[IndexedRaster] = []
        self.dtype: str | None = None
        for path in tqdm(files, desc="indexing GeoTIFFs", unit="file", disable=None):
            raster = self._index_one(path)
            if raster is not None:
                self.rasters.append(raster)
        if not self.rasters:
            after = self.rejections.to_json()["counts"]
            why = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
            raise ValueError(f"none of the {len(files)} GeoTIFF files from {cfg.paths} is usable: {why}; "
                             "see the rejection examples for each file's problem")
        self._build_tree()
        self._local = threading.local()
        self._open_lock = threading.Lock()
        self._all_open: set[Any] = set()
        log.info("indexed %d GeoTIFF files (%s, %d rejected)", len(self.rasters), self.dtype,
                 len(files) - len(self.rasters))

    # ------------------------------------------------------------------ indexing

    def _index_one(self, path: str) -> IndexedRaster | None:
        try:
            with rasterio.open(path) as src:
                if src.crs is None:
                    self.rejections.add("geotiff_no_crs", path, "the file has no CRS; add one with "
                                        "gdal_edit.py -a_srs EPSG:XXXX or drop the file")
                    return None
                if max(self.band_indexes) > src.count:
                    self.rejections.add("geotiff_band_count", path, f"has {src.count} band(s), geotiff.bands "
                                        f"asks for {self.band_indexes}")
                    return None
                dtypes = {src.dtypes[i - 1] for i in self.band_indexes}
                if len(dtypes) != 1 or next(iter(dtypes)) not in SUPPORTED_DTYPES:
                    self.rejections.add("geotiff_dtype", path, f"band dtypes {sorted(dtypes)}; expected uint8 "
                                        "or uint16 (rescale with gdal_translate -ot)")
                    return None
                dtype = next(iter(dtypes))
                if self.dtype is None:
                    self.dtype = dtype
                elif dtype != self.dtype:
                    self.rejections.add("geotiff_dtype_mismatch", path, f"{dtype} while earlier files are "
                                        f"{self.dtype}; one dataset must have one dtype")
                    return None
                crs = src.crs.to_string()
                has_alpha = any(MaskFlags.alpha in flags for flags in src.mask_flag_enums)
                try:
                    footprint = _lonlat_polygon(src.transform, src.width, src.height, crs)
                except ValueError as e:
                    self.rejections.add("geotiff_bad_footprint", path, f"{crs}: {e}")
                    return None
        except (RasterioError, OSError) as e:
            self.rejections.add("geotiff_unreadable", path, f"{type(e).__name__}: {e}")
            return None
        return IndexedRaster(path=path, crs=crs, footprint=footprint, dtype=dtype, has_alpha=has_alpha)

    def _build_tree(self) -> None:
        self._tree = shapely.STRtree([r.footprint for r in self.rasters])

    def __getstate__(self) -> dict:
        # For Ray/multiprocessing: the tree, open datasets and locks are rebuilt on the other side.
        state = {k: v for k, v in self.__dict__.items() if k not in ("_tree", "_local", "_open_lock", "_all_open")}
        state["rejections"] = None  # indexing rejections were reported by the constructing process
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.rejections = Rejections()
        self._build_tree()
        self._local = threading.local()
        self._open_lock = threading.Lock()
        self._all_open = set()

    # ------------------------------------------------------------------ reading

    def files_for(self, grid: TileGrid) -> list[IndexedRaster]:
        """Indexed files whose footprint intersects the grid's, in configured path order (= priority)."""
        hits = self._tree.query(grid_footprint(grid), predicate="intersects")
        return [self.rasters[i] for i in sorted(int(h) for h in hits)]

    def _open(self, path: str):
        """This thread's open dataset for ``path`` (rasterio datasets are not shareable across threads)."""
        cache: OrderedDict | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = OrderedDict()
        src = cache.get(path)
        if src is not None:
            cache.move_to_end(path)
            return src
        src = rasterio.open(path)
        cache[path] = src
        with self._open_lock:
            self._all_open.add(src)
        if len(cache) > self.cfg.max_open_per_thread:
            _, old = cache.popitem(last=False)
            old.close()
            with self._open_lock:
                self._all_open.discard(old)
        return src

    def _warp(self, raster: IndexedRaster, grid: TileGrid) -> tuple[np.ndarray, np.ndarray]:
        """(bands, H, W) data and (H, W) validity of one file on ``grid``."""
        src = self._open(raster.path)
        # Without an alpha band of its own, a warped VRT reports pixels outside the
        # source as valid zeros; an added alpha band carries nodata, internal masks
        # and the source extent in one read.
        with WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.size, height=grid.size,
                       resampling=self._resampling, add_alpha=not raster.has_alpha) as vrt:
            if raster.has_alpha:
                data = vrt.read(self.band_indexes)
                valid = np.all(vrt.read_masks(self.band_indexes) > 0, axis=0)
            else:
                both = vrt.read([*self.band_indexes, vrt.count])
                data, valid = both[:-1], both[-1] > 0
        return data, valid

    def fetch(self, grid: TileGrid, date: dt.date | None = None) -> SatelliteChip:
        """Warp the files under ``grid`` onto it; the first file (in path order) with data wins per pixel.

        ``date`` is not used to choose imagery: local files carry one epoch each;
        the chip's date is ``cfg.date``.

        Raises:
            ChipRejected: ``outside_coverage`` (no file intersects), ``nodata`` (too few
                valid pixels), ``fetch_failed:read_error`` (a file failed to read).
        """
        rasters = self.files_for(grid)
        if not rasters:
            raise ChipRejected("outside_coverage", f"no GeoTIFF from {self.cfg.paths} intersects the tile")
        out = np.zeros((len(self.band_indexes), grid.size, grid.size), dtype=self.dtype)
        filled = np.zeros((grid.size, grid.size), dtype=bool)
        used: list[str] = []
        for raster in rasters:
            try:
                data, valid = self._warp(raster, grid)
            except (RasterioError, OSError) as e:
                raise ChipRejected("fetch_failed:read_error", f"{raster.path}: {type(e).__name__}: {e}") from None
            take = valid & ~filled
            if take.any():
                out[:, take] = data[:, take]
                filled |= take
                used.append(raster.path)
            if filled.all():
                break
        valid_fraction = float(filled.mean())
        if valid_fraction < max(self.cfg.min_valid_fraction, 1e-9):
            raise ChipRejected("nodata", f"{valid_fraction:.1%} of the tile holds data in "
                                         f"{[r.path for r in rasters]} (need {self.cfg.min_valid_fraction:.0%})")
        return SatelliteChip(
            array=out,
            grid=grid,
            bands=list(self.band_names),
            date=self.cfg.date,
            source=self.name,
            meta={"files": used, "valid_fraction": valid_fraction},
        )

    def close(self) -> None:
        """Close every dataset opened by any thread (call once fetching is over)."""
        with self._open_lock:
            for src in self._all_open:
                src.close()
            self._all_open.clear()
        self._local = threading.local()

    def __enter__(self) -> GeoTiffSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
