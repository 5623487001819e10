"""Only graft.dataset knows the on-disk dataset format: no other module spells a shard member name,
opens a tar or a WebDataset, or names the shard files.

The scan reads the code (ast), so it sees what the code uses, not prose: a member name counts where it is
used as a sample's key (``sample["tif"]``, ``{"jpg": ...}``, ``"json" in sample``, ``sample.get("png")``),
the WebDataset key and the embedding members anywhere. Benchmark loaders checking a file's ``.tif`` suffix,
or a plot saved with ``format="png"``, are not shard format and do not count.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import graft
from graft.dataset import members

ROOT = Path(graft.__file__).resolve().parent
FORMAT_PACKAGE = ROOT / "dataset"

# Member extensions as graft.dataset defines them: used as a sample key anywhere else is a leak.
MEMBER_EXTS = {members.TILE_IMAGE, members.RECORD, members.PHOTO_IMAGE, *members.PHOTO_IMAGE_ALTERNATIVES,
               *members.EMB_MEMBERS}
# Names only the format uses: a leak wherever they appear as a string.
FORMAT_ONLY = {members.KEY, *members.EMB_MEMBERS}
SHARD_READERS = {"tarfile", "webdataset"}
SHARD_FILE_RE = re.compile(r"\*\.tar\b|\b(tiles|photos)-(\*|\{|\d|$)")


def _constant(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def format_leaks(source: str, filename: str = "<module>") -> list[str]:
    """``line: what`` for every place the code ``source`` uses the dataset format directly."""
    tree = ast.parse(source, filename=filename)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr)}
    leaks = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            leaks += [f"{node.lineno}: imports {a.name}" for a in node.names if a.name.split(".")[0] in SHARD_READERS]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in SHARD_READERS:
            leaks.append(f"{node.lineno}: imports from {node.module}")
        keys: list[ast.AST | None] = []
        if isinstance(node, ast.Subscript):
            keys = [node.slice]
        elif isinstance(node, ast.Dict):
            keys = list(node.keys)
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            keys = [node.left]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("get", "pop", "setdefault") and node.args):
            keys = [node.args[0]]
        leaks += [f"{node.lineno}: member name {k!r} used as a sample key" for k in map(_constant, keys)
                  if k in MEMBER_EXTS]
        text = _constant(node)
        if text is not None and id(node) not in docstrings:
            if text in FORMAT_ONLY:
                leaks.append(f"{node.lineno}: format name {text!r}")
            elif SHARD_FILE_RE.search(text):
                leaks.append(f"{node.lineno}: shard file name in {text!r}")
    return leaks


def test_no_module_outside_graft_dataset_knows_the_format():
    found = []
    for f in sorted(ROOT.rglob("*.py")):
        if FORMAT_PACKAGE in f.parents:
            continue
        found += [f"{f.relative_to(ROOT.parent)}:{leak}" for leak in format_leaks(f.read_text(), str(f))]
    assert not found, "modules outside graft.dataset use the dataset format directly:\n" + "\n".join(found)


def test_graft_dataset_itself_is_seen_by_the_scan():
    """The scan is not blind: the format package, scanned the same way, is full of what it looks for."""
    leaks = [leak for f in FORMAT_PACKAGE.rglob("*.py") for leak in format_leaks(f.read_text(), str(f))]
    assert any("imports tarfile" in x for x in leaks) and any("imports webdataset" in x for x in leaks)
    assert any("tiles-*.tar" in x for x in leaks) and any("'__key__'" in x for x in leaks)


def test_planted_leaks_are_found_and_unrelated_uses_are_not():
    planted = '''
import tarfile
import webdataset as wds

def read(sample, path):
    meta = sample["json"]
    if "emb.npy" not in sample:
        return {"__key__": "x", "tif": b""}
    image = sample.get("jpg") or sample.get("png")
    return sorted(path.glob("tiles/*.tar")), f"{path}/photos-{1:05d}.tar"
'''
    leaks = format_leaks(planted)
    assert sorted(int(x.split(":")[0]) for x in leaks) == [2, 3, 6, 7, 7, 8, 8, 9, 9, 10, 10], leaks

    unrelated = '''
"""Reads ``tif`` files; shards hold ``KEY.emb.npy`` (see graft.dataset)."""
IMAGE_EXTS = (".jpg", ".png", ".tif")

def save(fig, path, weights="resnet18_places365.pth.tar"):
    fig.savefig(path, format="png")
    report = {"rows": [], "plots": ["a.png"]}
    return path.suffix.lower() in IMAGE_EXTS, report["rows"], weights
'''
    assert format_leaks(unrelated) == []
