"""WebDataset shards: writing a partition's tile and photo shards, and reading them back safely.

A tile shard (``tiles/tiles-PPPPP.tar``) holds one sample per satellite tile:
``KEY.tif`` (GeoTIFF with CRS and transform), ``KEY.json`` (grid, bands, date,
split and the photos with their pixel positions) and, after ``graft embed``,
``KEY.emb.npy`` / ``KEY.emb.json``. The partition's photo shard
(``photos/photos-PPPPP.tar``) holds the photos in tile order: ``KEY.jpg`` and
``KEY.json`` (the photo's manifest row). See docs/formats.md.

Both are plain POSIX tar files that ``webdataset.WebDataset`` reads unchanged.
Writers go through :func:`graft.storage.atomic_path`, so a shard on disk is
always complete, and use a fixed member mtime so that the same input gives
byte-identical shards (a resumed or distributed build equals a local one).

Readers never extract to disk: members are read into memory, and every member
name is checked by :func:`split_member_name` first, so a hostile or corrupt
shard (absolute paths, ``..``, links, odd keys) is refused instead of trusted.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from graft.geometry import TileGrid
from graft.imagery import decode_geotiff
from graft.storage import atomic_path

# Sample keys: WebDataset splits a member name at its first dot, so keys must
# have none; slashes would make members land in sub-folders of an extraction.
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# Extensions may be dotted (``emb.npy``) but each part is a plain word.
EXT_RE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
# Fixed member mtime: shards are a pure function of their content.
SHARD_MTIME = 0.0


class UnsafeShardMember(ValueError):
    """A shard member whose name or type could escape its folder or break sample grouping."""


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid sample key (``^[A-Za-z0-9_-]+$``), else raise ValueError."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise ValueError(
            f"invalid shard sample key {key!r}: keys must match {KEY_RE.pattern} "
            "(no dots, slashes or spaces; WebDataset splits member names at the first dot)"
        )
    return key


def split_member_name(name: str) -> tuple[str, str]:
    """Split a shard member name ``KEY.EXT`` into (key, ext), refusing anything unsafe.

    Raises:
        UnsafeShardMember: the name is absolute, contains a path separator or
            ``..``, or its key/extension do not match the allowed patterns.
    """
    if not name or name.startswith(("/", "\\")) or os.path.isabs(name):
        raise UnsafeShardMember(f"absolute member name {name!r}")
    if "/" in name or "\\" in name:
        raise UnsafeShardMember(f"member name {name!r} contains a path separator (samples are flat)")
    if ".." in name:
        raise UnsafeShardMember(f"member name {name!r} contains '..'")
    key, dot, ext = name.partition(".")
    if not dot or not KEY_RE.fullmatch(key) or not EXT_RE.fullmatch(ext):
        raise UnsafeShardMember(
            f"member name {name!r} is not KEY.EXT with KEY matching {KEY_RE.pattern} and a plain extension"
        )
    return key, ext


def iter_raw_samples(shard_path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield the samples of a tar shard as ``{"__key__": key, ext: bytes, ...}``, in file order.

    Members are read into memory only (never extracted). Non-regular members
    (links, devices, folders) and unsafe names raise :class:`UnsafeShardMember`
    naming the shard. A key that reappears after another key raises too: the
    shard is not a valid WebDataset (its samples would be split).
    """
    shard_path = Path(shard_path)
    current: dict[str, Any] | None = None
    seen: set[str] = set()
    with tarfile.open(shard_path, mode="r:") as tar:
        for member in tar:
            if not member.isreg():
                raise UnsafeShardMember(f"{shard_path}: member {member.name!r} is not a regular file "
                                        "(links, folders and devices are refused)")
            try:
                key, ext = split_member_name(member.name)
            except UnsafeShardMember as e:
                raise UnsafeShardMember(f"{shard_path}: {e}") from None
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                if key in seen:
                    raise UnsafeShardMember(f"{shard_path}: sample {key!r} is split across the shard")
                seen.add(key)
                current = {"__key__": key}
            if ext in current:
                raise UnsafeShardMember(f"{shard_path}: duplicate member {member.name!r}")
            f = tar.extractfile(member)
            current[ext] = f.read() if f is not None else b""
    if current is not None:
        yield current


