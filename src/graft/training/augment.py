"""Random crop / flip / 90-degree rotation of a tile, carrying photo positions along.

Training crops are photo-aware: drawn among the crops that hold at least one
of the tile's photos, so every tile keeps a positive for the image-level loss
(:meth:`Augment.sample` with photo positions).

The pixel-level loss needs, for every ground photo, the patch of the
*augmented* crop that holds it. :func:`photo_patch_index` is the one function
that computes it; :func:`apply_to_image` applies the same transform to pixels.
Both work on the photo's *pixel* (``floor(row), floor(col)``), so the answer
is exactly the patch in which that pixel lands after torch's own crop, flip
and rot90 (tests check this against marker images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from graft.imagery import center_crop_offset, inside_crop


@dataclass(frozen=True)
class Augment:
    """One sampled transform: crop ``size`` at (top, left), then h-flip, then rot90 ``k`` times (CCW)."""

    top: int
    left: int
    size: int
    hflip: bool = False
    k: int = 0

    @classmethod
    def sample(cls, rng: np.random.Generator, tile_size: int, size: int, flips: bool, rot90: bool,
               rows=None, cols=None) -> Augment | None:
        """A random transform; with photo positions, a crop drawn among those that hold at least one photo.

        Given ``rows``/``cols`` (fractional tile positions), the crop's (top, left) is uniform over the
        positions whose crop holds the pixel of at least one photo: a uniform crop conditioned on
        holding a photo. Returns None if no crop can hold one (no photo lies inside the tile).
        """
        if size > tile_size:
            raise ValueError(f"crop size {size} exceeds tile size {tile_size}")
        if rows is None:
            top = int(rng.integers(0, tile_size - size + 1))
            left = int(rng.integers(0, tile_size - size + 1))
        else:
            valid = crops_holding_a_photo(rows, cols, tile_size, size)
            n_valid = int(valid.sum())
            if n_valid == 0:
                return None
            pick = int(np.flatnonzero(valid)[int(rng.integers(0, n_valid))])
            top, left = divmod(pick, valid.shape[1])
        hflip = bool(rng.integers(0, 2)) if flips else False
        k = int(rng.integers(0, 4)) if rot90 else 0
        return cls(top, left, size, hflip, k)

    @classmethod
    def center(cls, tile_size: int, size: int) -> Augment:
        off = center_crop_offset(tile_size, size)
        return cls(off, off, size)


def crops_holding_a_photo(rows, cols, tile_size: int, size: int) -> np.ndarray:
    """(n, n) bool over crop positions (top, left), n = tile_size - size + 1: True where the crop holds a photo.

    A crop at ``top`` holds pixel row ``r`` when ``top <= r < top + size``; each photo thus allows a
    rectangle of positions, and the union is painted with a 2-D difference array (O(n^2 + photos)).
    """
    n = tile_size - size + 1
    r = np.floor(np.asarray(rows, dtype=np.float64)).astype(np.int64)
    c = np.floor(np.asarray(cols, dtype=np.float64)).astype(np.int64)
    r0, r1 = np.clip(r - size + 1, 0, n), np.clip(r + 1, 0, n)  # allowed tops: [r0, r1)
    c0, c1 = np.clip(c - size + 1, 0, n), np.clip(c + 1, 0, n)
    ok = (r0 < r1) & (c0 < c1)
    diff = np.zeros((n + 1, n + 1), dtype=np.int32)
    np.add.at(diff, (r0[ok], c0[ok]), 1)
    np.add.at(diff, (r0[ok], c1[ok]), -1)
    np.add.at(diff, (r1[ok], c0[ok]), -1)
    np.add.at(diff, (r1[ok], c1[ok]), 1)
    return diff.cumsum(0).cumsum(1)[:n, :n] > 0


def apply_to_image(img: torch.Tensor, aug: Augment) -> torch.Tensor:
    """Apply ``aug`` to a (C, H, W) tensor."""
    out = img[..., aug.top : aug.top + aug.size, aug.left : aug.left + aug.size]
    if aug.hflip:
        out = torch.flip(out, dims=[-1])
    if aug.k:
        out = torch.rot90(out, aug.k, dims=[-2, -1])
    return out


def transform_pixels(row, col, aug: Augment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map fractional tile positions to integer pixel positions in the augmented crop.

    Returns (pixel_row, pixel_col, inside); positions outside the crop have ``inside`` False.
    """
    s = aug.size
    r = np.floor(np.asarray(row, dtype=np.float64)).astype(np.int64) - aug.top
    c = np.floor(np.asarray(col, dtype=np.float64)).astype(np.int64) - aug.left
    inside = inside_crop(row, col, aug.top, aug.left, s)
    if aug.hflip:
        c = s - 1 - c
    for _ in range(aug.k % 4):
        # torch.rot90(dims=[-2, -1]) moves pixel (r, c) to (s - 1 - c, r).
        r, c = s - 1 - c, r
    return r, c, inside


def photo_patch_index(row, col, aug: Augment, patch_size: int) -> np.ndarray:
    """Row-major patch index of each photo in the augmented crop, or -1 if the crop excludes it."""
    if aug.size % patch_size:
        raise ValueError(f"crop size {aug.size} is not a multiple of the patch size {patch_size}")
    grid = aug.size // patch_size
    r, c, inside = transform_pixels(row, col, aug)
    idx = (r // patch_size) * grid + (c // patch_size)
    return np.where(inside, idx, -1).astype(np.int64)
