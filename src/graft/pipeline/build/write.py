"""The write stage: a partition's shards, then its part folder (manifest part, tile table, stats), atomically."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from graft.dataset.band_stats import merged
from graft.dataset.layout import part_dir, shard_names
from graft.dataset.manifest import write_part
from graft.dataset.shards import photo_sample, tile_sample, write_samples
from graft.pipeline.build.fetch import FetchedChip
from graft.pipeline.build.records import PartitionRun, PhotoRecord, plain, utc
from graft.pipeline.cover import PlannedTile
from graft.sources.base import ChipRejected


@dataclass
class _Shard:
    """One tile shard of the partition and its aligned photo shard, with their samples."""

    tile_shard: str
    photo_shard: str
    tile_samples: list[dict] = field(default_factory=list)
    photo_samples: list[dict] = field(default_factory=list)


@dataclass
class _PartOutput:
    """What a partition writes, assembled tile by tile: at most ``max_tiles`` tiles a shard."""

    partition: int
    max_tiles: int
    shards: list[_Shard] = field(default_factory=list)
    manifest_rows: list[dict] = field(default_factory=list)
    tile_rows: list[dict] = field(default_factory=list)
    tile_rejections: Counter[str] = field(default_factory=Counter)

    def shard_for_next_tile(self) -> _Shard:
        if not self.shards or len(self.shards[-1].tile_samples) >= self.max_tiles:
            self.shards.append(_Shard(*shard_names(self.partition, len(self.shards))))
        return self.shards[-1]


def write_partition(run: PartitionRun, records: list[PhotoRecord], tiles: list[PlannedTile],
                    chips: dict[int, FetchedChip | ChipRejected], t_start: float) -> dict:
    """Write the partition's shards and then its part folder (the folder is the completion marker); returns its stats.

    Args:
        run: the partition run.
        records: the covered photos; tiles refer to them by position.
        tiles: the planned tiles.
        chips: each tile's chip or rejection, by tile index.
        t_start: when the partition started (``perf_counter``), for ``timings.total_s``.
    """
    out = _PartOutput(run.partition, run.cfg.shard_max_tiles)
    for tile in tiles:
        chip = chips[tile.index]
        if isinstance(chip, ChipRejected):
            _reject_tile(run, records, tile, chip, out)
        else:
            _add_tile(run, records, tile, chip, out)
    band_sums = merged(c.band_sums for c in (chips[t.index] for t in tiles) if not isinstance(c, ChipRejected))
    if not out.shards:
        out.shard_for_next_tile()  # a partition without tiles still writes its (empty) first shards
    run.counts["tiles_written"] += len(out.tile_rows)
    run.counts["tiles_rejected"] += sum(out.tile_rejections.values())
    run.counts["kept"] += len(out.manifest_rows)

    # Shards first, the part folder last: the folder is the proof that the shards are complete.
    root = Path(run.cfg.out_dir)
    for shard in out.shards:
        write_samples(root / shard.tile_shard, shard.tile_samples)
        write_samples(root / shard.photo_shard, shard.photo_samples)
    run.timings["total_s"] = round(time.perf_counter() - t_start, 4)
    stats = {
        "partition": run.partition, "split": run.task.split, "config_fingerprint": run.cfg.fingerprint(),
        "counts": dict(sorted(run.counts.items())), "rejections": run.ledger.to_json(),
        "tile_rejections": dict(sorted(out.tile_rejections.items())), "timings": run.timings,
        "tile_shards": [sh.tile_shard for sh in out.shards], "photo_shards": [sh.photo_shard for sh in out.shards],
        "band_sums": band_sums.to_json() if band_sums else None,
        "filter_score_hist": run.filter_score_hist,
    }
    write_part(part_dir(root, run.partition), out.manifest_rows, out.tile_rows, stats)
    return stats


def _reject_tile(run: PartitionRun, records: list[PhotoRecord], tile: PlannedTile, chip: ChipRejected,
                 out: _PartOutput) -> None:
    """Drop a tile whose chip the source rejected, with its photos; or fail the partition on an outage."""
    tile_id = run.tile_id(tile.index)
    if chip.reason.startswith("fetch_failed") and run.cfg.satellite.on_fetch_failure == "retry_partition":
        raise RuntimeError(f"tile {tile_id}: chip could not be fetched ({chip}); the partition will "
                           "be retried on the next run (satellite.on_fetch_failure: drop_tile drops "
                           "such tiles instead)")
    out.tile_rejections[chip.reason] += 1
    for j in tile.members:
        run.ledger.add(f"tile_{chip.reason}", records[j].photo_id, f"{tile_id}: {chip.detail}")


def _add_tile(run: PartitionRun, records: list[PhotoRecord], tile: PlannedTile, chip: FetchedChip,
              out: _PartOutput) -> None:
    """The tile's sample and table row, and a manifest row and photo sample for each of its photos."""
    tile_id, pid, split = run.tile_id(tile.index), run.partition, run.task.split
    shard = out.shard_for_next_tile()
    entries = []
    for j, r, c in zip(tile.members, tile.rows, tile.cols, strict=True):
        photo = records[j].photo
        row = {
            "photo_id": photo.photo_id, "lat": float(photo.lat), "lon": float(photo.lon),
            "taken_at": utc(photo.taken_at), "tile_id": tile_id, "row": r, "col": c,
            "split": split, "source": photo.source, "license": photo.license or "",
            "owner": photo.owner or "", "outdoor_score": records[j].outdoor_score, "tile_shard": shard.tile_shard,
            "photo_shard": shard.photo_shard, "tile_crs": chip.grid.crs, "tile_date": chip.date,
            "partition": pid,
        }
        out.manifest_rows.append(row)
        entries.append({"photo_id": photo.photo_id, "row": r, "col": c})
        shard.photo_samples.append(photo_sample(photo.photo_id, records[j].prepared.jpeg, plain(row)))
    meta = {
        "tile_id": tile_id, "grid": chip.grid.to_json(), "bands": list(chip.bands),
        "date": chip.date.isoformat() if chip.date else None,
        "source": chip.source, "split": split, "photos": entries, "meta": chip.meta,
    }
    shard.tile_samples.append(tile_sample(tile_id, chip.tif, meta))
    out.tile_rows.append({"tile_id": tile_id, "partition": pid, "split": split, "crs": chip.grid.crs,
                          "transform": list(chip.grid.transform)[:6], "size": chip.grid.size,
                          "date": chip.date, "n_photos": len(entries), "tile_shard": shard.tile_shard})
