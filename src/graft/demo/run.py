"""``graft demo``: the whole GRAFT job on a synthetic world, on CPU, in minutes.

Every stage is the product's own code, called as a user would call it:

1. generate the world (map GeoTIFF, geotagged ground photos with EXIF, captions);
2. train a tiny open_clip teacher on ground photos + captions only (it never sees a tile);
3. fit the ResNet18 indoor filter (``graft filter-train``) and build the dataset with the
   real pipeline: FolderSource -> photo checks -> indoor filter -> greedy cover ->
   GeoTIFF source -> shards + manifest + geographic split;
4. cache the ground embeddings (``graft embed``);
5. train the image-level and pixel-level encoders (they never see text);
6. cut held-out tiles from the test blocks (EuroSAT layout, a segmentation set and an
   RSVQA-format question set) and evaluate zero-shot classification, retrieval,
   segmentation, probes, alignment and VQA, each beside the teacher applied directly
   to the tiles;
7. export the image-level model to an open_clip ``local-dir:`` folder;
8. write ``report.md`` / ``report.json`` with the wall time of every stage.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from graft.config import validate
from graft.storage import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

ZERO_SHOT_TEMPLATES = {"ground": ["a photo of a {}."], "satellite": ["a satellite image of {}."]}


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run. ``full()`` is `make demo`; ``quick()`` runs inside the test suite."""

    world: Any  # graft.demo.world.WorldConfig
    teacher_steps: int
    teacher_batch: int
    filter_epochs: int
    tile_factor: float  # tile side = input size x tile_factor (room for random crops)
    block_km: float
    image_steps: int
    pixel_steps: int
    batch_size: int
    heldout_per_class: int
    seg_tiles: int
    vqa_tiles: int

    @classmethod
    def full(cls, seed: int = 0) -> DemoPlan:
        from graft.demo.world import WorldConfig

        return cls(world=WorldConfig(seed=seed), teacher_steps=500, teacher_batch=128, filter_epochs=3,
                   tile_factor=1.5, block_km=2.5, image_steps=400, pixel_steps=400, batch_size=32,
                   heldout_per_class=60, seg_tiles=120, vqa_tiles=120)

    @classmethod
    def quick(cls, seed: int = 0) -> DemoPlan:
        from graft.demo.world import WorldConfig

        return cls(world=WorldConfig.quick(seed=seed), teacher_steps=140, teacher_batch=96, filter_epochs=3,
                   tile_factor=1.5, block_km=2.0, image_steps=80, pixel_steps=80, batch_size=24,
                   heldout_per_class=20, seg_tiles=30, vqa_tiles=30)


class _Stages:
    """Times each stage and announces it, so the user sees where the minutes go."""

    def __init__(self, total: int):
        self.total, self.n, self.wall_s = total, 0, {}

    @contextmanager
    def __call__(self, name: str, what: str):
        self.n += 1
        print(f"\n[{self.n}/{self.total}] {what}", flush=True)
        t0 = time.time()
        yield
        self.wall_s[name] = round(time.time() - t0, 1)
        print(f"      done in {self.wall_s[name]:.1f} s", flush=True)


def _test_block_mask(world, dataset: Path, block_km: float, region_bbox: list[float]) -> np.ndarray:
    """(H, W) bool map of the world's pixels whose block went to the test split."""
    from graft.dataset.manifest import read_manifest
    from graft.pipeline.region import Region

    manifest = read_manifest(dataset, columns=["partition", "split"]).to_pandas()
    test_blocks = np.array(sorted(set(manifest.loc[manifest["split"] == "test", "partition"])))
    if test_blocks.size == 0:
        raise RuntimeError(f"the demo dataset {dataset} has no test split; increase the world or the test fraction")
    region = Region.from_config(_region_cfg(region_bbox, block_km))
    n = world.grid.size
    rows, cols = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5, indexing="ij")
    lat, lon = world.grid.latlon_of(rows.ravel(), cols.ravel())
    return np.isin(region.block_of(lat, lon), test_blocks).reshape(n, n)


def _region_cfg(bbox: list[float], block_km: float):
    from graft.pipeline.region import RegionConfig

    return RegionConfig(bbox=bbox, block_km=block_km)


