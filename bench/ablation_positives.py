"""Figure group ``ablation_positives``: image-level positives from the crop or from the whole tile.

GRAFT aligns a satellite image with the photos taken inside it. Tiles are
stored larger than the encoder's input so that training can draw random
crops; ``data.positives: crop`` (the default) keeps as positives only the
photos inside the crop (and draws crops that hold one), ``positives: tile``
keeps every photo of the tile wherever the crop fell. On the demo world,
whose land-cover regions are larger than a tile, the two hardly differ: a
photo outside the crop usually shows the same class. This group builds a
fine-grained variant of the quick demo world (land-cover regions of about 48
px, the size of a tile: 48-px tiles cropped to the teacher's 32 px, so a
tile's majority class covers about 65 % of it instead of about 90 %), runs
the demo's own pipeline on it once (teacher, indoor filter,
build, embeddings), trains the image-level encoder twice with the same steps
and seed, once with each setting, and reports each model's zero-shot top-1
on held-out tiles from the test blocks (labelled by a class covering at least
70 % of the tile; prompts "a photo of a {}.").

These figures are accuracies, not ratios: deterministic for a seed, and
compared with each other. The goal given is chance (1 / classes), only so
that a run that learnt nothing shows as missed; which setting is higher is
the finding, whichever way it goes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bench.harness import BenchContext, Figure, GroupResult, Table, log

GROUP = "ablation_positives"
TITLE = "Ablation: image-level positives from the crop vs the whole tile (fine-grained world)"
N_CLASSES = 6  # graft.demo.world.CLASSES; checked at run time
CHANCE = round(1.0 / N_CLASSES, 4)
FIGURES = {"ablation_positives_crop": (">=", CHANCE), "ablation_positives_tile": (">=", CHANCE)}
REGION_PX = 48
HELDOUT_PURITY = 0.7


def _settings(ctx: BenchContext) -> dict[str, Any]:
    from graft.demo.run import DemoPlan

    plan = DemoPlan.quick(ctx.seed)
    if ctx.quick:
        # Smoke sizes: every stage runs, nothing is learnt.
        return {"world": {"size_px": 512, "n_photos": 240, "n_hotspots": 1, "hotspot_photos": 20, "n_towns": 2,
                          "filter_train_per_class": 12},
                "teacher_steps": 3, "teacher_batch": 32, "filter_epochs": 1, "image_steps": 3, "batch_size": 8,
                "heldout_per_class": 3, "tile_factor": plan.tile_factor, "block_km": 1.0}
    # The quick demo's scale: its world size and photo count, its teacher, steps and batch.
    return {"world": {}, "teacher_steps": plan.teacher_steps, "teacher_batch": plan.teacher_batch,
            "filter_epochs": plan.filter_epochs, "image_steps": plan.image_steps, "batch_size": plan.batch_size,
            "heldout_per_class": plan.heldout_per_class, "tile_factor": plan.tile_factor, "block_km": plan.block_km}


def run(ctx: BenchContext) -> GroupResult:
    """Build the fine-grained world's dataset once, train with each setting, evaluate zero-shot on held-out tiles."""
    import numpy as np
    import torch

    from graft.demo.run import (
        ZERO_SHOT_TEMPLATES,
        _test_block_mask,
        _world_bbox,
        build_demo_dataset,
        demo_build_config,
        demo_teacher,
        demo_train_config,
        train_demo_encoder,
        write_heldout_sets,
    )
    from graft.demo.world import CLASSES, WorldConfig, generate_world
    from graft.evaluation.run import evaluate
    from graft.models.clip_tower import load_clip
    from graft.pipeline.embed import embed_dataset
    from graft.training.indoor_filter import train_binary_filter

    if len(CLASSES) != N_CLASSES:
        raise RuntimeError(f"the demo world has {len(CLASSES)} classes; update N_CLASSES in {__name__}")
    st = _settings(ctx)
    seed = ctx.seed
    work = ctx.sub(GROUP)
    torch.manual_seed(seed)
    world_cfg = replace(WorldConfig.quick(seed), region_px=REGION_PX, **st["world"])
    log(f"{GROUP}: world ({world_cfg.size_px} px, land-cover regions ~{REGION_PX} px)")
    world = generate_world(work / "world", world_cfg)
    log(f"{GROUP}: teacher ({st['teacher_steps']} steps)")
    teacher, new_teacher = demo_teacher(world, work / "teacher", st["teacher_steps"], st["teacher_batch"], seed)
    input_size = load_clip(teacher).image_size
    tile_size = int(round(input_size * st["tile_factor"]))
    filt = work / "indoor_filter.safetensors"
    train_binary_filter(world.filter_train_dir, filt, epochs=st["filter_epochs"], batch_size=32, image_size=64,
                        lr=1e-3, init=None, seed=seed)
    log(f"{GROUP}: build + embed ({tile_size}-px tiles)")
    dataset = work / "dataset"
    _, new_data = build_demo_dataset(demo_build_config(work, world, filt, _world_bbox(world), tile_size,
                                                       st["block_km"], seed))
    embed_dataset(dataset, teacher, batch_size=256, workers=0, device="cpu", force=new_teacher)

    runs = {}
    for positives in ("crop", "tile"):
        log(f"{GROUP}: image-level training, positives: {positives} ({st['image_steps']} steps)")
        cfg = demo_train_config(work / f"train-{positives}", teacher, dataset, "image", st["image_steps"], 3e-4,
                                st["batch_size"], seed, positives=positives)
        runs[positives] = train_demo_encoder(cfg, fresh=new_teacher or new_data)

    # How fine-grained the world is at this tile size: the mean share of a tile covered by its majority class.
    labels, half = world.labels, tile_size // 2
    windows = [labels[r:r + tile_size, c:c + tile_size] for r in range(0, labels.shape[0] - tile_size, half)
               for c in range(0, labels.shape[1] - tile_size, half)]
    majority = float(np.mean([np.bincount(w.ravel()).max() / w.size for w in windows]))
    allowed = _test_block_mask(world, dataset, st["block_km"], _world_bbox(world))
    cls_root, _ = write_heldout_sets(world, work / "heldout-sets", input_size, allowed, st["heldout_per_class"],
                                     seg_tiles=0, seed=seed, min_purity=HELDOUT_PURITY)
    result = evaluate({
        "models": [{"name": f"positives-{p}", "checkpoint": str(work / f"train-{p}")} for p in runs],
        "baseline": teacher.model_dump(),
        "benchmarks": [{"name": "heldout", "type": "imagefolder", "root": str(cls_root), "tasks": ["zeroshot"],
                        "templates": {"ground": ZERO_SHOT_TEMPLATES["ground"]}}],
        "out_dir": str(work / "eval"), "device": "cpu", "workers": 0, "seed": seed, "plots": False,
    })
    top1 = {r["model"]: r["value"] for r in result["rows"]
            if (r["task"], r["dataset"], r["metric"]) == ("zeroshot_classification", "heldout[ground]", "top1")}
    n_heldout = sum(1 for p in cls_root.rglob("*.png"))
    figures = [Figure(f"ablation_positives_{p}", float(top1[f"positives-{p}"]), CHANCE, ">=",
                      f"image-level zero-shot top-1 on held-out tiles of a fine-grained world, positives: {p} "
                      f"(same steps and seed as the other setting; goal = chance)") for p in runs]
    table = Table("Zero-shot top-1 on held-out tiles, fine-grained world",
                  ["model", "positives", "top-1", "final train loss", "train s"],
                  [[f"positives-{p}", p, top1[f"positives-{p}"], runs[p].final_loss, runs[p].seconds] for p in runs]
                  + [["teacher on tiles", "-", top1.get("baseline"), None, None]])
    notes = [f"World: quick demo world with region_px={REGION_PX} (size {world_cfg.size_px} px); tiles "
             f"{tile_size} px (majority class covers {majority:.0%} of a tile on average), crops {input_size} px; "
             f"{st['image_steps']} steps at batch {st['batch_size']}, seed "
             f"{seed}; {n_heldout} held-out tiles (>= {HELDOUT_PURITY:.0%} one class) from the test blocks.",
             "The two runs differ only in data.positives; a difference of one or two held-out tiles is within what "
             "another seed would move."]
    return GroupResult(GROUP, figures, [table], {"settings": st, "top1": top1, "tile_majority_share": majority},
                       notes)
