"""The ground sources a build can read, one module each, chosen by ``ground.kind``.

A new ground source is a new module ``ground_<kind>.py`` beside this one with a :class:`GroundKind` subclass, listed in
:data:`GROUND_KINDS` (and its config section in :class:`graft.pipeline.build.config.GroundConfig`).
"""

from __future__ import annotations

from graft.pipeline.build.config import BuildConfig
from graft.pipeline.build.ground_base import GroundKind
from graft.pipeline.build.ground_flickr import FlickrGround
from graft.pipeline.build.ground_folder import FolderGround

GROUND_KINDS: dict[str, GroundKind] = {g.name: g for g in (FolderGround(), FlickrGround())}


def ground_kind(cfg: BuildConfig) -> GroundKind:
    """The ground source the config names."""
    return GROUND_KINDS[cfg.ground.kind]


__all__ = ["GROUND_KINDS", "GroundKind", "ground_kind"]
