"""Tiny datasets in the on-disk format of docs/formats.md, for tests of stages downstream of the build.

They are written directly (not by `graft build`) so the trainer's tests do not depend on the pipeline.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import webdataset as wds
from PIL import Image

from graft.geometry import tile_grid_around
from graft.imagery import encode_geotiff
from graft.models.clip_tower import ClipSpec, FrozenClipTower, load_clip, spec_record


def tiny_clip_spec(folder: Path, seed: int = 0) -> ClipSpec:
    """graft-tiny-vit with reproducible random weights saved to a file (open_clip 'pretrained' file path)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tiny-clip-{seed}.pt"
    if not path.exists():
        torch.manual_seed(seed)
        bundle = load_clip(ClipSpec(model="graft-tiny-vit", pretrained=None))
        torch.save(bundle.model.state_dict(), path)
    return ClipSpec(model="graft-tiny-vit", pretrained=str(path))


def make_checkpoint(folder: Path, spec: ClipSpec, kind: str, seed: int = 1, band_norm=None) -> Path:
    """A 'trained' checkpoint: CLIP's visual tower with perturbed weights (so it differs from the baseline).

    ``band_norm`` (a :class:`graft.imagery.BandNorm`) makes it a multispectral encoder reading those bands.
    """
    from graft.models.checkpoint import save_checkpoint
    from graft.models.satellite import build_encoder

    encoder = build_encoder(kind, load_clip(spec).model.visual, in_chans=band_norm.channels if band_norm else 3)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    run = f"run-{kind}" + (f"-{band_norm.channels}band" if band_norm else "")
    return save_checkpoint(folder / run, 10, encoder.state_dict(), {}, config_yaml="",
                           meta={"kind": kind, "clip": spec.model_dump(),
                                 "bands": band_norm.to_json() if band_norm else None})


def make_class_folders(root: Path, colours: dict[str, tuple[int, int, int]], per_class: int, size: int = 48,
                       noise: float = 25.0, seed: int = 0) -> Path:
    """An EuroSAT-layout ImageFolder: ROOT/<Class>/<Class>_<n>.png, each image its class colour plus noise."""
    rng = np.random.default_rng(seed)
    for cls, colour in colours.items():
        (root / cls).mkdir(parents=True)
        for n in range(per_class):
            arr = np.clip(np.array(colour) + rng.normal(0, noise, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / cls / f"{cls}_{n + 1}.png")
    return root


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_dataset(root: Path, spec: ClipSpec, n_tiles: int = 12, tile_size: int = 48, n_shards: int = 2,
                 seed: int = 0, embed: bool = True, splits=("train",), invert_photos: bool = False,
                 bands=("R", "G", "B")) -> Path:
    """Write manifest.parquet + tiles/photos shards; tiles get 1..6 photos whose colour follows the tile's.

    With ``invert_photos`` a tile's photos take the complementary colour, so an untrained encoder
    (a copy of CLIP's image tower) does not match tiles to their photos until training learns the mapping.
    ``bands`` names the tile bands, R, G, B first; bands beyond three hold random uint8 values.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "tiles").mkdir(exist_ok=True)
    (root / "photos").mkdir(exist_ok=True)
    bundle = load_clip(spec)
    tower = FrozenClipTower(bundle)
    record = spec_record(bundle)
    rows = []
    per_shard = int(np.ceil(n_tiles / n_shards))
    for s in range(n_shards):
        tname, pname = f"tiles/tiles-{s:05d}.tar", f"photos/photos-{s:05d}.tar"
        with wds.TarWriter(str(root / tname)) as tw, wds.TarWriter(str(root / pname)) as pw:
            for t in range(s * per_shard, min(n_tiles, (s + 1) * per_shard)):
                split = splits[t % len(splits)]
                lat, lon = 45.0 + 0.05 * t, 9.0
                grid = tile_grid_around(lat, lon, tile_size, 10.0)
                colour = rng.integers(0, 256, 3)
                tile = (colour[:, None, None] + rng.integers(-20, 20, (3, tile_size, tile_size))).clip(0, 255)
                tile = tile.astype(np.uint8)
                if len(bands) > 3:
                    extra = rng.integers(0, 256, (len(bands) - 3, tile_size, tile_size)).astype(np.uint8)
                    tile = np.concatenate([tile, extra])
                n = int(rng.integers(1, 7))
                rr = rng.uniform(0, tile_size, n)
                cc = rng.uniform(0, tile_size, n)
                plat, plon = grid.latlon_of(rr, cc)
                tile_id = f"t-{s:05d}-{t:05d}"
                photos, jpgs = [], []
                for j in range(n):
                    pid = f"p-{t:05d}-{j:02d}"
                    # Each tile's photos share a random texture, so a random tower still tells tiles apart.
                    base = 255 - colour if invert_photos else colour
                    ph = (base + np.random.default_rng(t).integers(-90, 90, (40, 40, 3))).clip(0, 255)
                    ph = ph.astype(np.uint8)
                    jpgs.append(_jpeg(ph))
                    photos.append({"photo_id": pid, "row": float(rr[j]), "col": float(cc[j])})
                    rows.append({"photo_id": pid, "lat": float(plat[j]), "lon": float(plon[j]),
                                 "taken_at": pd.Timestamp("2020-06-01", tz="UTC"), "tile_id": tile_id,
                                 "row": float(rr[j]), "col": float(cc[j]), "split": split, "source": "test",
                                 "license": "", "owner": "", "outdoor_score": 1.0, "tile_shard": tname,
                                 "photo_shard": pname, "tile_crs": grid.crs, "tile_date": None, "partition": s})
                meta = {"tile_id": tile_id, "grid": grid.to_json(), "bands": list(bands), "date": None,
                        "source": "test", "split": split, "photos": photos}
                sample = {"__key__": tile_id, "tif": encode_geotiff(tile, grid), "json": json.dumps(meta).encode()}
                if embed:
                    ims = torch.stack([bundle.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpgs])
                    emb = tower.encode_images(ims).numpy().astype(np.float16)
                    buf = io.BytesIO()
                    np.save(buf, emb)
                    sample["emb.npy"] = buf.getvalue()
                    sample["emb.json"] = json.dumps({"clip": record,
                                                     "photo_ids": [p["photo_id"] for p in photos]}).encode()
                tw.write(sample)
                for p, b in zip(photos, jpgs, strict=True):
                    pw.write({"__key__": p["photo_id"], "jpg": b, "json": json.dumps(p).encode()})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root
