"""Why an input was dropped: the :class:`Rejected` exceptions and the :class:`Rejections` ledger.

Bad input is never lost silently. Code that refuses one item (a photo, a chip,
a benchmark image) raises a subclass of :class:`Rejected` carrying a short,
stable ``reason`` key and a free-text ``detail``; the stage that catches it
adds both to a :class:`Rejections` ledger, which ends up in ``stats.json``,
the evaluation report or the command's summary.

This module sits at the bottom of the layers (beside config and geometry) so
that sources, the pipeline and evaluation can all share it without importing
each other.
"""

from __future__ import annotations

import threading
from collections import Counter


class Rejected(Exception):
    """One input cannot be used; ``reason`` is a short stable key for the ledger, ``detail`` says what exactly.

    Args:
        reason: stable key such as ``corrupt_image``, ``no_gps`` or ``cloudy_chip``.
        detail: free text for the ledger's examples.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class PhotoRejected(Rejected):
    """A ground photo cannot be used (unreadable, no GPS, too small, ...)."""


class Rejections:
    """Thread-safe ledger of dropped items: counts per reason plus a bounded list of examples."""

    def __init__(self, keep_examples: int = 1000):
        self.counts: Counter[str] = Counter()
        self.examples: list[dict[str, str]] = []
        self._keep = keep_examples
        self._lock = threading.Lock()

    def add(self, reason: str, item: str = "", detail: str = "") -> None:
        with self._lock:
            self.counts[reason] += 1
            if len(self.examples) < self._keep:
                self.examples.append({"reason": reason, "item": item, "detail": detail[:300]})

    def merge(self, other: Rejections | dict) -> None:
        counts = other.counts if isinstance(other, Rejections) else other.get("counts", {})
        examples = other.examples if isinstance(other, Rejections) else other.get("examples", [])
        with self._lock:
            self.counts.update(counts)
            room = self._keep - len(self.examples)
            self.examples.extend(examples[: max(room, 0)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict:
        return {"total": self.total, "counts": dict(sorted(self.counts.items())), "examples": self.examples}
