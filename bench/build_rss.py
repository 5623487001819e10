"""Figure group ``build_rss``: does the dataset build's memory stay flat when the data grows tenfold?

The build is meant to stream: photos and tiles flow through one partition
(a geographic block) at a time and leave as shards, so its peak memory
should depend on the largest partition, not on the region. This group runs
the real ``graft build`` (the CLI, in a subprocess) on the demo's synthetic
world and on one with 10x the photos over 10x the area (same photo density,
hotspots and towns scaled alike, so partitions look the same and there are
10x as many), with the demo's own build settings (``graft.demo.run``: folder
source, ResNet18 indoor filter fitted on the world's labelled set, GeoTIFF
tiles cut from the world's map, same block size and tile size). The figure is
peak RSS at 10x over peak RSS at 1x; a build that holds everything in memory
would approach 10.

Peak RSS is the kernel's high-water mark for the child process, read with
``os.wait4`` (``ru_maxrss``; it covers the child and any processes it waited
for, as the largest single one, not a sum) by a small launcher,
``bench/peak_rss.py``, so that this process's own memory does not leak into
the child's number. The same is reported for a short
``graft train`` run on each dataset (after ``graft embed``), as a curve: the
training loader streams shards too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bench.harness import BENCH_DIR, BenchContext, Figure, GroupResult, Table, log

GROUP = "build_rss"
TITLE = "Dataset build memory at 1x and 10x the demo's data"
GOAL = 1.25
FIGURES = {"build_rss_10x_over_1x": ("<=", GOAL)}
# The demo trains its CLIP teacher first; memory does not depend on the weights, so the bench embeds
# and trains with the teacher's architecture at random initialisation (no teacher training).
TEACHER = "graft-demo-teacher"
PEAK_RSS = BENCH_DIR / "peak_rss.py"


@dataclasses.dataclass
class Measured:
    """One subprocess run: exit code, peak RSS (MiB) of its largest process, wall seconds, log file."""

    returncode: int
    peak_rss_mib: float
    wall_s: float
    log: Path


def run_measured(cmd: list[str], log_path: Path) -> Measured:
    """Run ``cmd`` to completion, its output to ``log_path``, through ``bench/peak_rss.py``.

    The launcher, not this (possibly large) process, starts ``cmd``: see its docstring for why.

    Raises:
        RuntimeError: the command failed; the message names the log to read.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result = log_path.with_suffix(".rss.json")
    result.unlink(missing_ok=True)
    with open(log_path, "wb") as out:
        code = subprocess.call([sys.executable, str(PEAK_RSS), str(result), "--", *cmd], stdout=out,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if code != 0 or not result.is_file():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"`{' '.join(cmd)}` exited with {code}; see {log_path}. Last output:\n{tail}")
    r = json.loads(result.read_text())
    return Measured(r["returncode"], r["peak_rss_kib"] / 1024.0, r["wall_s"], log_path)


def _graft(*args: str) -> list[str]:
    return [sys.executable, "-m", "graft.cli", *args]


def _settings(ctx: BenchContext) -> dict[str, Any]:
    if ctx.quick:
        return {"scales": (1, 2), "train_steps": 3, "batch": 4}
    return {"scales": (1, 10), "train_steps": 40, "batch": None}  # batch None: the demo's


def _plan(ctx: BenchContext):
    """The demo's plan (world, block size, tile factor...); a tiny world in quick mode."""
    from graft.demo.run import DemoPlan
    from graft.demo.world import WorldConfig

    plan = DemoPlan.full(ctx.seed)
    if ctx.quick:
        world = WorldConfig(seed=ctx.seed, size_px=256, region_px=64, n_photos=60, n_hotspots=1, hotspot_photos=10,
                            n_towns=2, edge_margin_px=16, filter_train_per_class=4)
        plan = dataclasses.replace(plan, world=world, block_km=1.0)
    return plan


