"""Random crop / flip / 90-degree rotation of a tile, carrying photo positions along.

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


@dataclass(frozen=True)
class Augment:
    """One sampled transform: crop ``size`` at (top, left), then h-flip, then rot90 ``k`` times (CCW)."""

    top: int
    left: int
    size: int
    hflip: bool = False
    k: int = 0

    @classmethod
    def sample(cls, rng: np.random.Generator, tile_size: int, size: int, flips: bool, rot90: bool) -> Augment:
        if size > tile_size:
            raise ValueError(f"crop size {size} exceeds tile size {tile_size}")
        top = int(rng.integers(0, tile_size - size + 1))
        left = int(rng.integers(0, tile_size - size + 1))
        hflip = bool(rng.integers(0, 2)) if flips else False
        k = int(rng.integers(0, 4)) if rot90 else 0
        return cls(top, left, size, hflip, k)

    @classmethod
    def center(cls, tile_size: int, size: int) -> Augment:
        off = (tile_size - size) // 2
        return cls(off, off, size)


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
    inside = (r >= 0) & (r < s) & (c >= 0) & (c < s)
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
