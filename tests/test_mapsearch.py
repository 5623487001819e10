"""graft map on tiny generated data: tiling, the embedding cache, queries, heat-map GeoTIFFs and the web app."""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from helpers_data import make_checkpoint, make_dataset, tiny_clip_spec
from PIL import Image

from graft.mapsearch.app import create_app, run_map_command, write_heat_geotiff
from graft.mapsearch.index import MapCacheError, build_index, load_map_models
from graft.mapsearch.region import DatasetRegion, RasterRegion, RegionError, open_region

pytest.importorskip("flask", reason="the 'map' extra (flask) serves the page")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W = 70, 100  # not multiples of the 32 px tile: edge tiles are padded


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("map")
    spec = tiny_clip_spec(tmp)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (3, H, W), dtype=np.uint8)
    arr[:, :32, :32] = np.array([30, 140, 40], dtype=np.uint8)[:, None, None]  # one uniform tile
    raster = tmp / "region.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=W, height=H, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=Affine(10, 0, 500000, 0, -10, 5000000)) as dst:
        dst.write(arr)
    return {"tmp": tmp, "spec": spec, "raster": raster, "array": arr,
            "image": make_checkpoint(tmp, spec, "image", seed=2), "pixel": make_checkpoint(tmp, spec, "pixel")}


def test_raster_tiles_cover_the_region_and_pad_the_edges(setup):
    region = RasterRegion(setup["raster"], 32)
    assert (region.n_rows, region.n_cols, len(region.tiles)) == (3, 4, 12)
    last = region.tile("r0002c0003")
    assert (last.row0, last.col0) == (64, 96) and last.valid == pytest.approx((6 * 4) / 32 ** 2)
    rgb = region.read_rgb(last)
    assert rgb.shape == (32, 32, 3)
    np.testing.assert_array_equal(rgb[:6, :4], setup["array"][:, 64:, 96:].transpose(1, 2, 0))
    assert not rgb[6:].any() and not rgb[:, 4:].any()
    # A tile's transform puts its pixel (0, 0) at the raster's pixel (row0, col0).
    assert last.transform @ (0, 0) == region.transform @ (96, 64)


def test_models_cache_resume_and_refusal(setup, tmp_path):
    models = load_map_models([setup["image"], setup["pixel"]], "cpu")
    assert models.image.patch_source == "clip_patch_tokens" and models.pixel.patch_source == "trained"
    region = RasterRegion(setup["raster"], 32)
    cache = tmp_path / "cache"
    first = build_index(region, models, cache, batch_size=5, chunk_tiles=5)
    assert first.image.shape == (12, 64) and first.patch.shape == (12, 4, 4, 64)
    chunks = sorted((cache / "chunks").glob("chunk-*.npz"))
    assert [c.name for c in chunks] == ["chunk-00000.npz", "chunk-00001.npz", "chunk-00002.npz"]

    # Resume: a lost chunk is recomputed, the others are read back; results are identical.
    chunks[1].unlink()
    mtime0 = chunks[0].stat().st_mtime_ns
    again = build_index(region, models, cache, batch_size=5, chunk_tiles=5)
    assert chunks[0].stat().st_mtime_ns == mtime0 and chunks[1].is_file()
    np.testing.assert_array_equal(again.patch, first.patch)

    # The embeddings are the models' own: tile 0 through the pixel-level encoder directly.
    enc = models.pixel.patch_encoder()
    x = models.pixel.preprocess(Image.fromarray(region.read_rgb(region.tiles[0])))[None]
    with torch.no_grad():
        want = enc(x)[0].reshape(4, 4, 64).numpy()
    np.testing.assert_allclose(first.patch[0].astype(np.float32), want, atol=2e-3)

    with pytest.raises(MapCacheError, match="another region"):
        build_index(RasterRegion(setup["raster"], 16), models, cache)


