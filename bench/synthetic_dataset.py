"""A generated training dataset in graft's real on-disk format (docs/formats.md), for the training benches.

Tiles look like the Sentinel-2 recipe's (``data_pipeline/sentinel2.yaml``): 3-band
uint16 reflectance GeoTIFFs on a UTM grid, deflate-compressed, so decoding one
costs what decoding a real one costs. Their pixels are a smooth random field
plus sensor-like noise (real imagery compresses about as well). Each tile
holds 1 to 25 photos (geometric, mean about 5, like GRAFT's long-tailed
photos-per-tile), whose positions are uniform in the tile.

The embedding cache (``emb.npy`` / ``emb.json``) holds random unit vectors
under the real spec record of the CLIP tower the bench trains with, so the
trainer's cache check passes. Neither the loader's cost nor the training
step's depends on the vectors' values, so computing real embeddings would
only cost time.

Shards are written with :mod:`graft.dataset` (the build's own writers). A dataset is reused when one with the same parameters
already exists in the folder.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from graft.dataset.embeddings import with_embeddings
from graft.dataset.layout import MANIFEST_FILE, shard_names
from graft.dataset.shards import photo_sample, tile_sample, write_samples
from graft.geometry import tile_grid_around
from graft.imagery import encode_geotiff
from graft.models.clip_tower import ClipSpec, load_clip, spec_record
from graft.storage import atomic_dir

PARAMS_FILE = "bench_dataset.json"
MAX_PHOTOS_PER_TILE = 25  # GRAFT's cap (and the build's default max_per_tile)


@dataclass(frozen=True)
class DatasetParams:
    """What the generated dataset looks like (the folder is reused when these are equal).

    Attributes:
        n_tiles: tiles in the ``train`` split.
        n_shards: tile shards (= partitions); at least the loader's worker count.
        tile_size: tile side in pixels (the Sentinel-2 recipe: 448).
        gsd: metres per pixel (Sentinel-2: 10).
        dtype: ``uint16`` (Sentinel-2 reflectance x 1e4) or ``uint8`` (NAIP, GeoTIFF sources).
        photo_p: parameter of the geometric photos-per-tile distribution (mean about 1 / p).
        seed: seeds everything.
    """

    n_tiles: int
    n_shards: int
    tile_size: int
    gsd: float = 10.0
    dtype: str = "uint16"
    photo_p: float = 0.2
    seed: int = 0


def _tile_pixels(rng: np.random.Generator, size: int, dtype: str) -> np.ndarray:
    """(3, size, size): a blocky low-frequency field (fields, roads, roofs) plus per-pixel noise."""
    lo, hi, noise = (300, 2500, 60) if dtype == "uint16" else (20, 220, 8)
    cells = 8
    coarse = rng.integers(lo, hi, (3, cells, cells))
    rep = -(-size // cells)
    field = np.repeat(np.repeat(coarse, rep, axis=1), rep, axis=2)[:, :size, :size]
    out = field + rng.integers(-noise, noise + 1, field.shape)
    return out.clip(0, np.iinfo(dtype).max).astype(dtype)


def _jpeg(rng: np.random.Generator, px: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (px, px, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def write_bench_dataset(root: Path, spec: ClipSpec, params: DatasetParams) -> Path:
    """Write (or reuse) a dataset folder at ``root`` with an embedding cache made under ``spec``.

    Args:
        root: the dataset folder.
        spec: the CLIP tower whose spec record the cache carries (the trainer refuses any other).
        params: the dataset's shape.

    Returns:
        ``root``.
    """
    bundle = load_clip(spec)
    record = spec_record(bundle)
    want = {"params": asdict(params), "clip": record}
    marker = root / PARAMS_FILE
    if marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(want, default=str)):
        return root
    dim = bundle.embed_dim
    rng = np.random.default_rng(params.seed)
    rows: list[dict] = []
    per_shard = -(-params.n_tiles // params.n_shards)
    with atomic_dir(root) as tmp, tqdm(total=params.n_tiles, desc="bench dataset", unit="tile") as bar:
        for s in range(params.n_shards):
            tile_rel, photo_rel = shard_names(s)
            tiles, photos = [], []
            for t in range(s * per_shard, min(params.n_tiles, (s + 1) * per_shard)):
                # Spread tiles over a few hundred km so they fall in different UTM cells, like a real region.
                lat, lon = 44.0 + 0.01 * (t % 100), 8.0 + 0.01 * (t // 100)
                grid = tile_grid_around(lat, lon, params.tile_size, params.gsd)
                tile_id = f"bench-{s:05d}-{t:06d}"
                n = int(min(MAX_PHOTOS_PER_TILE, rng.geometric(params.photo_p)))
                rr = rng.uniform(0, params.tile_size, n)
                cc = rng.uniform(0, params.tile_size, n)
                plat, plon = grid.latlon_of(rr, cc)
                entries = []
                for j in range(n):
                    pid = f"{tile_id}-p{j:02d}"
                    entries.append({"photo_id": pid, "row": float(rr[j]), "col": float(cc[j])})
                    row = {"photo_id": pid, "lat": float(plat[j]), "lon": float(plon[j]),
                           "taken_at": pd.Timestamp("2021-06-01", tz="UTC"), "tile_id": tile_id,
                           "row": float(rr[j]), "col": float(cc[j]), "split": "train", "source": "bench",
                           "license": "", "owner": "", "outdoor_score": np.float32(1.0), "tile_shard": tile_rel,
                           "photo_shard": photo_rel, "tile_crs": grid.crs, "tile_date": None,
                           "partition": np.int32(s)}
                    rows.append(row)
                    photos.append(photo_sample(pid, _jpeg(rng), row))
                emb = rng.standard_normal((n, dim)).astype(np.float32)
                emb /= np.linalg.norm(emb, axis=1, keepdims=True)
                meta = {"tile_id": tile_id, "grid": grid.to_json(), "bands": ["B4", "B3", "B2"], "date": None,
                        "source": "bench", "split": "train", "photos": entries}
                tif = encode_geotiff(_tile_pixels(rng, params.tile_size, params.dtype), grid)
                tiles.append(with_embeddings(tile_sample(tile_id, tif, meta), emb.astype(np.float16), record))
                bar.update(1)
            write_samples(tmp / tile_rel, tiles)
            write_samples(tmp / photo_rel, photos)
        pd.DataFrame(rows).to_parquet(tmp / MANIFEST_FILE)
        (tmp / PARAMS_FILE).write_text(json.dumps(want, default=str, indent=1))
    return root