def scaled_world(cfg, factor: int):
    """``factor`` x the photos over ``factor`` x the area: density, hotspot size and town mix unchanged."""
    return dataclasses.replace(cfg, size_px=int(round(cfg.size_px * math.sqrt(factor))),
                               n_photos=cfg.n_photos * factor, n_hotspots=cfg.n_hotspots * factor,
                               n_towns=cfg.n_towns * factor)


def _world(root: Path, cfg):
    """Generate the world at ``root``, or reuse the one there if it was made with the same config."""
    from graft.demo.world import generate_world, load_world

    if (root / "world.json").is_file():
        try:
            world = load_world(root)
            if world.config == cfg:
                return world
        except (OSError, ValueError):
            pass
    log(f"build_rss: generating a world of {cfg.n_photos:,} photos on {cfg.size_px} px (kept for later runs)")
    return generate_world(root, cfg)


def _world_bbox(world) -> list[float]:
    import numpy as np

    n = world.grid.size
    lat, lon = world.grid.latlon_of(np.array([0, 0, n, n]), np.array([0, n, 0, n]))
    return [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())]


def _indoor_filter(work: Path, world, plan, seed: int) -> Path:
    """The demo's indoor filter (a ResNet18 fitted on the world's labelled set), fitted once and kept."""
    from graft.training.indoor_filter import train_binary_filter

    path = work / f"indoor_filter-e{plan.filter_epochs}-s{seed}.safetensors"
    if not path.is_file():
        log("build_rss: fitting the demo's indoor filter (kept for later runs)")
        train_binary_filter(world.filter_train_dir, path, epochs=plan.filter_epochs, batch_size=32, image_size=64,
                            lr=1e-3, init=None, seed=seed)
    return path


def build_config(world, out_dir: Path, plan, filter_weights: Path | None, tile_size: int, seed: int) -> dict[str, Any]:
    """The demo's build config (``graft.demo.run.run_demo``) for ``world``; no indoor filter if no weights."""
    filt = ({"kind": "resnet18-binary", "weights": str(filter_weights), "decision": "threshold", "threshold": 0.5,
             "image_size": 64} if filter_weights is not None else {"kind": "none"})
    return {
        "out_dir": str(out_dir),
        "region": {"bbox": _world_bbox(world), "block_km": plan.block_km},
        "ground": {"kind": "folder", "folder": {"root": str(world.photos_dir)}, "max_per_tile": 25,
                   "require_date": True, "short_side": world.config.photo_px},
        "filter": filt,
        "satellite": {"kind": "geotiff", "geotiff": {"paths": [str(world.map_path)], "gsd": world.config.gsd,
                                                     "size": tile_size}},
        "split": {"train": 0.7, "val": 0.1, "test": 0.2, "seed": seed},
        "seed": seed,
    }


