"""Image- and pixel-level embeddings of every tile of a region, computed once and cached on disk.

The cache is a folder: ``index.json`` (what made it: region, models, tile grid)
and ``chunks/chunk-NNNNN.npz`` (``image`` (n, D) and ``patch`` (n, g, g, D),
float16), each written atomically. A run that is stopped resumes at the first
missing chunk; a cache made from another region or other models is refused.
A query is then a matrix product: the tile ranking uses the image-level
embeddings, the heat map the pixel-level ones.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from graft.evaluation.models import LoadedModel, encode_texts, load_checkpoint_model, load_export_model
from graft.mapsearch.region import DatasetRegion, MapTile, RasterRegion
from graft.storage import atomic_path, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

CACHE_FORMAT = "graft-map-1"
CHUNK_TILES = 256


class MapCacheError(RuntimeError):
    """The cache folder belongs to another region or other models."""


@dataclass
class MapModels:
    """Which model gives the tile (image-level) embeddings, which the patch (pixel-level) ones."""

    image: LoadedModel
    pixel: LoadedModel
    sources: list[dict[str, Any]]

    @property
    def default_rank(self) -> str:
        """Rank tiles by the trained head: the pixel-level one when there is one (the list then follows the
        heat map), else the image-level embedding (untrained patch tokens would rank worse)."""
        return "pixel" if self.pixel.patch_source == "trained" else "image"

    @property
    def image_size(self) -> int:
        return int(self.image.preprocess_cfg["size"])

    def encode_query(self, text: str, device: str) -> np.ndarray:
        """Normalised (D,) text embedding from the image-level model's text tower."""
        emb = encode_texts(self.image.model, self.image.tokenizer, [text], device)[0]
        return emb.numpy().astype(np.float32)


def _model_source(path: Path) -> dict[str, Any]:
    """Identifies a model's weights for the cache key (checksums, not paths alone)."""
    from graft.models.checkpoint import read_meta, resolve_checkpoint

    if (path / "open_clip_config.json").is_file():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json"))
        return {"export": str(path.resolve()), "sha256": {p.name: sha256_file(p) for p in files}}
    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    return {"checkpoint": str(ckpt.resolve()), "kind": meta["kind"], "sha256": meta["sha256"]}


def load_map_models(paths: list[str | Path], device: str) -> MapModels:
    """One or two models (checkpoint/run folders or ``graft export`` folders).

    The image-level model (if any) ranks tiles; the pixel-level one (if any) makes the heat map. A single
    model does both: a pixel-level model's image embedding, an image-level model's ViT patch tokens
    through its ``ln_post`` + ``proj`` (as graft's segmentation does for image-level models).
    """
    if not 1 <= len(paths) <= 2:
        raise ValueError(f"give one or two models (image- and/or pixel-level), got {len(paths)}")
    loaded, sources = [], []
    for i, p in enumerate(paths):
        p = Path(p)
        src = _model_source(p)
        is_export = "export" in src
        model = (load_export_model if is_export else load_checkpoint_model)(f"model{i}", p, device)
        loaded.append((model, "pixel" if model.patch_source == "trained" else "image"))
        sources.append(src)
    kinds = [k for _, k in loaded]
    if len(loaded) == 2:
        if sorted(kinds) != ["image", "pixel"]:
            raise ValueError(f"two models must be one image-level and one pixel-level, got {kinds}")
        a, b = (m for m, _ in loaded)
        if a.clip_record["fingerprint"] != b.clip_record["fingerprint"]:
            raise ValueError("the two models were trained against different CLIP towers "
                             f"({a.clip_record['model']} vs {b.clip_record['model']}); their text spaces differ")
    image = next((m for m, k in loaded if k == "image"), loaded[0][0])
    pixel = next((m for m, k in loaded if k == "pixel"), loaded[0][0])
    for m in (image, pixel):
        m.to(device)
    return MapModels(image=image, pixel=pixel, sources=sources)


