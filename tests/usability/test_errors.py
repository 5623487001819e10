"""Why: errors came in two styles.

Config and credential errors were one clear line with exit 2, while CheckpointError, DataError,
ExportError, YAML parse errors (in files and in --set) and ValueError went through logging with a
type name and exit 1. Every expected error is now ``graft COMMAND: error: ...`` on one line, exit 2,
naming the input; the traceback comes only with -v.
"""

from __future__ import annotations

import pytest
import yaml

from graft.cli import main
from graft.errors import GraftError

from .conftest import train_config


def _cases(tmp_path, world):
    train_yaml = tmp_path / "train.yaml"
    cfg = train_config(world, tmp_path / "run").model_dump(mode="json")
    train_yaml.write_text(yaml.safe_dump(cfg))
    broken = tmp_path / "broken.yaml"
    broken.write_text("run_dir: runs/x\ndata:\n  dataset: d\n   batch_size: 4\n")
    (tmp_path / "empty-run").mkdir()
    (tmp_path / "not-an-export").mkdir()
    (tmp_path / "not-an-export" / "notes.txt").write_text("mine")
    return {
        "CheckpointError": (["export", str(tmp_path / "empty-run"), str(tmp_path / "out")],
                            f"graft export: error: no valid checkpoint in {tmp_path / 'empty-run'}"),
        "ExportError": (["export", str(tmp_path / "empty-run"), str(tmp_path / "not-an-export")],
                        f"graft export: error: {tmp_path / 'not-an-export'} exists and is not a graft/open_clip export"),
        "DataError": (["train", str(train_yaml), "--set", "data.split=nosuch"],
                      "graft train: error: "),
        "YAML file": (["train", str(broken)], f"graft train: error: config {broken} is not valid YAML at line 4"),
        "YAML --set": (["train", str(train_yaml), "--set", "train.max_steps=[1"],
                       "graft train: error: --set train.max_steps: value '[1' is not valid YAML (line 1"),
        "ValueError": (["filter-train", str(tmp_path), str(tmp_path / "filter.pt")],
                       f"graft filter-train: error: filter-train: output {tmp_path / 'filter.pt'} must end in "
                       ".safetensors"),
    }


@pytest.mark.parametrize("case", ["CheckpointError", "ExportError", "DataError", "YAML file", "YAML --set",
                                  "ValueError"])
def test_expected_errors_are_one_line_exit_2(case, tiny_world, tmp_path, capsys):
    argv, start = _cases(tmp_path, tiny_world)[case]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith(start), err
    assert "\n" not in err and "Traceback" not in err and " ERROR " not in err
    if case == "DataError":
        assert "no tiles in split 'nosuch'" in err
    # -v shows the traceback instead.
    with pytest.raises((GraftError, ValueError)):
        main(["-v", *argv])
