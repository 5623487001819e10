"""Decoding tiles and photos, and the tile -> encoder input. Shared by sources, pipeline, training and
evaluation.

A tile is a GeoTIFF holding the bands its source was configured with (named in
the tile's ``bands`` list). An RGB encoder reads the tile's red, green and blue
bands through :func:`tile_to_rgb8`; a multispectral encoder reads its own band
list through :func:`tile_to_channels`: R, G, B first, stretched exactly as for
an RGB encoder (so its CLIP-initialised channels see what CLIP's weights
expect), then every further band in the tile's stored units, at full precision.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.io import MemoryFile

from graft.geometry import TileGrid

# Sentinel-2 L2A reflectance is stored as DN = reflectance * 1e4. The encoder sees
# reflectance [0, 0.3] stretched linearly to [0, 255]: 0.3 covers bright land
# surfaces without saturating, the usual true-colour choice for S2 RGB.
S2_RGB_MAX_DN = 3000.0

# Red, green and blue under each source's band names: Sentinel-2, NAIP. A tile whose bands match none
# of these (a GeoTIFF source's b1, b2, ...) has its first three bands taken as R, G, B.
RGB_BAND_NAMES: tuple[tuple[str, str, str], ...] = (("B4", "B3", "B2"), ("R", "G", "B"))


# Upper-case B only: a GeoTIFF source's default names b1, b2, ... are band indexes, not Sentinel-2 bands.
_S2_BAND = re.compile(r"^B0*(\d{1,2})([Aa]?)$")


class BandError(ValueError):
    """A tile lacks a band the encoder reads (or cannot say which bands it holds)."""


def canonical_band(name: str) -> str:
    """One spelling per Sentinel-2 band: ``B04`` -> ``B4``, ``B08A``/``B8a`` -> ``B8A``; other names unchanged.

    Earth Engine names Sentinel-2 bands ``B4``, ``B8A``; EuroSAT and BigEarthNet ``B04``, ``B8A``/``B08A``.
    Bands are matched by this form, so a model trained on one reads the others.
    """
    m = _S2_BAND.match(name)
    return f"B{int(m.group(1))}{m.group(2).upper()}" if m else name


def _positions(tile_bands: Sequence[str]) -> dict[str, int]:
    return {canonical_band(b): i for i, b in enumerate(tile_bands)}


def rgb_band_indexes(tile_bands: Sequence[str] | None) -> list[int]:
    """0-based indexes of a tile's R, G, B bands: by name (:data:`RGB_BAND_NAMES`), else the first three."""
    if tile_bands:
        pos = _positions(tile_bands)
        for triple in RGB_BAND_NAMES:
            if all(b in pos for b in triple):
                return [pos[b] for b in triple]
    return [0, 1, 2]


def band_indexes(tile_bands: Sequence[str] | None, want: Sequence[str]) -> list[int]:
    """0-based indexes of the bands ``want`` in a tile whose bands are ``tile_bands``.

    Raises:
        BandError: a band of ``want`` is not in the tile (the message lists what the tile has).
    """
    if not tile_bands:
        raise BandError(f"the tile does not name its bands, so bands {list(want)} cannot be found in it; "
                        f"rebuild the dataset (tile json 'bands') or read it with an RGB model")
    pos = _positions(tile_bands)
    missing = [b for b in want if canonical_band(b) not in pos]
    if missing:
        raise BandError(f"the tile has bands {list(tile_bands)}, not {missing}; the model reads {list(want)}. "
                        f"Build the dataset with these bands (satellite.*.bands) or train on the tile's bands")
    return [pos[canonical_band(b)] for b in want]


