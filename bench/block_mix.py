"""Figure group ``block_mix``: how many geographic blocks does one training batch draw from?

Tiles of one block are spatially correlated (the same fields, the same
streets): a batch holding the tiles of one or two blocks gives the contrastive
loss correlated negatives, some of them likely false negatives. The figure is
the mean number of distinct blocks among a training batch's tiles, over one
epoch, read by the real loader (:meth:`graft.training.data.TileStream.items`:
the shard order of the epoch, the shards dealt to each worker, interleaving
and the shuffle buffer; decoding does not change the order, so it is skipped).

Two layouts of the same dataset (24 blocks of 400 tiles) are read with the same
batch size, workers and shuffle buffer:

- **before**: one shard per block, each loader worker reading one shard at a
  time (graft before bounded shards);
- **after**: ``build.shard_max_tiles`` bounding a shard to a quarter of a
  block, and each worker interleaving ``data.shards_per_worker`` shards.

The sizes keep a real run's ratios at a smaller scale: a Sentinel-2 block of
20 km holds tens of thousands of tiles against a 2,000-tile shuffle buffer
(here 400 against 50).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.harness import BenchContext, Figure, GroupResult, Table, log

GROUP = "block_mix"
TITLE = "Distinct blocks per training batch"
GOAL = 4.0
FIGURES = {"blocks_per_batch": (">=", GOAL)}


def _settings(ctx: BenchContext) -> dict[str, Any]:
    if ctx.quick:
        return {"blocks": 20, "tiles_per_block": 40, "shard_max_tiles": 10, "batch": 8, "workers": 2,
                "shuffle_buffer": 5, "shards_per_worker": 4}
    return {"blocks": 24, "tiles_per_block": 400, "shard_max_tiles": 100, "batch": 32, "workers": 2,
            "shuffle_buffer": 50, "shards_per_worker": 4}


def _write_layout(folder, st: dict[str, Any], max_tiles: int) -> list[str]:
    """The dataset's tile shards with at most ``max_tiles`` tiles each; tile ids name their block."""
    from graft.dataset.layout import shard_names
    from graft.dataset.shards import tile_sample, write_samples
    from graft.geometry import tile_grid_around
    from graft.imagery import encode_geotiff

    grid = tile_grid_around(45.0, 9.0, 8, 10.0)
    tif = encode_geotiff(np.zeros((3, 8, 8), np.uint8), grid)  # never decoded: the order is what is measured
    shards = []
    for b in range(st["blocks"]):
        for index, first in enumerate(range(0, st["tiles_per_block"], max_tiles)):
            rel, _ = shard_names(b, index)
            samples = [tile_sample(f"b{b:03d}-t{t:05d}", tif, {"tile_id": f"b{b:03d}-t{t:05d}", "split": "train",
                                                               "grid": grid.to_json(), "photos": []})
                       for t in range(first, min(first + max_tiles, st["tiles_per_block"]))]
            write_samples(folder / rel, samples)
            shards.append(str(folder / rel))
    return shards


def blocks_per_batch(shards: list[str], st: dict[str, Any], interleave: int, seed: int) -> list[int]:
    """Distinct blocks in each full batch of one epoch, over every loader worker of one rank."""
    from graft.training.data import StreamSpec, TileStream

    spec = StreamSpec(shards=shards, split="train", batch_size=st["batch"], crop_size=8, patch_size=8,
                      mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), seed=seed, shuffle_buffer=st["shuffle_buffer"],
                      interleave=interleave)
    stream = TileStream(spec, epoch=0)
    counts = []
    for w in range(st["workers"]):
        blocks = [item["meta"]["tile_id"].split("-")[0] for item in stream.items(w, st["workers"])]
        for i in range(0, len(blocks) - st["batch"] + 1, st["batch"]):
            counts.append(len(set(blocks[i:i + st["batch"]])))
    return counts


def run(ctx: BenchContext) -> GroupResult:
    """Mean distinct blocks per batch, one shard per block read one at a time vs bounded, interleaved shards."""
    st = _settings(ctx)
    work = ctx.sub(GROUP)
    before_shards = _write_layout(work / "one_shard_per_block", st, st["tiles_per_block"])
    after_shards = _write_layout(work / "bounded", st, st["shard_max_tiles"])
    before = blocks_per_batch(before_shards, st, interleave=1, seed=ctx.seed)
    after = blocks_per_batch(after_shards, st, interleave=st["shards_per_worker"], seed=ctx.seed)
    b_mean, a_mean = float(np.mean(before)), float(np.mean(after))
    log(f"blocks per batch: before {b_mean:.2f}, after {a_mean:.2f} ({len(after)} batches of {st['batch']})")
    fig = Figure("blocks_per_batch", a_mean, GOAL, ">=",
                 f"mean distinct blocks among a batch's {st['batch']} tiles, {st['blocks']} blocks, bounded "
                 f"shards ({st['shard_max_tiles']} tiles) interleaved {st['shards_per_worker']} per worker")
    table = Table("Distinct blocks per batch", ["layout", "shards", "mean", "min", "max"], [
        ["before: one shard per block, read one at a time", len(before_shards), b_mean, min(before), max(before)],
        [f"after: <= {st['shard_max_tiles']} tiles a shard, {st['shards_per_worker']} interleaved per worker",
         len(after_shards), a_mean, min(after), max(after)],
    ])
    notes = [f"{st['blocks']} blocks x {st['tiles_per_block']} tiles, batch {st['batch']}, {st['workers']} loader "
             f"workers, shuffle buffer {st['shuffle_buffer']}, one epoch, 1 rank."]
    detail = {"settings": st, "before": b_mean, "after": a_mean, "batches": len(after)}
    return GroupResult(GROUP, [fig], [table], detail, notes)
