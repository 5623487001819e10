"""Evaluation tasks: zero-shot, retrieval (exact vs approximate faiss), segmentation, probes, the full
``evaluate`` run with report and plots, and the CLI entry point."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers_data import make_checkpoint, tiny_clip_spec
from PIL import Image
from torch import nn

from graft.config import ConfigError
from graft.dataset.embeddings import with_embeddings
from graft.dataset.layout import shard_names
from graft.dataset.shards import tile_sample, write_samples
from graft.evaluation import datasets as ds
from graft.evaluation import probes, retrieval
from graft.evaluation.models import class_embeddings
from graft.evaluation.report import Report, plot_confusion_matrix
from graft.evaluation.run import EvalConfig, evaluate, run_eval_command
from graft.evaluation.segmentation import evaluate_segmentation, patch_scores, scores_to_mask
from graft.evaluation.zeroshot import zeroshot_from_features
from graft.geometry import tile_grid_around
from graft.imagery import encode_geotiff
from graft.models.clip_tower import load_clip


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine spinning OpenMP workers make
    them orders of magnitude slower; restore the previous settings for whoever runs next."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)

# --------------------------------------------------------------------------- fixtures (generated, tiny)

COLORS = {"AnnualCrop": (200, 180, 40), "Forest": (20, 120, 30), "SeaLake": (20, 40, 200)}


def make_eurosat(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for cls, color in COLORS.items():
        (root / "EuroSAT_RGB" / cls).mkdir(parents=True)
        for n in range(per_class):
            arr = np.clip(np.array(color) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / "EuroSAT_RGB" / cls / f"{cls}_{n + 1}.jpg")
    (root / "EuroSAT_RGB" / "Forest" / "Forest_99.jpg").write_bytes(b"truncated")
    return root


def make_multilabel(root: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(1)
    (root / "img").mkdir(parents=True)
    lines = ["path,labels"]
    names = ["Coniferous forest", "Pastures", "Sea and ocean"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / "img" / f"p{i}.png")
        labels = [names[i % 3]] + ([names[(i + 1) % 3]] if i % 2 else [])
        lines.append(f"img/p{i}.png,{';'.join(labels)}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def make_segmentation(root: Path, n: int = 3) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("water\nforest\n")
    rng = np.random.default_rng(2)
    for i in range(n):
        mask = np.zeros((36, 36), np.uint8)
        mask[:, 18:] = 1
        mask[:2, :2] = 255
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"s{i}.png")
    return root


def make_pairs(root: Path, n: int = 12, dim: int = 64) -> Path:
    rng = np.random.default_rng(3)
    samples = []
    for i in range(n):
        key = f"t{i:03d}"
        grid = tile_grid_around(40.0 + 0.01 * i, -3.7, size=32, gsd=1.0)
        tif = encode_geotiff(rng.integers(0, 255, (3, 32, 32), dtype=np.uint8), grid)
        photos = [{"photo_id": f"{key}-{j}", "row": 10.5 + j, "col": 20.5} for j in range(2)]
        sample = tile_sample(key, tif, {"tile_id": key, "split": "test", "grid": grid.to_json(), "photos": photos})
        samples.append(with_embeddings(sample, rng.normal(size=(2, dim)).astype(np.float16),
                                       {"model": "graft-tiny-vit", "pretrained": None, "embed_dim": dim}))
    write_samples(root / shard_names(0)[0], samples)
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tasks")
    spec = tiny_clip_spec(tmp)
    return {"tmp": tmp, "spec": spec, "pixel": make_checkpoint(tmp, spec, "pixel", 1),
            "image": make_checkpoint(tmp, spec, "image", 2), "eurosat": make_eurosat(tmp / "eurosat"),
            "ml": make_multilabel(tmp / "ml"), "seg": make_segmentation(tmp / "seg"), "pairs": make_pairs(tmp / "pairs")}


# --------------------------------------------------------------------------- zero-shot


def test_class_embeddings_average_normalised_template_embeddings(world):
    bundle = load_clip(world["spec"])
    templates = ["a photo of a {}.", "a satellite image of {}."]
    w = class_embeddings(bundle.model, bundle.tokenizer, ["forest", "river"], templates)
    with torch.no_grad():
        e = F.normalize(bundle.model.encode_text(bundle.tokenizer(["a photo of a river.", "a satellite image of river."])),
                        dim=-1)
    torch.testing.assert_close(w[1], F.normalize(e.mean(0), dim=0))
    assert w.shape == (2, 64)


def test_zeroshot_from_features_scores_by_cosine():
    weights = np.eye(3, 4, dtype=np.float32)
    feats = np.array([[1, 0.1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0.9, 1, 0]], dtype=np.float32)
    res = zeroshot_from_features(feats, weights, np.array([0, 2, 1, 1]))
    assert res.metrics["top1"] == pytest.approx(0.75)
    assert res.metrics["top5"] == pytest.approx(1.0)
    assert res.metrics["mean_per_class"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert res.confusion.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    ml = zeroshot_from_features(feats, weights, np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]), multilabel=True)
    assert ml.metrics["map"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- retrieval


def _clustered(n_per: int = 60, classes: int = 5, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), n_per)
    x = centres[labels] + 0.6 * rng.normal(size=(len(labels), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    return x.astype(np.float32), q.astype(np.float32), labels[:, None] == np.arange(classes)[None, :]


def test_exact_and_approximate_indexes_agree():
    x, q, rel = _clustered()
    flat = retrieval.text_to_image_retrieval(x, q, rel, index="flat")
    # exact ranking computed directly
    order = np.argsort(-(q @ x.T), axis=1, kind="stable")
    np.testing.assert_array_equal(flat.ids[:, :20], order[:, :20])
    ivf_all = retrieval.text_to_image_retrieval(x, q, rel, index="ivf", nlist=4, nprobe=4)  # every list: exact
    assert ivf_all.metrics == pytest.approx(flat.metrics)
    hnsw = retrieval.text_to_image_retrieval(x, q, rel, index="hnsw", ef_search=400)
    assert hnsw.metrics == pytest.approx(flat.metrics, abs=1e-3)
    ivf = retrieval.text_to_image_retrieval(x, q, rel, index="ivf", nlist=4, nprobe=2, depth=50)
    for k in ("r@1", "r@5", "r@10", "p@10"):
        assert ivf.metrics[k] == pytest.approx(flat.metrics[k], abs=0.05)
    assert 0.5 < flat.metrics["map"] <= 1.0
    with pytest.raises(ValueError, match="retrieval.index"):
        retrieval.build_index(x, "lsh")


# --------------------------------------------------------------------------- segmentation


class QuadrantPatches(nn.Module):
    """Oracle patch encoder on a 4x4 grid: each image quadrant's patches embed as that quadrant's class."""

    grid_size = 4

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cls = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]).flatten()
        return F.one_hot(cls, 4).float()[None].expand(images.shape[0], -1, -1)


def test_segmentation_pipeline_recovers_quadrants_row_major_on_non_square_images(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\n")
    h, w = 20, 30
    mask = np.zeros((h, w), np.uint8)
    mask[:10, 15:] = 1
    mask[10:, :15] = 2
    mask[10:, 15:] = 3
    mask[0, 0] = 255
    for i in range(2):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "images" / f"x{i}.png")
        Image.fromarray(mask, mode="L").save(tmp_path / "masks" / f"x{i}.png")
    data = ds.load_segmentation(tmp_path)
    cfg = {"size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic"}
    res = evaluate_segmentation(QuadrantPatches(), data, torch.eye(4), cfg, batch_size=2)
    assert res.metrics == {"miou": pytest.approx(1.0), "pixel_acc": pytest.approx(1.0)}
    assert res.confusion.sum() == 2 * (h * w - 1)  # the ignored pixel is not counted
    assert res.examples[0].shape == (h, w)


def test_scores_to_mask_upsamples_bilinearly():
    scores = torch.zeros(2, 2, 2)
    scores[0, :, 0] = 1.0  # class 0 on the left column of patches
    scores[1, :, 1] = 1.0
    m = scores_to_mask(scores, (4, 6))
    assert m.tolist() == [[0, 0, 0, 1, 1, 1]] * 4


def test_segmentation_with_tiny_pixel_model(world):
    from graft.models.checkpoint import load_encoder

    encoder, bundle, _ = load_encoder(world["pixel"])
    data = ds.load_segmentation(world["seg"])
    weights = class_embeddings(bundle.model, bundle.tokenizer, data.classnames, ["a satellite image of {}."])
    with torch.no_grad():
        s = patch_scores(encoder, torch.randn(2, 3, 32, 32), weights)
    assert s.shape == (2, 2, 4, 4)
    cfg = {"size": 32, "mean": (0.48, 0.46, 0.41), "std": (0.27, 0.26, 0.28), "interpolation": "bicubic"}
    res = evaluate_segmentation(encoder, data, weights, cfg, batch_size=2)
    assert res.confusion.shape == (2, 2)
    assert res.confusion.sum() == 3 * (36 * 36 - 4)
    assert set(np.unique(res.examples[0]).tolist()) <= {0, 1}
    assert 0.0 <= res.metrics["miou"] <= 1.0 and 0.0 <= res.metrics["pixel_acc"] <= 1.0


class FakeSamPredictor:
    """Stands in for segment_anything's SamPredictor: masks a 4x4 box around each point prompt."""

    def __init__(self):
        self.points = []

    def set_image(self, image):
        assert image.dtype == np.uint8 and image.shape[2] == 3
        self.shape = image.shape[:2]

    def predict(self, point_coords, point_labels, multimask_output):
        assert point_labels.tolist() == [1] and multimask_output
        x, y = point_coords[0]
        self.points.append((float(x), float(y)))
        good = np.zeros(self.shape, bool)
        good[int(y) - 2:int(y) + 2, int(x) - 2:int(x) + 2] = True
        return np.stack([np.zeros(self.shape, bool), good]), np.array([0.1, 0.9]), None


