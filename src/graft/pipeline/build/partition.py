"""One partition, start to end: gather -> prepare -> filter -> cover -> fetch -> write.

Each stage is a function of the :class:`PartitionRun` and the photo records the previous stage
kept; what a stage drops goes into ``run.ledger`` with its reason, what it does into ``run.counts``
and ``run.timings``. Only :meth:`GroundKind.gather` depends on where the photos come from.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from graft.dataset.members import KEY_RE
from graft.pipeline.build import resources
from graft.pipeline.build.config import BuildConfig
from graft.pipeline.build.fetch import fetch_chips
from graft.pipeline.build.grounds import ground_kind
from graft.pipeline.build.records import PartitionRun, PartitionTask, PhotoRecord, utc
from graft.pipeline.build.write import write_partition
from graft.pipeline.cover import CoverResult, PlannedTile, greedy_cover
from graft.pipeline.photos import PreparedPhoto, prepare_photo
from graft.pipeline.plots import score_histogram
from graft.rejections import PhotoRejected
from graft.sources.base import SatelliteSource
from graft.sources.retry import RateLimiter


def run_partition(cfg: BuildConfig, task: PartitionTask, satellite: SatelliteSource | None = None,
                  progress: bool = False, query_limiter: RateLimiter | None = None) -> dict:
    """Process one partition end to end and write its outputs atomically; returns its stats.

    Args:
        cfg: the validated build config.
        task: the partition's id, split and input (photos or query points).
        satellite: a satellite source to use instead of the configured one (custom sources, tests).
        progress: show a bar over this partition's tile fetches.
        query_limiter: the rate limiter of the ground source's queries when several processes share
            one quota (a Ray build); None: the source's own, per process.
    """
    t_start = time.perf_counter()
    resources.limit_gdal_cache(cfg.gdal_cache_mb)
    run = PartitionRun(cfg=cfg, task=task, progress=progress, pool=resources.io_pool(cfg.fetch_workers),
                       query_limiter=query_limiter,
                       satellite=satellite if satellite is not None else resources.satellite(cfg.satellite))
    stats = _run_stages(run, t_start)  # its photos, chips and shards are freed when it returns
    resources.release_free_heap()
    return stats


def _run_stages(run: PartitionRun, t_start: float) -> dict:
    with contextlib.ExitStack() as stack:  # the ground source's session, if it has one, until photos are read
        with run.stage("gather_s"):
            records = ground_kind(run.cfg).gather(run, stack)
        _check_keys(records)
        with run.stage("prepare_s"):
            records = prepare(run, records)
    run.counts["prepared"] += len(records)
    records = filter_outdoor(run, records)
    cover = cover_tiles(run, records)
    tiles = guard_split(run, records, cover.tiles)
    with run.stage("fetch_s"):
        chips = fetch_chips(run, tiles)
    with run.stage("write_s"):
        return write_partition(run, records, tiles, chips, t_start)


def _check_keys(records: list[PhotoRecord]) -> None:
    for r in records:
        if not KEY_RE.fullmatch(r.photo_id):
            raise RuntimeError(f"ground source produced photo id {r.photo_id!r}, which is not a valid "
                               f"shard key ({KEY_RE.pattern})")


def prepare(run: PartitionRun, records: list[PhotoRecord]) -> list[PhotoRecord]:
    """Load, validate and shrink each photo on the pool; drop exact duplicates within the partition.

    The folder source is de-duplicated once over the whole folder before partitioning, so duplicates
    here are Flickr re-uploads; across partitions they stay (see README). Records are in photo-id
    order and ``pool.map`` keeps it, so the first of a set of duplicates is kept, on every run.
    """
    ground = run.cfg.ground

    def one(record: PhotoRecord) -> PreparedPhoto | PhotoRejected | None:
        data = record.load()
        if data is None:
            return None
        try:
            return prepare_photo(data, ground.short_side, ground.max_pixels)
        except PhotoRejected as e:
            return e

    out = []
    seen: dict[str, str] = {}
    for record, res in zip(records, run.pool.map(one, records), strict=True):
        if res is None:
            continue
        run.counts["loaded"] += 1
        if isinstance(res, PhotoRejected):
            run.ledger.add(res.reason, record.photo_id, res.detail)
        elif res.sha256 in seen:
            run.ledger.add("duplicate_content", record.photo_id, f"same bytes as {seen[res.sha256]}")
        else:
            seen[res.sha256] = record.photo_id
            record.prepared = res
            out.append(record)
    return out


def filter_outdoor(run: PartitionRun, records: list[PhotoRecord]) -> list[PhotoRecord]:
    """Score every photo with the indoor filter; keep the outdoor ones (with their score), in photo-id order."""
    with run.stage("filter_s"):
        if records:
            flt = resources.indoor_filter(run.cfg.filter)
            scores = np.asarray(flt.score([r.prepared.jpeg for r in records]), dtype=np.float64)
            keep = np.asarray(flt.keep(scores), dtype=bool)
        else:
            scores, keep = np.zeros(0), np.zeros(0, dtype=bool)
    outdoor: list[PhotoRecord] = []
    for record, s, k in zip(records, scores, keep, strict=True):
        if k:
            record.outdoor_score = float(s)
            outdoor.append(record)
        else:
            run.ledger.add("indoor", record.photo_id, f"outdoor score {s:.3f} < {run.cfg.filter.threshold}")
    run.counts["outdoor"] += len(outdoor)
    run.filter_score_hist = score_histogram(scores)  # every scored photo, kept or not: finalize plots the sum
    return sorted(outdoor, key=lambda r: r.photo_id)


def cover_tiles(run: PartitionRun, records: list[PhotoRecord]) -> CoverResult:
    """Group the photos into tiles (greedy cover); photos over a tile's cap are dropped as ``over_tile_cap``."""
    cfg = run.cfg
    with run.stage("cover_s"):
        cover = greedy_cover(
            np.array([r.photo.lat for r in records]), np.array([r.photo.lon for r in records]),
            [utc(r.photo.taken_at) for r in records],
            tile_size=cfg.satellite.tile_size, gsd=cfg.satellite.gsd, max_per_tile=cfg.ground.max_per_tile,
            time_bin_months=cfg.satellite.bin_months, rng=run.rng(1),
        )
    for j in cover.over_cap:
        run.ledger.add("over_tile_cap", records[j].photo_id, f"tile already has {cfg.ground.max_per_tile} photos")
    run.counts["tiles_planned"] += len(cover.tiles)
    run.counts["covered"] += sum(len(t.members) for t in cover.tiles)
    return cover


