"""Why: `graft doctor --config` approved a config with a misspelt key, and never checked the
indoor-filter weights or the CLIP weights.

The doctor now validates the whole config first, then looks for every weights file the config
needs on disk and in the download caches, without downloading anything.
"""

from __future__ import annotations

import pytest
import yaml

from graft import doctor
from graft.cli import main
from graft.pipeline.indoor import PLACES365_RESNET18_URL


@pytest.fixture()
def isolated(monkeypatch, tmp_path):
    """Empty download caches and no credentials; only light packages are import-checked."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(doctor, "CORE_PACKAGES", [("numpy", "numpy", "everything")])


def _dataset_config(tmp_path, **changes) -> dict:
    (tmp_path / "photos").mkdir(exist_ok=True)
    (tmp_path / "tiles").mkdir(exist_ok=True)
    (tmp_path / "tiles" / "a.tif").write_bytes(b"")
    cfg = {"out_dir": str(tmp_path / "out"), "region": {"bbox": [0.0, 0.0, 1.0, 1.0]},
           "ground": {"kind": "folder", "folder": {"root": str(tmp_path / "photos")}},
           "filter": {"kind": "none"},
           "satellite": {"kind": "geotiff", "geotiff": {"paths": [str(tmp_path / "tiles" / "*.tif")], "gsd": 10,
                                                       "size": 64}}}
    cfg.update(changes)
    return cfg


def _write(tmp_path, cfg) -> str:
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_doctor_validates_the_config_and_finds_every_weights_file(isolated, tmp_path, capsys):
    good = _dataset_config(tmp_path)
    assert main(["doctor", "--offline", "--config", _write(tmp_path, good)]) == 0
    capsys.readouterr()

    # A misspelt key fails, naming it.
    typo = dict(good, ground={**good["ground"], "max_per_tlie": 25})
    assert main(["doctor", "--offline", "--config", _write(tmp_path, typo)]) == 1
    out = capsys.readouterr().out
    assert "config valid" in out and "ground.max_per_tlie: unknown key" in out

    # The paper's filter: a URL not downloaded yet is missing (nothing is downloaded); once in the cache, ok.
    places = dict(good, filter={"kind": "resnet18-places365", "weights": PLACES365_RESNET18_URL,
                                "cache_dir": str(tmp_path / "filters")})
    rows = {r.name: r for r in doctor.run_doctor(config=_write(tmp_path, places), offline=True)}
    assert rows["filter weights"].status == "MISSING" and "not downloaded yet" in rows["filter weights"].detail
    assert not (tmp_path / "filters").exists()
    (tmp_path / "filters").mkdir()
    (tmp_path / "filters" / "resnet18_places365.pth.tar").write_bytes(b"weights")
    rows = {r.name: r for r in doctor.run_doctor(config=_write(tmp_path, places), offline=True)}
    assert rows["filter weights"].status == "ok"

    # The CLIP filter's tower: OpenAI ViT-B/16 is not in the (empty) caches; a local file is.
    clip = dict(good, filter={"kind": "clip", "clip": {"model": "ViT-B-16-quickgelu", "pretrained": "openai"}})
    rows = {r.name: r for r in doctor.run_doctor(config=_write(tmp_path, clip), offline=True)}
    assert rows["filter.clip weights"].status == "MISSING" and rows["filter.clip weights"].blocking
    assert "would be downloaded" in rows["filter.clip weights"].detail
    (tmp_path / "vit.bin").write_bytes(b"weights")
    clip["filter"]["clip"]["pretrained"] = str(tmp_path / "vit.bin")
    rows = {r.name: r for r in doctor.run_doctor(config=_write(tmp_path, clip), offline=True)}
    assert rows["filter.clip weights"].status == "ok"
