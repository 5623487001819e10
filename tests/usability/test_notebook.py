"""Why: a notebook user had no front door.

`import graft` exposed nothing, the stages lived at deep paths, and the TrainConfig sections had no
docstrings. The stages and their configs are now importable from `graft` (lazily: `import graft`
loads neither torch nor open_clip), every config field is documented, and the README's notebook
example runs here on the quick demo's outputs.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[2]
STAGES = ["build_dataset", "embed_dataset", "train", "evaluate", "export_checkpoint"]
CONFIGS = ["BuildConfig", "ClipSpec", "TrainConfig", "EvalConfig"]


def test_front_door_is_cheap_and_complete():
    code = ("import sys, graft\n"
            "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'import graft is heavy'\n"
            f"names = {STAGES + CONFIGS!r}\n"
            "missing = [n for n in names if n not in dir(graft)]\n"
            "assert not missing, missing\n"
            "from graft import TrainConfig, ClipSpec\n"
            "assert 'torch' not in sys.modules, 'a config class pulled in torch'\n"
            "from graft import build_dataset, embed_dataset, train, evaluate, export_checkpoint\n"
            "assert all(callable(f) for f in (build_dataset, embed_dataset, train, evaluate, export_checkpoint))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def _undocumented(model: type[BaseModel], seen: set) -> list[str]:
    """Fields with neither a Field description nor an entry in their class's "Attributes:" docstring."""
    if model in seen:
        return []
    seen.add(model)
    doc = inspect.getdoc(model) or ""
    out = []
    for name, field in model.model_fields.items():
        if not (field.description or re.search(rf"^\s*{re.escape(name)}( \(.*?\))?:", doc, re.M)):
            out.append(f"{model.__name__}.{name}")
        stack = [field.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                out += _undocumented(t, seen)
            stack += list(getattr(t, "__args__", ()))
    return out


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_field_is_documented(name):
    import graft

    assert _undocumented(getattr(graft, name), set()) == []


def test_readme_notebook_example_runs_on_the_quick_demo(quick_demo, tmp_path, one_torch_thread):
    out, _ = quick_demo
    readme = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "from graft import" in b]
    assert len(blocks) == 1, "one notebook example in README.md"
    # The example reads runs/demo (here: the shared quick demo, read only) and writes runs/notebook.
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(out, target_is_directory=True)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme_example"})
    finally:
        os.chdir(cwd)
    assert (tmp_path / "runs" / "notebook" / "image" / "checkpoints" / "step-0000040").is_dir()
    assert (tmp_path / "runs" / "notebook" / "eval" / "report.md").is_file()
    assert (tmp_path / "runs" / "notebook" / "export" / "open_clip_config.json").is_file()
