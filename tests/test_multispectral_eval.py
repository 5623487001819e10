"""Multispectral benchmarks: EuroSAT-MS and BigEarthNet-S2 layouts feed each model its bands, in order.

Every band of a generated fixture holds its own planted value, so a band read from the wrong file or
position shows up as a wrong number.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from helpers_data import make_checkpoint, tiny_clip_spec

from graft.evaluation.datasets import load_benchmark
from graft.evaluation.datasets.bigearthnet_s2 import BIGEARTHNET_S2_BANDS
from graft.evaluation.datasets.imagefolder import EUROSAT_MS_BANDS
from graft.evaluation.models import load_checkpoint_model
from graft.evaluation.run import EvalConfig, evaluate
from graft.imagery import BandNorm, tile_to_rgb8

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UTM = "EPSG:32633"


def _tif(path: Path, array: np.ndarray, gsd: float = 10.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                       dtype=array.dtype.name, crs=UTM, transform=Affine(gsd, 0, 500000, 0, -gsd, 5000000)) as dst:
        dst.write(array)


def planted(n_bands: int, size: int, offset: int = 0) -> np.ndarray:
    """Band k holds 1000 + 100 k + offset everywhere."""
    return np.stack([np.full((size, size), 1000 + 100 * k + offset, np.uint16) for k in range(n_bands)])


@pytest.fixture(scope="module")
def eurosat_ms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eurosat_ms")
    for c, cls in enumerate(["Forest", "SeaLake"]):
        for n in range(3):
            _tif(root / "EuroSAT_MS" / cls / f"{cls}_{n + 1}.tif", planted(13, 64, offset=c))
    return root


def _patch(base: Path, name: str, offset: int, labels: list[str] | None) -> None:
    for k, band in enumerate(BIGEARTHNET_S2_BANDS):
        size = {"B02": 120, "B03": 120, "B04": 120, "B08": 120, "B01": 20, "B09": 20}.get(band, 60)
        _tif(base / name / f"{name}_{band}.tif", np.full((1, size, size), 1000 + 100 * k + offset, np.uint16),
             gsd=1200 / size)
    if labels is not None:
        (base / name / f"{name}_labels_metadata.json").write_text(json.dumps({"labels": labels}))


@pytest.fixture(scope="module")
def bigearthnet_v1(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ben")
    base = root / "BigEarthNet-v1.0"
    _patch(base, "S2A_MSIL2A_20170613T101031_0_45", 0, ["Pastures", "Coniferous forest"])
    _patch(base, "S2A_MSIL2A_20170613T101031_0_46", 1, ["Sea and ocean"])
    _patch(base, "S2A_MSIL2A_20170613T101031_0_47", 2, None)  # no labels file: rejected with a reason
    return root


def test_eurosat_ms_reads_13_bands_in_file_order(eurosat_ms):
    ds = load_benchmark("eurosat_ms", eurosat_ms)
    assert len(ds) == 6 and ds.classes == ["Forest", "SeaLake"]
    array, names = ds.read_bands(4)
    assert list(names) == list(EUROSAT_MS_BANDS) and array.shape == (13, 64, 64)
    assert [int(array[k, 0, 0]) for k in range(13)] == [1000 + 100 * k + 1 for k in range(13)]
    # RGB = B04, B03, B02: file bands 4, 3, 2.
    assert np.array_equal(ds.read_rgb(4), tile_to_rgb8(array[[3, 2, 1]]))


def test_bigearthnet_s2_patch_folders_stack_12_bands_on_the_10m_grid(bigearthnet_v1):
    ds = load_benchmark("bigearthnet_s2", bigearthnet_v1)
    assert len(ds) == 2 and ds.multilabel
    assert ds.rejections.counts["unreadable_labels"] == 1
    assert ds.classes == ["Coniferous forest", "Pastures", "Sea and ocean"]
    assert ds.targets.tolist() == [[True, True, False], [False, False, True]]
    array, names = ds.read_bands(1)
    assert list(names) == list(BIGEARTHNET_S2_BANDS) and array.shape == (12, 120, 120)
    assert [int(array[k, 60, 60]) for k in range(12)] == [1000 + 100 * k + 1 for k in range(12)]
    assert np.array_equal(ds.read_rgb(1), tile_to_rgb8(array[[3, 2, 1]]))


def test_bigearthnet_s2_v2_labels_and_split_from_metadata_parquet(tmp_path):
    import pandas as pd

    base = tmp_path / "BigEarthNet-S2"
    names = ["S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57", "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_58"]
    for i, n in enumerate(names):
        _patch(base / "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP", n, i, None)
    pd.DataFrame({"patch_id": names, "labels": [["Arable land"], ["Arable land", "Urban fabric"]],
                  "split": ["train", "test"]}).to_parquet(tmp_path / "metadata.parquet")
    ds = load_benchmark("bigearthnet_s2", tmp_path)
    assert ds.classes == ["Arable land", "Urban fabric"] and ds.splits.tolist() == ["train", "test"]
    assert int(ds.read_bands(1)[0][0, 0, 0]) == 1001


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ms_models")
    spec = tiny_clip_spec(tmp)
    norm = BandNorm(("B4", "B3", "B2", "B8", "B11"), (0.48, 0.46, 0.41, 1500.0, 2000.0), (0.27, 0.26, 0.28, 500.0, 400.0))
    return {"rgb": make_checkpoint(tmp, spec, "image", seed=5), "ms": make_checkpoint(tmp, spec, "image", seed=6,
                                                                                    band_norm=norm), "norm": norm}


@pytest.mark.parametrize("fixture, b8, b11", [("eurosat_ms", 7, 11), ("bigearthnet_v1", 7, 10)])
def test_a_multispectral_model_gets_its_bands_an_rgb_model_the_rgb_bands(request, models, fixture, b8, b11):
    kind = "eurosat_ms" if fixture == "eurosat_ms" else "bigearthnet_s2"
    ds = load_benchmark(kind, request.getfixturevalue(fixture))
    array, names = ds.read_bands(0)
    ms = load_checkpoint_model("ms", models["ms"])
    x = ms.tile_input(array, names)
    norm = models["norm"]
    assert x.shape[0] == 5
    for ch, k in ((3, b8), (4, b11)):  # B8 and B11 are read from their own file/band, normalised as trained
        assert torch.allclose(x[ch], torch.tensor((1000 + 100 * k - norm.mean[ch]) / norm.std[ch]), atol=1e-4)
    rgb = load_checkpoint_model("rgb", models["rgb"])
    assert rgb.tile_input(array, names).shape[0] == 3
    expected = (torch.tensor(tile_to_rgb8(array[[3, 2, 1]])[0, 0] / 255.0, dtype=torch.float32)
                - torch.tensor(rgb.preprocess_cfg["mean"])) / torch.tensor(rgb.preprocess_cfg["std"])
    assert torch.allclose(rgb.tile_input(array, names)[:, 0, 0], expected, atol=1e-4)


def test_eval_reports_rgb_and_multispectral_models_side_by_side(models, eurosat_ms, tmp_path):
    cfg = EvalConfig(
        models=[{"name": "rgb", "checkpoint": str(models["rgb"])}, {"name": "ms", "checkpoint": str(models["ms"])}],
        include_baseline=False,
        benchmarks=[{"name": "eurosat-ms", "type": "eurosat_ms", "root": str(eurosat_ms), "tasks": ["zeroshot"]}],
        out_dir=str(tmp_path / "eval"), workers=0, batch_size=4, plots=False, device="cpu",
    )
    rows = evaluate(cfg)["rows"]
    top1 = {r["model"]: r["value"] for r in rows if r["metric"] == "top1"}
    assert set(top1) == {"rgb", "ms"}
