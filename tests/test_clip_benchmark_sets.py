"""'templates: clip_benchmark' gives exactly the prompts (and classifier) CLIP_benchmark builds itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_data import tiny_clip_spec
from PIL import Image

from graft.config import ConfigError
from graft.evaluation.clip_benchmark_sets import clip_benchmark_prompts
from graft.evaluation.datasets import BENCHMARKS, load_benchmark
from graft.evaluation.models import class_embeddings
from graft.evaluation.run import EvalConfig, evaluate
from graft.models.clip_tower import load_clip

pytest.importorskip("clip_benchmark", reason="the 'benchmarks' extra (clip-benchmark) provides the template sets")
from clip_benchmark.datasets.builder import build_dataset  # noqa: E402
from clip_benchmark.metrics.zeroshot_classification import zero_shot_classifier  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EUROSAT_FOLDERS = sorted(BENCHMARKS["eurosat"].classnames)


def _torchvision_eurosat(root: Path, per_class: int = 2) -> Path:
    """The folder layout torchvision's EuroSAT (what CLIP_benchmark loads) expects: ROOT/eurosat/2750/<Class>/."""
    rng = np.random.default_rng(0)
    for i, cls in enumerate(EUROSAT_FOLDERS):
        d = root / "eurosat" / "2750" / cls
        d.mkdir(parents=True)
        for n in range(per_class):
            arr = np.clip(20 * i + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{cls}_{n + 1}.jpg")
    return root


class _Recorder:
    """A tokenizer + text model pair that records every prompt it is given and embeds it deterministically."""

    def __init__(self, bundle):
        self.bundle, self.prompts = bundle, []

    def tokenize(self, texts):
        self.prompts.extend(texts)
        return self.bundle.tokenizer(texts)

    def encode_text(self, tokens):
        return self.bundle.model.encode_text(tokens)


def test_eurosat_set_is_exactly_what_clip_benchmark_builds(tmp_path):
    root = _torchvision_eurosat(tmp_path)
    ds = build_dataset("eurosat", root=str(root), download=False)  # CLIP_benchmark's own dataset builder
    bundle = load_clip(tiny_clip_spec(tmp_path))

    theirs = _Recorder(bundle)
    with torch.no_grad():
        their_weights = zero_shot_classifier(theirs, theirs.tokenize, ds.classes, ds.templates, "cpu", amp=False)

    data = load_benchmark("eurosat", root / "eurosat")  # graft finds the 2750/ folder
    pset = clip_benchmark_prompts("eurosat", list(data.classes))
    ours = _Recorder(bundle)
    our_weights = class_embeddings(ours, ours.tokenize, pset.classnames, pset.templates)

    assert ours.prompts == theirs.prompts == pset.prompts()
    assert len(ours.prompts) == 10 * len(ds.templates) and "a centered satellite photo of forest." in ours.prompts
    torch.testing.assert_close(our_weights, their_weights.T, atol=1e-6, rtol=0)


def test_a_subset_of_eurosat_classes_keeps_each_class_its_name(tmp_path):
    full = clip_benchmark_prompts("eurosat", EUROSAT_FOLDERS)
    part = clip_benchmark_prompts("eurosat", ["Forest", "River", "SeaLake"])
    index = {c: i for i, c in enumerate(EUROSAT_FOLDERS)}
    assert part.classnames == [full.classnames[index[c]] for c in ("Forest", "River", "SeaLake")]
    with pytest.raises(ConfigError, match="'Glacier' is not a eurosat class"):
        clip_benchmark_prompts("eurosat", ["Forest", "Glacier"])


def test_resisc45_uses_the_package_templates_and_the_folder_names():
    import json
    from importlib import resources

    raw = json.loads(resources.files("clip_benchmark.datasets").joinpath(
        "en_zeroshot_classification_templates.json").read_text())["resisc45"]
    pset = clip_benchmark_prompts("resisc45", ["airplane", "basketball_court"])
    assert pset.prompts() == [t.format(c=c) for c in ("airplane", "basketball_court") for t in raw]
    with pytest.raises(ConfigError, match="no template set for benchmark type 'ucmerced'"):
        clip_benchmark_prompts("ucmerced", ["agricultural"])


def test_eval_reports_which_set_each_number_used(tmp_path):
    root = _torchvision_eurosat(tmp_path, per_class=3)
    spec = tiny_clip_spec(tmp_path)
    result = evaluate({"baseline": spec.model_dump(), "out_dir": str(tmp_path / "eval"), "device": "cpu",
                       "workers": 0, "plots": False,
                       "benchmarks": [{"name": "es", "type": "eurosat", "root": str(root / "eurosat"),
                                       "tasks": ["zeroshot"], "templates": ["clip_benchmark", "satellite"]}]})
    datasets = {r["dataset"] for r in result["rows"]}
    assert datasets == {"es[clip_benchmark]", "es[satellite]"}
    assert any(n.startswith("es[clip_benchmark] prompts: CLIP_benchmark ") for n in result["notes"])
    md = Path(result["report_md"]).read_text()
    assert "es[clip_benchmark]" in md and "CLIP_benchmark" in md


@pytest.mark.parametrize("bench, message", [
    ({"name": "uc", "type": "ucmerced", "root": "x", "templates": "clip_benchmark"}, "CLIP_benchmark has no template"),
    ({"name": "es", "type": "eurosat", "root": "x", "templates": ["aerial"]}, "no template set named 'aerial'"),
])
def test_config_names_a_set_that_does_not_exist(bench, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(baseline={"model": "graft-tiny-vit", "pretrained": None}, benchmarks=[bench])
