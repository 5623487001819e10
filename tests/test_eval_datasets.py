"""Benchmark loaders on generated folders in the published layouts (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from graft.dataset.embeddings import with_embeddings
from graft.dataset.layout import shard_names
from graft.dataset.shards import tile_sample, write_samples
from graft.evaluation import datasets as ds
from graft.evaluation.zeroshot import make_loader
from graft.geometry import tile_grid_around
from graft.imagery import encode_geotiff
from graft.rejections import Rejections

COLORS = {"AnnualCrop": (200, 180, 40), "Forest": (20, 120, 30), "SeaLake": (20, 40, 200)}


def make_eurosat(root: Path, per_class: int = 3, wrapper: str = "EuroSAT_RGB", ext: str = ".jpg") -> Path:
    """EuroSAT RGB as its archive unpacks: ROOT/EuroSAT_RGB/<Class>/<Class>_<n>.jpg."""
    base = root / wrapper if wrapper else root
    for cls, color in COLORS.items():
        (base / cls).mkdir(parents=True)
        for n in range(1, per_class + 1):
            arr = np.full((64, 64, 3), color, dtype=np.uint8)
            arr[n:n + 8, n:n + 8] = 255
            Image.fromarray(arr).save(base / cls / f"{cls}_{n}{ext}")
    return base


def test_eurosat_layout_with_classnames_and_templates(tmp_path):
    base = make_eurosat(tmp_path)
    (base / "classnames.txt").write_text("annual crop land\nforest\nsea or lake\n")
    (base / "templates.txt").write_text("a satellite photo of {}.\n\nan aerial view of {}.\n")
    (base / "Forest" / "notes.txt").write_text("not an image")
    (base / "__MACOSX").mkdir()
    data = ds.load_benchmark("eurosat", tmp_path, name="eurosat")
    assert data.root == base
    assert data.classes == ["AnnualCrop", "Forest", "SeaLake"]
    assert data.classnames == ["annual crop land", "forest", "sea or lake"]
    assert data.templates == ["a satellite photo of {}.", "an aerial view of {}."]
    assert len(data) == 9
    np.testing.assert_array_equal(data.targets, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert all(p.parent.name == data.classes[t] for p, t in zip(data.paths, data.targets, strict=True))
    assert data.rejections.counts == {"not_an_image": 1, "folder_without_images": 1}
    rgb = data.read_rgb(0)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert data.relevance().sum() == 9


def test_builtin_classnames_and_prettified_folders(tmp_path):
    make_eurosat(tmp_path, wrapper="2750", per_class=1)
    data = ds.load_benchmark("eurosat", tmp_path)
    assert data.classnames == ["annual crop land", "forest", "sea or lake"]
    assert data.templates is None
    assert ds.prettify_classname("HerbaceousVegetation") == "herbaceous vegetation"
    assert ds.prettify_classname("baseball_diamond") == "baseball diamond"


def test_classnames_count_mismatch_is_an_error(tmp_path):
    base = make_eurosat(tmp_path, per_class=1)
    (base / "classnames.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="2 names but there are 3 classes"):
        ds.load_benchmark("eurosat", tmp_path)


def test_ucmerced_layout_found_under_images(tmp_path):
    for cls in ("agricultural", "tenniscourt"):
        d = tmp_path / "UCMerced_LandUse" / "Images" / cls
        d.mkdir(parents=True)
        # UC Merced ships 8-bit RGB TIFFs without georeferencing
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(d / f"{cls}00.tif")
    data = ds.load_benchmark("ucmerced", tmp_path / "UCMerced_LandUse")
    assert data.classes == ["agricultural", "tenniscourt"]
    assert data.classnames == ["agricultural land", "tennis court"]
    assert data.read_rgb(0)[0, 0].tolist() == [90, 90, 90]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_multiband_tif_uses_rgb_bands(tmp_path):
    d = tmp_path / "EuroSAT_MS" / "Forest"
    d.mkdir(parents=True)
    arr = np.zeros((13, 8, 8), dtype=np.uint16)
    arr[3], arr[2], arr[1] = 3000, 1500, 300  # B04 (red), B03, B02
    with rasterio.open(d / "Forest_1.tif", "w", driver="GTiff", width=8, height=8, count=13, dtype="uint16") as dst:
        dst.write(arr)
    data = ds.load_benchmark("eurosat", tmp_path, rgb_bands=[4, 3, 2])
    px = data.read_rgb(0)[0, 0].tolist()
    assert px == [255, 128, 26]  # 3000 / 1500 / 300 DN stretched from [0, 3000] to [0, 255]
    with pytest.raises(ds.ImageReadError, match="rgb_bands"):
        ds.read_rgb(d / "Forest_1.tif", rgb_bands=[14, 3, 2])


def test_split_files_match_relative_paths_and_stems(tmp_path):
    base = make_eurosat(tmp_path, per_class=2)
    (tmp_path / "train.txt").write_text("AnnualCrop/AnnualCrop_1.jpg\nForest_1.tif\nSeaLake_1.tif\n")
    (tmp_path / "test.txt").write_text("AnnualCrop_2.tif\nForest_2.tif\nSeaLake_2.tif\nGhost_9.tif\n")
    data = ds.load_benchmark("eurosat", tmp_path, split_files={"train": str(tmp_path / "train.txt"),
                                                              "test": str(tmp_path / "test.txt")})
    assert data.root == base
    assert sorted(data.splits.tolist()) == ["test"] * 3 + ["train"] * 3
    assert data.splits[data.paths.index(base / "AnnualCrop" / "AnnualCrop_1.jpg")] == "train"
    assert data.rejections.counts == {"split_entry_not_found": 1}


def test_missing_root_raises_typed_error_with_source(tmp_path):
    with pytest.raises(ds.DatasetNotFoundError, match="github.com/phelber/EuroSAT") as e:
        ds.load_benchmark("eurosat", tmp_path / "nope")
    assert "does not exist" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ds.DatasetNotFoundError, match="no class folders"):
        ds.load_benchmark("resisc45", tmp_path / "empty")
    with pytest.raises(ds.DatasetNotFoundError, match="bigearth.net"):
        ds.load_benchmark("bigearthnet", tmp_path / "empty")
    with pytest.raises(ds.DatasetNotFoundError, match="images/"):
        ds.load_benchmark("segmentation", tmp_path / "empty")


def make_multilabel_csv(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir()
    for i in range(6):
        Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)).save(root / "img" / f"p{i}.png")
    (root / "classes.txt").write_text("Coniferous forest\nPastures\nSea and ocean\n")
    (root / "labels.csv").write_text(
        "path,labels,split\n"
        "img/p0.png,Coniferous forest;Pastures,train\n"
        "img/p1.png,Sea and ocean,train\n"
        "img/p2.png,Pastures|Sea and ocean,test\n"
        "img/p3.png,Coniferous forest,test\n"
        "img/p4.png,Glacier,test\n"  # not in classes.txt
        "img/missing.png,Pastures,test\n"
        "img/p5.png,,train\n"  # no label: a negative for every class
    )
    return root


def test_bigearthnet_style_csv(tmp_path):
    root = make_multilabel_csv(tmp_path / "ben")
    data = ds.load_benchmark("bigearthnet", root, name="ben")
    assert data.multilabel
    assert data.classes == ["Coniferous forest", "Pastures", "Sea and ocean"]
    assert [p.name for p in data.paths] == ["p0.png", "p1.png", "p2.png", "p3.png", "p5.png"]
    np.testing.assert_array_equal(data.targets.astype(int), [[1, 1, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert data.splits.tolist() == ["train", "train", "test", "test", "train"]
    assert data.rejections.counts == {"unknown_label": 1, "missing_file": 1}
    sub = data.subset(np.array([2, 3]))
    assert sub.targets.shape == (2, 3) and sub.splits.tolist() == ["test", "test"]


def test_csv_without_classes_txt_uses_sorted_labels_and_checks_columns(tmp_path):
    root = make_multilabel_csv(tmp_path / "ben")
    (root / "classes.txt").unlink()
    data = ds.load_benchmark("csv_multilabel", root / "labels.csv")
    assert data.classes == ["Coniferous forest", "Glacier", "Pastures", "Sea and ocean"]
    (root / "bad.csv").write_text("file,label\nimg/p0.png,Pastures\n")
    with pytest.raises(ValueError, match="missing column"):
        ds.load_benchmark("csv_multilabel", root, csv_name="bad.csv")


def make_segmentation(root: Path, n: int = 3, size: int = 20) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("water\nforest\nbuilt-up\n")
    rng = np.random.default_rng(0)
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[:, size // 2:] = 1
        mask[size // 2:, size // 2:] = 2
        mask[0, 0] = 255
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"t{i}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"t{i}.png")
    return root


def test_segmentation_pairs(tmp_path):
    root = make_segmentation(tmp_path / "seg")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "images" / "lonely.png")
    data = ds.load_benchmark("segmentation", root)
    assert data.classes == ["water", "forest", "built-up"]
    assert len(data) == 3 and data.rejections.counts == {"image_without_mask": 1}
    m = data.read_mask(0)
    assert m.dtype == np.int64 and m[0, 0] == 255 and m[-1, -1] == 2
    Image.fromarray(np.full((20, 20), 7, np.uint8), mode="L").save(root / "masks" / "t1.png")
    with pytest.raises(ds.ImageReadError, match="neither a class index"):
        data.read_mask(1)


def test_bad_images_become_failures_not_crashes(tmp_path):
    base = make_eurosat(tmp_path, per_class=2, ext=".png")
    (base / "Forest" / "Forest_1.png").write_bytes(b"not a png at all")
    data = ds.load_benchmark("eurosat", tmp_path)
    from torchvision import transforms as T

    loader = make_loader(data, T.Compose([T.Resize((8, 8)), T.ToTensor()]), batch_size=4)
    batches = list(loader)
    images = sum(b.images.shape[0] for b in batches if b.images is not None)
    failures = [f for b in batches for f in b.failures]
    assert images == 5
    assert len(failures) == 1 and failures[0][1] == "unreadable_image"
    assert data.paths[failures[0][0]].name == "Forest_1.png"


def make_graft_dataset(root: Path, n_test: int = 8, n_train: int = 2, dim: int = 64,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """A GRAFT dataset folder with one tile shard: tif + json + cached ground embeddings (docs/formats.md).

    The last tile is a train tile that was never embedded. Returns each tile's embeddings.
    """
    rng = np.random.default_rng(seed)
    embs = {}
    samples = []
    for i in range(n_test + n_train + 1):
        key = f"tile_{i:03d}"
        grid = tile_grid_around(48.1 + 0.01 * i, 11.5, size=16, gsd=10.0)
        arr = rng.integers(0, 3000, (4, 16, 16), dtype=np.uint16)
        split = "test" if i < n_test else "train"
        # Photos at (5.5, 5.5) (inside the centred 8-px crop, rows/cols 4..11), (0.5, 0.5) and (15.2, 9.0)
        # (outside it); tile 1's photos all lie outside.
        pos = [(5.5, 5.5), (0.5, 0.5), (15.2, 9.0)] if i != 1 else [(0.5, 0.5), (1.5, 14.0), (15.2, 9.0)]
        photos = [{"photo_id": f"{key}-{j}", "row": r, "col": c} for j, (r, c) in enumerate(pos)]
        sample = tile_sample(key, encode_geotiff(arr, grid), {"tile_id": key, "split": split, "grid": grid.to_json(),
                                                              "photos": photos})
        if i < n_test + n_train:
            emb = rng.normal(size=(3, dim)).astype(np.float16)
            embs[key] = emb.astype(np.float32)
            sample = with_embeddings(sample, emb, {"model": "graft-tiny-vit", "pretrained": None, "embed_dim": dim})
        samples.append(sample)
    write_samples(root / shard_names(0)[0], samples)
    return embs


def test_graft_pairs(tmp_path):
    root = tmp_path / "dataset"
    embs = make_graft_dataset(root)
    data = ds.load_benchmark("graft_pairs", root, pairs_split="test")
    assert len(data) == 8
    e = embs[data.tile_ids[3]]
    expected = (e / np.linalg.norm(e, axis=1, keepdims=True)).mean(axis=0)
    np.testing.assert_allclose(data.ground_mean[3], expected, rtol=1e-5, atol=1e-6)
    assert data.cache_record["model"] == "graft-tiny-vit" and "photo_ids" not in data.cache_record
    assert data.read_rgb(0).shape == (16, 16, 3)
    # As training sees tiles: the centred crop at native resolution, paired with the photos inside it only.
    rejections = Rejections()
    crop = data.center_crop(8, rejections)
    assert crop.tile_ids == [t for t in data.tile_ids if t != "tile_001"]
    assert rejections.counts == {"no_photo_in_center_crop": 1}
    i = crop.tile_ids.index(data.tile_ids[3])
    e0 = embs[data.tile_ids[3]][0]
    np.testing.assert_allclose(crop.ground_mean[i], e0 / np.linalg.norm(e0), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(crop.read_rgb(i), data.read_rgb(3)[4:12, 4:12])
    with pytest.raises(ds.DatasetNotFoundError, match="centred 32 px crop"):
        data.center_crop(32)
    train = ds.load_benchmark("graft_pairs", root, pairs_split="train")
    assert len(train) == 2 and train.rejections.counts == {"no_ground_embeddings": 1}
    with pytest.raises(ds.DatasetNotFoundError, match="graft embed"):
        ds.load_benchmark("graft_pairs", root, pairs_split="val")


def test_every_set_subsets_its_items_in_step(tmp_path):
    embs = make_graft_dataset(tmp_path / "dataset")
    pairs = ds.load_benchmark("graft_pairs", tmp_path / "dataset", pairs_split="test")
    seg = ds.load_segmentation(make_segmentation(tmp_path / "seg", n=3))
    for data, keep in ((pairs, [5, 1]), (seg, [2, 0])):
        assert isinstance(data, ds.EvalSet)
        sub = data.subset(keep)
        assert len(sub) == 2 and len(data) > 2 and sub.rejections is data.rejections
        for i, j in enumerate(keep):
            np.testing.assert_array_equal(sub.read_rgb(i), data.read_rgb(j))
    sub = pairs.subset([5, 1])
    assert sub.tile_ids == [pairs.tile_ids[5], pairs.tile_ids[1]] and set(sub.tile_ids) <= set(embs)
    np.testing.assert_array_equal(sub.ground_mean, pairs.ground_mean[[5, 1]])
    assert seg.subset([2, 0]).masks == [seg.masks[2], seg.masks[0]]
