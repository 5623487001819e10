"""Ground photos from Flickr: searches at query points sampled per block, photos downloaded by their partition."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack

import numpy as np
from tqdm import tqdm

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
        points = _query_points(cfg, region)
        splits = assign_splits(list(points), cfg.split)
        tasks = [PartitionTask(partition=b, split=splits[b], query_points=points[b]) for b in sorted(points)]
        counts = Counter(query_points_planned=sum(len(v) for v in points.values()))
        return Plan(tasks, Rejections(), counts, {})

    def gather(self, run: PartitionRun, stack: ExitStack) -> list[PhotoRecord]:
        src = stack.enter_context(FlickrSource(run.cfg.ground.flickr, run.ledger))
        # The source's request counters (attempts included) go into stats.json once the photos are
        # downloaded: without them a build that retried a third of its requests looks like a healthy one.
        stack.callback(lambda: run.counts.update({f"flickr_{k}": v for k, v in src.counters.items()}))
        mine = _photos_of_partition(run, _search(run, src))
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


def _search(run: PartitionRun, src: FlickrSource) -> list[GroundPhoto]:
    """Every photo the partition's searches found, once each, in photo-id order."""
    points = run.task.query_points
    results = list(run.pool.map(lambda q: src.search(q[0], q[1]), points))
    run.counts["query_points"] += len(points)
    found: dict[str, GroundPhoto] = {}
    for photos in results:  # query circles overlap: the same photo comes back from several points
        for p in photos:
            found.setdefault(p.photo_id, p)
    run.counts["search_results"] += len(found)
    return [found[k] for k in sorted(found)]


def _photos_of_partition(run: PartitionRun, found: list[GroundPhoto]) -> list[GroundPhoto]:
    """The found photos that lie in this partition's block (and are dated when a date is required)."""
    region = resources.region(run.cfg)
    lat = np.array([p.lat for p in found], dtype=float)
    lon = np.array([p.lon for p in found], dtype=float)
    inside = region.contains(lat, lon) if found else np.zeros(0, dtype=bool)
    blocks = region.block_of(lat, lon) if found else np.zeros(0, dtype=np.int64)
    mine: list[GroundPhoto] = []
    for i, p in enumerate(found):
        if not inside[i]:
            run.ledger.add("outside_region", p.photo_id, f"({p.lat:.5f}, {p.lon:.5f})")
        elif blocks[i] != run.partition:
            # A search circle near the block edge reaches into the neighbour; that block's
            # own partition keeps the photo, so it is handed off here, not rejected.
            run.counts["found_in_other_block"] += 1
        elif run.cfg.ground.require_date and p.taken_at is None:
            run.ledger.add("no_date", p.photo_id, "no capture date and ground.require_date is set")
        else:
            mine.append(p)
    return mine
