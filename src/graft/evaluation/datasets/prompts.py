"""Class names and prompt templates of a benchmark: ``classes.txt``, ``classnames.txt``, ``templates.txt``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path


def prettify_classname(folder: str) -> str:
    """``AnnualCrop`` -> ``annual crop``, ``baseball_diamond`` -> ``baseball diamond``."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", folder)
    return re.sub(r"[_\-]+", " ", s).strip().lower()


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file, stripped."""
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def read_class_list(path: Path) -> list[str]:
    """A ``classes.txt``: one class a line. A class listed twice is an error: its index would be ambiguous."""
    names = read_lines(path)
    first: dict[str, int] = {}
    dups = []
    for i, n in enumerate(names, start=1):
        if n in first:
            dups.append(f"{n!r} (entries {first[n]} and {i})")
        else:
            first[n] = i
    if dups:
        raise ValueError(f"{path}: duplicate class(es) {', '.join(dups[:5])}; list every class exactly once")
    return names


def read_templates(path: Path) -> list[str]:
    lines = read_lines(path)
    bad = [t for t in lines if "{}" not in t]
    if bad or not lines:
        raise ValueError(f"{path}: every template needs '{{}}' where the class name goes; bad lines: {bad[:3]}")
    return lines


def resolve_classnames(
    classes: list[str], explicit: Sequence[str] | None, search: list[Path], builtin: dict[str, str]
) -> list[str]:
    if explicit is not None:
        names, source = list(explicit), "the config's classnames"
    else:
        f = next((d / "classnames.txt" for d in search if (d / "classnames.txt").is_file()), None)
        if f is None:
            names, source = [builtin.get(c, prettify_classname(c)) for c in classes], "the class list"
        else:
            names, source = read_lines(f), str(f)
    if len(names) != len(classes):
        raise ValueError(f"{source} has {len(names)} names but there are {len(classes)} classes {classes[:5]}...; "
                         "give one name per class, in sorted class order")
    # Two classes with the same prompt name get identical text embeddings: zero-shot can never tell
    # them apart, and the metrics silently count every image of the second as wrong. The CLIP
    # tokenizer lowercases and collapses spaces, so "Forest" and "forest " are the same name too.
    seen: dict[str, str] = {}
    dups = []
    for n, c in zip(names, classes, strict=True):
        key = " ".join(n.casefold().split())
        if key in seen:
            dups.append(f"{n!r} ({seen[key]} and {c})")
        seen.setdefault(key, c)
    if dups:
        raise ValueError(f"{source}: duplicate class name(s) {', '.join(dups[:5])}; every class needs its own "
                         "name, or zero-shot prompts cannot tell the classes apart")
    return names


def resolve_templates(explicit: Sequence[str] | None, search: list[Path]) -> list[str] | None:
    if explicit is not None:
        return list(explicit)
    f = next((d / "templates.txt" for d in search if (d / "templates.txt").is_file()), None)
    return read_templates(f) if f else None
