"""Figure group ``cache_speedup``: what caching the frozen ground embeddings saves per training step.

GRAFT's ground photos go through a frozen CLIP tower. Computed live, every
training step pays one frozen forward per photo on top of the encoder's
forward + backward per tile. ``graft embed`` computes them once instead, so
the step only reads them. If a frozen forward on a photo costs a third of a
tile's train step (forward + backward ~ 3 forwards, same architecture and
resolution), a tile with N photos costs ``(3 + N) / 3`` tile-steps live and 1
cached: that is the *ideal* speed-up. The figure is the measured speed-up as
a fraction of it.

Both steps are the real :meth:`graft.training.trainer.Trainer.train_step`
(``graft_loss``, AdamW, gradient checks), one Trainer with ``live_ground`` and
one without, built from the same config and seed (same weights), fed the same
tiles. Live batches carry preprocessed photo tensors (what the loader hands
the trainer), cached batches their embeddings. The photo count per tile varies
(each tile at least one) with mean exactly N. Steps alternate live / cached so
that a change in machine load hits both alike; each time is a median.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
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
    measure_steady,
    register_bench_models,
)
from bench.synthetic_dataset import DatasetParams, write_bench_dataset

GROUP = "cache_speedup"
TITLE = "Cached vs live ground embeddings: training step speed-up"
PHOTOS_PER_TILE = (1, 5, 10, 25)
GOAL = 0.8
FIGURES = {f"cache_speedup_frac_of_ideal_n{n}": (">=", GOAL) for n in PHOTOS_PER_TILE if n >= 5}


def _settings(ctx: BenchContext) -> dict[str, Any]:
    if ctx.quick:
        return {"model": "graft-tiny-vit", "batch": 2, "warmup": 1, "repeats": 2}
    # 8 tiles: the live step at N=25 embeds 200 photos (~5 s on one core); 5 paired repeats keep the
    # group near a minute on 2 cores while giving a median with a usable spread.
    return {"model": BENCH_VIT, "batch": 8, "warmup": 1, "repeats": 5}


def _batches(rng: np.random.Generator, batch: int, n_mean: int, size: int, dim: int) -> tuple[dict, dict]:
    """A cached and a live batch over the same tiles: ``batch * n_mean`` photos, each tile at least one."""
    counts = 1 + rng.multinomial(batch * (n_mean - 1), [1.0 / batch] * batch)
    owner = torch.repeat_interleave(torch.arange(batch), torch.from_numpy(counts))
    m = int(counts.sum())
    images = torch.from_numpy(rng.standard_normal((batch, 3, size, size), dtype=np.float32))
    ground = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((m, dim), dtype=np.float32)), dim=-1)
    photos = torch.from_numpy(rng.standard_normal((m, 3, size, size), dtype=np.float32))
    common = {"images": images, "owner": owner, "patch_index": torch.zeros(m, dtype=torch.long),
              "tile_ids": [f"t{i}" for i in range(batch)]}
    return {**common, "ground": ground}, {**common, "photos": photos}


def run(ctx: BenchContext) -> GroupResult:
    """Measure the step-time ratio live / cached at each N in :data:`PHOTOS_PER_TILE`."""
    from open_clip import get_model_config

    from graft.config import validate
    from graft.models.clip_tower import ClipSpec
    from graft.training.config import TrainConfig
    from graft.training.trainer import Trainer

    register_bench_models()
    st = _settings(ctx)
    spec = ClipSpec(model=st["model"], pretrained=None)
    # The trainer needs a dataset folder with a matching embedding cache to start; the steps timed
    # here never read it (they get in-memory batches), so a few tiles suffice.
    work = ctx.sub(GROUP)
    size = int(get_model_config(st["model"])["vision_cfg"]["image_size"])
    dataset = write_bench_dataset(work / "dataset", spec,
                                  DatasetParams(n_tiles=4, n_shards=1, tile_size=size, seed=ctx.seed))
    cfg = validate(TrainConfig, {
        "run_dir": str(work / "run"),
        "clip": spec.model_dump(),
        "model": {"kind": "image"},
        "optim": {"lr": 1e-5, "warmup_steps": 0},
        "data": {"dataset": str(dataset), "batch_size": st["batch"], "workers": 0},
        "train": {"precision": "fp32", "device": "cpu", "seed": ctx.seed},
    }, source="bench cache_speedup config")
    cached = Trainer(cfg, live_ground=False)
    live = Trainer(cfg, live_ground=True)
    dim = cached.bundle.embed_dim
    rng = np.random.default_rng(ctx.seed)

    rows, curve, figures = [], {}, []
    total = len(PHOTOS_PER_TILE) * (st["warmup"] + st["repeats"])
    with tqdm(total=total, desc="cache_speedup steps", unit="pair") as bar:
        for n in PHOTOS_PER_TILE:
            cb, lb = _batches(rng, st["batch"], n, size, dim)

            def one_round(cb=cb, lb=lb) -> tuple[Samples, Samples, Samples]:
                t_cached, t_live, paired = [], [], []
                for rep in range(st["warmup"] + st["repeats"]):
                    t0 = time.perf_counter()
                    cached.train_step([cb])
                    t1 = time.perf_counter()
                    live.train_step([lb])
                    t2 = time.perf_counter()
                    bar.update(1)
                    if rep >= st["warmup"]:
                        t_cached.append(t1 - t0)
                        t_live.append(t2 - t1)
                        paired.append((t2 - t1) / (t1 - t0))
                return Samples(t_cached), Samples(t_live), Samples(paired)

            steady = measure_steady(one_round, lambda r: r[2].rel_spread)
            if len(steady.spreads) > 1:
                bar.total += (len(steady.spreads) - 1) * (st["warmup"] + st["repeats"])
            sc, sl, sp = steady.result
            speedup = sl.median / sc.median
            ideal = (3 + n) / 3
            frac = speedup / ideal
            # What a frozen forward on one photo cost relative to one tile's train step (the ideal assumes 1/3).
            implied = (sl.median - sc.median) / (n * sc.median)
            rows.append([n, st["batch"] * n, sc.median, sl.median, speedup, ideal, frac, implied, sp.rel_spread,
                         len(steady.spreads)])
            curve[str(n)] = {"cached_step_s": sc.to_json(), "live_step_s": sl.to_json(),
                             "paired_ratio": sp.to_json(), "speedup": speedup, "ideal": ideal,
                             "frac_of_ideal": frac, "frozen_forward_over_tile_step": implied,
                             "round_spreads": steady.spreads, "noisy": steady.noisy}
            log(f"cache_speedup N={n}: cached {sc.median:.3f} s, live {sl.median:.3f} s, speed-up {speedup:.2f} "
                f"(ideal {ideal:.2f}, {frac:.2f} of it)")
            if n >= 5:
                figures.append(Figure(
                    f"cache_speedup_frac_of_ideal_n{n}", frac, GOAL, ">=",
                    f"step-time speed-up of cached over live ground embeddings at N={n} photos/tile, "
                    f"as a fraction of the ideal (3+N)/3 = {ideal:.2f}", spread=sp.rel_spread, noisy=steady.noisy))
    table = Table(
        "Training step time, cached vs live ground embeddings (median of paired steps)",
        ["N photos/tile (mean)", "photos/batch", "cached step (s)", "live step (s)", "speed-up", "ideal (3+N)/3",
         "fraction of ideal", "frozen fwd / tile step", "paired-ratio IQR/median", "rounds"],
        rows)
    notes = [
        f"Model: `{st['model']}` (trainable encoder and frozen tower share it), image-level loss, batch "
        f"{st['batch']} tiles, fp32 on CPU, {st['repeats']} timed pairs after {st['warmup']} warm-up pair(s), "
        f"torch threads: {torch.get_num_threads()}.",
        "The last column but one is what one frozen forward on a photo cost relative to one tile's train step "
        "in this run; the ideal assumes 1/3. Above 1/3 the fraction of ideal exceeds 1, below it falls short.",
    ]
    if any(not math.isfinite(r[6]) for r in rows):
        notes.append("Some speed-ups could not be computed (a zero or failed timing).")
    return GroupResult(GROUP, figures, [table], {"settings": st, "curve": curve}, notes)
