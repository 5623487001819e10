"""Per-band statistics of a dataset's tiles: ``band_stats.json`` beside the manifest.

A multispectral encoder normalises every band beyond R, G, B with the mean and
standard deviation of that band over the training split's tiles, so the build
writes them once, for every split, and the trainer copies the ones it used
into the checkpoint.

A pixel counts when it holds data: sources mark missing data as 0 in every
band, so a pixel that is 0 in all bands is left out. Sums run over integers
(tiles are uint8 or uint16), so the statistics are exact up to the final
division, whatever the tile order.

```
{"format": "graft-band-stats-1", "bands": [...], "dtype": "uint16",
 "splits": {"train": {"tiles": 120, "bands": {"B4": {"mean": .., "std": .., "count": ..}, ...}}, ...}}
```
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graft.storage import atomic_write_json

BAND_STATS_FILE = "band_stats.json"  # beside the manifest
BAND_STATS_FORMAT = "graft-band-stats-1"


class BandStatsError(RuntimeError):
    """A dataset's band statistics are missing or do not cover what is asked of them."""


@dataclass
class BandSums:
    """Exact integer sums over the valid pixels of some tiles: the mergeable state behind the statistics.

    A build keeps one per partition (in the part's stats) and merges them, so the statistics cost no
    extra pass over the tiles.
    """

    bands: list[str]
    dtype: str
    tiles: int = 0
    count: int = 0
    total: list[int] = field(default_factory=list)
    squares: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.total = self.total or [0] * len(self.bands)
        self.squares = self.squares or [0] * len(self.bands)

    @classmethod
    def of_tile(cls, array: np.ndarray, bands: list[str]) -> BandSums:
        """The sums of one (bands, H, W) tile."""
        if array.shape[0] != len(bands):
            raise BandStatsError(f"a tile names bands {list(bands)} but holds {array.shape[0]}")
        valid = np.any(array != 0, axis=0)
        values = array[:, valid].astype(np.int64)  # uint16**2 * pixels of one tile fits in int64
        return cls(list(bands), array.dtype.name, 1, int(valid.sum()), [int(v.sum()) for v in values],
                   [int((v * v).sum()) for v in values])

    def add(self, other: BandSums) -> BandSums:
        """Merge ``other`` into these sums (in place); returns self.

        Raises:
            BandStatsError: the two disagree on their bands or dtype (one dataset holds one band list).
        """
        if other.bands != self.bands or other.dtype != self.dtype:
            raise BandStatsError(f"tiles with bands {other.bands} ({other.dtype}) and {self.bands} ({self.dtype}) "
                                 f"in one dataset; one dataset holds one band list")
        self.tiles += other.tiles
        self.count += other.count
        self.total = [a + b for a, b in zip(self.total, other.total, strict=True)]
        self.squares = [a + b for a, b in zip(self.squares, other.squares, strict=True)]
        return self

    def to_json(self) -> dict[str, Any]:
        return {"bands": self.bands, "dtype": self.dtype, "tiles": self.tiles, "count": self.count,
                "total": self.total, "squares": self.squares}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BandSums:
        return cls(list(d["bands"]), d["dtype"], int(d["tiles"]), int(d["count"]), [int(x) for x in d["total"]],
                   [int(x) for x in d["squares"]])

    def statistics(self) -> dict[str, Any]:
        """``{"tiles", "bands": {band: {"mean", "std", "count"}}}`` (population std)."""
        n = self.count
        out = {}
        for b, name in enumerate(self.bands):
            s, q = self.total[b], self.squares[b]
            # Population variance from exact integers: (n q - s^2) / n^2, divided once.
            out[name] = {"mean": s / n if n else float("nan"),
                         "std": math.sqrt((n * q - s * s) / (n * n)) if n else float("nan"), "count": n}
        return {"tiles": self.tiles, "bands": out}


def merged(sums: Iterable[BandSums]) -> BandSums | None:
    """The sum of several tiles' or partitions' sums (a new object); None for none."""
    out = None
    for x in sums:
        out = BandSums.from_json(x.to_json()) if out is None else out.add(x)
    return out


