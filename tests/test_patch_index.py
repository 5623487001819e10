"""photo_patch_index is exact under crop, flip and 90-degree rotation."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graft.training.augment import Augment, apply_to_image, photo_patch_index


def _marker_patch(tile: int, row: float, col: float, aug: Augment, patch: int) -> int:
    """Independent check: paint the photo's pixel, transform the image with torch, find the marker."""
    img = torch.zeros(1, tile, tile)
    img[0, int(np.floor(row)), int(np.floor(col))] = 1.0
    out = apply_to_image(img, aug)[0]
    hits = torch.nonzero(out)
    if hits.numel() == 0:
        return -1
    r, c = hits[0].tolist()
    return (r // patch) * (aug.size // patch) + (c // patch)


def test_hand_checked_cases():
    # 8-px tile, 4-px crop at (2, 2), 2-px patches -> 2x2 patch grid.
    a = Augment(top=2, left=2, size=4)
    assert photo_patch_index([2.0], [2.0], a, 2).tolist() == [0]  # crop's top-left pixel
    assert photo_patch_index([5.9], [5.9], a, 2).tolist() == [3]  # bottom-right pixel
    assert photo_patch_index([2.5], [4.1], a, 2).tolist() == [1]  # top row, right patch
    assert photo_patch_index([1.99], [3.0], a, 2).tolist() == [-1]  # just above the crop
    assert photo_patch_index([6.0], [3.0], a, 2).tolist() == [-1]  # just below
    # h-flip: top-left pixel goes to top-right patch.
    assert photo_patch_index([2.0], [2.0], Augment(2, 2, 4, hflip=True), 2).tolist() == [1]
    # rot90 CCW once (torch.rot90 dims [-2,-1]): top-left pixel goes to bottom-left patch.
    assert photo_patch_index([2.0], [2.0], Augment(2, 2, 4, k=1), 2).tolist() == [2]
    # rot180: top-left -> bottom-right.
    assert photo_patch_index([2.0], [2.0], Augment(2, 2, 4, k=2), 2).tolist() == [3]
    # rot270: top-left -> top-right.
    assert photo_patch_index([2.0], [2.0], Augment(2, 2, 4, k=3), 2).tolist() == [1]


@settings(max_examples=300, deadline=None)
@given(
    tile=st.sampled_from([8, 16, 24]),
    crop_frac=st.sampled_from([0.5, 1.0]),
    patch=st.sampled_from([2, 4]),
    seed=st.integers(0, 2**31 - 1),
    row=st.floats(0, 1, exclude_max=True),
    col=st.floats(0, 1, exclude_max=True),
)
def test_matches_marker_image_under_random_augment(tile, crop_frac, patch, seed, row, col):
    size = max(patch, int(tile * crop_frac) // patch * patch)
    aug = Augment.sample(np.random.default_rng(seed), tile, size, flips=True, rot90=True)
    r, c = row * tile, col * tile
    assert photo_patch_index([r], [c], aug, patch)[0] == _marker_patch(tile, r, c, aug, patch)


def test_rejects_crop_not_multiple_of_patch():
    with pytest.raises(ValueError, match="multiple"):
        photo_patch_index([0.0], [0.0], Augment(0, 0, 6), 4)
