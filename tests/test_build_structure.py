"""The build package stays legible: short functions, and no branching on the ground source outside its modules."""

from __future__ import annotations

import ast
from pathlib import Path

import graft.pipeline.build as build_pkg

BUILD_DIR = Path(build_pkg.__file__).parent
MAX_FUNCTION_LINES = 60


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in ``source`` longer than ``limit`` lines, decorators included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            lines = node.end_lineno - first + 1
            if lines > limit:
                found.append((node.name, lines))
    return found


def _modules() -> list[Path]:
    modules = sorted(BUILD_DIR.rglob("*.py"))
    assert len(modules) >= 10, f"expected the build package's modules under {BUILD_DIR}, found {modules}"
    return modules


def test_no_function_in_the_build_package_is_over_60_lines():
    too_long = {str(p.relative_to(BUILD_DIR)): long_functions(p.read_text()) for p in _modules()}
    assert {k: v for k, v in too_long.items() if v} == {}


def test_the_length_check_sees_long_functions_and_methods_decorators_included():
    def method(body_lines: int) -> str:
        body = "\n".join(f"        x{i} = {i}" for i in range(body_lines))
        return f"class C:\n    @staticmethod\n    def g():\n{body}\n"

    assert long_functions("def f():\n" + "\n".join(f"    x{i} = {i}" for i in range(60)) + "\n") == [("f", 61)]
    assert long_functions(method(58)) == []  # decorator + def + 58 lines: exactly the limit
    assert long_functions(method(59)) == [("g", 61)]


def _compares_ground_kind(source: str) -> bool:
    """Whether ``source`` compares ``<x>.ground.kind`` with anything (``==``, ``in``, ...)."""
    def is_ground_kind(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "kind"
                and isinstance(node.value, ast.Attribute) and node.value.attr == "ground")

    return any(isinstance(node, ast.Compare) and any(map(is_ground_kind, [node.left, *node.comparators]))
               for node in ast.walk(ast.parse(source)))


def test_nothing_in_the_build_branches_on_the_ground_kind():
    """A new ground source is one ground_*.py module, chosen from the registry: no ``if ground.kind == ...``."""
    assert _compares_ground_kind('if cfg.ground.kind == "flickr":\n    pass\n')
    assert not _compares_ground_kind("kind = GROUND_KINDS[cfg.ground.kind]\n")
    branching = [str(p.relative_to(BUILD_DIR)) for p in _modules() if _compares_ground_kind(p.read_text())]
    assert branching == []
    assert set(build_pkg.grounds.GROUND_KINDS) == {"folder", "flickr"}
