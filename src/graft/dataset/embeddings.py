"""The ground-embedding cache that ``graft embed`` adds to tile samples, and the one CLIP-spec comparison.

A cached tile sample carries ``emb.npy`` (fp16 ``(N, D)``, row *i* = the tile
record's ``photos[i]``) and ``emb.json`` (``{"clip": spec record, "photo_ids":
[...]}``). The spec record is :func:`graft.models.clip_tower.spec_record` of the
tower that made the cache; :func:`cache_spec_mismatch` is the only place that
decides whether two records name the same embedding space.
"""

from __future__ import annotations

import json
import os
import tarfile
from typing import Any

import numpy as np

from graft.dataset.members import (
    EMB_MEMBERS,
    EMB_RECORD,
    EMB_VECTORS,
    KEY,
    RECORD,
    json_bytes,
    npy_bytes,
    npy_load,
    split_member_name,
)
from graft.errors import GraftError

# Every field of a spec record: a cache is reused only when all of them agree.
SPEC_FIELDS = ("model", "pretrained", "fingerprint", "preprocess", "embed_dim")
# The fields that name the embedding space on any machine. The weights fingerprint hashes file
# size and mtime, and the preprocess record the transform's repr: both can differ between
# machines (or library versions) holding the same weights, so a *comparison across machines*
# (a model evaluated against another machine's cache) looks at these only.
PORTABLE_SPEC_FIELDS = ("model", "pretrained", "embed_dim")


class EmbeddingCacheError(GraftError, RuntimeError):
    """A tile shard's embedding cache is missing, inconsistent, or made with another CLIP spec."""


def cache_spec_mismatch(cached: dict[str, Any] | None, want: dict[str, Any], portable: bool = False) -> str | None:
    """Why embeddings cached with spec record ``cached`` do not match the tower of record ``want``; None if they do.

    Args:
        cached: the spec record stored with a cache (an ``emb.json``'s ``clip`` part, or the whole
            ``emb.json``: the record is taken out of it).
        want: the spec record of the tower in use.
        portable: compare only :data:`PORTABLE_SPEC_FIELDS`, and only those both records have (an
            empty ``cached`` record then matches): for records that may come from another machine.
            Otherwise every field of :data:`SPEC_FIELDS` that ``want`` holds must be equal (all of
            them for a full spec record; a partial one, such as ``ClipSpec.weights_record()``, lets
            the trainer check a cache before it loads the tower).
    """
    cached = spec_part(cached or {})
    if portable:
        fields = [k for k in PORTABLE_SPEC_FIELDS if k in cached and k in want]
    else:
        fields = [k for k in SPEC_FIELDS if k in want]
    diffs = [k for k in fields if cached.get(k) != want.get(k)]
    if not diffs:
        return None
    return "; ".join(f"{k}: cache has {json.dumps(cached.get(k))}, the tower in use has {json.dumps(want.get(k))}"
                     for k in diffs)


def spec_part(emb_record: dict) -> dict:
    """The CLIP spec record of an ``emb.json`` (``{"clip": record, "photo_ids": [...]}``); a bare record as is."""
    return emb_record.get("clip", emb_record) if isinstance(emb_record, dict) else {}


def read_cached_embeddings(tile: Any) -> tuple[np.ndarray, dict]:
    """The cached ground embeddings of one tile, as float32 ``(N, D)``, and the CLIP spec record.

    Accepts a :class:`~graft.dataset.shards.TileSample` or
    :class:`~graft.dataset.shards.IndexedTile` (``tile_id``, ``record``, ``emb``,
    ``emb_json``), or a raw sample dict from
    :func:`graft.dataset.shards.iter_raw_samples` (members as bytes). Row *i*
    belongs to the tile record's ``photos[i]``; that alignment is checked against
    the photo ids stored with the cache. Compare the returned record with the
    tower in use with :func:`cache_spec_mismatch`.

    Raises:
        EmbeddingCacheError: the tile has no cache (run ``graft embed``) or
            the cache does not match the tile's photo list.
    """
    if isinstance(tile, dict):
        key, record = tile.get(KEY, "?"), tile.get(RECORD)
        emb = npy_load(tile[EMB_VECTORS]) if tile.get(EMB_VECTORS) is not None else None
        meta = json.loads(tile[EMB_RECORD]) if tile.get(EMB_RECORD) is not None else None
        if record is not None:
            record = json.loads(record)
    else:
        key, record, emb, meta = tile.tile_id, tile.record, tile.emb, tile.emb_json
    if emb is None or meta is None:
        raise EmbeddingCacheError(
            f"tile {key} has no cached ground embeddings; run 'graft embed DATASET' first "
            "(or train with --live-ground)"
        )
    if record is not None:
        ids = [p["photo_id"] for p in record.get("photos", [])]
        if emb.ndim != 2 or emb.shape[0] != len(ids) or meta.get("photo_ids") != ids:
            raise EmbeddingCacheError(
                f"tile {key}: cached embeddings {tuple(emb.shape)} / ids do not match its {len(ids)} photos; "
                "re-run 'graft embed DATASET --force'"
            )
    return np.asarray(emb, dtype=np.float32), spec_part(meta)


def with_embeddings(raw_tile: dict[str, Any], vectors: np.ndarray, clip_record: dict) -> dict[str, Any]:
    """A raw tile sample with its cache replaced by ``vectors`` (row *i* = the record's ``photos[i]``).

    ``clip_record`` is the spec record of the tower that computed ``vectors``.
    """
    ids = [p["photo_id"] for p in json.loads(raw_tile[RECORD]).get("photos", [])]
    out = {k: v for k, v in raw_tile.items() if k not in EMB_MEMBERS}
    out[EMB_VECTORS] = npy_bytes(np.ascontiguousarray(vectors.reshape(len(ids), -1)))
    out[EMB_RECORD] = json_bytes({"clip": clip_record, "photo_ids": ids})
    return out


def shard_cache_state(shard: str | os.PathLike) -> tuple[str, dict | None]:
    """("empty" | "none" | "complete" | "partial", the CLIP spec record of the cache) of a tile shard.

    Reads only member headers and the small ``emb.json`` members. "partial" means
    some tiles lack a cache, or the tiles' caches were made with different specs.
    """
    keys: set[str] = set()
    with_cache: set[str] = set()
    records: list[dict] = []
    with tarfile.open(shard, mode="r:") as tar:
        for member in tar:
            key, ext = split_member_name(member.name)
            keys.add(key)
            if ext == EMB_RECORD and member.isreg():
                with_cache.add(key)
                f = tar.extractfile(member)
                rec = spec_part(json.loads(f.read()) if f is not None else {})
                if not records or cache_spec_mismatch(rec, records[0]) is not None:
                    records.append(rec)
    if not keys:
        return "empty", None
    if not with_cache:
        return "none", None
    if with_cache != keys or len(records) > 1:
        return "partial", records[0]
    return "complete", records[0]