def tile_to_rgb8(array: np.ndarray, tile_bands: Sequence[str] | None = None) -> np.ndarray:
    """(bands, H, W) uint8/uint16 tile -> (H, W, 3) uint8 RGB, the encoder's input before normalisation.

    ``tile_bands`` names the tile's bands; R, G, B are picked by name when it does
    (:func:`rgb_band_indexes`), else the first three bands are R, G, B.
    """
    if array.ndim != 3 or array.shape[0] < 3:
        raise ValueError(f"tile must be (bands>=3, H, W), got shape {array.shape}")
    if tile_bands is not None and len(tile_bands) != array.shape[0]:
        raise BandError(f"the tile names {len(tile_bands)} bands {list(tile_bands)} but holds {array.shape[0]}")
    rgb = array[rgb_band_indexes(tile_bands)]
    if rgb.dtype == np.uint8:
        out = rgb
    elif rgb.dtype == np.uint16:
        out = np.clip(rgb.astype(np.float32) * (255.0 / S2_RGB_MAX_DN), 0, 255).round().astype(np.uint8)
    else:
        raise ValueError(f"tile dtype must be uint8 or uint16, got {rgb.dtype}")
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def center_crop_offset(tile_size: int, size: int) -> int:
    """Top (and left) pixel of the centred ``size`` crop of a ``tile_size`` tile.

    The one geometry of a tile seen after training: the trainer's alignment passes and the
    ``graft_pairs`` benchmark both take this crop at native resolution.
    """
    if size > tile_size:
        raise ValueError(f"crop size {size} exceeds tile size {tile_size}")
    return (tile_size - size) // 2


def inside_crop(rows, cols, top: int, left: int, size: int) -> np.ndarray:
    """True for each photo whose pixel ``(floor(row), floor(col))`` lies in the crop at (top, left)."""
    r = np.floor(np.asarray(rows, dtype=np.float64)) - top
    c = np.floor(np.asarray(cols, dtype=np.float64)) - left
    return (r >= 0) & (r < size) & (c >= 0) & (c < size)


def tile_to_channels(array: np.ndarray, tile_bands: Sequence[str] | None,
                     bands: Sequence[str] | None = None) -> np.ndarray:
    """(bands, H, W) tile -> (C, H, W) float32 encoder channels, before per-channel normalisation.

    Args:
        array: the tile, uint8 or uint16.
        tile_bands: the tile's band names (its json ``bands``).
        bands: the bands the encoder reads, R, G, B first; None for an RGB encoder (C = 3).

    Returns:
        Channels 0-2: :func:`tile_to_rgb8` of the RGB bands divided by 255, exactly the
        RGB encoder's input. Channels 3+: ``bands[3:]`` in the tile's stored units (DN), unstretched.

    Raises:
        BandError: the tile lacks one of ``bands``.
    """
    if bands is None:
        rgb = tile_to_rgb8(array, tile_bands)
    else:
        if len(bands) < 3:
            raise BandError(f"an encoder reads at least R, G, B; got bands {list(bands)}")
        idx = band_indexes(tile_bands, bands)
        rgb = tile_to_rgb8(array[idx[:3]])
    out = rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    if bands is None or len(bands) == 3:
        return out
    extra = array[idx[3:]].astype(np.float32)
    return np.concatenate([out, extra])


@dataclass(frozen=True)
class BandNorm:
    """The bands a multispectral encoder reads and how each input channel is normalised.

    It travels in the checkpoint (``meta.json`` ``bands``), so evaluation and export
    feed a trained model exactly what it was trained on.

    Attributes:
        bands: tile band names, R, G, B first (e.g. ``B4, B3, B2, B8`` or ``R, G, B, N``).
        mean, std: per channel, ``(channel - mean) / std``. For R, G, B: CLIP's own
            normalisation of the 0-1 stretch (the one its weights were trained with); for
            every further band: the dataset's per-band statistics, in the tile's stored units.
    """

    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.bands) < 3 or not (len(self.bands) == len(self.mean) == len(self.std)):
            raise ValueError(f"BandNorm needs >= 3 bands and one mean and std per band; got bands {self.bands}, "
                             f"{len(self.mean)} means, {len(self.std)} stds")
        bad = [b for b, s in zip(self.bands, self.std, strict=True) if not s > 0]
        if bad:
            raise ValueError(f"band std must be positive; bands {bad} have std <= 0 (a constant band carries "
                             f"no information: drop it from the band list)")

    @property
    def channels(self) -> int:
        return len(self.bands)

    def normalize(self, channels: np.ndarray) -> np.ndarray:
        """(C, H, W) output of :func:`tile_to_channels` -> normalised float32."""
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return (channels - mean) / std

    def to_json(self) -> dict[str, Any]:
        return {"bands": list(self.bands), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BandNorm:
        return cls(tuple(d["bands"]), tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["std"]))


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