def write_samples(path: str | os.PathLike, samples: Iterable[dict[str, Any]]) -> int:
    """Atomically write ``samples`` (``__key__`` plus ``ext -> bytes|str|dict``) as a tar shard.

    dict/list values are JSON-encoded, str values UTF-8 encoded. Returns the
    number of samples written.
    """
    n = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        writer = wds.TarWriter(f, encoder=False, mtime=SHARD_MTIME, user="graft", group="graft", mode=0o644)
        try:
            for sample in samples:
                check_key(sample["__key__"])
                out: dict[str, Any] = {"__key__": sample["__key__"]}
                for ext, value in sample.items():
                    if ext == "__key__":
                        continue
                    if not EXT_RE.fullmatch(ext):
                        raise ValueError(f"invalid member extension {ext!r} for sample {sample['__key__']!r}")
                    out[ext] = _to_bytes(value)
                writer.write(out)
                n += 1
        finally:
            writer.close()
    return n


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (dict, list)):
        return json_bytes(value)
    raise TypeError(f"shard member values must be bytes, str, dict or list, got {type(value).__name__}")


def json_bytes(obj: Any) -> bytes:
    """Compact, key-sorted JSON (deterministic bytes for identical content)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def npy_bytes(array: np.ndarray) -> bytes:
    """``.npy`` bytes of an array (no pickles)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_load(data: bytes) -> np.ndarray:
    """Inverse of :func:`npy_bytes`; refuses pickled object arrays."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def iter_tile_samples(shard_path: str | os.PathLike, decode_tif: bool = True) -> Iterator[dict[str, Any]]:
    """Yield the decoded tile samples of a tile shard.

    Each item has ``__key__`` (the tile id), ``json`` (the tile record as a
    dict), ``tif`` (the raw GeoTIFF bytes), and when ``decode_tif`` is true
    ``array`` ((bands, H, W) uint8/uint16) and ``grid`` (:class:`TileGrid`).
    After ``graft embed`` also ``emb`` (fp16 (N, D), row i = ``json["photos"][i]``)
    and ``emb_json`` (the CLIP spec record plus ``photo_ids``); otherwise those
    two are None.
    """
    for raw in iter_raw_samples(shard_path):
        key = raw["__key__"]
        if "json" not in raw or "tif" not in raw:
            raise ValueError(f"{shard_path}: tile sample {key!r} lacks its json or tif member "
                             f"(has {sorted(k for k in raw if k != '__key__')})")
        out: dict[str, Any] = {"__key__": key, "json": json.loads(raw["json"]), "tif": raw["tif"]}
        if decode_tif:
            out["array"], out["grid"] = decode_geotiff(raw["tif"])
        else:
            out["grid"] = TileGrid.from_json(out["json"]["grid"])
        out["emb"] = npy_load(raw["emb.npy"]) if "emb.npy" in raw else None
        out["emb_json"] = json.loads(raw["emb.json"]) if "emb.json" in raw else None
        yield out


def iter_photo_samples(shard_path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield ``{"__key__": photo_id, "image": bytes, "ext": "jpg"|"png", "json": dict}`` from a photo shard."""
    for raw in iter_raw_samples(shard_path):
        ext = "jpg" if "jpg" in raw else "png" if "png" in raw else None
        if ext is None or "json" not in raw:
            raise ValueError(f"{shard_path}: photo sample {raw['__key__']!r} lacks its jpg/png or json member")
        yield {"__key__": raw["__key__"], "image": raw[ext], "ext": ext, "json": json.loads(raw["json"])}


def shard_names(partition: int) -> tuple[str, str]:
    """Relative paths of a partition's (tile shard, photo shard) inside the dataset folder."""
    return f"tiles/tiles-{partition:05d}.tar", f"photos/photos-{partition:05d}.tar"


def photo_shard_for(tile_shard: str | os.PathLike) -> Path:
    """The photo shard aligned with a tile shard (``tiles/tiles-P.tar`` -> ``photos/photos-P.tar``)."""
    tile_shard = Path(tile_shard)
    m = re.fullmatch(r"tiles-(\d+)\.tar", tile_shard.name)
    if not m:
        raise ValueError(f"{tile_shard} is not a tile shard name (expected tiles-PPPPP.tar)")
    return tile_shard.parent.parent / "photos" / f"photos-{m.group(1)}.tar"
