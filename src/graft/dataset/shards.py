"""WebDataset shards: writing a partition's tile and photo shards, and reading them back safely.

A tile shard (``tiles/tiles-PPPPP.tar``) holds one sample per satellite tile;
the partition's photo shard (``photos/photos-PPPPP.tar``) holds its photos in
tile order (member names: :mod:`graft.dataset.members`; docs/formats.md).

Both are plain POSIX tar files that ``webdataset.WebDataset`` reads unchanged.
Writers go through :func:`graft.storage.atomic_path`, so a shard on disk is
always complete, and use a fixed member mtime so that the same input gives
byte-identical shards (a resumed or distributed build equals a local one).

Readers never extract to disk: members are read into memory, and every member
name is checked by :func:`~graft.dataset.members.split_member_name` first, so a
hostile or corrupt shard (absolute paths, ``..``, links, odd keys) is refused
instead of trusted.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from graft.dataset.layout import photo_shard_for
from graft.dataset.members import (
    EMB_RECORD,
    EMB_VECTORS,
    EXT_RE,
    KEY,
    PHOTO_IMAGE,
    PHOTO_IMAGE_ALTERNATIVES,
    RECORD,
    TILE_IMAGE,
    UnsafeShardMember,
    check_key,
    json_bytes,
    npy_load,
    split_member_name,
)
from graft.geometry import TileGrid
from graft.imagery import decode_geotiff
from graft.storage import atomic_path

# Fixed member mtime: shards are a pure function of their content.
SHARD_MTIME = 0.0


class ShardsMisaligned(ValueError):
    """A partition's photo shard is missing or does not hold exactly its tiles' photos, in tile order."""


# ---------------------------------------------------------------- writing


def tile_sample(tile_id: str, tif: bytes, record: dict) -> dict[str, Any]:
    """The shard sample of one tile: its GeoTIFF bytes and its record (grid, bands, date, split, photos)."""
    return {KEY: tile_id, TILE_IMAGE: tif, RECORD: json_bytes(record)}


def photo_sample(photo_id: str, jpeg: bytes, row: dict) -> dict[str, Any]:
    """The shard sample of one ground photo: its JPEG bytes and its manifest row."""
    return {KEY: photo_id, PHOTO_IMAGE: jpeg, RECORD: json_bytes(row)}


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
                check_key(sample[KEY])
                out: dict[str, Any] = {KEY: sample[KEY]}
                for ext, value in sample.items():
                    if ext == KEY:
                        continue
                    if not EXT_RE.fullmatch(ext):
                        raise ValueError(f"invalid member extension {ext!r} for sample {sample[KEY]!r}")
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


# ---------------------------------------------------------------- reading


def _safe_members(shard_path: Path, tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, str, str]]:
    """``(member, key, ext)`` of every member, refusing non-regular members and unsafe names."""
    for member in tar:
        if not member.isreg():
            raise UnsafeShardMember(f"{shard_path}: member {member.name!r} is not a regular file "
                                    "(links, folders and devices are refused)")
        try:
            key, ext = split_member_name(member.name)
        except UnsafeShardMember as e:
            raise UnsafeShardMember(f"{shard_path}: {e}") from None
        yield member, key, ext


def _grouped(shard_path: Path, tar: tarfile.TarFile) -> Iterator[tuple[str, list[tuple[tarfile.TarInfo, str]]]]:
    """``(key, [(member, ext), ...])`` per sample, in file order; a key split across the shard is refused."""
    current: str | None = None
    members: list[tuple[tarfile.TarInfo, str]] = []
    seen: set[str] = set()
    for member, key, ext in _safe_members(shard_path, tar):
        if key != current:
            if current is not None:
                yield current, members
            if key in seen:
                raise UnsafeShardMember(f"{shard_path}: sample {key!r} is split across the shard")
            seen.add(key)
            current, members = key, []
        if any(e == ext for _, e in members):
            raise UnsafeShardMember(f"{shard_path}: duplicate member {member.name!r}")
        members.append((member, ext))
    if current is not None:
        yield current, members


def iter_raw_samples(shard_path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield the samples of a tar shard as ``{"__key__": key, ext: bytes, ...}``, in file order.

    Members are read into memory only (never extracted). Non-regular members
    (links, devices, folders) and unsafe names raise :class:`UnsafeShardMember`
    naming the shard. A key that reappears after another key raises too: the
    shard is not a valid WebDataset (its samples would be split).
    """
    shard_path = Path(shard_path)
    with tarfile.open(shard_path, mode="r:") as tar:
        for key, members in _grouped(shard_path, tar):
            sample: dict[str, Any] = {KEY: key}
            for member, ext in members:
                f = tar.extractfile(member)
                sample[ext] = f.read() if f is not None else b""
            yield sample


