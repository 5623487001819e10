"""The manifest and the tile table: their schemas, the part folders that hold them per partition, reading them.

``manifest.parquet`` has one row per kept ground photo (docs/formats.md lists
the columns); each part folder ``parts/part-PPPPP/`` holds that partition's
rows (``manifest.parquet``), its tiles (``tiles.parquet``) and its build
statistics (``stats.json``). The folder is written atomically after the
partition's shards, so it existing proves the shards are complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from graft.dataset.layout import MANIFEST_FILE, part_dirs
from graft.storage import atomic_dir, atomic_path

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

_PART_MANIFEST, _PART_TILES, _PART_STATS = "manifest.parquet", "tiles.parquet", "stats.json"


def write_part(folder: str | os.PathLike, manifest_rows: list[dict], tile_rows: list[dict], stats: dict) -> None:
    """Atomically write a partition's part folder (call after its shards are written)."""
    with atomic_dir(folder) as tmp:
        pq.write_table(pa.Table.from_pylist(manifest_rows, schema=MANIFEST_SCHEMA), tmp / _PART_MANIFEST)
        pq.write_table(pa.Table.from_pylist(tile_rows, schema=TILES_SCHEMA), tmp / _PART_TILES)
        (tmp / _PART_STATS).write_text(json.dumps(stats, indent=2, sort_keys=True, default=str) + "\n")


def read_part_stats(folder: str | os.PathLike) -> dict | None:
    """The ``stats.json`` of a part folder, or None if the partition is not (completely) built."""
    f = Path(folder) / _PART_STATS
    return json.loads(f.read_text()) if f.is_file() else None


def read_parts(out_dir: str | os.PathLike, wanted: set[int] | dict[int, object]
               ) -> tuple[list[dict], list[pa.Table], list[pa.Table], list[int]]:
    """The complete part folders of ``wanted`` partitions: (stats, manifest parts, tile tables, stale ids).

    A complete part folder whose partition is not wanted is reported as stale, not read.
    """
    stats, manifests, tiles, stale = [], [], [], []
    for pid, d in part_dirs(out_dir):
        if not (d / _PART_STATS).is_file():
            continue
        if pid not in wanted:
            stale.append(pid)
            continue
        stats.append(json.loads((d / _PART_STATS).read_text()))
        manifests.append(pq.read_table(d / _PART_MANIFEST, schema=MANIFEST_SCHEMA))
        tiles.append(pq.read_table(d / _PART_TILES, schema=TILES_SCHEMA))
    return stats, manifests, tiles, stale


def concat_parts(manifests: list[pa.Table], tiles: list[pa.Table]) -> tuple[pa.Table, pa.Table]:
    """The whole manifest and tile table from the parts' tables (empty tables with the schemas if none)."""
    manifest = pa.concat_tables(manifests) if manifests else MANIFEST_SCHEMA.empty_table()
    tile_table = pa.concat_tables(tiles) if tiles else TILES_SCHEMA.empty_table()
    return manifest, tile_table


def write_manifest(out_dir: str | os.PathLike, manifest: pa.Table) -> Path:
    """Atomically write ``manifest.parquet``; returns its path."""
    path = Path(out_dir) / MANIFEST_FILE
    with atomic_path(path) as tmp:
        pq.write_table(manifest, tmp)
    return path


def manifest_path(dataset: str | os.PathLike) -> Path:
    """``DATASET/manifest.parquet``."""
    return Path(dataset) / MANIFEST_FILE


def read_manifest(dataset: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """The dataset's manifest (only ``columns`` if given).

    Raises:
        FileNotFoundError: the dataset has no manifest (``graft build`` has not finished).
    """
    path = manifest_path(dataset)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run 'graft build' first (or finish it)")
    return pq.read_table(path, columns=columns)