def test_query_heat_mosaic_and_geotiff(setup, tmp_path):
    models = load_map_models([setup["pixel"]], "cpu")  # one pixel-level model ranks and maps
    region = RasterRegion(setup["raster"], 32)
    index = build_index(region, models, tmp_path / "cache")
    text = models.encode_query("a satellite image of forest.", "cpu")
    heat = index.heat_mosaic(text)
    assert heat.shape == (12, 16)
    # 8 px patches: a patch whose centre ((i + 0.5) * 8 px) is outside the 70 x 100 raster is no data.
    assert np.isnan(heat[9:]).all() and np.isnan(heat[:, 12:]).all() and np.isfinite(heat[:9, :12]).all()
    np.testing.assert_allclose(heat[4:8, 8:12], index.patch_scores(text)[region.tiles.index(region.tile("r0001c0002"))],
                               atol=1e-6)
    top = index.top_tiles(text, 20)
    assert all(t.valid >= 0.5 for t, _ in top) and len(top) < 12  # mostly-padded edge tiles are not ranked
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    assert models.default_rank == "pixel"  # the trained pixel head orders the list: the heat map's hottest tiles
    by_heat = index.top_tiles(text, 3, by="pixel")
    assert [s for _, s in by_heat] == pytest.approx(
        [float(np.nanmean(heat[(t.row0 // 8):(t.row0 // 8) + 4, (t.col0 // 8):(t.col0 // 8) + 4])) for t, _ in by_heat],
        abs=1e-5)

    out = write_heat_geotiff(tmp_path / "heat.tif", heat, region.crs, index.heat_transform())
    with rasterio.open(out) as h:
        assert h.crs.to_string() == "EPSG:32633" and h.transform == Affine(80, 0, 500000, 0, -80, 5000000)
        np.testing.assert_array_equal(h.read(1), heat)


def test_cli_query_writes_geotiff_and_lists_tiles(setup, tmp_path, capsys):
    args = argparse.Namespace(region=str(setup["raster"]), models=[str(setup["image"]), str(setup["pixel"])],
                              cache=str(tmp_path / "c"), tile_px=None, template="a satellite image of {}.", top_k=3,
                              batch_size=8, device="cpu", query="forest", out=str(tmp_path / "heat.tif"),
                              host="127.0.0.1", port=0, rank="auto")
    assert run_map_command(args) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^\s+\d\. r\d{4}c\d{4}  score", out, re.M)) == 3
    assert (tmp_path / "heat.tif").is_file()
    with pytest.raises(RegionError, match="give --query"):
        run_map_command(argparse.Namespace(**{**vars(args), "query": None}))


def test_dataset_region_one_heat_geotiff_per_top_tile(setup, tmp_path):
    ds = make_dataset(tmp_path / "ds", setup["spec"], n_tiles=5, tile_size=32, embed=False)
    region = open_region(ds, None, 32)
    assert isinstance(region, DatasetRegion) and len(region.tiles) == 5
    args = argparse.Namespace(region=str(ds), models=[str(setup["pixel"])], cache=str(tmp_path / "c"), tile_px=None,
                              template="{}", top_k=2, batch_size=8, device="cpu", query="water",
                              out=str(tmp_path / "heat"), host="127.0.0.1", port=0, rank="auto")
    assert run_map_command(args) == 0
    files = sorted((tmp_path / "heat").glob("*.tif"))
    assert len(files) == 2
    with rasterio.open(files[0]) as h:
        tile = region.tile(files[0].stem)
        assert h.crs.to_string() == tile.crs and h.transform == tile.transform @ Affine.scale(8)


def test_web_app_endpoints_serve_only_local_assets(setup, tmp_path):
    models = load_map_models([setup["image"], setup["pixel"]], "cpu")
    index = build_index(RasterRegion(setup["raster"], 32), models, tmp_path / "cache")
    client = create_app(index, models, "a satellite image of {}.", 4, "cpu", models.default_rank).test_client()
    page = client.get("/").get_data(as_text=True)
    assert "/static/map.js" in page and "/static/map.css" in page
    static = Path(__file__).parents[1] / "src" / "graft" / "mapsearch" / "static"
    for f in static.iterdir():  # no CDN, no remote font or script: the page works offline
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", f.read_text().replace("http://www.w3.org/2000/svg", "")), f
    info = client.get("/api/info").get_json()
    assert info["region"]["n_tiles"] == 12 and info["has_preview"]
    res = client.get("/api/search?q=forest").get_json()
    assert res["prompt"] == "a satellite image of forest." and len(res["top"]) == 4 and res["rank"] == "pixel"
    assert res["top"][0]["rank"] == 1 and {"lat", "lon", "row0", "col0", "tile_id"} <= set(res["top"][0])
    for url in ("/preview.png", "/heat.png?q=forest", f"/tile/{res['top'][0]['tile_id']}.png",
                f"/tile/{res['top'][0]['tile_id']}/heat.png?q=forest"):
        r = client.get(url)
        assert r.status_code == 200 and r.mimetype == "image/png", url
        assert Image.open(io.BytesIO(r.get_data())).size[0] > 0, url
    assert client.get("/tile/nope.png").status_code == 404
    assert client.get("/api/search?q=%20").status_code == 400