def tile_record(raw_tile: dict[str, Any]) -> dict:
    """The decoded record of a raw tile sample (from :func:`iter_raw_samples`)."""
    return json.loads(raw_tile[RECORD])


@dataclass
class TileSample:
    """One decoded tile sample.

    Attributes:
        tile_id: the sample key.
        record: the tile record (``tile_id``, ``grid``, ``bands``, ``date``, ``split``, ``photos``
            with each photo's ``photo_id``, ``row``, ``col``).
        tif: the GeoTIFF bytes.
        grid: the tile's grid.
        array: (bands, H, W) uint8/uint16 pixels, when decoded.
        emb, emb_json: the cached ground embeddings as stored (fp16 (N, D), and the spec record
            plus ``photo_ids``) after ``graft embed``, else None. Read them with
            :func:`graft.dataset.embeddings.read_cached_embeddings`, which checks them.
    """

    tile_id: str
    record: dict
    tif: bytes
    grid: TileGrid
    array: np.ndarray | None = None
    emb: np.ndarray | None = None
    emb_json: dict | None = None


@dataclass
class PhotoSample:
    """One ground photo of a photo shard: its encoded image (``ext`` ``jpg`` or ``png``) and manifest row."""

    photo_id: str
    image: bytes
    ext: str
    row: dict


def iter_tile_samples(shard_path: str | os.PathLike, decode_tif: bool = True) -> Iterator[TileSample]:
    """Yield the decoded tile samples of a tile shard (pixels decoded only when ``decode_tif``)."""
    for raw in iter_raw_samples(shard_path):
        key = raw[KEY]
        if RECORD not in raw or TILE_IMAGE not in raw:
            raise ValueError(f"{shard_path}: tile sample {key!r} lacks its json or tif member "
                             f"(has {sorted(k for k in raw if k != KEY)})")
        record = tile_record(raw)
        if decode_tif:
            array, grid = decode_geotiff(raw[TILE_IMAGE])
        else:
            array, grid = None, TileGrid.from_json(record["grid"])
        yield TileSample(
            tile_id=key, record=record, tif=raw[TILE_IMAGE], grid=grid, array=array,
            emb=npy_load(raw[EMB_VECTORS]) if EMB_VECTORS in raw else None,
            emb_json=json.loads(raw[EMB_RECORD]) if EMB_RECORD in raw else None,
        )


def iter_photo_samples(shard_path: str | os.PathLike) -> Iterator[PhotoSample]:
    """Yield the photos of a photo shard, in order."""
    for raw in iter_raw_samples(shard_path):
        ext = next((e for e in PHOTO_IMAGE_ALTERNATIVES if e in raw), None)
        if ext is None or RECORD not in raw:
            raise ValueError(f"{shard_path}: photo sample {raw[KEY]!r} lacks its jpg/png or json member")
        yield PhotoSample(photo_id=raw[KEY], image=raw[ext], ext=ext, row=json.loads(raw[RECORD]))


