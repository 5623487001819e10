"""graft export -> an open_clip 'local-dir:' folder that open_clip itself loads, with identical results."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from helpers_data import make_checkpoint, make_class_folders, tiny_clip_spec
from torch.utils.data import DataLoader

from graft.evaluation import export as ex
from graft.evaluation.datasets import LabelledTensorDataset, load_benchmark
from graft.evaluation.models import GraftClipModel
from graft.evaluation.run import EvalConfig, evaluate
from graft.evaluation.zeroshot import evaluate_zeroshot
from graft.imagery import BandNorm
from graft.models.checkpoint import load_encoder

CLASSES = {"AnnualCrop": (200, 180, 40), "Forest": (20, 120, 30), "Highway": (128, 128, 128), "SeaLake": (20, 40, 200)}


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


def make_eurosat(root: Path, per_class: int = 4) -> Path:
    make_class_folders(root, CLASSES, per_class)
    (root / "templates.txt").write_text("a satellite image of {}.\na photo of {} from above.\n")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    spec = tiny_clip_spec(tmp)
    return {
        "tmp": tmp,
        "spec": spec,
        "pixel": make_checkpoint(tmp, spec, "pixel"),
        "image": make_checkpoint(tmp, spec, "image", seed=2),
        "eurosat": make_eurosat(tmp / "eurosat"),
    }


def test_export_loads_in_open_clip_with_trained_visual_and_clip_text(world):
    out = ex.export_checkpoint(world["pixel"], world["tmp"] / "export-pixel")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [ex.CONFIG_FILE, ex.WEIGHTS_FILE, ex.PROJECTOR_FILE, ex.EXPORT_INFO])
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    encoder, bundle, _ = load_encoder(world["pixel"])
    exported = model.state_dict()
    for k, v in encoder.visual.state_dict().items():
        torch.testing.assert_close(exported[f"visual.{k}"], v, rtol=0, atol=0)
    base = bundle.model.state_dict()
    for k, v in base.items():
        if not k.startswith("visual."):
            torch.testing.assert_close(exported[k], v, rtol=0, atol=0)
    # the trained tower really is different from CLIP's (otherwise the test proves nothing)
    assert not torch.equal(exported["visual.conv1.weight"], base["visual.conv1.weight"])
    ours, theirs = bundle.preprocess.transforms, preprocess.transforms
    assert [type(t).__name__ for t in theirs] == [type(t).__name__ for t in ours]
    assert list(theirs[-1].mean) == list(ours[-1].mean) and list(theirs[-1].std) == list(ours[-1].std)
    assert theirs[0].size == ours[0].size
    tok = open_clip.get_tokenizer(f"local-dir:{out}")
    torch.testing.assert_close(tok(["a satellite image of forest."]), bundle.tokenizer(["a satellite image of forest."]))


def test_zeroshot_of_export_through_open_clip_equals_in_project_model(world):
    out = ex.export_checkpoint(world["image"], world["tmp"] / "export-image")
    assert not (out / ex.PROJECTOR_FILE).exists()
    data = load_benchmark("eurosat", world["eurosat"])

    encoder, bundle, _ = load_encoder(world["image"])
    ours = evaluate_zeroshot(GraftClipModel(encoder, bundle.model),
                             DataLoader(LabelledTensorDataset(data, bundle.preprocess), batch_size=5),
                             bundle.tokenizer, data.classnames, data.templates)

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    model.eval()
    theirs = evaluate_zeroshot(model, DataLoader(LabelledTensorDataset(data, preprocess), batch_size=7),
                               open_clip.get_tokenizer(f"local-dir:{out}"), data.classnames, data.templates)
    np.testing.assert_allclose(theirs.scores, ours.scores, atol=1e-5)
    assert theirs.metrics == pytest.approx(ours.metrics)
    assert set(ours.metrics) == {"top1", "top5", "mean_per_class"}

    # frozen CLIP scores differently: the export carries the trained tower, not CLIP's
    clip_res = evaluate_zeroshot(bundle.model, DataLoader(LabelledTensorDataset(data, bundle.preprocess), batch_size=8),
                                 bundle.tokenizer, data.classnames, data.templates)
    assert not np.allclose(clip_res.scores, ours.scores, atol=1e-3)


def test_evaluate_reports_same_numbers_for_checkpoint_and_its_export(world):
    out = ex.export_checkpoint(world["pixel"], world["tmp"] / "export-pixel-2")
    cfg = EvalConfig(
        models=[{"name": "ckpt", "checkpoint": str(world["pixel"])}, {"name": "exported", "export": str(out)}],
        include_baseline=False,
        benchmarks=[{"name": "eurosat", "type": "eurosat", "root": str(world["eurosat"]),
                     "tasks": ["zeroshot", "retrieval"]}],
        out_dir=str(world["tmp"] / "eval"), workers=0, batch_size=8, plots=False, device="cpu",
    )
    result = evaluate(cfg)
    rows = {(r["task"], r["dataset"], r["metric"], r["model"]): r["value"] for r in result["rows"]}
    keys = {k[:3] for k in rows}
    assert ("zeroshot_classification", "eurosat[custom]", "top1") in keys
    for k in keys:
        assert rows[(*k, "exported")] == pytest.approx(rows[(*k, "ckpt")], abs=1e-6), k


def test_load_pixel_model_matches_trained_patch_encoder(world):
    out = ex.export_checkpoint(world["pixel"], world["tmp"] / "export-pixel-3")
    pixel = ex.load_pixel_model(out)
    encoder, _, _ = load_encoder(world["pixel"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pixel(x), encoder(x))
    assert pixel.grid_size == 4
    with pytest.raises(FileNotFoundError, match="not a pixel-level export"):
        ex.load_pixel_model(ex.export_checkpoint(world["image"], world["tmp"] / "export-image-2"))


def test_export_refuses_to_replace_a_foreign_folder_but_replaces_an_export(world, capsys):
    foreign = world["tmp"] / "precious"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("do not delete")
    with pytest.raises(ex.ExportError, match="refusing"):
        ex.export_checkpoint(world["image"], foreign)
    assert (foreign / "thesis.tex").is_file()

    target = world["tmp"] / "export-again"
    args = argparse.Namespace(checkpoint=str(world["pixel"].parent.parent), out_dir=str(target))  # a run folder
    assert ex.run_export_command(args) == 0
    assert "local-dir:" in capsys.readouterr().out
    ex.export_checkpoint(world["image"], target)  # a previous export is replaced whole
    assert not (target / ex.PROJECTOR_FILE).exists()
    assert not any(p.name.endswith(".tmp") for p in target.parent.iterdir())


MS_NORM = BandNorm(("R", "G", "B", "N", "SWIR"), (0.48, 0.46, 0.41, 90.0, 60.0), (0.27, 0.26, 0.28, 30.0, 20.0))


@pytest.mark.parametrize("kind", ["image", "pixel"])
def test_multispectral_export_loads_with_graft_and_open_clip_refuses_it(world, kind):
    ckpt = make_checkpoint(world["tmp"], world["spec"], kind, seed=3, band_norm=MS_NORM)
    out = ex.export_checkpoint(ckpt, world["tmp"] / f"export-ms-{kind}")
    assert ex.MULTISPECTRAL_WEIGHTS_FILE in {p.name for p in out.iterdir()}
    assert not (out / ex.WEIGHTS_FILE).exists()
    with pytest.raises(RuntimeError, match="conv1"):  # open_clip's ViT takes 3 channels: a loud refusal
        open_clip.create_model_and_transforms(f"local-dir:{out}")

    loaded = ex.load_multispectral_export(out)
    assert loaded.band_norm == MS_NORM
    encoder, bundle, _ = load_encoder(ckpt)
    x = torch.randn(2, 5, 32, 32)
    tokens = bundle.tokenizer(["a satellite image of forest.", "a photo of a lake."])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_image(x, normalize=True), encoder.encode_image(x), rtol=0,
                                   atol=1e-6)
        torch.testing.assert_close(loaded.model.encode_text(tokens), bundle.model.encode_text(tokens), rtol=0, atol=0)
    torch.testing.assert_close(loaded.tokenizer(["a b"]), bundle.tokenizer(["a b"]))
    if kind == "pixel":
        with torch.no_grad():
            torch.testing.assert_close(ex.load_pixel_model(out)(x), encoder(x), rtol=0, atol=1e-6)
    with pytest.raises(ex.ExportError, match="not a multispectral"):
        ex.load_multispectral_export(ex.export_checkpoint(world["image"], world["tmp"] / "export-rgb-for-ms"))
