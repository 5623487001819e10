"""Image-level positives are the photos inside the augmented crop, and crops are drawn to hold one."""

import numpy as np
import pytest
import torch
from helpers_data import make_dataset, tiny_clip_spec

from graft.losses import image_level_loss
from graft.training import distributed as D
from graft.training.augment import Augment, crops_holding_a_photo
from graft.training.data import BatchIterator, StreamSpec, select_photos, split_shards
from graft.training.trainer import GraftModel, graft_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_valid_crop_positions_are_exactly_those_holding_a_photo():
    rng = np.random.default_rng(0)
    tile, size = 40, 16
    rows, cols = rng.uniform(0, tile, 4), rng.uniform(0, tile, 4)
    valid = crops_holding_a_photo(rows, cols, tile, size)
    n = tile - size + 1
    brute = np.zeros((n, n), dtype=bool)
    for top in range(n):
        for left in range(n):
            r, c = np.floor(rows) - top, np.floor(cols) - left
            brute[top, left] = bool(((r >= 0) & (r < size) & (c >= 0) & (c < size)).any())
    assert valid.shape == (n, n) and np.array_equal(valid, brute)
    assert 0 < valid.sum() < n * n


def test_photo_aware_crops_always_hold_a_photo_and_cover_every_valid_position():
    rows, cols = np.array([2.5]), np.array([45.2])  # one photo, in a corner of a 48-px tile
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(2000):
        aug = Augment.sample(rng, 48, 32, flips=True, rot90=True, rows=rows, cols=cols)
        assert aug.top <= 2 < aug.top + 32 and aug.left <= 45 < aug.left + 32
        seen.add((aug.top, aug.left))
    assert seen == {(t, left) for t in range(3) for left in range(14, 17)}
    # No photo inside the tile: no crop can hold one.
    assert Augment.sample(rng, 48, 32, True, True, rows=np.array([60.0]), cols=np.array([3.0])) is None


def _tile(rows, cols, ground, aug, positives):
    keep, pidx = select_photos(np.asarray(rows), np.asarray(cols), aug, 8, positives, 25, np.random.default_rng(0))
    return keep, pidx, ground[keep]


def test_only_photos_inside_the_crop_are_positives_of_the_image_loss():
    """Two tiles; tile 0 has photos on both sides of its crop (top-left 32 px of 48)."""
    torch.manual_seed(0)
    from graft.models.clip_tower import ClipSpec, load_clip
    from graft.models.satellite import build_encoder

    model = GraftModel(build_encoder("image", load_clip(ClipSpec(model="graft-tiny-vit", pretrained=None))
                                     .model.visual), 0.07, learn=False)
    g = torch.Generator().manual_seed(0)
    ground0 = torch.nn.functional.normalize(torch.randn(4, 64, generator=g), dim=-1)
    ground1 = torch.nn.functional.normalize(torch.randn(2, 64, generator=g), dim=-1)
    aug = Augment(top=0, left=0, size=32)
    rows0, cols0 = [3.0, 20.5, 40.0, 10.0], [4.0, 30.9, 5.0, 44.0]  # photos 0, 1 inside; 2, 3 outside
    rows1, cols1 = [1.0, 2.0], [1.0, 2.0]
    images = torch.randn(2, 3, 32, 32, generator=g)

    results = {}
    for positives in ("crop", "tile"):
        k0, p0, gr0 = _tile(rows0, cols0, ground0, aug, positives)
        k1, p1, gr1 = _tile(rows1, cols1, ground1, aug, positives)
        owner = torch.cat([torch.zeros(len(k0), dtype=torch.long), torch.ones(len(k1), dtype=torch.long)])
        ground = torch.cat([gr0, gr1])
        pidx = torch.from_numpy(np.concatenate([p0, p1]))
        _, loss = graft_loss(model, "image", images, ground, owner, pidx, D.DistInfo())
        with torch.no_grad():
            sat = model.encoder(images)
        results[positives] = (k0.tolist(), float(loss), sat)
        if positives == "crop":
            assert k0.tolist() == [0, 1] and (pidx >= 0).all()
            inside = torch.cat([ground0[:2], ground1])
            want = image_level_loss(sat, inside, torch.tensor([0, 0, 1, 1]), 0.07)
        else:
            assert k0.tolist() == [0, 1, 2, 3] and pidx.tolist()[2:4] == [-1, -1]
            want = image_level_loss(sat, torch.cat([ground0, ground1]), torch.tensor([0, 0, 0, 0, 1, 1]), 0.07)
        assert float(loss) == pytest.approx(float(want), abs=1e-6)
    assert results["crop"][1] != pytest.approx(results["tile"][1], abs=1e-3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("pos")
    return make_dataset(root / "data", tiny_clip_spec(root / "clip"), n_tiles=16, tile_size=48)


def _spec(dataset, positives, level="image"):
    return StreamSpec(shards=split_shards(dataset, "train"), split="train", batch_size=4, crop_size=32, patch_size=8,
                      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), seed=0, shuffle_buffer=4, positives=positives,
                      level=level)


def test_every_training_row_owns_photos_inside_its_crop(dataset):
    outside = {}
    for positives in ("crop", "tile"):
        it = BatchIterator(_spec(dataset, positives), 0)
        batches = [next(it) for _ in range(8)]  # two epochs of 16 tiles
        for b in batches:
            assert torch.equal(torch.unique(b["owner"]), torch.arange(4))
        outside[positives] = sum(int((b["patch_index"] < 0).sum()) for b in batches)
    assert outside["crop"] == 0
    assert outside["tile"] > 0  # uniform crops of 32 px in 48-px tiles cut photos away


def test_the_pixel_model_keeps_uniform_crops_and_all_its_photos(dataset):
    """``positives`` is the image-level model's: a pixel-level stream draws the uniform crops of
    ``positives: tile`` (no photo-aware crop), with photos outside the crop at patch index -1, which the
    pixel loss drops."""
    pixel = BatchIterator(_spec(dataset, "crop", level="pixel"), 0)
    uniform = BatchIterator(_spec(dataset, "tile"), 0)
    aware = BatchIterator(_spec(dataset, "crop"), 0)
    same_as_aware = True
    for _ in range(8):
        p, u, a = next(pixel), next(uniform), next(aware)
        assert torch.equal(p["images"], u["images"]) and torch.equal(p["patch_index"], u["patch_index"])
        assert torch.equal(p["owner"], u["owner"])
        same_as_aware &= p["images"].shape == a["images"].shape and torch.equal(p["images"], a["images"])
    assert not same_as_aware
