"""``graft map``: the local web page (Flask), and the heat map as a GeoTIFF.

The page is ``static/index.html`` + ``map.js`` + ``map.css`` from this package:
no CDN, no web font, nothing fetched from outside, so it works offline. The
server binds to 127.0.0.1 unless told otherwise. Endpoints:

* ``/api/info``: the region (size, tile grid, bounding box) and the models;
* ``/api/search?q=TEXT&k=K``: the top-k tiles (scores, coordinates) and the URL of the heat map;
* ``/heat.png?q=TEXT``: the pixel-level similarity over the region (raster regions), colour-mapped;
* ``/preview.png``: the region itself, downsampled;
* ``/tile/<id>.png`` and ``/tile/<id>/heat.png?q=TEXT``: one tile and its patch heat map.
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from graft.mapsearch.index import (
    MapIndex,
    MapModels,
    build_index,
    cache_key,
    default_cache_dir,
    load_map_models,
)
from graft.mapsearch.region import DatasetRegion, MapTile, RasterRegion, RegionError, open_region, png_bytes

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_HEAT_CACHE = 16  # queries whose heat maps stay in memory


def prompt_for(template: str, query: str) -> str:
    return template.replace("{}", query.strip())


def colour_map(values: np.ndarray, vmin: float, vmax: float, alpha: float = 0.6) -> np.ndarray:
    """(h, w) floats -> (h, w, 4) uint8 RGBA with matplotlib's 'inferno'; NaN is transparent."""
    from matplotlib import colormaps

    span = max(vmax - vmin, 1e-6)
    norm = np.clip((np.nan_to_num(values, nan=vmin) - vmin) / span, 0, 1)
    rgba = (colormaps["inferno"](norm) * 255).astype(np.uint8)
    rgba[..., 3] = np.where(np.isnan(values), 0, int(alpha * 255))
    return rgba


def write_heat_geotiff(path: str | Path, heat: np.ndarray, crs: str, transform) -> Path:
    """A single-band float32 GeoTIFF (NaN = no data), written atomically."""
    import rasterio

    from graft.storage import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", driver="GTiff", width=heat.shape[1], height=heat.shape[0], count=1,
                           dtype="float32", crs=crs, transform=transform, nodata=float("nan"),
                           compress="deflate") as dst:
            dst.write(heat.astype(np.float32)[None])
            dst.set_band_description(1, "cosine similarity of patch embedding and query")
    return path


def write_query_outputs(index: MapIndex, text: np.ndarray, out: str | Path, top: list[tuple[MapTile, float]]
                        ) -> list[Path]:
    """Raster region: ``out`` is the heat-map GeoTIFF in the raster's CRS. Dataset region: ``out`` is a folder
    with one heat-map GeoTIFF per top tile, each in its tile's CRS."""
    if isinstance(index.region, RasterRegion):
        return [write_heat_geotiff(out, index.heat_mosaic(text), index.region.crs, index.heat_transform())]
    rows = np.array([index.region.tiles.index(t) for t, _ in top])
    scores = index.patch_scores(text, rows)
    return [write_heat_geotiff(Path(out) / f"{t.tile_id}.tif", s, t.crs, index.heat_transform(t))
            for (t, _), s in zip(top, scores, strict=True)]


def _tile_json(tile: MapTile, score: float, rank: int) -> dict[str, Any]:
    lat, lon = tile.latlon(tile.size / 2, tile.size / 2)
    return {"rank": rank, "tile_id": tile.tile_id, "score": round(score, 5), "lat": round(lat, 6),
            "lon": round(lon, 6), "row0": tile.row0, "col0": tile.col0, "size": tile.size, "crs": tile.crs}