def test_sam_refine_prompts_best_patch_centres_and_most_confident_class_wins():
    from graft.evaluation.segmentation import SamRefiner

    refiner = object.__new__(SamRefiner)  # the prompting logic, without the SAM weights
    refiner.predictor = FakeSamPredictor()
    scores = np.zeros((3, 2, 2), np.float32)
    scores[0, 0, 0] = 0.9  # class 0 peaks at patch (row 0, col 0) -> centre (x=4, y=4) on a 16x16 image
    scores[1, 0, 1] = 0.5  # class 1 peaks at (0, 1) -> centre (x=12, y=4)
    scores[2, 1, 1] = 0.7  # class 2 never appears in the coarse mask: no prompt
    coarse = np.zeros((16, 16), np.int64)
    coarse[:, 8:] = 1
    refined = refiner.refine(np.zeros((16, 16, 3), np.uint8), scores, coarse)
    assert refiner.predictor.points == [(12.0, 4.0), (4.0, 4.0)]  # least confident first
    assert (refined[2:6, 10:14] == 1).all() and (refined[2:6, 2:6] == 0).all()
    np.testing.assert_array_equal(refined, coarse)  # the boxes agree with the coarse mask here
    coarse2 = np.ones((16, 16), np.int64)
    coarse2[0, 0] = 0
    refined2 = refiner.refine(np.zeros((16, 16, 3), np.uint8), scores, coarse2)
    assert (refined2[2:6, 2:6] == 0).all() and refined2[10, 10] == 1


