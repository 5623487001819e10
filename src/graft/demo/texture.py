"""What the two demo renderers share: colours, and deterministic random numbers keyed by integers."""

from __future__ import annotations

import numpy as np


def rgb(*c: float) -> np.ndarray:
    """A colour as float32 (R, G, B) in 0-255."""
    return np.asarray(c, dtype=np.float32)


def hash01(*keys: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) from integer keys (a splitmix64-style mix)."""
    h = np.zeros(np.broadcast(*keys).shape, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, k in enumerate(keys):
            h ^= np.asarray(k).astype(np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15 * (i + 1) % 2**64)
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)

