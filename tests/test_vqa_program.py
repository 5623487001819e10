"""VQA programs are data: the validator refuses anything outside the language, with a reason, before running."""

from __future__ import annotations

import builtins
import json

import pytest

from graft.vqa.program import MAX_DEPTH, MAX_NODES, ProgramError, language_description, parse_program

REGIONS = {"op": "regions", "concept": "building"}


def test_valid_programs_and_their_types():
    assert parse_program({"op": "exists", "of": REGIONS}).type == "bool"
    assert parse_program(json.dumps({"op": "count", "of": REGIONS})).type == "count"
    assert parse_program({"op": "area", "of": {"op": "regions", "concept": "road", "size": "small"}}).type == "area"
    cmp = {"op": "compare", "cmp": "gt", "left": {"op": "count", "of": REGIONS}, "right": {"op": "number", "value": 3}}
    assert parse_program(cmp).type == "bool"
    assert parse_program({"op": "choose", "options": {"rural": "rural area", "urban": "urban area"}}).type == "label"
    assert "compare" in language_description()


def _nested(depth: int) -> dict:
    node = REGIONS
    for _ in range(depth):
        node = {"op": "relate", "relation": "next_to", "of": node, "to": REGIONS}
    return {"op": "count", "of": node}


@pytest.mark.parametrize(("candidate", "reason"), [
    ("not json at all", "not_json"),
    ("[1, 2]", "not_an_object"),
    ({"op": "eval", "code": "__import__('os').system('touch /tmp/x')"}, "unknown_op"),
    ({"op": "exists", "of": {"op": "regions", "concept": "__import__('os').system('id')"}}, "bad_argument"),
    ({"op": "exists", "of": {"op": "regions", "concept": "road; rm -rf /"}}, "bad_argument"),
    ({"op": "exists"}, "missing_argument"),
    ({"op": "exists", "of": REGIONS, "extra": 1}, "unknown_argument"),
    ({"op": "count", "of": {"op": "exists", "of": REGIONS}}, "wrong_type"),
    ({"op": "compare", "cmp": "gt", "left": {"op": "count", "of": REGIONS}, "right": {"op": "area", "of": REGIONS}},
     "wrong_type"),
    ({"op": "compare", "cmp": "~", "left": {"op": "count", "of": REGIONS}, "right": {"op": "count", "of": REGIONS}},
     "bad_argument"),
    ({"op": "regions", "concept": "road", "size": "huge"}, "bad_argument"),
    ({"op": "number", "value": "1e999"}, "bad_argument"),
    ({"op": "choose", "options": {"a": "x"}}, "bad_argument"),
    ("x" * 5000, "too_long"),
])
def test_refused_programs_name_the_reason(candidate, reason):
    with pytest.raises(ProgramError) as e:
        parse_program(candidate)
    assert e.value.reason == reason
    assert reason in str(e.value)


def test_nesting_is_bounded_before_and_after_decoding():
    parse_program(_nested(MAX_DEPTH - 2))
    parse_program(json.dumps(_nested(MAX_DEPTH - 2)))
    with pytest.raises(ProgramError, match="too_deep"):
        parse_program(_nested(MAX_DEPTH + 1))
    with pytest.raises(ProgramError, match="too_deep"):
        parse_program(json.dumps(_nested(MAX_DEPTH + 1)))
    # refused on the raw text, before the JSON decoder recurses into it
    with pytest.raises(ProgramError, match="too_deep"):
        parse_program('{"op": "not", "of": ' * 150 + "null" + "}" * 150)
    with pytest.raises(ProgramError, match="too_deep"):
        parse_program("[" * 3000)
    with pytest.raises(ProgramError, match="too_long"):  # and huge texts are refused by length
        parse_program("[" * 100000)
    deep: dict = REGIONS
    for _ in range(10000):  # an already-decoded object is walked only MAX_DEPTH deep
        deep = {"op": "not", "of": deep}
    with pytest.raises(ProgramError, match="too_deep"):
        parse_program(deep)


def _relate_tree(levels: int) -> dict:
    if levels == 0:
        return REGIONS
    return {"op": "relate", "relation": "next_to", "of": _relate_tree(levels - 1), "to": _relate_tree(levels - 1)}


def test_program_size_is_bounded():
    assert parse_program({"op": "count", "of": _relate_tree(4)}).type == "count"  # 32 operations
    with pytest.raises(ProgramError, match="too_many_nodes"):  # 128 operations, only 8 deep
        parse_program({"op": "count", "of": _relate_tree(6)})
    assert MAX_NODES < 128
    with pytest.raises(ProgramError, match="bad_argument"):
        parse_program({"op": "choose", "options": {f"a{i}": f"b{i}" for i in range(20)}})


def test_validation_never_executes_anything(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("exec/eval/compile/__import__ called while validating a program")

    for name in ("exec", "eval"):
        monkeypatch.setattr(builtins, name, forbidden)
    for bad in ({"op": "eval", "code": "1+1"}, '{"op": "exec", "of": "print(1)"}',
                {"op": "exists", "of": {"op": "regions", "concept": "exec('x')"}}):
        with pytest.raises(ProgramError):
            parse_program(bad)
