"""Why: a filter could silently remove whole kinds of places, and its prompts were fixed.

With ``filter.kind: clip`` on a tower that never learned "indoors"/"outdoors", the fixed prompts
could reject every photo of some scene kinds. ``filter.prompts`` (indoor and outdoor lists) lets the
user describe what their photos show.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from graft.config import ConfigError, validate
from graft.models.clip_tower import ClipSpec, load_clip
from graft.pipeline.indoor import IndoorFilter, IndoorFilterConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ClipSpec(model="graft-tiny-vit", pretrained=None)


def _photos(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, format="JPEG")
        out.append(buf.getvalue())
    return out


def test_custom_prompts_change_the_decision():
    torch.manual_seed(0)
    bundle = load_clip(TINY)
    photos = _photos(12)
    base = {"kind": "clip", "clip": TINY.model_dump(), "decision": "threshold", "device": "cpu"}
    default = IndoorFilter(validate(IndoorFilterConfig, base), clip=bundle)
    prompts = {"indoor": ["a photo of a kitchen.", "a photo of an office."],
               "outdoor": ["a photo of a forest.", "a photo of a lake.", "a photo of a field."]}
    custom = IndoorFilter(validate(IndoorFilterConfig, {**base, "prompts": prompts}), clip=bundle)
    swapped = IndoorFilter(validate(IndoorFilterConfig, {
        **base, "prompts": {"indoor": prompts["outdoor"], "outdoor": prompts["indoor"]}}), clip=bundle)

    s_default, s_custom, s_swapped = default.score(photos), custom.score(photos), swapped.score(photos)
    assert not np.allclose(s_default, s_custom)
    # Swapping the two lists turns P(outdoor) into P(indoor): every decision away from 0.5 flips.
    np.testing.assert_allclose(s_swapped, 1.0 - s_custom, atol=1e-6)
    decided = np.abs(s_custom - 0.5) > 1e-6
    assert decided.any()
    assert (custom.keep(s_custom) != swapped.keep(s_swapped))[decided].all()
    assert custom.describe()["prompts"] == prompts


def test_prompts_are_for_the_clip_filter_only():
    with pytest.raises(ConfigError, match="filter.prompts applies to kind=clip only"):
        validate(IndoorFilterConfig, {"kind": "none", "prompts": {"indoor": ["a room."], "outdoor": ["a field."]}})
    with pytest.raises(ConfigError, match="prompts.indoor"):
        validate(IndoorFilterConfig, {"kind": "clip", "prompts": {"indoor": [], "outdoor": ["a field."]}})
