"""Decoding tiles and photos, and the tile -> encoder RGB stretch. Shared by sources, pipeline, training and evaluation."""

from __future__ import annotations

import io

import numpy as np
from rasterio.io import MemoryFile

from graft.geometry import TileGrid

# Sentinel-2 L2A reflectance is stored as DN = reflectance * 1e4. The encoder sees
# reflectance [0, 0.3] stretched linearly to [0, 255]: 0.3 covers bright land
# surfaces without saturating, the usual true-colour choice for S2 RGB.
S2_RGB_MAX_DN = 3000.0


def tile_to_rgb8(array: np.ndarray) -> np.ndarray:
    """(bands, H, W) uint8/uint16 tile -> (H, W, 3) uint8 RGB, the encoder's input before normalisation."""
    if array.ndim != 3 or array.shape[0] < 3:
        raise ValueError(f"tile must be (bands>=3, H, W), got shape {array.shape}")
    rgb = array[:3]
    if rgb.dtype == np.uint8:
        out = rgb
    elif rgb.dtype == np.uint16:
        out = np.clip(rgb.astype(np.float32) * (255.0 / S2_RGB_MAX_DN), 0, 255).round().astype(np.uint8)
    else:
        raise ValueError(f"tile dtype must be uint8 or uint16, got {rgb.dtype}")
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def encode_geotiff(array: np.ndarray, grid: TileGrid, nodata: float | None = None) -> bytes:
    """(bands, H, W) array on ``grid`` -> GeoTIFF bytes with CRS and transform."""
    bands, h, w = array.shape
    profile = dict(driver="GTiff", width=w, height=h, count=bands, dtype=array.dtype.name,
                   crs=grid.crs, transform=grid.transform, compress="deflate")
    if nodata is not None:
        profile["nodata"] = nodata
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(array)
        return bytes(mem.read())


def decode_geotiff(data: bytes) -> tuple[np.ndarray, TileGrid]:
    """GeoTIFF bytes -> ((bands, H, W) array, grid). Raises ValueError if it has no CRS."""
    with MemoryFile(io.BytesIO(data).getvalue()) as mem, mem.open() as src:
        if src.crs is None:
            raise ValueError("GeoTIFF has no CRS")
        arr = src.read()
        grid = TileGrid(crs=src.crs.to_string(), transform=src.transform, size=src.width)
    return arr, grid


def is_truncation(err: BaseException) -> bool:
    """Whether a Pillow error means the file ends too early (photo checks and the folder source's EXIF read)."""
    # Pillow reports a short file as OSError("image file is truncated ...") or
    # OSError("Truncated File Read"), and some plugins as EOFError.
    return isinstance(err, EOFError) or "truncated" in str(err).lower()
