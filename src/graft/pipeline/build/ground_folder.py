"""Ground photos from a local folder: scanned and de-duplicated once by the driver, then split by block."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np
from tqdm import tqdm

from graft.pipeline.build.config import BuildConfig
from graft.pipeline.build.ground_base import GroundKind
from graft.pipeline.build.records import PartitionRun, PartitionTask, PhotoRecord, Plan, timed
from graft.pipeline.photos import content_hash
from graft.pipeline.region import Region
from graft.pipeline.split import assign_splits
from graft.rejections import Rejections
from graft.sources.base import GroundPhoto
from graft.sources.folder import FolderSource


class FolderGround(GroundKind):
    """``ground.kind: folder``: JPEG/PNG files with EXIF GPS, or a sidecar (see :mod:`graft.sources.folder`)."""

    name = "folder"

    def plan(self, cfg: BuildConfig, region: Region) -> Plan:
        ledger, counts, timings = Rejections(), Counter(), {}
        src = FolderSource(cfg.ground.folder, ledger)
        with timed(timings, "scan_s"):
            scanned = list(src.scan())
        counts["located"] = len(scanned)
        counts["seen"] = len(scanned) + ledger.total
        kept = _usable(cfg, region, scanned, ledger)
        with timed(timings, "hash_s"):
            unique = _unique_content(cfg, src, kept, ledger)
        by_block = _by_block(region, unique)
        counts["assigned"] = sum(len(v) for v in by_block.values())
        splits = assign_splits(list(by_block), cfg.split)
        tasks = [PartitionTask(partition=b, split=splits[b], photos=by_block[b]) for b in sorted(by_block)]
        return Plan(tasks, ledger, counts, timings, photo_extent=_extent(scanned))

    def gather(self, run: PartitionRun, stack: ExitStack) -> list[PhotoRecord]:
        run.counts["input"] += len(run.task.photos)
        src = FolderSource(run.cfg.ground.folder, run.ledger)
        ledger = run.ledger

        def loader(p: GroundPhoto) -> Callable[[], bytes | None]:
            def load() -> bytes | None:
                try:
                    return src.load(p)
                except OSError as e:
                    ledger.add("file_missing", p.photo_id, f"{p.uri}: {e}")
                    return None
            return load

        return [PhotoRecord(p, loader(p)) for p in run.task.photos]


def _extent(photos: list[GroundPhoto]) -> tuple[float, float, float, float] | None:
    """(min_lon, min_lat, max_lon, max_lat) of the photos, or None when there are none."""
    if not photos:
        return None
    lon = [p.lon for p in photos]
    lat = [p.lat for p in photos]
    return (min(lon), min(lat), max(lon), max(lat))


def _usable(cfg: BuildConfig, region: Region, scanned: list[GroundPhoto], ledger: Rejections) -> list[GroundPhoto]:
    """The scanned photos with a unique id, inside the region and dated when a date is required."""
    by_id: dict[str, GroundPhoto] = {}  # the first in the scan's sorted path order wins
    for p in scanned:
        if p.photo_id in by_id:
            ledger.add("duplicate_id", p.photo_id, f"{p.uri} has the id of {by_id[p.photo_id].uri}")
        else:
            by_id[p.photo_id] = p
    photos = list(by_id.values())
    inside = region.contains(np.array([p.lat for p in photos]), np.array([p.lon for p in photos])) \
        if photos else np.zeros(0, dtype=bool)
    kept: list[GroundPhoto] = []
    for i, p in enumerate(photos):
        if not inside[i]:
            ledger.add("outside_region", p.photo_id, f"{p.uri} at ({p.lat:.5f}, {p.lon:.5f})")
        elif cfg.ground.require_date and p.taken_at is None:
            ledger.add("no_date", p.photo_id, f"{p.uri}: no capture date and ground.require_date is set")
        else:
            kept.append(p)
    return kept


def _unique_content(cfg: BuildConfig, src: FolderSource, photos: list[GroundPhoto],
                    ledger: Rejections) -> list[GroundPhoto]:
    """Drops byte-identical copies over the whole folder (a copy may sit in another block's sub-folder)."""
    def digest(p: GroundPhoto) -> str | None:
        try:
            return content_hash(src.load(p))
        except OSError:
            return None

    with ThreadPoolExecutor(max_workers=cfg.fetch_workers) as pool:
        digests = list(tqdm(pool.map(digest, photos), total=len(photos), desc="folder: hashing", unit="photo",
                            mininterval=1.0))
    first: dict[str, GroundPhoto] = {}
    unique: list[GroundPhoto] = []
    for p, h in zip(photos, digests, strict=True):
        if h is None:
            ledger.add("file_missing", p.photo_id, f"{p.uri} vanished after the scan")
        elif h in first:
            ledger.add("duplicate_content", p.photo_id, f"{p.uri} has the same bytes as {first[h].uri}")
        else:
            first[h] = p
            unique.append(p)
    return unique


def _by_block(region: Region, photos: list[GroundPhoto]) -> dict[int, list[GroundPhoto]]:
    by_block: dict[int, list[GroundPhoto]] = {}
    if photos:
        blocks = region.block_of(np.array([p.lat for p in photos]), np.array([p.lon for p in photos]))
        for p, b in zip(photos, blocks, strict=True):
            if b < 0:  # inside the region yet off the block grid: cannot happen, the grid pads the region
                raise RuntimeError(f"photo {p.photo_id} at ({p.lat}, {p.lon}) falls outside the block grid")
            by_block.setdefault(int(b), []).append(p)
    return by_block
