"""``graft embed``: cache the frozen-CLIP embedding of every kept ground photo in its tile's shard.

CLIP is frozen during GRAFT training, so each ground photo's embedding is
computed once, here, and stored with its tile (``emb.npy``: fp16 ``(N, D)``,
row *i* = the tile json's ``photos[i]``; ``emb.json``: the CLIP spec record
and the photo ids). Training then never decodes a ground JPEG. The cache's
format, its reader and the spec comparison live in :mod:`graft.dataset.embeddings`.

A tile shard is rewritten atomically, so it holds either no cache or a
complete one. Re-running skips shards whose cache was made with the same CLIP
spec; a cache made with a *different* spec is refused (mixing two embedding
spaces in one dataset would silently ruin training) unless ``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
from PIL import Image
from pydantic import Field
from tqdm import tqdm

from graft.config import ConfigError, StrictModel, load_yaml, validate
from graft.dataset.embeddings import (
    EmbeddingCacheError,
    cache_spec_mismatch,
    shard_cache_state,
    with_embeddings,
)
from graft.dataset.layout import TILE_SHARDS_GLOB, tile_shards
from graft.dataset.manifest import manifest_path, read_manifest
from graft.dataset.shards import ShardsMisaligned, iter_tiles_with_photos, write_samples
from graft.models.clip_tower import (
    ClipBundle,
    ClipSpec,
    FrozenClipTower,
    load_clip,
    spec_record,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- computing


def _device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _Embedder:
    """Decode (thread pool) + preprocess + batched forward of the frozen tower."""

    def __init__(self, bundle: ClipBundle, device: torch.device, batch_size: int, workers: int):
        self.bundle = bundle
        self.tower = FrozenClipTower(bundle)
        self.device = device
        self.batch_size = batch_size
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="embed-decode")

    def _decode(self, data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as im:
            return self.bundle.preprocess(im.convert("RGB"))

    def decode_async(self, images: list[bytes]) -> list[Future]:
        return [self.pool.submit(self._decode, b) for b in images]

    def forward(self, pixels: list[torch.Tensor]) -> np.ndarray:
        out = []
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
                    else contextlib.nullcontext())
        for s in range(0, len(pixels), self.batch_size):
            x = torch.stack(pixels[s:s + self.batch_size]).to(self.device, non_blocking=True)
            with autocast:
                out.append(self.tower.encode_images(x).float().cpu())
        return torch.cat(out).numpy().astype(np.float16)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _aligned_chunks(tile_shard: Path, batch_size: int) -> Iterator[list[tuple[dict, list[bytes]]]]:
    """Yield groups of (raw tile sample, its photos' image bytes), about ``batch_size`` photos per group.

    Memory stays bounded by one group: the tile and photo shards are streamed side by side.
    """
    group: list[tuple[dict, list[bytes]]] = []
    n = 0
    try:
        for tile, _, images in iter_tiles_with_photos(tile_shard):
            group.append((tile, images))
            n += len(images)
            if n >= batch_size:
                yield group
                group, n = [], 0
    except ShardsMisaligned as e:
        raise EmbeddingCacheError(str(e)) from None
    if group:
        yield group


def _embed_shard(tile_shard: Path, emb: _Embedder, record: dict, bar: tqdm) -> tuple[int, int]:
    """Rewrite one tile shard with its embeddings; returns (tiles, photos)."""
    counts = [0, 0]

    def samples() -> Iterator[dict]:
        chunks = _aligned_chunks(tile_shard, emb.batch_size)
        pending = next(chunks, None)
        futures = emb.decode_async([b for _, imgs in pending for b in imgs]) if pending else []
        while pending is not None:
            # Decode the next group on the pool while the model runs on this one.
            following = next(chunks, None)
            next_futures = emb.decode_async([b for _, imgs in following for b in imgs]) if following else []
            vectors = emb.forward([f.result() for f in futures]) if futures else np.zeros((0, 0), np.float16)
            start = 0
            for tile, imgs in pending:
                rows = vectors[start:start + len(imgs)]
                start += len(imgs)
                counts[0] += 1
                counts[1] += len(imgs)
                yield with_embeddings(tile, rows, record)
            bar.update(start)
            pending, futures = following, next_futures

    write_samples(tile_shard, samples())
    return counts[0], counts[1]


def _photos_per_shard(dataset: Path) -> dict[str, int]:
    if not manifest_path(dataset).is_file():
        return {}
    col = read_manifest(dataset, columns=["tile_shard"]).column("tile_shard")
    counts = pc.value_counts(col).to_pylist()
    return {c["values"]: int(c["counts"]) for c in counts}


def embed_dataset(
    dataset_dir: str | os.PathLike,
    clip_spec: ClipSpec,
    batch_size: int = 256,
    workers: int = 2,
    device: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Cache frozen-CLIP embeddings of every photo of a dataset in its tile shards.

    Args:
        dataset_dir: folder written by ``graft build``.
        clip_spec: the CLIP tower (must be the one training will use).
        batch_size: photos per forward pass.
        workers: JPEG decoding threads.
        device: torch device; default CUDA when available.
        force: replace caches made with a different CLIP spec instead of refusing.
        progress: show a progress bar.

    Returns:
        Summary: ``photos_embedded``, ``tiles_embedded``, ``shards_embedded``,
        ``shards_skipped``, ``seconds``, ``photos_per_s``, ``spec``.

    Raises:
        FileNotFoundError: no tile shards in ``dataset_dir``.
        EmbeddingCacheError: a shard holds a cache from another spec (without ``force``)
            or its photo shard is misaligned.
    """
    dataset = Path(dataset_dir)
    shards = tile_shards(dataset)
    if not shards:
        raise FileNotFoundError(f"{dataset}: no tile shards under tiles/; run 'graft build CONFIG' first")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    dev = _device(device)
    t0 = time.perf_counter()
    bundle = load_clip(clip_spec, device=dev)
    record = spec_record(bundle)

    # Decide every shard's fate before touching any, so a spec conflict fails with no work done.
    todo: list[Path] = []
    skipped = 0
    conflicts: list[str] = []
    for shard in shards:
        state, cached = shard_cache_state(shard)
        why = cache_spec_mismatch(cached, record) if cached is not None else None
        if state == "empty" or (state == "complete" and why is None):
            skipped += 1
            continue
        if why is not None and not force:
            conflicts.append(f"{shard.relative_to(dataset)}: {why}")
            continue
        todo.append(shard)
    if conflicts:
        raise EmbeddingCacheError(
            f"{len(conflicts)} shard(s) hold embeddings from another CLIP spec; training would mix two "
            "embedding spaces. Use the same clip spec, or pass --force to recompute them. First: "
            + conflicts[0]
        )

    per_shard = _photos_per_shard(dataset)
    total = sum(per_shard.get(str(s.relative_to(dataset)), 0) for s in todo) or None
    emb = _Embedder(bundle, dev, batch_size, workers)
    n_tiles = n_photos = 0
    t_compute = time.perf_counter()
    try:
        with tqdm(total=total, desc="embed", unit="photo", disable=not progress) as bar:
            for shard in todo:
                t, p = _embed_shard(shard, emb, record, bar)
                n_tiles += t
                n_photos += p
    finally:
        emb.close()
    seconds = time.perf_counter() - t_compute
    return {
        "dataset": str(dataset),
        "photos_embedded": n_photos,
        "tiles_embedded": n_tiles,
        "shards_embedded": len(todo),
        "shards_skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 3),
        "photos_per_s": round(n_photos / seconds, 2) if seconds > 0 and n_photos else 0.0,
        "device": str(dev),
        "spec": record,
    }


# ---------------------------------------------------------------- CLI


class _ClipSection(StrictModel):
    """Only the ``clip:`` section of a training YAML (the training package is not imported)."""

    clip: ClipSpec = Field(default_factory=ClipSpec)


def clip_spec_from_args(args: argparse.Namespace) -> ClipSpec:
    """The ClipSpec from ``--config TRAIN_YAML`` (its ``clip:`` section) or ``--clip-model/--clip-pretrained``."""
    if args.config and (args.clip_model or args.clip_pretrained):
        raise ConfigError("give either --config TRAIN_YAML or --clip-model/--clip-pretrained, not both")
    if args.config:
        data = load_yaml(args.config)
        section = data.get("clip")
        if section is None:
            log.info("%s has no clip: section; using the default ClipSpec (as training would)", args.config)
            section = {}
        if not isinstance(section, dict):
            raise ConfigError(f"{args.config}: clip must be a mapping, got {type(section).__name__}")
        return validate(_ClipSection, {"clip": section}, source=str(args.config)).clip
    data: dict[str, Any] = {}
    if args.clip_model:
        data["model"] = args.clip_model
    if args.clip_pretrained:
        data["pretrained"] = None if args.clip_pretrained.lower() in ("none", "") else args.clip_pretrained
    return validate(ClipSpec, data, source="(--clip-model/--clip-pretrained)")


def run_embed_command(args: argparse.Namespace) -> int:
    """Entry point of ``graft embed``."""
    spec = clip_spec_from_args(args)
    summary = embed_dataset(args.dataset, spec, batch_size=args.batch_size, workers=args.workers,
                            device=args.device, force=args.force)
    print(f"graft embed: {summary['dataset']}")
    print(f"  clip             {spec.model} ({spec.pretrained}), dim {summary['spec']['embed_dim']}, "
          f"device {summary['device']}")
    print(f"  photos embedded  {summary['photos_embedded']} in {summary['tiles_embedded']} tiles")
    print(f"  shards           {summary['shards_embedded']} embedded, {summary['shards_skipped']} already cached")
    print(f"  throughput       {summary['photos_per_s']} photos/s ({summary['seconds']} s total)")
    print(f"  output           emb.npy + emb.json in {Path(summary['dataset']) / TILE_SHARDS_GLOB}")
    return 0
