"""Greedy cover: group a partition's photos into satellite tiles, each fetched once.

Photos are visited in a seeded random order. Each photo not yet covered
becomes the centre of a new tile (``tile_grid_around`` in its UTM zone); every
still-uncovered photo inside that tile's footprint (and, for Sentinel-2, in
the same time bin) joins it. A tile keeps at most ``max_per_tile`` photos (a
seeded random choice, as in GRAFT's cap of 25 photos per location); the rest
are dropped as ``over_tile_cap`` rather than seeding a near-duplicate tile.

A spatial index (shapely STRtree over the photos' lon/lat) finds the
candidates of a footprint, so the cover is O(n log n) for the millions of
photos of a continent; membership itself is decided exactly on the tile's own
pixel grid (:meth:`TileGrid.pixel_of`), the same computation that produces the
manifest's ``row``/``col``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import shapely

from graft.geometry import TileGrid, crs_to_lonlat, tile_grid_around

NO_BIN = np.iinfo(np.int64).min  # photos without a date share one bin of their own
_EDGE_SAMPLES = 9  # points per footprint edge projected to lon/lat: UTM edges bend in lon/lat


@dataclass
class PlannedTile:
    """One tile of the cover: its grid and member photos (indices into the cover's input)."""

    index: int
    grid: TileGrid
    centre: int
    members: list[int]
    rows: list[float] = field(default_factory=list)
    cols: list[float] = field(default_factory=list)
    date: dt.date | None = None


@dataclass
class CoverResult:
    tiles: list[PlannedTile]
    over_cap: list[int]  # indices dropped because their tile already had max_per_tile photos


def time_bins(dates: list[dt.datetime | None], months: int | None) -> np.ndarray:
    """Bin index per photo: ``(year * 12 + month - 1) // months``; ``NO_BIN`` for missing dates.

    With ``months=None`` every photo is in bin 0 (no temporal grouping).
    """
    out = np.zeros(len(dates), dtype=np.int64)
    if months is None:
        return out
    for i, d in enumerate(dates):
        out[i] = NO_BIN if d is None else (d.year * 12 + d.month - 1) // months
    return out


def median_date(dates: list[dt.datetime | None]) -> dt.date | None:
    """The lower median of the known dates (a real photo date, never an average); None if none."""
    known = sorted(d for d in dates if d is not None)
    if not known:
        return None
    d = known[(len(known) - 1) // 2]
    return d.date() if isinstance(d, dt.datetime) else d


def footprint_lonlat_bounds(grid: TileGrid, margin: float = 1e-6) -> tuple[float, float, float, float]:
    """(min_lon, min_lat, max_lon, max_lat) enclosing the grid's footprint."""
    left, bottom, right, top = grid.bounds
    t = np.linspace(0.0, 1.0, _EDGE_SAMPLES)
    xs = np.concatenate([left + (right - left) * t, np.full_like(t, right), right - (right - left) * t,
                         np.full_like(t, left)])
    ys = np.concatenate([np.full_like(t, top), top - (top - bottom) * t, np.full_like(t, bottom),
                         bottom + (top - bottom) * t])
    lon, lat = crs_to_lonlat(xs, ys, grid.crs)
    lon, lat = np.asarray(lon), np.asarray(lat)
    # Edges are curves in lon/lat; pad by a pixel's worth so the box stays a superset.
    pad_lat = grid.gsd / 111_000.0 + margin
    pad_lon = pad_lat / max(np.cos(np.radians(np.abs(lat).max())), 1e-3)
    return (float(lon.min() - pad_lon), float(lat.min() - pad_lat), float(lon.max() + pad_lon),
            float(lat.max() + pad_lat))


def greedy_cover(
    lat: np.ndarray,
    lon: np.ndarray,
    dates: list[dt.datetime | None],
    *,
    tile_size: int,
    gsd: float,
    max_per_tile: int,
    time_bin_months: int | None,
    rng: np.random.Generator,
) -> CoverResult:
    """Cover the photos with tiles; see the module docstring.

    Args:
        lat, lon: WGS84 positions of the photos (in a deterministic order, e.g. sorted by photo id).
        dates: taken_at per photo (None when unknown).
        tile_size, gsd: the tile grid (pixels, metres per pixel).
        max_per_tile: cap of photos per tile.
        time_bin_months: group only photos in the same bin of this many months (Sentinel-2), or None.
        rng: the partition's generator; the visiting order and cap choices come from it.

    Returns:
        The tiles in creation order (members sorted by input index, with their
        fractional pixel positions) and the photos dropped over the cap.
    """
    lat = np.asarray(lat, dtype=float)
    lon = np.asarray(lon, dtype=float)
    n = len(lat)
    bins = time_bins(dates, time_bin_months)
    covered = np.zeros(n, dtype=bool)
    tree = shapely.STRtree(shapely.points(lon, lat)) if n else None
    tiles: list[PlannedTile] = []
    over_cap: list[int] = []
    for i in rng.permutation(n):
        if covered[i]:
            continue
        grid = tile_grid_around(float(lat[i]), float(lon[i]), tile_size, gsd)
        cand = np.asarray(tree.query(shapely.box(*footprint_lonlat_bounds(grid))), dtype=np.int64)
        cand = cand[~covered[cand] & (bins[cand] == bins[i])]
        rows, cols = grid.pixel_of(lat[cand], lon[cand])
        inside = np.asarray(grid.contains(rows, cols))
        joined, rows, cols = cand[inside], np.asarray(rows)[inside], np.asarray(cols)[inside]
        if i not in joined:  # cannot happen with a snapped grid around the photo; guard the invariant
            raise AssertionError(f"photo {i} is not inside the tile centred on it ({grid})")
        covered[joined] = True
        if len(joined) > max_per_tile:
            keep = np.zeros(len(joined), dtype=bool)
            keep[rng.choice(len(joined), size=max_per_tile, replace=False)] = True
            over_cap.extend(int(j) for j in joined[~keep])
            joined, rows, cols = joined[keep], rows[keep], cols[keep]
        order = np.argsort(joined, kind="stable")
        joined, rows, cols = joined[order], rows[order], cols[order]
        tiles.append(PlannedTile(
            index=len(tiles), grid=grid, centre=int(i), members=[int(j) for j in joined],
            rows=[float(r) for r in rows], cols=[float(c) for c in cols],
            date=median_date([dates[j] for j in joined]),
        ))
    return CoverResult(tiles=tiles, over_cap=sorted(over_cap))
