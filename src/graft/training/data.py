"""Streaming training batches from the dataset's WebDataset shards.

Each epoch, the split's tile shards are permuted with a seed derived from
(seed, epoch) and dealt out to ranks and DataLoader workers (the equivalent of
WebDataset's ``split_by_node`` + ``split_by_worker``, made epoch-deterministic
so that a resumed run sees exactly the batches an uninterrupted run would
have; with fewer shards than readers, a shard's tiles are split evenly among
the readers dealt to it). Each worker reads several shards at once, taking
samples from them in a seeded random order, then shuffles through a buffer, decodes the tile GeoTIFF,
applies a random crop/flip/rot90 that carries every photo's position along,
and assembles whole batches, so the main process only moves tensors.

For the image-level model, a tile's positives are the photos inside its crop
(``data.positives: crop``, the default): the crop is drawn among those holding
at least one photo, and the photos it cut away leave the batch.
``positives: tile`` keeps every photo of the tile (for ablations). The
pixel-level model keeps uniform random crops and every sampled photo, whatever
``positives`` says: its positives are patches, and its loss keeps only the
photos inside the crop. Evaluation-style passes use a centre crop at native
resolution, where a tile whose centre crop holds no photo is no row.

Ground photos arrive as cached embeddings (written by ``graft embed``, read
with their row/photo-id check), or, with ``live_ground``, as preprocessed photo
tensors read in lockstep from the partition's photo shard (for the frozen tower
to embed). Shards are read through :mod:`graft.dataset`.
"""

from __future__ import annotations

import hashlib
import io
import random
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from graft.dataset.embeddings import EmbeddingCacheError, cache_spec_mismatch, read_cached_embeddings
from graft.dataset.layout import photo_shard_for
from graft.dataset.manifest import MANIFEST_FILE, read_manifest
from graft.dataset.shards import iter_photo_samples, iter_tile_samples
from graft.errors import GraftError
from graft.imagery import decode_geotiff, tile_to_channels
from graft.training.augment import Augment, apply_to_image, photo_patch_index


class DataError(GraftError, RuntimeError):
    """The dataset cannot feed training as configured (missing split, no cache, spec mismatch)."""


def split_shards(dataset: str | Path, split: str) -> list[str]:
    """Tile shards holding ``split``, from the manifest, sorted."""
    dataset = Path(dataset)
    table = read_manifest(dataset, columns=["split", "tile_shard"]).to_pandas()
    shards = sorted(set(table.loc[table["split"] == split, "tile_shard"]))
    if not shards:
        have = sorted(set(table["split"]))
        raise DataError(f"{dataset}/{MANIFEST_FILE} has no tiles in split {split!r} (splits present: {have})")
    return [str(dataset / s) for s in shards]


def check_embedding_cache(shards: list[str], want: dict) -> None:
    """Refuse a ground-embedding cache made with another CLIP tower or preprocessing.

    ``want`` is :func:`graft.models.clip_tower.spec_record` of the training config's tower.
    The first sample of every shard is checked (``graft embed`` writes a shard with one spec).
    """
    for shard in shards:
        first = next(iter_tile_samples(shard, decode_tif=False), None)
        if first is None:
            continue
        try:
            _, cached = read_cached_embeddings(first)
        except EmbeddingCacheError as e:
            raise DataError(f"{shard}: {e}") from None
        why = cache_spec_mismatch(cached, want)
        if why:
            raise DataError(f"the ground-embedding cache in {shard} was made with another CLIP tower: {why}. "
                            f"Re-run `graft embed --force` with this config's clip section, or set clip: to the "
                            f"tower that made the cache.")


@dataclass
class StreamSpec:
    """Everything a worker needs, picklable."""

    shards: list[str]
    split: str
    batch_size: int
    crop_size: int
    patch_size: int
    mean: tuple[float, ...]  # per input channel (CLIP's for R, G, B; the dataset's band statistics for the rest)
    std: tuple[float, ...]
    seed: int
    rank: int = 0
    world_size: int = 1
    flips: bool = True
    rot90: bool = True
    shuffle_buffer: int = 256
    interleave: int = 4  # shards each loader worker reads at once (training), so a batch mixes blocks
    max_photos: int = 25
    live_ground: bool = False
    photo_transform: Any = None  # the frozen tower's preprocess, for live_ground
    train: bool = True  # False: centre crop, no shuffle, no flips (evaluation-style pass)
    positives: str = "crop"  # "crop": a tile's positives are its photos inside the crop; "tile": all of them
    # "image": ``positives`` applies. "pixel": uniform random crops and every sampled photo of the tile
    # (patch index -1 outside the crop; the pixel loss keeps the inside ones), whatever ``positives`` says.
    level: str = "image"
    bands: tuple[str, ...] | None = None  # a multispectral encoder's bands (R, G, B first); None: the tiles' RGB