def test_sam_refiner_without_the_extra_says_how_to_install(tmp_path, monkeypatch):
    import sys

    from graft.evaluation.segmentation import SamRefiner

    monkeypatch.setitem(sys.modules, "segment_anything", None)  # as if the 'sam' extra were not installed
    with pytest.raises(ImportError, match=r"graft\[sam\]"):
        SamRefiner(tmp_path / "sam.pth")


def test_sam_refinement_needs_the_extra_or_a_checkpoint(tmp_path):
    segment_anything = pytest.importorskip("segment_anything")  # the 'sam' extra; real runs: test_sam_refinement.py
    from graft.evaluation.segmentation import SamRefiner

    assert segment_anything
    with pytest.raises(FileNotFoundError, match="sam_checkpoint"):
        SamRefiner(tmp_path / "missing.pth")


# --------------------------------------------------------------------------- probes


def test_knn_and_linear_probes_on_separable_features():
    x, _, rel = _clustered(n_per=40, classes=4, dim=8, seed=4)
    y = rel.argmax(1)
    train, test = probes.seeded_split(len(y), y, 0.25, seed=0)
    assert np.bincount(y[test]).tolist() == [10, 10, 10, 10]  # stratified
    tr, te = probes.seeded_split(6, np.array([0, 0, 1, 1, 2, 2]), 0.2, seed=0)  # too small to stratify
    assert len(te) == 2 and sorted([*tr, *te]) == list(range(6))
    for vote in ("weighted", "majority"):
        s = probes.knn_scores(x[train], y[train], x[test], 4, k=5, vote=vote)
        assert probes.probe_metrics(s, y[test], 4)["top1"] > 0.9
    s, c = probes.linear_probe_scores(x[train], y[train], x[test], 4, c=[0.01, 10.0])
    assert c in (0.01, 10.0)
    m = probes.probe_metrics(s, y[test], 4)
    assert m["top1"] > 0.9 and set(m) == {"top1", "mean_per_class"}
    ml = rel.copy()
    ml[::2, 0] = True  # multi-label targets
    s, _ = probes.linear_probe_scores(x[train], ml[train], x[test], 4)
    assert set(probes.probe_metrics(s, ml[test], 4)) == {"map"}


