"""GRAFT dataset pairs (``graft_pairs``, for the alignment task): the tiles of one split of a folder written by
``graft build`` and ``graft embed``, each paired with the mean of its cached ground-photo embeddings."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from graft.dataset.embeddings import EmbeddingCacheError, cache_spec_mismatch, read_cached_embeddings
from graft.dataset.layout import tile_shards
from graft.dataset.shards import MemberLocation, index_tile_shard
from graft.evaluation.datasets.base import EvalSet, ImageReadError, not_found
from graft.imagery import decode_geotiff, tile_to_rgb8
from graft.rejections import Rejections


@dataclass
class PairSet(EvalSet):
    """Satellite tiles of one split, each with the mean of its cached ground-photo embeddings.

    Attributes:
        locations: where each tile's GeoTIFF is (read on demand by :meth:`read_rgb`).
        ground_mean: (N, D) float32, row i the mean of tile i's normalised ground embeddings.
        cache_record: the CLIP spec record stored with the embeddings, used to check
            that a model's text/ground space is the one the cache was made in.
    """

    name: str
    root: Path
    tile_ids: list[str]
    locations: list[MemberLocation]
    ground_mean: np.ndarray
    cache_record: dict[str, Any]
    rgb_bands: tuple[int, ...] | None = None
    rejections: Rejections = field(default_factory=Rejections)

    kind = "graft_pairs"
    per_item: ClassVar[tuple[str, ...]] = ("tile_ids", "locations", "ground_mean")

    def read_rgb(self, i: int) -> np.ndarray:
        loc = self.locations[i]
        data = loc.read()
        try:
            arr, _ = decode_geotiff(data)
            if self.rgb_bands:
                arr = arr[[b - 1 for b in self.rgb_bands]]
            return tile_to_rgb8(arr)
        except Exception as e:  # rasterio raises several types for a torn tile
            raise ImageReadError("unreadable_tile", f"{self.tile_ids[i]} in {loc.shard}: {e}") from None


def load_graft_pairs(root: str | os.PathLike, name: str | None = None, split: str = "test",
                     rgb_bands: Sequence[int] | None = None) -> PairSet:
    """Index the tiles of ``split`` in a GRAFT dataset folder and average their cached ground embeddings.

    Tiles of the split without cached embeddings, or whose cache does not line up with their
    photos, are rejected (``no_ground_embeddings``): run ``graft embed`` (``--force``) first.

    Raises:
        DatasetNotFoundError: no tile shards under ``root``, or no tile of ``split`` has embeddings.
        ValueError: the tiles were embedded with different CLIP specs.
    """
    root = Path(root)
    shards = tile_shards(root)
    if not shards:
        raise not_found("graft_pairs", root, "no tile shards")
    rejections = Rejections()
    tile_ids: list[str] = []
    locations: list[MemberLocation] = []
    means: list[np.ndarray] = []
    records: list[dict] = []
    for shard in shards:
        for tile in index_tile_shard(shard):
            if not tile.complete:
                rejections.add("incomplete_tile_sample", tile.tile_id, f"{shard}: members {tile.members}")
                continue
            if tile.record.get("split") != split:
                continue
            try:
                emb, record = read_cached_embeddings(tile)
            except EmbeddingCacheError as e:
                rejections.add("no_ground_embeddings", tile.tile_id, f"{shard}: {e}")
                continue
            if emb.shape[0] == 0:
                rejections.add("no_ground_embeddings", tile.tile_id, f"the tile has no photos ({emb.shape})")
                continue
            if not any(cache_spec_mismatch(record, seen) is None for seen in records):
                records.append(record)
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            tile_ids.append(tile.tile_id)
            locations.append(tile.tif)
            means.append(emb.mean(axis=0))
    if not tile_ids:
        raise not_found("graft_pairs", root, f"no tile of split {split!r} has cached ground embeddings "
                        f"({rejections.to_json()['counts']})")
    if len(records) > 1:
        raise ValueError(f"{root}: tiles were embedded with {len(records)} different CLIP specs; "
                         "re-run 'graft embed --force' so the cache is consistent")
    return PairSet(name=name or root.name, root=root, tile_ids=tile_ids, locations=locations,
                   ground_mean=np.stack(means), cache_record=records[0] if records else {},
                   rgb_bands=tuple(rgb_bands) if rgb_bands else None, rejections=rejections)