def train_config(dataset: Path, run_dir: Path, steps: int, batch: int, seed: int) -> dict[str, Any]:
    """The demo's image-level training config, shortened to ``steps``."""
    return {
        "run_dir": str(run_dir),
        "clip": {"model": TEACHER, "pretrained": None},
        "model": {"kind": "image"},
        "optim": {"lr": 3e-4, "warmup_steps": max(steps // 10, 1), "weight_decay": 0.01},
        "data": {"dataset": str(dataset), "batch_size": batch, "workers": 1, "shuffle_buffer": 64},
        "train": {"max_steps": steps, "ckpt_every": steps, "log_every": max(steps // 4, 1), "precision": "fp32",
                  "seed": seed, "device": "cpu"},
    }


def run(ctx: BenchContext) -> GroupResult:
    """Build, embed and train at each scale in subprocesses; the figure is build peak RSS 10x / 1x."""
    from open_clip import get_model_config

    import graft.models.clip_tower  # noqa: F401 - registers graft's model configs (the teacher's)

    st = _settings(ctx)
    plan = _plan(ctx)
    work = ctx.sub(GROUP)
    input_size = int(get_model_config(TEACHER)["vision_cfg"]["image_size"])
    tile_size = int(round(input_size * plan.tile_factor))
    batch = st["batch"] or plan.batch_size
    worlds = {s: _world(work / f"world-x{s}", scaled_world(plan.world, s)) for s in st["scales"]}
    # Quick mode skips the filter: fitted on a handful of images it rejects nearly every photo.
    filt = None if ctx.quick else _indoor_filter(work, worlds[1], plan, ctx.seed)

    rows, detail = [], {}
    for s, world in worlds.items():
        run_dir = work / f"x{s}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a leftover dataset would be resumed, not built
        run_dir.mkdir(parents=True)
        dataset = run_dir / "dataset"
        cfg_path = run_dir / "build.yaml"
        cfg_path.write_text(yaml.safe_dump(build_config(world, dataset, plan, filt, tile_size, ctx.seed)))
        log(f"build_rss: graft build at {s}x ({len(world.photos):,} photos)")
        b = run_measured(_graft("build", str(cfg_path)), run_dir / "build.log")
        log(f"build_rss: graft embed at {s}x")
        e = run_measured(_graft("embed", str(dataset), "--clip-model", TEACHER, "--clip-pretrained", "none",
                                "--device", "cpu"), run_dir / "embed.log")
        train_path = run_dir / "train.yaml"
        train_path.write_text(yaml.safe_dump(train_config(dataset, run_dir / "train", st["train_steps"], batch,
                                                          ctx.seed)))
        log(f"build_rss: graft train at {s}x ({st['train_steps']} steps)")
        t = run_measured(_graft("train", str(train_path)), run_dir / "train.log")
        kept, tiles = _counts(dataset)
        rows.append([f"{s}x", len(world.photos), kept, tiles, b.peak_rss_mib, b.wall_s, e.peak_rss_mib,
                     t.peak_rss_mib])
        detail[f"x{s}"] = {"world_photos": len(world.photos), "world_size_px": world.config.size_px,
                           "kept_photos": kept, "tiles": tiles,
                           "build": dataclasses.asdict(b) | {"log": str(b.log)},
                           "embed": dataclasses.asdict(e) | {"log": str(e.log)},
                           "train": dataclasses.asdict(t) | {"log": str(t.log)}}
        log(f"build_rss: {s}x build peak {b.peak_rss_mib:.0f} MiB in {b.wall_s:.0f} s; train peak "
            f"{t.peak_rss_mib:.0f} MiB")

    lo, hi = st["scales"]
    ratio = rows[1][4] / rows[0][4]
    train_ratio = rows[1][7] / rows[0][7]
    fig = Figure("build_rss_10x_over_1x", ratio, GOAL, "<=",
                 f"peak RSS of `graft build` on {hi}x the demo's data over that on 1x (ideal 1: the build streams "
                 f"partitions)" if not ctx.quick else f"quick mode: peak RSS at {hi}x over 1x (not 10x)")
    table = Table("Peak RSS by data scale (MiB; largest single process, from os.wait4)",
                  ["scale", "world photos", "kept photos", "tiles", "build peak RSS", "build wall (s)",
                   "embed peak RSS", "train peak RSS"], rows)
    notes = [
        f"Training: `{TEACHER}` (random init) image-level, batch {batch}, 1 loader worker, shuffle buffer 64, "
        f"{st['train_steps']} steps; train peak RSS {hi}x / 1x = {train_ratio:.3f}.",
        "World generation, the indoor filter's fitting and the embedding cache are not part of the build's figure; "
        f"worlds and the filter are generated once into {work} and reused.",
    ]
    detail["train_rss_ratio"] = train_ratio
    detail["settings"] = {**st, "tile_size": tile_size, "block_km": plan.block_km, "batch": batch}
    return GroupResult(GROUP, [fig], [table], detail, notes)



def _counts(dataset: Path) -> tuple[int, int]:
    """Kept photos and tiles of a built dataset, from its manifest (one row per kept photo)."""
    import pyarrow.parquet as pq

    tile_ids = pq.read_table(dataset / "manifest.parquet", columns=["tile_id"]).column("tile_id")
    return len(tile_ids), len(set(tile_ids.to_pylist()))
