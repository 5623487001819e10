"""The import graph of src/graft follows the layer table of graft.dev.layers and has no cycle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import graft
from graft.dev import layers

ROOT = Path(graft.__file__).resolve().parent


def _run(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    return subprocess.run([sys.executable, "-m", "graft.dev.layers", "--root", str(root)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_the_real_tree_follows_the_layers():
    assert layers.check(ROOT) == []
    done = _run(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 violation(s)" in done.stdout


@pytest.fixture()
def tree(tmp_path):
    copy = tmp_path / "graft"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _plant(path: Path, code: str) -> int:
    """Append ``code`` to a module; returns the line number of its first line."""
    text = path.read_text()
    path.write_text(text + "\n" + code + "\n")
    return text.count("\n") + 2


def test_a_source_importing_the_pipeline_fails(tree):
    # A lazy (function-level) import is a dependency too.
    line = _plant(tree / "sources" / "folder.py",
                  "def _sneaky():\n    from graft.pipeline.build import BuildConfig\n    return BuildConfig")
    done = _run(tree)
    assert done.returncode == 1
    assert f"graft/sources/folder.py:{line + 1}: graft.sources.folder (sources) imports graft.pipeline.build" \
        in done.stdout
    # ... and it closes a cycle between the two subpackages (the build imports the sources).
    assert "import cycle between subpackages graft.pipeline.build, graft.sources" in done.stdout


def test_evaluation_importing_a_source_fails(tree):
    line = _plant(tree / "evaluation" / "datasets" / "pairs.py", "import graft.sources.base")
    problems = layers.check(tree)
    assert any(p.startswith(f"graft/evaluation/datasets/pairs.py:{line}: ") and "(sources)" in p for p in problems)


def test_a_cycle_inside_one_layer_fails(tree):
    # imagery imports geometry; geometry importing imagery (relative form) closes a module cycle.
    _plant(tree / "geometry.py", "from . import imagery")
    problems = layers.check(tree)
    assert len(problems) == 1 and "import cycle between modules graft.geometry, graft.imagery" in problems[0]


def test_a_module_outside_the_table_fails(tree):
    (tree / "misc.py").write_text("import graft.config\n")
    problems = layers.check(tree)
    assert problems and "graft.misc is in no unit" in problems[0]
