"""Why: a late eval failure discarded the finished work.

With ``alignment_k`` >= the pair count, eval raised after the other benchmarks had finished and wrote
no report. Cheap preconditions are now checked before any model loads, and a benchmark that still
fails late is noted in the report while the report of the rest is written.
"""

from __future__ import annotations

import json

import pytest
import yaml
from helpers_data import tiny_clip_spec
from test_eval_tasks import make_eurosat, make_pairs

import graft.evaluation.run as run_mod
from graft.cli import main
from graft.config import ConfigError
from graft.evaluation.run import EvalConfig, evaluate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("late")
    return {"spec": tiny_clip_spec(tmp / "clip"), "eurosat": make_eurosat(tmp / "eurosat"),
            "pairs": make_pairs(tmp / "pairs", n=8)}


def _cfg(sets, out, **extra) -> dict:
    return {"baseline": sets["spec"].model_dump(),
            "benchmarks": [{"name": "eurosat", "type": "eurosat", "root": str(sets["eurosat"])},
                           {"name": "pairs", "type": "graft_pairs", "root": str(sets["pairs"])}],
            "out_dir": str(out), "workers": 0, "batch_size": 8, "device": "cpu", "plots": False, **extra}


def test_cheap_preconditions_first_and_late_failures_keep_the_report(sets, tmp_path, monkeypatch, capsys):
    real_load = run_mod.load_models

    def no_models(*a, **k):
        raise AssertionError("models must not load before the preconditions are checked")

    # alignment_k >= the pair count fails at once, naming the key and the benchmark.
    monkeypatch.setattr(run_mod, "load_models", no_models)
    with pytest.raises(ConfigError, match=r"pairs: alignment_k=10 needs more than 10 tiles, .* has 8"):
        evaluate(EvalConfig(**_cfg(sets, tmp_path / "a", alignment_k=10)))
    monkeypatch.setattr(run_mod, "load_models", real_load)

    # A benchmark failing after the models ran is noted; the others' report is written.
    def broken(*a, **k):
        raise ValueError("alignment_score: embeddings contain NaN or inf")

    monkeypatch.setattr(run_mod, "alignment_score", broken)
    out = tmp_path / "b"
    result = evaluate(EvalConfig(**_cfg(sets, out, alignment_k=3)))
    assert set(result["failed"]) == {"pairs"}
    report = json.loads((out / "report.json").read_text())
    assert any(r["dataset"] == "eurosat[satellite]" and r["task"] == "zeroshot_classification"
               for r in report["rows"])
    assert any("benchmark pairs FAILED" in n for n in report["notes"])
    assert "benchmark pairs FAILED" in (out / "report.md").read_text()

    # The command says so in one line and exits 2, after writing the report.
    cfg_file = tmp_path / "suite.yaml"
    cfg_file.write_text(yaml.safe_dump(_cfg(sets, tmp_path / "c", alignment_k=3)))
    capsys.readouterr()
    assert main(["eval", str(cfg_file)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert last.startswith("graft eval: error: 1 benchmark(s) failed: pairs: ValueError")
    assert (tmp_path / "c" / "report.md").is_file()