class TileStream(IterableDataset):
    """One epoch of batches for one rank. Build a new one per epoch (``epoch`` fixes the order)."""

    def __init__(self, spec: StreamSpec, epoch: int):
        super().__init__()
        self.spec, self.epoch = spec, epoch

    def _my_shards(self, worker: int, workers: int) -> list[tuple[str, int, int]]:
        """This worker's ``(shard, stride, offset)`` reads of the epoch: it keeps a shard's samples
        ``offset, offset + stride, ...`` (counted among the samples of the split).

        The shard order is reshuffled every epoch. With at least as many shards as readers
        (ranks x workers) each reader gets whole shards; with fewer, each shard is read by the
        readers dealt to it and its tiles are split evenly among them, so every tile is seen
        exactly once an epoch either way and no reader reads every shard.
        """
        s = self.spec
        slots, slot = s.world_size * workers, s.rank * workers + worker
        shards = list(s.shards)
        if s.train:
            random.Random(f"{s.seed}/{self.epoch}").shuffle(shards)
        if len(shards) >= slots:
            return [(shard, 1, 0) for shard in shards[slot::slots]]
        if not shards:
            return []
        n = len(shards)
        sharing = len(range(slot % n, slots, n))  # readers dealt the same shard as this one
        return [(shards[slot % n], sharing, slot // n)]

    def _samples(self, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        """This worker's samples, reading up to ``spec.interleave`` shards at once (training)
        and taking the next sample from one of them at random (seeded), so a batch mixes blocks."""
        s = self.spec
        reads = self._my_shards(worker, workers)
        width = max(1, s.interleave) if s.train else 1
        rng = random.Random(f"{s.seed}/{self.epoch}/{s.rank}/{worker}/interleave")
        open_reads: list[Iterator[dict[str, Any]]] = []
        pending = list(reads)
        while pending or open_reads:
            while pending and len(open_reads) < width:
                open_reads.append(self._read_shard(*pending.pop(0)))
            i = rng.randrange(len(open_reads)) if s.train else 0
            item = next(open_reads[i], None)
            if item is None:
                open_reads.pop(i)
            else:
                yield item

    def _read_shard(self, shard: str, stride: int, offset: int) -> Iterator[dict[str, Any]]:
        photo_iter = iter_photo_samples(photo_shard_for(shard)) if self.spec.live_ground else None
        n = 0
        for sample in iter_tile_samples(shard, decode_tif=False):
            meta = sample.record
            photos = None
            if photo_iter is not None:
                photos = [next(photo_iter) for _ in meta["photos"]]
            if meta.get("split", self.spec.split) != self.spec.split:
                continue
            n += 1
            if (n - 1) % stride != offset:
                continue
            yield {"sample": sample, "meta": meta, "photos": photos}

    def items(self, worker: int = 0, workers: int = 1) -> Iterator[dict[str, Any]]:
        """What loader worker ``worker`` of ``workers`` (of this rank) reads in the epoch, in the order
        it batches them, before decoding: ``{"sample", "meta", "photos"}`` per tile."""
        return self._shuffled(random.Random(self._key(worker)), worker, workers)

    def _key(self, worker: int) -> str:
        s = self.spec
        return f"{s.seed}/{self.epoch}/{s.rank}/{worker}"

    def _shuffled(self, rng: random.Random, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        buf: list[dict[str, Any]] = []
        for item in self._samples(worker, workers):
            if not self.spec.train or self.spec.shuffle_buffer <= 1:
                yield item
                continue
            buf.append(item)
            if len(buf) >= self.spec.shuffle_buffer:
                yield buf.pop(rng.randrange(len(buf)))
        while buf:
            yield buf.pop(rng.randrange(len(buf)))

    def _decode(self, item: dict[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
        """One tile's crop and its photos; None if the crop holds no photo (the tile is then no row)."""
        s = self.spec
        meta, sample = item["meta"], item["sample"]
        arr, _ = decode_geotiff(sample.tif)
        channels = torch.from_numpy(tile_to_channels(arr, meta.get("bands"), s.bands))
        tile_size = channels.shape[-1]
        photos = meta["photos"]
        rows = np.array([p["row"] for p in photos], dtype=np.float64)
        cols = np.array([p["col"] for p in photos], dtype=np.float64)
        # The pixel model keeps uniform crops and all its photos: its positives are patches, chosen inside
        # the crop by the pixel loss, and a photo-aware crop would only bias which patches it sees.
        positives = s.positives if s.level == "image" else "tile"
        if s.train:
            aware = positives == "crop"
            aug = Augment.sample(rng, tile_size, s.crop_size, s.flips, s.rot90,
                                 rows=rows if aware else None, cols=cols if aware else None)
        else:
            aug = Augment.center(tile_size, s.crop_size)
        if aug is None:
            return None
        keep, patch_index = select_photos(rows, cols, aug, s.patch_size, positives, s.max_photos, rng)
        if keep.size == 0:
            return None
        img = apply_to_image(channels, aug)
        mean = torch.tensor(s.mean).view(-1, 1, 1)
        std = torch.tensor(s.std).view(-1, 1, 1)
        img = (img - mean) / std
        out = {"image": img, "patch_index": torch.from_numpy(patch_index), "tile_id": meta["tile_id"]}
        if s.live_ground:
            ims = []
            for i in keep:
                data = item["photos"][i].image
                ims.append(s.photo_transform(Image.open(io.BytesIO(data)).convert("RGB")))
            out["photos"] = torch.stack(ims)
        else:
            try:
                emb, _ = read_cached_embeddings(sample)
            except EmbeddingCacheError as e:
                raise DataError(str(e)) from None
            out["ground"] = torch.from_numpy(emb[keep])
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        s = self.spec
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        key = self._key(wid)
        batch: list[dict[str, Any]] = []
        for i, item in enumerate(self.items(wid, workers)):
            # One generator per sample: augmentations do not depend on worker count or timing.
            sample_rng = np.random.default_rng(_seed(key, i))
            decoded = self._decode(item, sample_rng)
            if decoded is None:
                continue
            batch.append(decoded)
            if len(batch) == s.batch_size:
                yield collate(batch)
                batch = []
        if batch and not s.train:
            yield collate(batch)


def select_photos(rows: np.ndarray, cols: np.ndarray, aug: Augment, patch_size: int, positives: str,
                  max_photos: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Which of a tile's photos enter the batch, and each one's patch in the augmented crop.

    With ``positives="crop"`` only the photos inside the crop enter (a photo the crop cut away is
    neither a positive nor a negative); with ``"tile"`` every photo does, those outside the crop with
    patch index -1 (positives of the image-level loss only). At most ``max_photos``, drawn at random.

    Returns:
        (keep, patch_index): sorted indices into the tile's photo list, and their patch indices.
    """
    patch_index = photo_patch_index(rows, cols, aug, patch_size)
    if positives == "crop":
        keep = np.flatnonzero(patch_index >= 0)
    elif positives == "tile":
        keep = np.arange(len(rows))
    else:
        raise ValueError(f"positives must be 'crop' or 'tile', got {positives!r}")
    if keep.size > max_photos:
        keep = np.sort(rng.choice(keep, max_photos, replace=False))
    return keep, patch_index[keep]


def _seed(key: str, i: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}/{i}".encode(), digest_size=8).digest(), "little")


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tiles; concatenate their photos with ``owner`` = the tile's row in the batch."""
    counts = [len(it["patch_index"]) for it in items]
    out = {
        "images": torch.stack([it["image"] for it in items]),
        "owner": torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts, dtype=torch.long)),
        "patch_index": torch.cat([it["patch_index"] for it in items]),
        "tile_ids": [it["tile_id"] for it in items],
    }
    key = "photos" if "photos" in items[0] else "ground"
    out[key] = torch.cat([it[key] for it in items])
    return out


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGTERM/SIGUSR1 to the trainer (torchrun and SLURM signal the whole process
    group): a worker killed by one would fail the step the trainer is about to checkpoint after."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def epoch_loader(spec: StreamSpec, epoch: int, workers: int, prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader over one epoch of ``spec`` (batches are assembled inside workers)."""
    kwargs: dict[str, Any] = {"num_workers": workers, "batch_size": None}
    if workers > 0:
        kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=False, worker_init_fn=_ignore_stop_signals)
    return DataLoader(TileStream(spec, epoch), **kwargs)


class BatchIterator:
    """Endless batches across epochs, with a resumable position ``(epoch, batch_in_epoch)``."""

    def __init__(self, spec: StreamSpec, workers: int, prefetch_factor: int = 2, epoch: int = 0, skip: int = 0):
        self.spec, self.workers, self.prefetch = spec, workers, prefetch_factor
        self.epoch, self.batch_in_epoch = epoch, 0
        self._it = iter(epoch_loader(spec, epoch, workers, prefetch_factor))
        # Resume: replay the epoch's first `skip` batches without training on them.
        for _ in range(skip):
            next(self)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, Any]:
        empty_epochs = 0
        while True:
            try:
                batch = next(self._it)
                self.batch_in_epoch += 1
                return batch
            except StopIteration:
                if self.batch_in_epoch == 0:
                    empty_epochs += 1
                    if empty_epochs > 1:
                        raise DataError(
                            f"rank {self.spec.rank} got no full batch of {self.spec.batch_size} tiles from "
                            f"{len(self.spec.shards)} shards of split {self.spec.split!r}; lower data.batch_size "
                            f"or build a larger dataset") from None
                self.epoch += 1
                self.batch_in_epoch = 0
                self._it = iter(epoch_loader(self.spec, self.epoch, self.workers, self.prefetch))