def _world_bbox(world) -> list[float]:
    n = world.grid.size
    lat, lon = world.grid.latlon_of(np.array([0, 0, n, n]), np.array([0, n, 0, n]))
    return [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())]


def demo_build_config(out: Path, world, filter_weights: Path, bbox: list[float], tile_size: int, block_km: float,
                      seed: int, geotiff: dict[str, Any] | None = None):
    """The demo's dataset build: the world's photo folder, the fitted indoor filter, tiles cut from its map.

    ``geotiff`` adds keys to the GeoTIFF source's config (the multispectral demo names four bands).
    """
    from graft.pipeline.build import BuildConfig

    return validate(BuildConfig, {
        "out_dir": str(out / "dataset"),
        "region": {"bbox": bbox, "block_km": block_km},
        "ground": {"kind": "folder", "folder": {"root": str(world.photos_dir)}, "max_per_tile": 25,
                   "require_date": True, "short_side": world.config.photo_px},
        "filter": {"kind": "resnet18-binary", "weights": str(filter_weights), "decision": "threshold",
                   "threshold": 0.5, "image_size": 64},
        "satellite": {"kind": "geotiff", "geotiff": {"paths": [str(world.map_path)], "gsd": world.config.gsd,
                                                     "size": tile_size, **(geotiff or {})}},
        "split": {"train": 0.7, "val": 0.1, "test": 0.2, "seed": seed},
        "seed": seed,
    }, source="demo build config")


