"""Where things are in a dataset folder (docs/formats.md).

```
DATASET/
  manifest.parquet        one row per kept ground photo
  tiles/tiles-PPPPP.tar   first tile shard of partition PPPPP (build.shard_max_tiles tiles at most)
  tiles/tiles-PPPPP-SSS.tar  its further shards, SSS = 001, 002...
  photos/photos-PPPPP[-SSS].tar the same shard's photos, in tile order
  parts/part-PPPPP/       the partition's manifest part, tile table and stats (its completion marker)
```
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MANIFEST_FILE = "manifest.parquet"
TILES_DIR, PHOTOS_DIR, PARTS_DIR = "tiles", "photos", "parts"
# Folders that receive atomic writes (their stale temporaries are cleaned before a build).
WRITTEN_DIRS = ("", PARTS_DIR, TILES_DIR, PHOTOS_DIR)
TILE_SHARDS_GLOB = f"{TILES_DIR}/tiles-*.tar"
PHOTO_SHARDS_GLOB = f"{PHOTOS_DIR}/photos-*.tar"

_TILE_SHARD_RE = re.compile(r"tiles-(\d+(?:-\d+)?)\.tar")
_PART_RE = re.compile(r"part-(\d+)")


def shard_names(partition: int, index: int = 0) -> tuple[str, str]:
    """Relative paths of a partition's ``index``-th (tile shard, photo shard) inside the dataset folder.

    The first keeps the plain ``tiles-PPPPP.tar`` name, so a partition of one shard (every
    partition of a small build) is named as before bounded shards existed.
    """
    suffix = f"{partition:05d}" if index == 0 else f"{partition:05d}-{index:03d}"
    return f"{TILES_DIR}/tiles-{suffix}.tar", f"{PHOTOS_DIR}/photos-{suffix}.tar"


def tile_shards(dataset: str | os.PathLike) -> list[Path]:
    """The tile shards of a dataset folder, sorted (empty if there are none)."""
    return sorted(Path(dataset).glob(TILE_SHARDS_GLOB))


def photo_shard_for(tile_shard: str | os.PathLike) -> Path:
    """The photo shard aligned with a tile shard (``tiles/tiles-P.tar`` -> ``photos/photos-P.tar``)."""
    tile_shard = Path(tile_shard)
    m = _TILE_SHARD_RE.fullmatch(tile_shard.name)
    if not m:
        raise ValueError(f"{tile_shard} is not a tile shard name (expected tiles-PPPPP.tar or tiles-PPPPP-SSS.tar)")
    return tile_shard.parent.parent / PHOTOS_DIR / f"photos-{m.group(1)}.tar"


def part_dir(out_dir: str | os.PathLike, partition: int) -> Path:
    """``OUT/parts/part-PPPPP``: the partition's manifest part, tile table and stats (its completion marker)."""
    return Path(out_dir) / PARTS_DIR / f"part-{partition:05d}"


def part_dirs(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(partition, folder)`` of every ``parts/part-PPPPP`` folder, sorted by folder name."""
    found = []
    for d in sorted((Path(out_dir) / PARTS_DIR).glob("part-*")):
        m = _PART_RE.fullmatch(d.name)
        if m and d.is_dir():
            found.append((int(m.group(1)), d))
    return found


def shard_files(out_dir: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """The tile shards and the photo shards that exist in a dataset folder, each sorted."""
    out = Path(out_dir)
    return sorted(out.glob(TILE_SHARDS_GLOB)), sorted(out.glob(PHOTO_SHARDS_GLOB))
