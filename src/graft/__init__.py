"""graft: remote-sensing vision-language models without text annotations (GRAFT, Mall et al., ICLR 2024).

The stages, for a notebook or a script (the ``graft`` command runs the same functions)::

    from graft import (BuildConfig, build_dataset, ClipSpec, embed_dataset, TrainConfig, train,
                       EvalConfig, evaluate, export_checkpoint)

Every name is imported on first use, so ``import graft`` stays cheap (no torch, no open_clip).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load_config": "graft.config",
    "ConfigError": "graft.config",
    "GraftError": "graft.errors",
    "BuildConfig": "graft.pipeline.build",
    "build_dataset": "graft.pipeline.build",
    "ClipSpec": "graft.models.clip_spec",
    "embed_dataset": "graft.pipeline.embed",
    "TrainConfig": "graft.training.config",
    "train": "graft.training.trainer",
    "EvalConfig": "graft.evaluation.run",
    "evaluate": "graft.evaluation.run",
    "export_checkpoint": "graft.evaluation.export",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'graft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