def band_stats_document(sums: dict[str, BandSums]) -> dict[str, Any]:
    """The ``band_stats.json`` document from each split's sums."""
    first = next(iter(sums.values()), None)
    return {"format": BAND_STATS_FORMAT, "bands": first.bands if first else [], "dtype": first.dtype if first else None,
            "splits": {k: v.statistics() for k, v in sorted(sums.items())}}


def compute_band_stats(tiles: Iterable[tuple[str, list[str], np.ndarray]]) -> dict[str, Any]:
    """Band statistics from ``(split, band names, (bands, H, W) array)`` per tile.

    Raises:
        BandStatsError: tiles disagree on their bands or dtype (one dataset has one band list).
    """
    sums: dict[str, BandSums] = {}
    reference: BandSums | None = None
    for split, bands, array in tiles:
        tile = BandSums.of_tile(array, list(bands))
        if reference is not None and (tile.bands != reference.bands or tile.dtype != reference.dtype):
            raise BandStatsError(f"a {split} tile has bands {tile.bands} ({tile.dtype}) while earlier tiles have "
                                 f"{reference.bands} ({reference.dtype}); one dataset holds one band list")
        reference = reference or tile
        if split in sums:
            sums[split].add(tile)
        else:
            sums[split] = tile
    return band_stats_document(sums)


def dataset_band_stats(dataset: str | os.PathLike) -> dict[str, Any]:
    """Band statistics of every tile in a dataset folder's tile shards (each tile's record names its split)."""
    from tqdm import tqdm

    from graft.dataset.layout import tile_shards
    from graft.dataset.shards import iter_tile_samples

    shards = tile_shards(dataset)
    if not shards:
        raise BandStatsError(f"{dataset} has no tile shards; run `graft build` first")

    def tiles() -> Iterable[tuple[str, list[str], np.ndarray]]:
        for shard in tqdm(shards, desc="band statistics", unit="shard", leave=False):
            for sample in iter_tile_samples(shard):
                yield sample.record["split"], sample.record["bands"], sample.array

    return compute_band_stats(tiles())


def write_band_stats(dataset: str | os.PathLike, stats: dict[str, Any]) -> Path:
    """Write ``band_stats.json`` into the dataset folder (atomically)."""
    path = Path(dataset) / BAND_STATS_FILE
    atomic_write_json(path, stats)
    return path


def read_band_stats(dataset: str | os.PathLike) -> dict[str, Any]:
    """The dataset's ``band_stats.json``.

    Raises:
        BandStatsError: the file is missing (a dataset built before band statistics existed).
    """
    path = Path(dataset) / BAND_STATS_FILE
    if not path.is_file():
        raise BandStatsError(f"{path} not found: the dataset has no band statistics; write them with "
                             f"`graft band-stats {dataset}` (datasets built before band statistics existed lack them)")
    return json.loads(path.read_text())


def band_mean_std(stats: dict[str, Any], split: str, bands: list[str]) -> tuple[list[float], list[float]]:
    """Mean and std of ``bands`` over ``split``'s tiles.

    Raises:
        BandStatsError: the split or a band is not in the statistics, or a band has no valid pixel.
    """
    by_split = stats.get("splits", {})
    if split not in by_split:
        raise BandStatsError(f"band statistics have splits {sorted(by_split)}, not {split!r}")
    have = by_split[split]["bands"]
    missing = [b for b in bands if b not in have]
    if missing:
        raise BandStatsError(f"the dataset's tiles have bands {stats.get('bands')}, not {missing}; "
                             f"build the dataset with them (satellite.*.bands)")
    empty = [b for b in bands if not have[b]["count"]]
    if empty:
        raise BandStatsError(f"bands {empty} have no valid pixel in split {split!r}")
    return [float(have[b]["mean"]) for b in bands], [float(have[b]["std"]) for b in bands]


def run_band_stats_command(args) -> int:
    """``graft band-stats DATASET``."""
    stats = dataset_band_stats(args.dataset)
    path = write_band_stats(args.dataset, stats)
    for split, st in stats["splits"].items():
        print(f"{split}: {st['tiles']} tiles, "
              + ", ".join(f"{b} {v['mean']:.1f}+-{v['std']:.1f}" for b, v in st["bands"].items()))
    print(f"band statistics of {len(stats['bands'])} bands written to {path}")
    return 0