def guard_split(run: PartitionRun, records: list[PhotoRecord], tiles: list[PlannedTile]) -> list[PlannedTile]:
    """Drop the tiles whose footprint reaches into a block of another split, with their photos (``tile_crosses_split``).

    A tile centred near a block edge reaches up to half a tile into the neighbour; kept, a train
    tile would overlap a val/test tile and the held-out figures would be optimistic. A train tile
    may also reach into a block no partition holds (no photos there, so no tile of another split);
    a val/test tile may not, since a train tile may: so a train footprint and a val/test footprint
    never overlap, and neither do val and test footprints.
    """
    region = resources.region(run.cfg)
    split = run.task.split
    kept: list[PlannedTile] = []
    for tile in tiles:
        crossed = []
        for b in region.blocks_under(region.footprint(tile.grid)):
            other = run.task.neighbour_splits.get(b)
            if b != run.partition and (other != split if other is not None else split != "train"):
                crossed.append(f"block {b} ({other or 'no partition'})")
        if not crossed:
            kept.append(tile)
            continue
        run.counts["tiles_crossing_split"] += 1
        for j in tile.members:
            run.ledger.add("tile_crosses_split", records[j].photo_id,
                           f"{run.tile_id(tile.index)} of split {split} reaches into {', '.join(crossed)}")
    return kept