def demo_train_config(run_dir: Path, teacher, dataset: Path, kind: str, steps: int, lr: float, batch_size: int,
                      seed: int, bands: list[str] | None = None, extra_bands_lr_scale: float = 1.0, **data: Any):
    """The demo's training run of one encoder (``bands``: a multispectral encoder's band list; ``data``
    overrides keys of its data section, e.g. ``positives``)."""
    from graft.training.config import TrainConfig

    return validate(TrainConfig, {
        "run_dir": str(run_dir),
        "clip": teacher.model_dump(),
        "model": {"kind": kind, "bands": bands},
        "optim": {"lr": lr, "warmup_steps": max(steps // 10, 1), "weight_decay": 0.01,
                  "extra_bands_lr_scale": extra_bands_lr_scale},
        "data": {"dataset": str(dataset), "batch_size": batch_size, "workers": 1, "shuffle_buffer": 64, **data},
        "train": {"max_steps": steps, "ckpt_every": steps, "log_every": 25, "precision": "fp32",
                  "seed": seed, "device": "cpu"},
    }, source=f"demo {kind}-level training config")


def demo_teacher(world, out_dir: Path, steps: int, batch_size: int, seed: int):
    """The demo's CLIP teacher, and whether it is new: the one in ``out_dir`` if these settings trained it on
    this world (a re-run demo), else one trained now."""
    from graft.demo.teacher import find_teacher, train_teacher

    args = {"steps": steps, "batch_size": batch_size, "seed": seed}
    found = find_teacher(world, out_dir, **args)
    if found is not None:
        print(f"      reusing the teacher in {out_dir} (trained with these settings on this world)")
        return found, False
    return train_teacher(world, out_dir, **args), True


def build_demo_dataset(cfg):
    """Build the demo's dataset, and say whether it is new: a dataset left by an earlier run with other build
    settings (another filter, tile size, world) is deleted and built again (it is the demo's own output), where
    ``graft build`` would refuse to mix the two. Returns the build's result and True unless every partition was
    already built with these settings."""
    import shutil

    from graft.dataset.layout import part_dirs
    from graft.dataset.manifest import read_part_stats
    from graft.pipeline.build import build_dataset

    out, fp = Path(cfg.out_dir), cfg.fingerprint()
    stats = [read_part_stats(d) for _, d in part_dirs(out)] if out.is_dir() else []
    if any(st is not None and st.get("config_fingerprint") != fp for st in stats):
        print(f"      the build settings changed since {out} was built: building it again")
        shutil.rmtree(out)
    complete_before = (out / "manifest.parquet").is_file()
    return build_dataset(cfg), not complete_before


def train_demo_encoder(cfg, fresh: bool = False):
    """Train one demo encoder: resume the run in its folder if it was started with this very config and
    teacher (an interrupted demo), else start again (``fresh``: a new teacher; or the demo's code or plan
    changed since: continuing would mix two runs). Exits like the trainer if SIGTERM/SIGUSR1 stopped it,
    rather than evaluate a half-trained model."""
    from graft.config import dump_config
    from graft.training.run_dir import config_changes, holds_run
    from graft.training.trainer import train

    saved = Path(cfg.run_dir) / "config.yaml"
    stale = holds_run(cfg.run_dir) and (
        fresh or not saved.is_file() or bool(config_changes(saved.read_text(), dump_config(cfg))))
    summary = train(cfg, resume=None if stale else "latest", overwrite=stale)
    if summary.stopped_by:
        print(f"\ninterrupted; re-run the same command to resume (checkpoint: {summary.checkpoint})")
        raise SystemExit(128 + summary.stopped_by)
    return summary


def write_heldout_sets(world, out: Path, size: int, allowed: np.ndarray, per_class: int, seg_tiles: int,
                       seed: int, min_purity: float = 0.9) -> tuple[Path, Path]:
    """Held-out tiles from the test blocks: an EuroSAT-layout ImageFolder and an image/mask segmentation set.

    A classification tile's label is the class covering at least ``min_purity`` of it.
    """
    from graft.demo.world import cut_tile, sample_single_class_tiles

    cls_root, seg_root = out / "heldout", out / "heldout_seg"
    classes = list(world.classes)
    # EuroSAT layout: one folder per class; classnames.txt lists prompt names in sorted-folder order.
    folders = sorted(classes)
    samples = sample_single_class_tiles(world, size, per_class, seed=seed, min_purity=min_purity, allowed=allowed)
    for i, s in enumerate(samples):
        rgb, _ = cut_tile(world, s.row, s.col, size)
        d = cls_root / classes[s.class_index]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(d / f"tile_{i:05d}.png")
    atomic_write_text(cls_root / "classnames.txt", "\n".join(folders) + "\n")
    atomic_write_text(cls_root / "templates.txt", "\n".join(ZERO_SHOT_TEMPLATES["ground"]) + "\n")

    # Segmentation: windows in the test blocks that hold several classes (>= 15% each for two of them).
    rng = np.random.default_rng(seed + 1)
    labels = world.labels
    half = size // 2
    cand_r, cand_c = np.nonzero(allowed[half:-half:4, half:-half:4])
    cand_r, cand_c = cand_r * 4 + half, cand_c * 4 + half
    order = rng.permutation(cand_r.size)
    (seg_root / "images").mkdir(parents=True, exist_ok=True)
    (seg_root / "masks").mkdir(parents=True, exist_ok=True)
    kept, taken = 0, []
    for j in order:
        r, c = int(cand_r[j]), int(cand_c[j])
        if any(abs(r - a) < half and abs(c - b) < half for a, b in taken):
            continue  # at most quarter overlap between picked windows
        window = labels[r - half:r - half + size, c - half:c - half + size]
        share = np.sort(np.bincount(window.ravel(), minlength=len(classes)))[::-1] / window.size
        if share[1] < 0.15:
            continue
        rgb, mask = cut_tile(world, r, c, size)
        Image.fromarray(rgb).save(seg_root / "images" / f"seg_{kept:05d}.png")
        Image.fromarray(mask).save(seg_root / "masks" / f"seg_{kept:05d}.png")
        taken.append((r, c))
        kept += 1
        if kept >= seg_tiles:
            break
    atomic_write_text(seg_root / "classes.txt", "\n".join(classes) + "\n")
    return cls_root, seg_root


def run_demo(out: str | Path = "runs/demo", quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run the whole demo; returns the report dict (also written to ``out/report.json``)."""
    import torch

    from graft.demo.vqa_set import write_heldout_vqa
    from graft.demo.world import generate_world
    from graft.evaluation import report as rep
    from graft.evaluation.export import export_checkpoint
    from graft.evaluation.run import EvalConfig, evaluate
    from graft.models.clip_tower import load_clip
    from graft.pipeline.embed import embed_dataset
    from graft.training.indoor_filter import train_binary_filter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = DemoPlan.quick(seed) if quick else DemoPlan.full(seed)
    # Same numbers on every run: fixed seeds, and a fixed thread count (CPU kernels may
    # reduce in a different order with a different number of threads).
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    stage = _Stages(8)

    with stage("world", "generating the synthetic world (map, ground photos with EXIF, captions)"):
        world = generate_world(out / "world", replace(plan.world, seed=seed))

    with stage("teacher", "training the tiny CLIP teacher on ground photos + captions only"):
        teacher, new_teacher = demo_teacher(world, out / "teacher", plan.teacher_steps, plan.teacher_batch, seed)
        input_size = load_clip(teacher).image_size
    tile_size = int(round(input_size * plan.tile_factor))

    with stage("dataset", "building the dataset with the real pipeline (indoor filter, cover, tiles, shards)"):
        filt = out / "indoor_filter.safetensors"
        train_binary_filter(world.filter_train_dir, filt, epochs=plan.filter_epochs, batch_size=32,
                            image_size=64, lr=1e-3, init=None, seed=seed)
        bbox = _world_bbox(world)
        build_cfg = demo_build_config(out, world, filt, bbox, tile_size, plan.block_km, seed)
        build, new_data = build_demo_dataset(build_cfg)

    with stage("embed", "caching teacher embeddings of every kept ground photo"):
        embed_dataset(out / "dataset", teacher, batch_size=256, workers=2, device="cpu", force=new_teacher)

    runs = {}
    with stage("train", "training the image- and pixel-level satellite encoders (no text involved)"):
        for kind, steps, lr in (("image", plan.image_steps, 3e-4), ("pixel", plan.pixel_steps, 3e-4)):
            cfg = demo_train_config(out / f"train-{kind}", teacher, out / "dataset", kind, steps, lr,
                                    plan.batch_size, seed)
            runs[kind] = train_demo_encoder(cfg, fresh=new_teacher or new_data)

    with stage("eval", "evaluating on held-out geographic blocks, beside the teacher applied directly"):
        allowed = _test_block_mask(world, out / "dataset", plan.block_km, bbox)
        cls_root, seg_root = write_heldout_sets(world, out, input_size, allowed, plan.heldout_per_class,
                                                plan.seg_tiles, seed)
        vqa_root = write_heldout_vqa(world, out, input_size, allowed, plan.vqa_tiles, seed)
        eval_cfg = validate(EvalConfig, {
            "models": [{"name": "graft-image", "checkpoint": str(out / "train-image")},
                       {"name": "graft-pixel", "checkpoint": str(out / "train-pixel")}],
            "baseline": teacher.model_dump(),
            "benchmarks": [
                {"name": "heldout", "type": "imagefolder", "root": str(cls_root),
                 "tasks": ["zeroshot", "retrieval", "knn", "linear_probe"], "templates": ZERO_SHOT_TEMPLATES},
                {"name": "heldout-seg", "type": "segmentation", "root": str(seg_root)},
                {"name": "test-pairs", "type": "graft_pairs", "root": str(out / "dataset"), "pairs_split": "test"},
                {"name": "heldout-vqa", "type": "rsvqa", "root": str(vqa_root), "gsd": world.config.gsd},
            ],
            # The questions' own concepts are every land-cover class of the world: nothing else to compete with.
            "vqa": {"background": []},
            "out_dir": str(out / "eval"),
            "device": "cpu",
            "workers": 0,
            "seed": seed,
        }, source="demo eval config")
        result = evaluate(eval_cfg)

    with stage("export", "exporting the image-level model as an open_clip local-dir: folder"):
        export_checkpoint(out / "train-image", out / "export")

    with stage("report", "writing the report"):
        report = rep.Report(rows=[rep.Row(**r) for r in result["rows"]], models=result.get("models", {}))
        doc = {"rows": result["rows"], "wall_s": dict(stage.wall_s), "quick": quick, "seed": seed,
               "dataset": _build_summary(build.stats),
               "train": {k: v.__dict__ for k, v in runs.items()}}
        doc["wall_s"]["report"] = 0.0
        doc["wall_s"]["total"] = round(sum(v for k, v in doc["wall_s"].items() if k != "total"), 1)
        atomic_write_json(out / "report.json", doc)
        atomic_write_text(out / "report.md", render_report(doc, report, out))
    print("\n" + headline_table(doc))
    print(f"\nreport: {out / 'report.md'}  (json: {out / 'report.json'}, plots: {out / 'eval'})")
    return doc


def _build_summary(stats: dict) -> dict[str, Any]:
    """What the demo's dataset build kept and dropped (the full record is the dataset's stats.json)."""
    return {"stats_json": str(Path(stats["dataset"]) / "stats.json"), "photos": stats["photos"],
            "tiles": stats["tiles"], "splits": stats["splits"], "rejections": stats["rejections"]["counts"],
            "tile_rejections": stats["tile_rejections"]}


def _value(rows: list[dict], task: str, dataset: str, model: str, metric: str) -> float | None:
    for r in rows:
        if (r["task"], r["dataset"], r["model"], r["metric"]) == (task, dataset, model, metric):
            return float(r["value"])
    return None


HEADLINE = [
    ("zero-shot top-1 (held-out tiles, 'a photo of a {}.')", "zeroshot_classification", "heldout[ground]", "top1",
     "graft-image"),
    ("zero-shot top-1 ('a satellite image of {}.')", "zeroshot_classification", "heldout[satellite]", "top1",
     "graft-image"),
    ("text->image retrieval mAP", "retrieval", "heldout[ground]", "map", "graft-image"),
    ("zero-shot segmentation mIoU", "segmentation", "heldout-seg[ground]", "miou", "graft-pixel"),
    ("kNN (k=20) accuracy", "knn", "heldout", "top1", "graft-image"),
    ("linear probe accuracy", "linear_probe", "heldout", "top1", "graft-image"),
    ("alignment (mutual kNN, test pairs)", "alignment", "test-pairs", "mutual_knn@10", "graft-image"),
    ("VQA overall accuracy (RSVQA-format, held-out tiles)", "vqa", "heldout-vqa", "overall_accuracy", "graft-pixel"),
    ("VQA presence accuracy", "vqa", "heldout-vqa", "accuracy[presence]", "graft-pixel"),
]


def headline_table(doc: dict) -> str:
    rows = doc["rows"]
    lines = [f"{'metric':<58} {'GRAFT':>8} {'teacher on tiles':>17}", "-" * 85]
    for label, task, dataset, metric, model in HEADLINE:
        g, b = _value(rows, task, dataset, model, metric), _value(rows, task, dataset, "baseline", metric)
        if g is None:
            continue
        lines.append(f"{label:<58} {g:>8.3f} {('' if b is None else f'{b:.3f}'):>17}")
    lines.append(f"{'wall time (s)':<58} {doc['wall_s']['total']:>8.0f}")
    return "\n".join(lines)


def render_report(doc: dict, report, out: Path) -> str:
    wall = "\n".join(f"| {k} | {v:.1f} |" for k, v in doc["wall_s"].items())
    plots = sorted(p.relative_to(out).as_posix() for p in (out / "eval").rglob("*.png"))
    return (
        "# graft demo report\n\n"
        "A satellite encoder that never saw text, aligned to a CLIP teacher through ground photos, "
        "against the teacher applied directly to the same held-out tiles (the paper's baseline).\n\n"
        f"Produced by `graft demo{' --quick' if doc['quick'] else ''} --seed {doc['seed']}` "
        "(`make demo`). Numbers are measured by that run; nothing here is edited by hand.\n\n"
        "## Headline\n\n```\n" + headline_table(doc) + "\n```\n\n"
        "## All results\n\n" + report.to_markdown() + "\n\n"
        "## Wall time per stage (s)\n\n| stage | seconds |\n|---|---|\n" + wall + "\n\n"
        "## Plots\n\n" + "\n".join(f"- [{p}]({p})" for p in plots) + "\n"
    )