def test_knn_hand_case_weighted_vs_majority():
    tx = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.1, 0.99], [0.2, 0.98]], dtype=np.float32)
    ty = np.array([0, 0, 1, 1, 1])
    q = np.array([[0.9, 0.44]], dtype=np.float32)
    maj = probes.knn_scores(tx, ty, q, 2, k=5, vote="majority")
    assert maj.tolist() == [[2.0, 3.0]]
    weighted = probes.knn_scores(tx, ty, q, 2, k=5, vote="weighted", temperature=0.07)
    assert weighted[0].argmax() == 0  # two very close class-0 neighbours outvote three far ones


# --------------------------------------------------------------------------- full run + report + CLI


def _config(world, out: Path, **extra) -> dict:
    cfg = {
        "models": [{"name": "graft-image", "checkpoint": str(world["image"])},
                   {"name": "graft-pixel", "checkpoint": str(world["pixel"].parent.parent)}],
        "baseline": world["spec"].model_dump(),
        "benchmarks": [
            {"name": "eurosat", "type": "eurosat", "root": str(world["eurosat"]),
             "tasks": ["zeroshot", "retrieval", "knn", "linear_probe"]},
            {"name": "ml", "type": "csv_multilabel", "root": str(world["ml"]), "tasks": ["zeroshot", "retrieval", "knn"]},
            {"name": "seg", "type": "segmentation", "root": str(world["seg"])},
            {"name": "pairs", "type": "graft_pairs", "root": str(world["pairs"])},
        ],
        "out_dir": str(out), "workers": 0, "batch_size": 8, "device": "cpu", "alignment_k": 3,
        "probes": {"knn_k": 3}, "retrieval": {"grid_queries": 2, "grid_top": 3}, "segmentation": {"overlays": 2},
    }
    cfg.update(extra)
    return cfg


def test_evaluate_end_to_end_writes_report_and_plots(world):
    out = world["tmp"] / "eval"
    result = evaluate(EvalConfig(**_config(world, out)))
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"rows", "wall_s"}
    for r in report["rows"]:
        assert set(r) == {"task", "dataset", "model", "metric", "value"}
    got = {(r["task"], r["dataset"], r["model"], r["metric"]) for r in report["rows"]}
    for model in ("graft-image", "graft-pixel", "baseline"):
        for tset in ("ground", "satellite"):
            for metric in ("top1", "top5", "mean_per_class"):
                assert ("zeroshot_classification", f"eurosat[{tset}]", model, metric) in got
            for metric in ("map", "r@1", "r@5", "r@10", "p@10", "p@100"):
                assert ("retrieval", f"eurosat[{tset}]", model, metric) in got
            assert ("zeroshot_classification", f"ml[{tset}]", model, "map") in got
            assert ("zeroshot_classification", f"ml[{tset}]", model, "ap[Pastures]") in got
            assert ("segmentation", f"seg[{tset}]", model, "miou") in got
            assert ("segmentation", f"seg[{tset}]", model, "pixel_acc") in got
        assert ("knn", "eurosat", model, "top1") in got
        assert ("linear_probe", "eurosat", model, "mean_per_class") in got
        assert ("knn", "ml", model, "map") in got
        assert ("alignment", "pairs", model, "mutual_knn@3") in got
    for r in report["rows"]:
        assert r["value"] is None or 0.0 <= r["value"] <= 1.0, r
    # the corrupt JPEG is reported, with its reason, not silently dropped
    assert report["rejections"]["eurosat"]["counts"] == {"unreadable_image": 1}
    assert report["wall_s"]["load_models"] > 0 and "features/eurosat" in report["wall_s"]
    assert "segmentation patches: trained" in report["models"]["graft-pixel"]
    assert "clip_patch_tokens" in report["models"]["baseline"]
    md = (out / "report.md").read_text()
    assert "| task | dataset | metric | graft-image | graft-pixel | baseline |" in md
    assert result["report_md"] == str(out / "report.md")

    pngs = sorted(out.glob("plots/**/*.png"))
    names = {p.name for p in pngs}
    assert {"confusion_graft-image_satellite.png", "retrieval_baseline_satellite.png", "overlays.png",
            "per_class_eurosat_satellite.png"} <= names, names
    assert len(report["plots"]) == len(pngs)
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
            assert im.format == "PNG"


