"""Issue 12: a build that keeps nothing is an error that says why and what to do; the summary lists real files."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers_build import REGION, World, build_config, jpeg_with_gps, write_mosaic

from graft.cli import main as graft_main
from graft.config import validate
from graft.pipeline.build import BuildConfig, build_dataset
from graft.sources.geotiff import GeoTiffSource


def _world(root: Path) -> World:
    photos = root / "photos"
    photos.mkdir(parents=True)
    return World(root=root, photos_dir=photos, mosaic=write_mosaic(root / "mosaic.tif"))


def _photo(world: World, name: str, lat: float | None, lon: float | None) -> None:
    rgb = np.random.default_rng(len(name) + hash(name) % 1000).integers(0, 255, (48, 64, 3)).astype(np.uint8)
    (world.photos_dir / name).write_bytes(jpeg_with_gps(rgb, lat, lon, dt.datetime(2021, 5, 1, 12)))


def _run_cli(tmp_path: Path, world: World, capsys) -> tuple[int, str]:
    """Exit code and the error line (progress bars also write to stderr: the error is the one line after them)."""
    cfg = tmp_path / "build.yaml"
    cfg.write_text(yaml.safe_dump(build_config(world, tmp_path / "ds")))
    code = graft_main(["build", str(cfg)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    return code, "\n".join(err)


def test_empty_photo_folder_is_an_error(tmp_path, capsys):
    world = _world(tmp_path / "world")
    code, err = _run_cli(tmp_path, world, capsys)
    assert code == 2 and err.startswith("graft build: error: ") and "\n" not in err, err
    assert "no photo" in err and str(world.photos_dir) in err


def test_photos_without_gps_name_the_sidecar(tmp_path, capsys):
    world = _world(tmp_path / "world")
    for i in range(3):
        _photo(world, f"p{i}.jpg", None, None)
    code, err = _run_cli(tmp_path, world, capsys)
    assert code == 2 and err.startswith("graft build: error: ") and "\n" not in err, err
    assert "no_gps" in err and "3" in err
    assert "path, lat, lon, taken_at" in err and "sidecar" in err


def test_photos_outside_the_region_print_both_extents(tmp_path, capsys):
    world = _world(tmp_path / "world")
    _photo(world, "a.jpg", 48.1, 11.5)
    _photo(world, "b.jpg", 48.3, 11.7)
    code, err = _run_cli(tmp_path, world, capsys)
    assert code == 2 and err.startswith("graft build: error: ") and "\n" not in err, err
    assert "outside_region" in err
    # the region's bbox and the photos' extent, both as numbers
    assert all(f"{v:.4f}" in err for v in REGION), err
    assert all(f"{v:.4f}" in err for v in (11.5, 48.1, 11.7, 48.3)), err


def test_summary_lists_only_files_that_exist(tmp_path):
    world = _world(tmp_path / "world")
    _photo(world, "a.jpg", None, None)
    cfg = validate(BuildConfig, build_config(world, tmp_path / "ds"))
    try:
        summary = build_dataset(cfg, satellite=GeoTiffSource(cfg.satellite.geotiff))
    except Exception as e:  # noqa: BLE001 - an empty build raises, and carries its summary
        summary = e.summary
    listed = [m.group(1) for m in re.finditer(r"^\s+(/\S+)", summary.table(), re.M)]
    assert listed, summary.table()
    assert "*" not in summary.table(), "a glob is not a file"
    for path in listed:
        assert Path(path.rstrip(",")).exists(), f"summary lists {path}, which does not exist"


@pytest.mark.parametrize("n_files", [2])
def test_a_build_with_tiles_lists_its_shards(tmp_path, n_files):
    world = _world(tmp_path / "world")
    lat0, lon0 = (REGION[1] + REGION[3]) / 2, (REGION[0] + REGION[2]) / 2
    for i in range(n_files):
        _photo(world, f"p{i}.jpg", lat0 + 1e-4 * i, lon0)
    cfg = validate(BuildConfig, build_config(world, tmp_path / "ds"))
    summary = build_dataset(cfg, satellite=GeoTiffSource(cfg.satellite.geotiff))
    table = summary.table()
    assert summary.stats["photos"]["kept"] == n_files
    shards = sorted(Path(cfg.out_dir).glob("*/*.tar"))
    assert shards and all(str(p) in table for p in shards), table