def iter_tiles_with_photos(tile_shard: str | os.PathLike) -> Iterator[tuple[dict[str, Any], dict, list[bytes]]]:
    """Yield ``(raw tile sample, tile record, image bytes of its photos in order)`` for every tile of a shard.

    The partition's photo shard holds its photos in tile order, so both shards
    are streamed side by side: memory holds one tile's photos at a time.

    Raises:
        ShardsMisaligned: the tile shard has no photo shard, or the photo shard does not hold
            exactly the tiles' photos, in order.
    """
    tile_shard = Path(tile_shard)
    photo_shard = photo_shard_for(tile_shard)
    if not photo_shard.is_file():
        raise ShardsMisaligned(f"{tile_shard} has no photo shard {photo_shard}; rebuild this partition")
    photos = iter_photo_samples(photo_shard)
    for tile in iter_raw_samples(tile_shard):
        record = tile_record(tile)
        images = []
        for entry in record.get("photos", []):
            sample = next(photos, None)
            if sample is None or sample.photo_id != entry["photo_id"]:
                got = "the end of the shard" if sample is None else repr(sample.photo_id)
                raise ShardsMisaligned(
                    f"{photo_shard} is not aligned with {tile_shard}: tile {tile[KEY]} expects photo "
                    f"{entry['photo_id']!r} next but found {got}; rebuild this partition (delete its "
                    "parts/part-PPPPP folder and re-run graft build)"
                )
            images.append(sample.image)
        yield tile, record, images
    leftover = next(photos, None)
    if leftover is not None:
        raise ShardsMisaligned(f"{photo_shard} holds photo {leftover.photo_id!r} that no tile of "
                         f"{tile_shard} lists; rebuild this partition")


# ---------------------------------------------------------------- random access


@dataclass(frozen=True)
class MemberLocation:
    """Where one member's bytes sit in a shard, for reading it later without scanning the shard."""

    shard: Path
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.shard, "rb") as fh:
            fh.seek(self.offset)
            return fh.read(self.size)


@dataclass
class IndexedTile:
    """One tile sample of a shard, indexed: its record and cache read, its GeoTIFF located but not read.

    Attributes:
        members: the member extensions the sample has.
        record: the tile record, or None if the sample lacks it.
        tif: where the GeoTIFF is, or None if the sample lacks it.
        emb, emb_json: the cached embedding members as stored (see
            :func:`graft.dataset.embeddings.read_cached_embeddings`), or None.
    """

    shard: Path
    tile_id: str
    members: list[str]
    record: dict | None
    tif: MemberLocation | None
    emb: np.ndarray | None
    emb_json: dict | None

    @property
    def complete(self) -> bool:
        """Whether the sample has both its record and its GeoTIFF."""
        return self.record is not None and self.tif is not None


def index_tile_shard(shard_path: str | os.PathLike) -> Iterator[IndexedTile]:
    """Index the tile samples of a shard without reading their GeoTIFFs (same name checks as every reader)."""
    shard_path = Path(shard_path)
    with tarfile.open(shard_path, mode="r:") as tar:
        for key, members in _grouped(shard_path, tar):
            by_ext = dict((ext, m) for m, ext in members)

            def read(ext: str, by_ext: dict[str, tarfile.TarInfo] = by_ext) -> bytes | None:
                if ext not in by_ext:
                    return None
                f = tar.extractfile(by_ext[ext])
                return f.read() if f is not None else b""

            record, vectors, emb_record = read(RECORD), read(EMB_VECTORS), read(EMB_RECORD)
            tif = by_ext.get(TILE_IMAGE)
            yield IndexedTile(
                shard=shard_path, tile_id=key, members=sorted(by_ext),
                record=json.loads(record) if record is not None else None,
                tif=MemberLocation(shard_path, tif.offset_data, tif.size) if tif is not None else None,
                emb=npy_load(vectors) if vectors is not None else None,
                emb_json=json.loads(emb_record) if emb_record is not None else None,
            )