def create_app(index: MapIndex, models: MapModels, template: str, top_k: int, device: str, rank: str):
    """The Flask app serving the map page for ``index``."""
    from flask import Flask, Response, abort, jsonify, request, send_from_directory

    app = Flask(__name__, static_folder=None)
    region = index.region
    texts: OrderedDict[str, np.ndarray] = OrderedDict()
    preview = png_bytes(region.preview()) if isinstance(region, RasterRegion) else None

    def text_embedding(query: str) -> np.ndarray:
        query = query.strip()
        if not query:
            abort(400, "empty query")
        if query not in texts:
            texts[query] = models.encode_query(prompt_for(template, query), device)
            while len(texts) > _HEAT_CACHE:
                texts.popitem(last=False)
        return texts[query]

    def png(image: bytes | np.ndarray) -> Response:
        data = image if isinstance(image, bytes) else png_bytes(image)
        return Response(data, mimetype="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/")
    def page():
        return send_from_directory(STATIC_DIR, "index.html")

    @app.get("/static/<path:name>")
    def static_file(name: str):
        return send_from_directory(STATIC_DIR, name)

    @app.get("/api/info")
    def info():
        return jsonify({"region": region.describe(), "template": template, "top_k": top_k, "grid": index.grid,
                        "rank": rank,
                        "models": [m.description for m in {id(models.image): models.image,
                                                           id(models.pixel): models.pixel}.values()],
                        "has_preview": preview is not None,
                        "tiles": [] if preview is not None else
                        [_tile_json(t, 0.0, 0) for t in region.tiles]})

    @app.get("/api/search")
    def search():
        q = request.args.get("q", "")
        k = min(int(request.args.get("k", top_k)), len(region.tiles))
        text = text_embedding(q)
        top = index.top_tiles(text, k, by=rank)
        scores = index.ranking_scores(text, rank)
        return jsonify({"query": q.strip(), "prompt": prompt_for(template, q), "rank": rank,
                        "top": [_tile_json(t, s, i + 1) for i, (t, s) in enumerate(top)],
                        "score_range": [float(np.min(scores)), float(np.max(scores))],
                        "tile_scores": None if preview is not None else [round(float(s), 5) for s in scores]})

    @app.get("/preview.png")
    def preview_png():
        if preview is None:
            abort(404, "dataset regions have no single preview; see the tiles")
        return png(preview)

    @app.get("/heat.png")
    def heat_png():
        if not isinstance(region, RasterRegion):
            abort(404, "dataset regions have one heat map per tile: /tile/<id>/heat.png")
        heat = index.heat_mosaic(text_embedding(request.args.get("q", "")))
        lo, hi = np.nanpercentile(heat, [2, 99.5]) if np.isfinite(heat).any() else (0.0, 1.0)
        return png(colour_map(heat, float(lo), float(hi)))

    @app.get("/tile/<tile_id>.png")
    def tile_png(tile_id: str):
        try:
            tile = region.tile(tile_id)
        except KeyError:
            abort(404, f"no tile {tile_id}")
        return png(region.read_rgb(tile))

    @app.get("/tile/<tile_id>/heat.png")
    def tile_heat_png(tile_id: str):
        try:
            row = region.tiles.index(region.tile(tile_id))
        except KeyError:
            abort(404, f"no tile {tile_id}")
        s = index.patch_scores(text_embedding(request.args.get("q", "")), np.array([row]))[0]
        return png(colour_map(s, float(s.min()), float(s.max()), alpha=0.55))

    return app


def serve(app, host: str, port: int) -> None:
    """Serve until interrupted; prints the URL (with the real port when ``port`` is 0)."""
    from werkzeug.serving import make_server

    server = make_server(host, port, app, threaded=True)
    print(f"serving the map on http://{host}:{server.server_port}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def run_map_command(args) -> int:
    """``graft map REGION --model CKPT [--model CKPT] [--query TEXT --out heat.tif]``."""
    from graft.evaluation.run import resolve_device

    if args.out and not args.query:
        raise RegionError("--out writes the heat map of --query; give --query TEXT too")
    if "{}" not in args.template:
        raise RegionError(f"--template needs '{{}}' where the query goes, got {args.template!r}")
    device = resolve_device(args.device)
    models = load_map_models(args.models, device)
    rank = models.default_rank if args.rank == "auto" else args.rank
    region = open_region(args.region, args.tile_px, models.image_size)
    if isinstance(region, DatasetRegion) and args.out and Path(args.out).suffix.lower() in (".tif", ".tiff"):
        raise RegionError("a dataset region's tiles have their own grids: --out must be a folder (one GeoTIFF per "
                          "top tile)")
    cache = Path(args.cache) if args.cache else default_cache_dir(args.region, cache_key(region, models))
    index = build_index(region, models, cache, batch_size=args.batch_size, device=device)
    print(f"region {args.region}: {len(region.tiles)} tiles of {region.tile_px} px, {index.grid}x{index.grid} "
          f"patches each; embeddings cached in {cache}")
    if args.query:
        text = models.encode_query(prompt_for(args.template, args.query), device)
        top = index.top_tiles(text, args.top_k, by=rank)
        print(f"query {args.query!r} (prompt {prompt_for(args.template, args.query)!r}): top {len(top)} tiles "
              f"by {rank}-level similarity")
        for rank, (t, s) in enumerate(top, 1):
            lat, lon = t.latlon(t.size / 2, t.size / 2)
            print(f"  {rank:>3}. {t.tile_id}  score {s:.4f}  centre lat {lat:.6f} lon {lon:.6f}  "
                  f"pixel offset (row {t.row0}, col {t.col0})")
        if args.out:
            written = write_query_outputs(index, text, args.out, top)
            print(f"heat map: {written[0] if len(written) == 1 else f'{len(written)} GeoTIFFs in {args.out}'}")
        return 0
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: other machines can reach this page", file=sys.stderr)
    serve(create_app(index, models, args.template, args.top_k, device, rank), args.host, args.port)
    return 0
