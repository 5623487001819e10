"""What a build writes besides the shards: the manifest and tile-table schemas, and the part folders.

The one place in the build that knows these names: when the dataset format gets its own module,
they move there as one piece.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

MANIFEST_SCHEMA = pa.schema([
    ("photo_id", pa.string()), ("lat", pa.float64()), ("lon", pa.float64()),
    ("taken_at", pa.timestamp("us", tz="UTC")), ("tile_id", pa.string()), ("row", pa.float64()),
    ("col", pa.float64()), ("split", pa.string()), ("source", pa.string()), ("license", pa.string()),
    ("owner", pa.string()), ("outdoor_score", pa.float32()), ("tile_shard", pa.string()),
    ("photo_shard", pa.string()), ("tile_crs", pa.string()), ("tile_date", pa.date32()),
    ("partition", pa.int32()),
])

TILES_SCHEMA = pa.schema([
    ("tile_id", pa.string()), ("partition", pa.int32()), ("split", pa.string()), ("crs", pa.string()),
    ("transform", pa.list_(pa.float64())), ("size", pa.int32()), ("date", pa.date32()),
    ("n_photos", pa.int32()), ("tile_shard", pa.string()),
])


def part_dir(out_dir: str | os.PathLike, partition: int) -> Path:
    """``OUT/parts/part-PPPPP``: the partition's manifest part, tile table and stats (its completion marker)."""
    return Path(out_dir) / "parts" / f"part-{partition:05d}"
