"""The graft command: --help everywhere, clean errors, and no training stack behind eval/export."""

import subprocess
import sys

import pytest

from graft.cli import HANDLERS, build_parser, main


def test_every_subcommand_has_help(capsys):
    for name in HANDLERS:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: graft {name}" in out


def test_bad_config_is_one_clear_line(tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("run_dir: x\ndata: {dataset: /nonexistent}\noptim: {lrr: 1}\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr: unknown key" in err
    assert "data.dataset" in err
    assert "Traceback" not in err


def test_eval_and_export_do_not_import_training():
    code = (
        "import sys, graft.evaluation.run, graft.evaluation.export;"
        "bad = [m for m in sys.modules if m.startswith('graft.training')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
