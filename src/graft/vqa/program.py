"""VQA programs as data: a JSON expression language, its validator and its interpreter.

A program is a JSON object ``{"op": NAME, ...arguments}`` whose arguments may
be programs themselves, e.g. "Are there more buildings than roads?"::

    {"op": "compare", "cmp": "gt",
     "left":  {"op": "count", "of": {"op": "regions", "concept": "building"}},
     "right": {"op": "count", "of": {"op": "regions", "concept": "road"}}}

:data:`OPS` is the whole language: every operation, its arguments and their
types, and the type it returns. :func:`parse_program` checks a candidate
(text or already-decoded JSON) against it **before** anything runs: bounded
size and nesting (checked on the raw text, before decoding), known operations
only, no unknown or missing arguments, every argument of the right type,
concepts plain words. A refused program raises :class:`ProgramError` with a
stable ``reason`` key and a message saying what was wrong. :func:`run_program`
then walks the validated tree, dispatching each operation to a function of
:mod:`graft.vqa.primitives` through a fixed table: nothing a writer produced
is ever passed to ``exec``, ``eval`` or an import.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from graft.vqa import primitives as P

MAX_TEXT_CHARS = 4000
MAX_DEPTH = 8
MAX_NODES = 40
MAX_OPTIONS = 10
CONCEPT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9 '\-]{0,59}$")
COMPARATORS = ("gt", "lt", "eq", "ne", "ge", "le")
NUMERIC = ("count", "area", "number")

# op -> ({argument: kind}, optional arguments, returned type). Kinds: a value type (an expression returning
# it), "numeric" (count, area or number), "concept", "enum:<a|b|c>", "literal_number", "options".
OPS: dict[str, tuple[dict[str, str], frozenset[str], str]] = {
    "regions": ({"concept": "concept", "size": "enum:" + "|".join(P.SIZES), "shape": "enum:" + "|".join(P.SHAPES)},
                frozenset({"size", "shape"}), "regions"),
    "relate": ({"of": "regions", "relation": "enum:" + "|".join(P.RELATIONS), "to": "regions"}, frozenset(),
               "regions"),
    "exists": ({"of": "regions"}, frozenset(), "bool"),
    "count": ({"of": "regions"}, frozenset(), "count"),
    "area": ({"of": "regions"}, frozenset(), "area"),
    "fraction": ({"of": "regions"}, frozenset(), "number"),
    "number": ({"value": "literal_number"}, frozenset(), "number"),
    "compare": ({"cmp": "enum:" + "|".join(COMPARATORS), "left": "numeric", "right": "numeric"}, frozenset(),
                "bool"),
    "not": ({"of": "bool"}, frozenset(), "bool"),
    "choose": ({"options": "options"}, frozenset(), "label"),
}
"""The program language. ``choose`` options map each answer to the prompt describing it."""


class ProgramError(ValueError):
    """A program was refused. ``reason`` is a stable key (for counting), the message says what and where."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class Program:
    """A validated program and the type of its answer (``bool``, ``count``, ``area``, ``number``, ``label``)."""

    tree: dict[str, Any]
    type: str

    def to_json(self) -> str:
        return json.dumps(self.tree, sort_keys=True)


def language_description() -> str:
    """The language in a few lines, for a chat model's system prompt (generated from :data:`OPS`)."""
    lines = []
    for op, (args, optional, returns) in OPS.items():
        shown = ", ".join(f'"{a}": {k}{" (optional)" if a in optional else ""}' for a, k in args.items())
        lines.append(f'{{"op": "{op}", {shown}}} -> {returns}')
    return "\n".join(lines)


