"""Ground photos from Flickr: searches at query points sampled per block, photos downloaded by their partition.

A photo belongs to the block it lies in. Every block that a search circle reaches is a partition,
and searches the points whose circles reach it, so no photo found inside the region is dropped
for lack of an owner.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack

import numpy as np
import shapely
from tqdm import tqdm

from graft.geometry import lonlat_to_crs
from graft.pipeline.build import resources
from graft.pipeline.build.config import BuildConfig
from graft.pipeline.build.ground_base import GroundKind
from graft.pipeline.build.records import PartitionRun, PartitionTask, PhotoRecord, Plan
from graft.pipeline.region import Region
from graft.pipeline.split import assign_splits
from graft.rejections import Rejections
from graft.sources.base import GroundPhoto
from graft.sources.flickr import FlickrSource


class FlickrGround(GroundKind):
    """``ground.kind: flickr``: the Flickr API (see :mod:`graft.sources.flickr`)."""

    name = "flickr"

    def preflight(self, cfg: BuildConfig) -> None:
        FlickrSource(cfg.ground.flickr, Rejections()).close()  # fails now on missing credentials

    def plan(self, cfg: BuildConfig, region: Region) -> Plan:
        """One partition per block that a search circle reaches (not only per block holding query points).

        A circle near a block edge finds photos in the neighbour; that block is planned too, and
        searches the neighbour's point again, keeping the photos in its own block. Every photo
        found inside the region so has a partition that keeps it or rejects it with a reason, at
        the cost of one more search per (point, reached block) pair (``neighbour_searches_planned``).
        """
        points = _query_points(cfg, region)
        reached = _neighbours_reached(cfg, region, points)
        blocks = sorted(set(points) | set(reached))
        splits = assign_splits(blocks, cfg.split)
        tasks = [PartitionTask(partition=b, split=splits[b], query_points=points.get(b, []),
                               neighbour_points=reached.get(b, [])) for b in blocks]
        counts = Counter(query_points_planned=sum(len(v) for v in points.values()),
                         neighbour_searches_planned=sum(len(v) for v in reached.values()))
        return Plan(tasks, Rejections(), counts, {})

    def gather(self, run: PartitionRun, stack: ExitStack) -> list[PhotoRecord]:
        src = stack.enter_context(FlickrSource(run.cfg.ground.flickr, run.ledger, bucket=run.query_limiter))
        # The source's request counters (attempts included) go into stats.json once the photos are
        # downloaded: without them a build that retried a third of its requests looks like a healthy one.
        stack.callback(lambda: run.counts.update({f"flickr_{k}": v for k, v in src.counters.items()}))
        # Searches of the neighbours' points reject photos (licence, accuracy...) that the neighbour's
        # own search rejects and counts already: only their failed queries count here.
        theirs = Rejections()
        nsrc = stack.enter_context(FlickrSource(run.cfg.ground.flickr, theirs, bucket=run.query_limiter))
        stack.callback(lambda: run.counts.update({f"flickr_{k}": v for k, v in nsrc.counters.items()}))
        mine = _photos_of_partition(run, *_search(run, src, nsrc))
        for reason, n in theirs.counts.items():
            if not reason.startswith("query_"):
                continue
            # Keep the failed query's own item (its point and page) and detail, as the own searches do.
            named = [e for e in theirs.examples if e["reason"] == reason]
            for e in named:
                run.ledger.add(reason, e["item"], f"{e['detail']} (a neighbour's point, searched for this block)")
            for _ in range(n - len(named)):  # beyond the ledger's bounded examples
                run.ledger.add(reason, "a neighbour's query point", "searched for this block")
        run.counts["input"] += len(mine)

        def loader(p: GroundPhoto) -> Callable[[], bytes | None]:
            # The download happens inside the preparation task, so a photo is fetched, decoded once and
            # shrunk on one thread, and only its small prepared JPEG outlives the task.
            def load() -> bytes | None:
                got = src.download(p)  # a failure is already in the ledger
                if got is None:
                    return None
                data, got.image = got.image, None
                return data
            return load

        return [PhotoRecord(p, loader(p)) for p in mine]

    def queries_per_hour(self, cfg: BuildConfig) -> float | None:
        return cfg.ground.flickr.queries_per_hour

    def photos_seen(self, counts: Counter, kept: int, rejected: int) -> int:
        return kept + rejected  # searches return photos, so what was seen is what was kept or rejected


def _query_points(cfg: BuildConfig, region: Region) -> dict[int, list[tuple[float, float]]]:
    """Search points per block: ``n_points`` over the region, or ``points_per_km2`` in each block."""
    g = cfg.ground
    points: dict[int, list[tuple[float, float]]] = {}
    if g.n_points is not None:
        lat, lon = region.sample_points(g.n_points, np.random.default_rng(np.random.SeedSequence([g.seed, 0])))
        for la, lo, b in zip(lat, lon, region.block_of(lat, lon), strict=True):
            points.setdefault(int(b), []).append((float(la), float(lo)))
        return points
    for b in tqdm(region.block_ids, desc="sampling query points", unit="block", mininterval=1.0):
        rng = np.random.default_rng(np.random.SeedSequence([g.seed, 1, b]))
        expected = region.block_area_km2(b) * g.points_per_km2
        n = int(expected) + int(rng.random() < expected - int(expected))
        if n:
            lat, lon = region.sample_points(n, rng, within=region.block(b).bounds)
            points[b] = [(float(a), float(o)) for a, o in zip(lat, lon, strict=True)]
    return points


def _neighbours_reached(cfg: BuildConfig, region: Region,
                        points: dict[int, list[tuple[float, float]]]) -> dict[int, list[tuple[float, float]]]:
    """For each block, the query points of other blocks whose search circle reaches its part of the region.

    The circle is drawn in the region's UTM plane with a margin (2% and 50 m) for the plane's
    distortion against Flickr's great-circle radius: reaching a block too many costs a search,
    missing one would lose its photos.
    """
    radius_m = cfg.ground.flickr.radius_km * 1000.0 * 1.02 + 50.0
    reached: dict[int, list[tuple[float, float]]] = {}
    for own, pts in tqdm(sorted(points.items()), desc="blocks reached by query circles", unit="block",
                         mininterval=1.0):
        for lat, lon in pts:
            x, y = lonlat_to_crs(lon, lat, region.crs)
            circle = shapely.Point(x, y).buffer(radius_m, quad_segs=16)
            if not region.geometry_utm.contains(circle):
                circle = circle.intersection(region.geometry_utm)
            for b in region.blocks_under(circle):
                if b != own:
                    reached.setdefault(b, []).append((lat, lon))
    return reached


def _search(run: PartitionRun, src: FlickrSource, nsrc: FlickrSource) -> tuple[list[GroundPhoto], set[str]]:
    """Every photo the partition's searches found, once each, in photo-id order; and the ids its own points found.

    ``src`` searches the partition's own points, ``nsrc`` the neighbours' points that reach into its block.
    """
    own, neighbours = run.task.query_points, run.task.neighbour_points
    jobs = [(src, q) for q in own] + [(nsrc, q) for q in neighbours]
    results = list(run.pool.map(lambda job: job[0].search(job[1][0], job[1][1]), jobs))
    run.counts["query_points"] += len(own)
    run.counts["neighbour_searches"] += len(neighbours)
    found: dict[str, GroundPhoto] = {}
    for photos in results:  # query circles overlap: the same photo comes back from several points
        for p in photos:
            found.setdefault(p.photo_id, p)
    found_by_own = {p.photo_id for photos in results[:len(own)] for p in photos}
    run.counts["search_results"] += len(found)
    return [found[k] for k in sorted(found)], found_by_own


def _photos_of_partition(run: PartitionRun, found: list[GroundPhoto], found_by_own: set[str]) -> list[GroundPhoto]:
    """The found photos that lie in this partition's block (and are dated when a date is required)."""
    region = resources.region(run.cfg)
    lat = np.array([p.lat for p in found], dtype=float)
    lon = np.array([p.lon for p in found], dtype=float)
    inside = region.contains(lat, lon) if found else np.zeros(0, dtype=bool)
    blocks = region.block_of(lat, lon) if found else np.zeros(0, dtype=np.int64)
    mine: list[GroundPhoto] = []
    for i, p in enumerate(found):
        if not inside[i]:
            if p.photo_id in found_by_own:  # the neighbours searching our points would count it again
                run.ledger.add("outside_region", p.photo_id, f"({p.lat:.5f}, {p.lon:.5f})")
        elif blocks[i] != run.partition:
            # Found by a circle reaching into another block: that block is planned too (see
            # FlickrGround.plan), searches the same point and keeps or rejects the photo.
            run.counts["found_in_other_block"] += 1
        elif run.cfg.ground.require_date and p.taken_at is None:
            run.ledger.add("no_date", p.photo_id, "no capture date and ground.require_date is set")
        else:
            mine.append(p)
    return mine