class MapIndex:
    """The cached embeddings of a region; answers text queries."""

    def __init__(self, region: RasterRegion | DatasetRegion, image: np.ndarray, patch: np.ndarray):
        self.region = region
        self.image = image.astype(np.float32)  # (N, D)
        self.patch = patch  # (N, g, g, D) float16
        self.grid = int(patch.shape[1])

    def tile_scores(self, text: np.ndarray) -> np.ndarray:
        """Cosine similarity of each tile's image-level embedding with the query, (N,)."""
        return self.image @ text

    def patch_scores(self, text: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarity of every patch with the query, (N, g, g) (or only ``rows``)."""
        p = self.patch if rows is None else self.patch[rows]
        return np.einsum("ngwd,d->ngw", p, text.astype(p.dtype), dtype=np.float32)

    def ranking_scores(self, text: np.ndarray, by: str) -> np.ndarray:
        """(N,) tile scores: ``image`` = image-level similarity, ``pixel`` = mean pixel-level similarity over
        the tile (the tile's mean on the heat map)."""
        if by == "image":
            return self.tile_scores(text)
        if by == "pixel":
            return self.patch_scores(text).mean(axis=(1, 2))
        raise ValueError(f"rank by 'image' or 'pixel', got {by!r}")

    def top_tiles(self, text: np.ndarray, k: int, by: str = "image",
                  min_valid: float = 0.5) -> list[tuple[MapTile, float]]:
        """The ``k`` best tiles (see :meth:`ranking_scores`); tiles mostly outside the raster are not ranked."""
        scores = self.ranking_scores(text, by)
        valid = np.array([t.valid >= min_valid for t in self.region.tiles])
        scores = np.where(valid, scores, -np.inf)
        order = np.argsort(-scores, kind="stable")[:k]
        return [(self.region.tiles[i], float(scores[i])) for i in order if np.isfinite(scores[i])]

    def heat_mosaic(self, text: np.ndarray) -> np.ndarray:
        """Raster regions: (n_rows*g, n_cols*g) float32 patch similarity, NaN where a patch's centre is outside."""
        r = self.region
        if not isinstance(r, RasterRegion):
            raise TypeError("a heat mosaic needs a raster region; dataset tiles have one heat map each")
        g = self.grid
        s = self.patch_scores(text).reshape(r.n_rows, r.n_cols, g, g)
        heat = s.transpose(0, 2, 1, 3).reshape(r.n_rows * g, r.n_cols * g).astype(np.float32)
        step = r.tile_px / g
        centres_r = (np.arange(heat.shape[0]) + 0.5) * step
        centres_c = (np.arange(heat.shape[1]) + 0.5) * step
        heat[centres_r >= r.height, :] = np.nan
        heat[:, centres_c >= r.width] = np.nan
        return heat

    def heat_transform(self, tile: MapTile | None = None):
        """Affine transform of a heat map's pixels: the mosaic's (raster region) or one tile's."""
        from affine import Affine

        if tile is None:
            return self.region.transform @ Affine.scale(self.region.tile_px / self.grid)
        return tile.transform @ Affine.scale(tile.size / self.grid)


def default_cache_dir(region_path: str | Path, key: dict) -> Path:
    import hashlib

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path("runs") / "map" / f"{Path(region_path).stem}-{digest}"


def cache_key(region: RasterRegion | DatasetRegion, models: MapModels) -> dict:
    return {"format": CACHE_FORMAT, "region": region.fingerprint(), "models": models.sources,
            "image_size": models.image_size}


@torch.no_grad()
def _embed_batch(models: MapModels, rgbs: list[np.ndarray], device: str) -> tuple[np.ndarray, np.ndarray]:
    def batch(m: LoadedModel) -> torch.Tensor:
        return torch.stack([m.preprocess(Image.fromarray(x)) for x in rgbs]).to(device)

    x = batch(models.image)
    image = F.normalize(models.image.model.encode_image(x).float(), dim=-1)
    patch_encoder = models.pixel.patch_encoder().to(device)
    xp = x if models.pixel is models.image else batch(models.pixel)
    patches = patch_encoder(xp).float()  # (B, P, D), normalised
    b, p, d = patches.shape
    g = int(round(p ** 0.5))
    return image.cpu().numpy(), patches.reshape(b, g, g, d).cpu().numpy()


def build_index(region: RasterRegion | DatasetRegion, models: MapModels, cache_dir: str | Path,
                batch_size: int = 32, device: str = "cpu", chunk_tiles: int = CHUNK_TILES) -> MapIndex:
    """Embed every tile (resuming a partial cache), then load the whole index.

    Tiles are embedded and written ``chunk_tiles`` at a time, so a stopped run loses at most one chunk.

    Raises:
        MapCacheError: ``cache_dir`` holds a cache of another region, tile size or models.
    """
    cache_dir = Path(cache_dir)
    key = cache_key(region, models)
    meta_path = cache_dir / "index.json"
    if meta_path.is_file():
        have = json.loads(meta_path.read_text())
        if have.get("key") != key:
            raise MapCacheError(f"{cache_dir} caches another region, tile size or model; give another --cache "
                                "(or delete that folder)")
        chunk_tiles = int(have["chunk_tiles"])
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(meta_path, {"key": key, "chunk_tiles": chunk_tiles,
                                      "tile_ids": [t.tile_id for t in region.tiles], "region": region.describe()})
    chunks = cache_dir / "chunks"
    chunks.mkdir(exist_ok=True)
    n = len(region.tiles)
    starts = list(range(0, n, chunk_tiles))
    todo = [s for s in starts if not (chunks / f"chunk-{s // chunk_tiles:05d}.npz").is_file()]
    done_tiles = n - sum(min(chunk_tiles, n - s) for s in todo)
    with tqdm(total=n, initial=done_tiles, desc="embedding tiles", unit="tile") as bar:
        for s in todo:
            tiles = region.tiles[s:s + chunk_tiles]
            image, patch = [], []
            for b in range(0, len(tiles), batch_size):
                part = tiles[b:b + batch_size]
                i, p = _embed_batch(models, [region.read_rgb(t) for t in part], device)
                image.append(i)
                patch.append(p)
                bar.update(len(part))
            with atomic_path(chunks / f"chunk-{s // chunk_tiles:05d}.npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, image=np.concatenate(image).astype(np.float16),
                         patch=np.concatenate(patch).astype(np.float16))
    log.info("map index: %d tiles (%d embedded now, %d from the cache) in %s", n, n - done_tiles, done_tiles,
             cache_dir)
    image, patch = [], []
    for s in starts:
        with np.load(chunks / f"chunk-{s // chunk_tiles:05d}.npz") as z:
            image.append(z["image"])
            patch.append(z["patch"])
    return MapIndex(region, np.concatenate(image), np.concatenate(patch))
