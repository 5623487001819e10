"""GRAFT dataset pairs (``graft_pairs``, for the alignment task): the tiles of one split of a folder written by
``graft build`` and ``graft embed``, each paired with the mean of its cached ground-photo embeddings.

Unlike the benchmark sets (resized by the model's preprocessing), pairs are seen as in training:
:meth:`PairSet.center_crop` takes the centre crop of the encoder's input size at native resolution,
and a tile's photos are those inside it."""

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
from graft.imagery import center_crop_offset, decode_geotiff, inside_crop, tile_to_rgb8
from graft.rejections import Rejections


@dataclass
class PairSet(EvalSet):
    """Satellite tiles of one split, each with the mean of its cached ground-photo embeddings.

    As loaded, a pair is the whole tile and all its photos. :meth:`center_crop` gives the view that
    evaluation uses: the tile's centred crop at native resolution and the photos inside it.

    Attributes:
        locations: where each tile's GeoTIFF is (read on demand by :meth:`read_rgb`).
        ground_mean: (N, D) float32, row i the mean of tile i's normalised ground embeddings (of the
            photos inside the crop, once cropped).
        cache_record: the CLIP spec record stored with the embeddings, used to check
            that a model's text/ground space is the one the cache was made in.
        photo_pos: per tile, (n_i, 2) float64 fractional (row, col) of its photos in the tile.
        photo_emb: per tile, (n_i, D) normalised ground embeddings of its photos.
        tile_sizes: per tile, its side in pixels (from the manifest grid).
        crop: side of the centred crop that :meth:`read_rgb` returns; None for the whole tile.
    """

    name: str
    root: Path
    tile_ids: list[str]
    locations: list[MemberLocation]
    ground_mean: np.ndarray
    cache_record: dict[str, Any]
    rgb_bands: tuple[int, ...] | None = None
    rejections: Rejections = field(default_factory=Rejections)
    photo_pos: list[np.ndarray] = field(default_factory=list)
    photo_emb: list[np.ndarray] = field(default_factory=list)
    tile_sizes: list[int] = field(default_factory=list)
    crop: int | None = None

    kind = "graft_pairs"
    per_item: ClassVar[tuple[str, ...]] = ("tile_ids", "locations", "ground_mean", "photo_pos", "photo_emb",
                                           "tile_sizes")

    def read_rgb(self, i: int) -> np.ndarray:
        loc = self.locations[i]
        data = loc.read()
        try:
            arr, _ = decode_geotiff(data)
            if self.rgb_bands:
                arr = arr[[b - 1 for b in self.rgb_bands]]
            rgb = tile_to_rgb8(arr)
        except Exception as e:  # rasterio raises several types for a torn tile
            raise ImageReadError("unreadable_tile", f"{self.tile_ids[i]} in {loc.shard}: {e}") from None
        if self.crop is None:
            return rgb
        if min(rgb.shape[:2]) != self.tile_sizes[i]:
            raise ImageReadError("unreadable_tile", f"{self.tile_ids[i]}: {rgb.shape[:2]} px, the manifest says "
                                 f"{self.tile_sizes[i]}")
        off = center_crop_offset(self.tile_sizes[i], self.crop)
        return np.ascontiguousarray(rgb[off:off + self.crop, off:off + self.crop])

    def center_crop(self, size: int, rejections: Rejections | None = None) -> PairSet:
        """The pairs as training sees tiles: the centred ``size`` crop at native resolution, its photos only.

        A tile whose centre crop holds no photo is no pair (``no_photo_in_center_crop``); a tile smaller
        than the crop cannot give one (``tile_smaller_than_input``). Both are counted in ``rejections``
        when given.

        Raises:
            DatasetNotFoundError: no tile is left.
        """
        keep, means = [], []
        for i, (pos, emb) in enumerate(zip(self.photo_pos, self.photo_emb, strict=True)):
            if self.tile_sizes[i] < size:
                if rejections is not None:
                    rejections.add("tile_smaller_than_input", self.tile_ids[i],
                                   f"{self.tile_sizes[i]} px tile, {size} px model input")
                continue
            off = center_crop_offset(self.tile_sizes[i], size)
            inside = inside_crop(pos[:, 0], pos[:, 1], off, off, size)
            if not inside.any():
                if rejections is not None:
                    rejections.add("no_photo_in_center_crop", self.tile_ids[i],
                                   f"{len(pos)} photos, none in the centred {size} px crop")
                continue
            keep.append(i)
            means.append(emb[inside].astype(np.float32).mean(axis=0))
        if not keep:
            raise not_found("graft_pairs", self.root, f"no tile holds a photo in its centred {size} px crop")
        out = self.subset(np.asarray(keep))
        out.ground_mean = np.stack(means)
        out.crop = size
        return out


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
    positions: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []
    sizes: list[int] = []
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
            if "grid" not in tile.record:
                rejections.add("tile_without_grid", tile.tile_id, f"{shard}: the tile record has no grid")
                continue
            if not any(cache_spec_mismatch(record, seen) is None for seen in records):
                records.append(record)
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            tile_ids.append(tile.tile_id)
            locations.append(tile.tif)
            means.append(emb.mean(axis=0))
            positions.append(np.array([[p["row"], p["col"]] for p in tile.record["photos"]], dtype=np.float64))
            embeddings.append(emb.astype(np.float16))
            sizes.append(int(tile.record["grid"]["size"]))
    if not tile_ids:
        raise not_found("graft_pairs", root, f"no tile of split {split!r} has cached ground embeddings "
                        f"({rejections.to_json()['counts']})")
    if len(records) > 1:
        raise ValueError(f"{root}: tiles were embedded with {len(records)} different CLIP specs; "
                         "re-run 'graft embed --force' so the cache is consistent")
    return PairSet(name=name or root.name, root=root, tile_ids=tile_ids, locations=locations,
                   ground_mean=np.stack(means), cache_record=records[0] if records else {},
                   rgb_bands=tuple(rgb_bands) if rgb_bands else None, rejections=rejections,
                   photo_pos=positions, photo_emb=embeddings, tile_sizes=sizes)
