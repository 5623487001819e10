"""The built-in program writer: RSVQA's templated questions -> programs.

RSVQA's questions are generated from OpenStreetMap by a fixed procedure
(Lobry et al., 2020, Sec. II-A): an element (``building``, ``water area``,
``residential building``...), optionally with a size (small/medium/large) or
shape (square/rectangular/circular) attribute and a position relative to a
second element (left/right/top/bottom of, next to), is put into a base
question of one of five types through per-type templates. This module
inverts those templates:

* presence: "Is there a E?", "Is a E present (in the image)?", "Are there E?"
* comparison (``comp``): "Are there more/less/fewer E1 than E2?", "Is the number
  of E1 equal to / more than / less than the number of E2?"
* count: "How many E are there?", "What is the number of E?", "What is the amount of E?"
* area: "What is the area covered by E?", "What area is covered by E?"
* rural/urban: "Is it a rural or an urban area?"

where each E is ``[a|an|the] [size] [shape] noun [relation [a|an|the] E']``,
nouns singularised for the prompt (``water areas`` -> ``water area``). A
question that fits no template raises :class:`~graft.vqa.program.ProgramError`
(reason ``unparsed``); :func:`parse_coverage` reports the share parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from graft.vqa.primitives import SHAPES, SIZES
from graft.vqa.program import Program, ProgramError, parse_program

_SIZE_WORDS = {**{s: s for s in SIZES}, "big": "large"}
_SHAPE_WORDS = {**{s: s for s in SHAPES}, "round": "circular"}
_RELATIONS = [
    (r"(?:at|on|to) the left (?:side )?of|left of", "left_of"),
    (r"(?:at|on|to) the right (?:side )?of|right of", "right_of"),
    (r"(?:at|on) the top (?:side )?of|above|north of", "above"),
    (r"(?:at|on) the bottom (?:side )?of|below|under|south of", "below"),
    (r"next to|near|close to|beside", "next_to"),
]
_RELATION_RE = re.compile(r"\s+(" + "|".join(p for p, _ in _RELATIONS) + r")\s+")
_IN_IMAGE = r"(?:\s+(?:in|on) (?:the|this) (?:image|picture|scene|area))?"
_ARTICLE = re.compile(r"^(?:a|an|the|any|some)\s+")

_LESS = {"less", "fewer", "smaller", "lower"}
_MORE = {"more", "greater", "larger", "bigger", "higher"}

QTYPE_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("rural_urban", re.compile(r"^is (?:it|this|this image|the image) (?:a |an )?(?:rural or (?:an )?urban|urban or "
                               r"(?:a )?rural)(?: area)?" + _IN_IMAGE + r"$")),
    ("comp", re.compile(r"^(?:are|is) there (?P<cmp>more|less|fewer) (?P<a>.+?) than (?P<b>.+?)" + _IN_IMAGE + r"$")),
    ("comp", re.compile(r"^is the (?:number|amount|quantity) of (?P<a>.+?) (?:(?P<eq>equal) to|(?P<cmp>more|less|"
                        r"fewer|greater|larger|bigger|higher|smaller|lower) than) the (?:number|amount|quantity) of "
                        r"(?P<b>.+?)" + _IN_IMAGE + r"$")),
    ("count", re.compile(r"^how many (?P<a>.+?) (?:are|is) (?:there|present|visible)" + _IN_IMAGE + r"$")),
    ("count", re.compile(r"^how many (?P<a>.+?)" + _IN_IMAGE + r" (?:are )?(?:there|present)$")),
    ("count", re.compile(r"^what is the (?:number|amount|count) of (?P<a>.+?)" + _IN_IMAGE + r"$")),
    ("area", re.compile(r"^what (?:is the )?(?:area|surface) (?:is )?covered by (?P<a>.+?)" + _IN_IMAGE + r"$")),
    ("area", re.compile(r"^what is the (?:area|surface) of (?P<a>.+?)" + _IN_IMAGE + r"$")),
    ("presence", re.compile(r"^(?:is|are) there (?P<a>.+?)" + _IN_IMAGE + r"$")),
    ("presence", re.compile(r"^(?:is|are) (?P<a>.+?) (?:present|visible)" + _IN_IMAGE + r"$")),
]


@dataclass(frozen=True)
class ParsedQuestion:
    program: Program
    qtype: str


def singular(noun_phrase: str) -> str:
    """Singularise the last word of a noun phrase (``residential buildings`` -> ``residential building``)."""
    words = noun_phrase.split()
    w = words[-1]
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif re.search(r"(?:ches|shes|sses|xes)$", w):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
        w = w[:-1]
    return " ".join([*words[:-1], w])


def _element(text: str) -> dict[str, Any]:
    """``[article] [size] [shape] noun [relation E']`` -> a ``regions`` (or ``relate``) program node."""
    text = re.sub(_IN_IMAGE + r"$", "", text.strip()).strip()
    padded = f" {text} "
    m = _RELATION_RE.search(padded)
    if m:
        head, rel_text, tail = padded[:m.start()].strip(), m.group(1), padded[m.end():].strip()
        relation = next(r for p, r in _RELATIONS if re.fullmatch(p, rel_text))
        return {"op": "relate", "of": _element(head), "relation": relation, "to": _element(tail)}
    text = _ARTICLE.sub("", text)
    node: dict[str, Any] = {"op": "regions"}
    words = text.split()
    while len(words) > 1 and (words[0] in _SIZE_WORDS or words[0] in _SHAPE_WORDS):
        w = words.pop(0)
        if w in _SIZE_WORDS:
            node["size"] = _SIZE_WORDS[w]
        else:
            node["shape"] = _SHAPE_WORDS[w]
    node["concept"] = singular(" ".join(words))
    return node


def _measure(op: str, text: str) -> dict[str, Any]:
    return {"op": op, "of": _element(text)}


def parse_question(question: str) -> ParsedQuestion:
    """The program for one RSVQA-style question.

    Raises:
        ProgramError: reason ``unparsed`` when no template fits, or a validation reason when the fitted
            template yields an invalid program (e.g. a concept with symbols).
    """
    q = re.sub(r"\s+", " ", question.strip().lower()).rstrip("?. ").strip()
    for qtype, pattern in QTYPE_PATTERNS:
        m = pattern.match(q)
        if not m:
            continue
        if qtype == "rural_urban":
            tree: dict[str, Any] = {"op": "choose", "options": {"rural": "rural area", "urban": "urban area"}}
        elif qtype == "comp":
            groups = m.groupdict()
            word = groups.get("cmp")
            cmp = "eq" if groups.get("eq") else "gt" if word in _MORE else "lt" if word in _LESS else None
            if cmp is None:
                continue
            tree = {"op": "compare", "cmp": cmp, "left": _measure("count", m["a"]), "right": _measure("count", m["b"])}
        elif qtype == "count":
            tree = _measure("count", m["a"])
        elif qtype == "area":
            tree = _measure("area", m["a"])
        else:
            tree = _measure("exists", m["a"])
        return ParsedQuestion(parse_program(tree), qtype)
    raise ProgramError("unparsed", f"{question!r} fits none of the RSVQA templates (see graft.vqa.parser)")


def parse_coverage(questions: list[str]) -> tuple[float, dict[str, int]]:
    """Share of ``questions`` the parser turns into a valid program, and the refusals by reason."""
    refused: dict[str, int] = {}
    for q in questions:
        try:
            parse_question(q)
        except ProgramError as e:
            refused[e.reason] = refused.get(e.reason, 0) + 1
    return (1.0 - sum(refused.values()) / len(questions)) if questions else 0.0, refused
