"""The fetch stage: one satellite chip per planned tile, on the I/O pool, encoded as GeoTIFF at once."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import as_completed
from dataclasses import dataclass

from tqdm import tqdm

from graft.dataset.band_stats import BandSums
from graft.geometry import TileGrid
from graft.imagery import encode_geotiff
from graft.pipeline.build.records import PartitionRun, plain
from graft.pipeline.cover import PlannedTile
from graft.sources.base import ChipRejected, SatelliteChip


@dataclass
class FetchedChip:
    """A fetched chip, already encoded as GeoTIFF bytes (a partition never holds its raw arrays)."""

    grid: TileGrid
    bands: list[str]
    date: dt.date | None
    source: str
    meta: dict
    tif: bytes
    band_sums: BandSums  # for the dataset's band statistics, summed while the array is at hand


def fetch_chips(run: PartitionRun, tiles: list[PlannedTile]) -> dict[int, FetchedChip | ChipRejected]:
    """Each tile's chip (or the source's rejection of it), by tile index."""
    source = run.satellite

    def fetch(tile: PlannedTile) -> FetchedChip | ChipRejected:
        try:
            chip = source.fetch(tile.grid, tile.date)
        except ChipRejected as e:
            return e
        check_chip(chip, tile.grid, run.tile_id(tile.index))
        return FetchedChip(grid=chip.grid, bands=list(chip.bands), date=chip.date,
                           source=chip.source or getattr(source, "name", ""), meta=plain(chip.meta),
                           tif=encode_geotiff(chip.array, chip.grid),
                           band_sums=BandSums.of_tile(chip.array, list(chip.bands)))

    futures = {run.pool.submit(fetch, t): t.index for t in tiles}
    chips: dict[int, FetchedChip | ChipRejected] = {}
    for fut in tqdm(as_completed(futures), total=len(futures), desc=f"part {run.partition:05d} tiles",
                    unit="tile", disable=not run.progress, leave=False):
        chips[futures[fut]] = fut.result()
    run.counts["fetch_calls"] += len(chips)
    return chips


def check_chip(chip: SatelliteChip, grid: TileGrid, tile_id: str) -> None:
    """The chip must sit on the requested grid, or the photos' pixel positions would be wrong."""
    same = (chip.grid.crs == grid.crs and chip.grid.size == grid.size
            and chip.grid.transform.almost_equals(grid.transform, precision=1e-6))
    if not same:
        raise RuntimeError(f"tile {tile_id}: the satellite source returned a chip on {chip.grid}, not on the "
                           f"requested grid {grid}; sources must resample onto the given grid")
    if chip.array.ndim != 3 or chip.array.shape[1:] != (grid.size, grid.size):
        raise RuntimeError(f"tile {tile_id}: chip array has shape {chip.array.shape}, expected "
                           f"(bands, {grid.size}, {grid.size})")
