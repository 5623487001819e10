"""Figure group ``loader``: can the data loader feed the training step?

The loader is the real one (:class:`graft.training.data.BatchIterator` with the
config's DataLoader workers): it reads WebDataset tile shards, decodes each
tile's GeoTIFF, stretches it to RGB, random-crops / flips / rotates it while
carrying the photos' positions along, normalises it, and collates batches
with their cached ground embeddings. The dataset is generated in the real
shard format with tiles shaped like the Sentinel-2 recipe's (448 px, 3 bands,
uint16, deflate). The loader's throughput is measured alone, at steady state:
the first batches (worker start, shuffle-buffer fill, the prefetch queue) are
not counted and the rate is the slope of batch arrival times after them.

The step's consumption is :meth:`graft.training.trainer.Trainer.train_step`
on batches already in memory (taken from that same loader), in the same
config, measured alone. The figure is loader tiles/s over step tiles/s: at 2
or more the loader can fall behind by half and still never stall training.
Both are measured alone because on a GPU node they do not compete (the step
runs on the GPU, the loader on the CPU cores); on this CPU-only machine they
would share the same cores.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from tqdm import tqdm

from bench.harness import (
    BENCH_VIT,
    BenchContext,
    Figure,
    GroupResult,
    Samples,
    Table,
    log,
    register_bench_models,
)
from bench.synthetic_dataset import DatasetParams, write_bench_dataset

GROUP = "loader"
TITLE = "Data loader throughput vs training step consumption"
GOAL = 2.0
FIGURES = {"loader_over_step": (">=", GOAL)}

# ViT-B/16 on an H100 SXM at 40 % MFU (bench/README.md): 989e12 * 0.4 / (3 * 17.6e9) tiles/s.
H100_TILES_PER_S = 989e12 * 0.4 / (3 * 17.6e9)


def _settings(ctx: BenchContext) -> dict[str, Any]:
    if ctx.quick:
        return {"model": "graft-tiny-vit", "tile_size": 48, "n_tiles": 48, "n_shards": 2, "batch": 4, "workers": 2,
                "prefetch": 2, "shuffle_buffer": 8, "measure_batches": 4, "step_warmup": 1, "step_repeats": 2}
    # 384 tiles in 8 shards: each of the 2 workers gets 192 tiles = 12 batches of 16 per epoch, so the
    # 6 skipped + 16 measured batches stay inside the first epoch (no worker restart in the window).
    return {"model": BENCH_VIT, "tile_size": 448, "n_tiles": 384, "n_shards": 8, "batch": 16, "workers": 2,
            "prefetch": 2, "shuffle_buffer": 64, "measure_batches": 16, "step_warmup": 1, "step_repeats": 4}


def run(ctx: BenchContext) -> GroupResult:
    """Measure loader tiles/s and train-step tiles/s in one config; the figure is their ratio."""
    from graft.config import validate
    from graft.models.clip_tower import ClipSpec
    from graft.training.config import TrainConfig
    from graft.training.data import BatchIterator
    from graft.training.trainer import Trainer

    register_bench_models()
    st = _settings(ctx)
    spec = ClipSpec(model=st["model"], pretrained=None)
    work = ctx.sub(GROUP)
    dataset = write_bench_dataset(work / "dataset", spec, DatasetParams(
        n_tiles=st["n_tiles"], n_shards=st["n_shards"], tile_size=st["tile_size"], seed=ctx.seed))
    cfg = validate(TrainConfig, {
        "run_dir": str(work / "run"),
        "clip": spec.model_dump(),
        "model": {"kind": "image"},
        "optim": {"lr": 1e-5, "warmup_steps": 0},
        "data": {"dataset": str(dataset), "batch_size": st["batch"], "workers": st["workers"],
                 "prefetch_factor": st["prefetch"], "shuffle_buffer": st["shuffle_buffer"]},
        "train": {"precision": "fp32", "device": "cpu", "seed": ctx.seed},
    }, source="bench loader config")
    trainer = Trainer(cfg)

    # Loader alone. Batches queued before we start consuming (workers * prefetch) and each worker's
    # first batch (start-up, shuffle-buffer fill) would flatter or penalise the rate: skip them.
    skip = st["workers"] * st["prefetch"] + st["workers"]
    n_keep = st["step_warmup"] + st["step_repeats"]
    it = BatchIterator(trainer.stream, cfg.data.workers, cfg.data.prefetch_factor)
    t_start = time.perf_counter()
    stamps: list[float] = []
    kept: list[dict[str, Any]] = []
    for i in tqdm(range(skip + st["measure_batches"]), desc="loader batches", unit="batch"):
        batch = next(it)
        stamps.append(time.perf_counter())
        if i >= skip + st["measure_batches"] - n_keep:
            kept.append(batch)
    del it  # stop the workers before timing the step: they must not compete with it
    first_batch_s = stamps[0] - t_start
    window = stamps[-1] - stamps[skip - 1]
    loader_tps = st["measure_batches"] * st["batch"] / window
    gaps = Samples([stamps[i] - stamps[i - 1] for i in range(skip, len(stamps))])

    # The step alone, on batches already in memory.
    step = Samples([])
    for i, batch in enumerate(tqdm(kept, desc="train steps", unit="step")):
        t0 = time.perf_counter()
        trainer.train_step([batch])
        if i >= st["step_warmup"]:
            step.values.append(time.perf_counter() - t0)
    step_tps = st["batch"] / step.median
    ratio = loader_tps / step_tps
    per_core_tps = loader_tps / st["workers"]
    log(f"loader {loader_tps:.1f} tiles/s with {st['workers']} workers, step {step_tps:.1f} tiles/s -> {ratio:.2f}")

    fig = Figure("loader_over_step", ratio, GOAL, ">=",
                 f"loader tiles/s ({st['workers']} workers: GeoTIFF decode + augment + collate) over "
                 f"Trainer.train_step tiles/s, same config")
    table = Table("Loader and step, each measured alone", ["quantity", "value"], [
        ["loader throughput (tiles/s)", loader_tps],
        ["loader throughput per worker (tiles/s)", per_core_tps],
        ["loader time to first batch (s)", first_batch_s],
        ["batch inter-arrival IQR/median", gaps.rel_spread],
        ["train step (s per batch, median)", step.median],
        ["train step throughput (tiles/s)", step_tps],
        ["train step IQR/median", step.rel_spread],
        ["loader / step", ratio],
        ["loader cores to feed one H100 at ~7,500 tiles/s", H100_TILES_PER_S / per_core_tps],
    ])
    notes = [
        f"Config: `{st['model']}`, image-level, batch {st['batch']}, {st['workers']} workers, prefetch factor "
        f"{st['prefetch']}, shuffle buffer {st['shuffle_buffer']}; tiles {st['tile_size']} px uint16, cropped to the "
        f"encoder's input; {st['measure_batches']} batches timed after {skip} skipped; step median of "
        f"{st['step_repeats']} after {st['step_warmup']} warm-up; torch threads {torch.get_num_threads()}.",
        "The bench ViT costs about 12x fewer FLOPs per tile than ViT-B/16 (1.5 vs 17.6 GFLOP forward), so with the "
        "paper's model on the same CPU the step would be ~12x slower and this ratio ~12x larger.",
        "The last row assumes each worker keeps one core busy (DataLoader workers run one torch thread each).",
    ]
    detail = {"settings": st, "loader_tiles_per_s": loader_tps, "step_tiles_per_s": step_tps,
              "first_batch_s": first_batch_s, "inter_arrival_s": gaps.to_json(), "step_s": step.to_json(),
              "h100_tiles_per_s_assumed": H100_TILES_PER_S}
    return GroupResult(GROUP, [fig], [table], detail, notes)