def _raw_depth(text: str) -> int:
    """Deepest bracket nesting of JSON text, strings skipped (so depth is bounded before decoding)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_program(candidate: str | dict[str, Any]) -> Program:
    """Validate a candidate program (JSON text or decoded JSON) against :data:`OPS`.

    Raises:
        ProgramError: with reason ``too_long``, ``too_deep``, ``not_json``, ``not_an_object``,
            ``too_many_nodes``, ``unknown_op``, ``missing_argument``, ``unknown_argument``, ``bad_argument``
            or ``wrong_type``.
    """
    if isinstance(candidate, str):
        if len(candidate) > MAX_TEXT_CHARS:
            raise ProgramError("too_long", f"{len(candidate)} characters; a program has at most {MAX_TEXT_CHARS}")
        depth = _raw_depth(candidate)
        # Each operation is one object; a choose's options add one more bracket level.
        if depth > MAX_DEPTH + 1:
            raise ProgramError("too_deep", f"brackets nest {depth} deep; a program nests at most {MAX_DEPTH} "
                               "operations")
        try:
            tree = json.loads(candidate)
        except json.JSONDecodeError as e:
            raise ProgramError("not_json", f"not a JSON document ({e.msg} at character {e.pos}); a program is "
                               'one JSON object like {"op": "exists", "of": {"op": "regions", "concept": "road"}}'
                               ) from None
    else:
        tree = candidate
    nodes = [0]
    kind = _check(tree, "program", 1, nodes)
    return Program(tree=tree, type=kind)


def _check(node: Any, where: str, depth: int, nodes: list[int]) -> str:
    if depth > MAX_DEPTH:
        raise ProgramError("too_deep", f"{where}: operations nest deeper than {MAX_DEPTH}")
    nodes[0] += 1
    if nodes[0] > MAX_NODES:
        raise ProgramError("too_many_nodes", f"more than {MAX_NODES} operations")
    if not isinstance(node, dict):
        raise ProgramError("not_an_object", f"{where}: expected an operation object {{\"op\": ...}}, got "
                           f"{type(node).__name__}")
    op = node.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ProgramError("unknown_op", f"{where}: operation {str(op)[:40]!r} is not one of {sorted(OPS)}")
    args, optional, returns = OPS[op]
    given = set(node) - {"op"}
    if given - set(args):
        raise ProgramError("unknown_argument", f"{where} ({op}): unknown argument(s) {sorted(given - set(args))}; "
                           f"expected {sorted(args)}")
    if set(args) - optional - given:
        raise ProgramError("missing_argument", f"{where} ({op}): missing {sorted(set(args) - optional - given)}")
    kinds = {}
    for name in given:
        kinds[name] = _check_arg(node[name], args[name], f"{where}.{name}", depth, nodes)
    if op == "compare" and "number" not in (kinds["left"], kinds["right"]) and kinds["left"] != kinds["right"]:
        raise ProgramError("wrong_type", f"{where} (compare): cannot compare a {kinds['left']} with a "
                           f"{kinds['right']}")
    return returns


def _check_arg(value: Any, kind: str, where: str, depth: int, nodes: list[int]) -> str:
    if kind == "concept":
        if not isinstance(value, str) or not CONCEPT_RE.match(value):
            raise ProgramError("bad_argument", f"{where}: a concept is 1-60 letters, digits, spaces, ' or -, "
                               f"starting with a letter; got {str(value)[:60]!r}")
        return kind
    if kind.startswith("enum:"):
        allowed = kind[5:].split("|")
        if value not in allowed:
            raise ProgramError("bad_argument", f"{where}: expected one of {allowed}, got {str(value)[:40]!r}")
        return kind
    if kind == "literal_number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) < 1e12:
            raise ProgramError("bad_argument", f"{where}: expected a finite number, got {str(value)[:40]!r}")
        return kind
    if kind == "options":
        ok = (isinstance(value, dict) and 2 <= len(value) <= MAX_OPTIONS
              and all(isinstance(k, str) and CONCEPT_RE.match(k) and isinstance(v, str) and CONCEPT_RE.match(v)
                      for k, v in value.items()))
        if not ok:
            raise ProgramError("bad_argument", f"{where}: expected 2-{MAX_OPTIONS} answer -> prompt pairs of "
                               "plain words, e.g. {\"rural\": \"a rural area\", \"urban\": \"an urban area\"}")
        return kind
    returned = _check(value, where, depth + 1, nodes)
    want = NUMERIC if kind == "numeric" else (kind,)
    if returned not in want:
        raise ProgramError("wrong_type", f"{where}: expected an operation returning {' or '.join(want)}, got one "
                           f"returning {returned}")
    return returned


def run_program(program: Program, scene: P.Scene) -> Any:
    """Evaluate a validated program on one scene: bool, int (count), float (area m^2, number) or str (label)."""
    return _run(program.tree, scene)


def _run(node: dict[str, Any], scene: P.Scene) -> Any:
    op = node["op"]
    if op == "regions":
        r = scene.regions(node["concept"])
        if "size" in node:
            r = P.filter_size(r, node["size"], scene.settings)
        if "shape" in node:
            r = P.filter_shape(r, node["shape"], scene.settings)
        return r
    if op == "relate":
        return P.filter_relation(_run(node["of"], scene), node["relation"], _run(node["to"], scene), scene.settings)
    if op in ("exists", "count", "area", "fraction"):
        return {"exists": P.exists, "count": P.count, "area": P.area_m2, "fraction": P.fraction}[op](
            _run(node["of"], scene))
    if op == "number":
        return float(node["value"])
    if op == "compare":
        a, b = _run(node["left"], scene), _run(node["right"], scene)
        return {"gt": a > b, "lt": a < b, "eq": a == b, "ne": a != b, "ge": a >= b, "le": a <= b}[node["cmp"]]
    if op == "not":
        return not _run(node["of"], scene)
    if op == "choose":
        answers = list(node["options"])
        return answers[scene.choose([node["options"][a] for a in answers])]
    raise ProgramError("unknown_op", f"operation {op!r}")  # unreachable for a validated program
