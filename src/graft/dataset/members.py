"""Names inside a shard: sample keys, member names, their safety checks, and the bytes members hold.

A WebDataset sample is the run of tar members ``KEY.EXT`` sharing one key.
WebDataset splits a member name at its first dot, so keys have none.

Tile samples: ``KEY.tif`` (GeoTIFF), ``KEY.json`` (the tile record) and, after
``graft embed``, ``KEY.emb.npy`` / ``KEY.emb.json``. Photo samples:
``KEY.jpg`` (or ``KEY.png``) and ``KEY.json`` (the photo's manifest row).
"""

from __future__ import annotations

import io
import json
import os
import re
from typing import Any

import numpy as np

# Member extensions (the part of a member name after the key's dot).
TILE_IMAGE = "tif"
RECORD = "json"  # a tile's record, or a photo's manifest row
PHOTO_IMAGE = "jpg"
PHOTO_IMAGE_ALTERNATIVES = ("jpg", "png")  # what a reader accepts as a photo's image
EMB_VECTORS = "emb.npy"
EMB_RECORD = "emb.json"
EMB_MEMBERS = (EMB_VECTORS, EMB_RECORD)
KEY = "__key__"  # WebDataset's name for a sample's key in a sample dict

# Sample keys: WebDataset splits a member name at its first dot, so keys must
# have none; slashes would make members land in sub-folders of an extraction.
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# Extensions may be dotted (``emb.npy``) but each part is a plain word.
EXT_RE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")


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
