"""Why: the recipes did not chain.

train/*.yaml wrote runs/graft-s2-image while eval/sentinel2_suite.yaml read runs/s2-image, the
READMEs disagreed on the export path, eval/naip_suite.yaml expected NAIP runs no training recipe
made, and the suites failed on the first benchmark not unpacked. Every shipped recipe is loaded
here through graft's own config classes, and each one's input must be the output of the one
before it: build -> embed -> train -> eval -> export, for Sentinel-2 and for NAIP.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from graft.config import load_config
from graft.evaluation.run import EvalConfig
from graft.pipeline.build import BuildConfig
from graft.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
READMES = ["README.md", "data_pipeline/README.md", "train/README.md", "eval/README.md"]


def _make_vars() -> dict[str, str]:
    text = (REPO / "Makefile").read_text()
    return dict(re.findall(r"^([A-Z_]+) \?= (\S+)$", text, flags=re.M))


@pytest.fixture()
def recipes(tmp_path, monkeypatch):
    """Every shipped recipe, validated from a fresh working directory as `make` would run them.

    A training recipe validates only if its dataset exists, so each build recipe's output is
    created first (a manifest, as `graft build` writes): a recipe that reads anything else fails.
    """
    monkeypatch.chdir(tmp_path)
    builds = {p.name: load_config(BuildConfig, p) for p in sorted((REPO / "data_pipeline").glob("*.yaml"))}
    for cfg in builds.values():
        Path(cfg.out_dir).mkdir(parents=True)
        (Path(cfg.out_dir) / "manifest.parquet").write_bytes(b"")
    trains = {p.name: load_config(TrainConfig, p) for p in sorted((REPO / "train").glob("*.yaml"))}
    evals = {p.name: load_config(EvalConfig, p) for p in sorted((REPO / "eval").glob("*.yaml"))}
    return builds, trains, evals


def test_every_recipe_reads_what_the_one_before_writes(recipes):
    builds, trains, evals = recipes
    datasets = {cfg.out_dir for cfg in builds.values()}
    runs = {cfg.run_dir: cfg for cfg in trains.values()}
    assert {"sentinel2.yaml", "naip.yaml"} <= set(builds)
    assert len(trains) >= 4 and len(evals) == 2

    # build -> (embed) -> train: every training recipe reads a dataset a build recipe writes.
    for name, cfg in trains.items():
        assert cfg.data.dataset in datasets, f"train/{name} reads {cfg.data.dataset}, built: {sorted(datasets)}"
    # train -> eval: every model of a suite is a run a training recipe writes, trained on the dataset
    # whose held-out pairs the same suite scores; every training recipe is evaluated by some suite.
    evaluated = set()
    for name, cfg in evals.items():
        pair_roots = {b.root for b in cfg.benchmarks if b.type == "graft_pairs"}
        assert pair_roots <= datasets, f"eval/{name}: pairs from {pair_roots}"
        for m in cfg.models:
            assert m.checkpoint in runs, f"eval/{name} reads {m.checkpoint}; runs written: {sorted(runs)}"
            assert {runs[m.checkpoint].data.dataset} == pair_roots, f"eval/{name}: {m.name}"
            evaluated.add(m.checkpoint)
        assert cfg.skip_missing, f"eval/{name}: optional benchmarks are skipped when not unpacked"
    assert evaluated == set(runs)
    # embed uses the training recipes' tower: every recipe on one dataset shares one clip spec.
    for ds in datasets:
        assert len({(c.clip.model, c.clip.pretrained) for c in trains.values() if c.data.dataset == ds}) == 1


def test_makefile_and_readmes_use_the_recipe_paths(recipes):
    builds, trains, evals = recipes
    make = (REPO / "Makefile").read_text()
    v = _make_vars()
    datasets = {cfg.out_dir for cfg in builds.values()}
    runs = {cfg.run_dir for cfg in trains.values()}
    # Defaults of the variable paths chain, and every recipe has its target.
    assert v["DATASET"] in datasets and v["RUN"] in runs and v["EXPORT"] == "$(RUN)-export"
    assert load_config(TrainConfig, REPO / v["TRAIN_CONFIG"]).data.dataset == v["DATASET"]
    for folder, names in (("data_pipeline", builds), ("train", trains), ("eval", evals)):
        for name in names:
            assert f"{folder}/{name}" in make, f"no make target runs {folder}/{name}"
    # Every file a README, script or the Makefile names exists, and every runs/ path it names is
    # written by a recipe (or by the demos, the README's notebook example, or graft map's default cache).
    written = (datasets | runs | {f"{r}-export" for r in runs} | {c.out_dir for c in evals.values()}
               | {"runs/demo", "runs/demo-ms", "runs/notebook", "runs/map"})
    for doc in [*READMES, "Makefile", "train/torchrun.sh", "train/slurm.sbatch"]:
        text = (REPO / doc).read_text()
        for ref in re.findall(r"\b((?:data_pipeline|train|eval)/[\w.-]+\.yaml)\b", text):
            assert (REPO / ref).is_file(), f"{doc} names {ref}, which does not exist"
        for path in re.findall(r"\bruns/[\w.-]+", text):
            assert path in written, f"{doc} names {path}, which no recipe writes"