def test_missing_benchmark_fails_before_any_model_loads(world, monkeypatch):
    import graft.evaluation.run as run_mod

    def boom(*a, **k):
        raise AssertionError("models must not load before benchmarks are checked")

    monkeypatch.setattr(run_mod, "load_models", boom)
    cfg = EvalConfig(**_config(world, world["tmp"] / "eval-missing",
                               benchmarks=[{"name": "aid", "type": "aid", "root": str(world["tmp"] / "nope")}]))
    with pytest.raises(ds.DatasetNotFoundError, match="captain-whu.github.io/AID"):
        evaluate(cfg)


def test_config_validation_names_the_bad_key(world, tmp_path):
    base = _config(world, tmp_path / "o")
    bad = dict(base, models=[{"name": "x", "checkpoint": "a", "export": "b"}])
    with pytest.raises(ValueError, match="exactly one of checkpoint / export / clip"):
        EvalConfig(**bad)
    bad = dict(base, benchmarks=[{"name": "s", "type": "segmentation", "root": "r", "tasks": ["knn"]}])
    with pytest.raises(ValueError, match="cannot run"):
        EvalConfig(**bad)
    with pytest.raises(ConfigError, match="probes.knn_k"):
        evaluate(dict(base, probes={"knn_k": 0}))
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(dict(base, batchsize=3)))
    with pytest.raises(ConfigError, match="batchsize: unknown key"):
        run_eval_command(argparse.Namespace(config=str(path), overrides=[]))


def test_cli_runs_with_overrides_and_prints_summary(world, tmp_path, capsys):
    cfg = _config(world, tmp_path / "first", plots=False)
    cfg["benchmarks"] = [{"name": "eurosat", "type": "eurosat", "root": str(world["eurosat"]), "tasks": ["zeroshot"]}]
    cfg["models"] = cfg["models"][:1]
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "second"
    assert run_eval_command(argparse.Namespace(config=str(path), overrides=[f"out_dir={out}", "templates={sat: ['an aerial photo of {}.']}"])) == 0
    printed = capsys.readouterr().out
    assert "eurosat[sat]" in printed and "graft-image" in printed and str(out / "report.md") in printed
    assert (out / "report.json").is_file() and not (tmp_path / "first").exists()


def test_report_rendering_and_atomic_plot(tmp_path):
    r = Report()
    r.add("retrieval", "x[ground]", "m1", "map", 0.5)
    r.add("retrieval", "x[ground]", "m2", "map", float("nan"))
    r.add("segmentation", "s[ground]", "m1", "iou[water]", 0.25)
    with pytest.raises(ValueError, match="unknown task"):
        r.add("captioning", "x", "m1", "bleu", 0.1)
    md = r.to_markdown()
    assert "| retrieval | x[ground] | map | 0.5000 | n/a |" in md
    assert "## Per-class results" in md and "| segmentation | s[ground] | iou[water] | 0.2500 | - |" in md
    p = plot_confusion_matrix(np.array([[3, 1], [0, 2]]), ["a", "b"], "t", tmp_path / "cm.png")
    with Image.open(p) as im:
        im.verify()
    assert [f.name for f in tmp_path.iterdir()] == ["cm.png"]
    json_path, md_path = r.write(tmp_path / "rep")
    rows = json.loads(json_path.read_text())["rows"]  # strict JSON: NaN is written as null
    assert [row["value"] for row in rows] == [0.5, None, 0.25]
    assert md_path.read_text() == md


def test_skip_missing_notes_the_benchmark_and_goes_on(world, tmp_path):
    cfg = _config(world, tmp_path / "o", plots=False, skip_missing=True)
    cfg["benchmarks"] = [{"name": "gone", "type": "ucmerced", "root": str(tmp_path / "nope")},
                         {"name": "pairs", "type": "graft_pairs", "root": str(world["pairs"]), "max_images": 9}]
    result = evaluate(EvalConfig(**cfg))
    assert {r["dataset"] for r in result["rows"]} == {"pairs"}
    assert any("gone" in n and "weegee.vision.ucmerced.edu" in n for n in result["notes"])


@pytest.mark.parametrize("suite", ["sentinel2_suite.yaml", "naip_suite.yaml"])
def test_shipped_suites_are_valid_configs(suite):
    from graft.config import load_config

    cfg = load_config(EvalConfig, Path(__file__).parent.parent / "eval" / suite)
    assert {m.name for m in cfg.models} == {"graft-image", "graft-pixel"}
    assert cfg.baseline is not None and all(b.tasks for b in cfg.benchmarks)
