"""What every benchmark set shares: the :class:`EvalSet` base, the errors, the catalogue of known benchmarks,
and reading any benchmark image as RGB."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from graft.dataset.layout import TILE_SHARDS_GLOB
from graft.errors import GraftError
from graft.imagery import rgb_band_indexes, tile_to_rgb8
from graft.rejections import Rejected, Rejections

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
TIFF_EXTS = (".tif", ".tiff")
IGNORE_INDEX = 255


class DatasetNotFoundError(GraftError, FileNotFoundError):
    """A benchmark is not where the config says. The message says where to get it and how to lay it out."""


class ImageReadError(Rejected):
    """One image could not be turned into RGB; ``reason`` is a short stable key for the rejection ledger."""


class EvalSet:
    """Base of every benchmark set: ``len``, ``read_rgb(i)``, ``subset(idx)`` and a rejection ledger.

    Subclasses are dataclasses; ``per_item`` names their fields that hold one entry per item
    (lists or arrays, or None), which :meth:`subset` keeps in step.
    """

    name: str
    kind: str
    rejections: Rejections
    per_item: ClassVar[tuple[str, ...]] = ()

    def __len__(self) -> int:
        return len(getattr(self, self.per_item[0]))

    def read_rgb(self, i: int) -> np.ndarray:
        """Item ``i`` as (H, W, 3) uint8 RGB; raises :class:`ImageReadError` if it cannot be read."""
        raise NotImplementedError

    def read_bands(self, i: int) -> tuple[np.ndarray, list[str]]:
        """Item ``i`` as (bands, H, W) at full precision, and the bands' names (for multispectral models).

        Raises:
            ImageReadError: the image cannot be read, or the set does not say which bands it holds.
        """
        raise ImageReadError("no_band_names", f"{self.name} ({self.kind}) does not name its images' bands")

    def subset(self, idx: Sequence[int] | np.ndarray) -> Any:
        """The same set restricted to items ``idx`` (in that order); the rejection ledger is shared."""
        idx = np.asarray(idx, dtype=np.int64)
        return replace(self, **{f: _take(getattr(self, f), idx) for f in self.per_item})


def _take(values: Any, idx: np.ndarray) -> Any:
    if values is None:
        return None
    if isinstance(values, np.ndarray):
        return values[idx]
    return [values[i] for i in idx]


@dataclass(frozen=True)
class BenchmarkInfo:
    """What graft knows about a published benchmark: where to get it and how it unpacks."""

    title: str
    url: str
    layout: str
    subdirs: tuple[str, ...] = ()
    classnames: dict[str, str] = field(default_factory=dict)


# Prompt names for folder names that are not readable words. EuroSAT's follow the CLIP paper's
# wording of its classes; UC Merced's folders run words together.
_EUROSAT_NAMES = {
    "AnnualCrop": "annual crop land", "Forest": "forest", "HerbaceousVegetation": "herbaceous vegetation land",
    "Highway": "highway or road", "Industrial": "industrial buildings", "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land", "Residential": "residential buildings", "River": "river",
    "SeaLake": "sea or lake",
}
_UCMERCED_NAMES = {
    "agricultural": "agricultural land", "baseballdiamond": "baseball diamond", "denseresidential":
    "dense residential area", "golfcourse": "golf course", "mediumresidential": "medium residential area",
    "mobilehomepark": "mobile home park", "parkinglot": "parking lot", "sparseresidential":
    "sparse residential area", "storagetanks": "storage tanks", "tenniscourt": "tennis court",
}

BENCHMARKS: dict[str, BenchmarkInfo] = {
    "eurosat": BenchmarkInfo(
        "EuroSAT (Sentinel-2, 10 classes)", "https://github.com/phelber/EuroSAT (EuroSAT_RGB.zip or EuroSAT_MS.zip)",
        "ROOT/<Class>/<Class>_<n>.jpg (RGB) or .tif (13-band; set rgb_bands: [4, 3, 2])",
        ("EuroSAT_RGB", "2750", "EuroSAT_MS", "EuroSAT", "EuroSATallBands", "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"),
        _EUROSAT_NAMES),
    "eurosat_ms": BenchmarkInfo(
        "EuroSAT-MS (Sentinel-2, 13 bands, 10 classes)", "https://github.com/phelber/EuroSAT (EuroSAT_MS.zip)",
        "ROOT/<Class>/<Class>_<n>.tif, 13-band uint16 GeoTIFFs (the archive unpacks to EuroSAT_MS/)",
        ("EuroSAT_MS", "EuroSATallBands", "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"), _EUROSAT_NAMES),
    "ucmerced": BenchmarkInfo(
        "UC Merced Land Use (21 classes)", "http://weegee.vision.ucmerced.edu/datasets/landuse.html",
        "ROOT/<class>/<class>NN.tif (the archive unpacks to UCMerced_LandUse/Images/)",
        ("Images", "UCMerced_LandUse/Images"), _UCMERCED_NAMES),
    "resisc45": BenchmarkInfo(
        "NWPU-RESISC45 (45 classes)", "https://gcheng-nwpu.github.io/#Datasets (Cheng et al., 2017)",
        "ROOT/<class>/<class>_NNN.jpg (the archive unpacks to NWPU-RESISC45/)", ("NWPU-RESISC45",)),
    "aid": BenchmarkInfo(
        "AID, Aerial Image Dataset (30 classes)", "https://captain-whu.github.io/AID/",
        "ROOT/<Class>/<class>_N.jpg (the archive unpacks to AID/)", ("AID",)),
    "imagefolder": BenchmarkInfo("an ImageFolder set", "(your own data)", "ROOT/<class>/*.jpg|png|tif"),
    "csv_multilabel": BenchmarkInfo(
        "a multi-label CSV set", "(your own data)",
        "ROOT/labels.csv with header 'path,labels[,split]', labels separated by ';' or '|'"),
    "bigearthnet": BenchmarkInfo(
        "BigEarthNet (multi-label, Sentinel-2)", "https://bigearth.net/",
        "ROOT/labels.csv with header 'path,labels[,split]' pointing at 3-band RGB images (e.g. B04,B03,B02 "
        "GeoTIFFs); the official per-band patch folders must be converted first (see eval/README.md)"),
    "bigearthnet_s2": BenchmarkInfo(
        "BigEarthNet-S2 (multi-label, Sentinel-2, 12 bands)", "https://bigearth.net/ (BigEarthNet-S2 v1.0 or v2.0)",
        "ROOT/<patch>/<patch>_B01.tif ... _B12.tif + <patch>_labels_metadata.json (v1.0, unpacks to "
        "BigEarthNet-v1.0/), or ROOT/<tile>/<patch>/<patch>_B01.tif ... with metadata.parquet (v2.0, BigEarthNet-S2/)"),
    "segmentation": BenchmarkInfo(
        "a segmentation set", "(your own data)",
        "ROOT/images/<stem>.png|jpg|tif, ROOT/masks/<stem>.png (class index per pixel, 255 = ignore), "
        "ROOT/classes.txt"),
    "graft_pairs": BenchmarkInfo(
        "a GRAFT dataset folder", "'graft build' then 'graft embed'",
        f"ROOT/{TILE_SHARDS_GLOB} with cached ground embeddings (docs/formats.md)"),
}



def read_image_bands(path: str | os.PathLike, bands: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """Every band of a benchmark image at full precision, and their names.

    A TIFF's bands are named by ``bands`` (file order); a 3-band TIFF without names, or any PNG/JPEG,
    holds R, G, B.

    Raises:
        ImageReadError: ``unreadable_image``, ``band_count_mismatch`` or ``unnamed_bands``.
    """
    path = Path(path)
    if path.suffix.lower() not in TIFF_EXTS:
        return read_rgb(path).transpose(2, 0, 1), ["R", "G", "B"]
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                array = src.read()
    except RasterioIOError as e:
        raise ImageReadError("unreadable_image", f"{path}: {e}") from None
    if bands is None:
        if array.shape[0] != 3:
            raise ImageReadError("unnamed_bands", f"{path}: {array.shape[0]} bands without names; give the "
                                                  f"benchmark's bands (e.g. bands: [B4, B3, B2, B8])")
        return array, ["R", "G", "B"]
    if len(bands) != array.shape[0]:
        raise ImageReadError("band_count_mismatch",
                             f"{path}: {array.shape[0]} bands, the benchmark names {len(bands)}: {list(bands)}")
    return array, list(bands)


def not_found(kind: str, root: Path, what: str) -> DatasetNotFoundError:
    info = BENCHMARKS[kind]
    return DatasetNotFoundError(
        f"{info.title}: {what} under {root}. Get it from {info.url} and unpack it so that the layout is "
        f"{info.layout}; then point the benchmark's 'root' there. Nothing is downloaded automatically."
    )


def read_rgb(path: str | os.PathLike, rgb_bands: Sequence[int] | None = None,
             bands: Sequence[str] | None = None) -> np.ndarray:
    """Any benchmark image -> (H, W, 3) uint8 RGB.

    TIFFs are read with rasterio so multi-band and 16-bit GeoTIFFs work; they go through
    :func:`graft.imagery.tile_to_rgb8`. ``bands`` names a TIFF's bands in file order, and R, G, B
    are then found by name (``B4, B3, B2`` or ``R, G, B``); ``rgb_bands`` gives them by 1-based
    position instead. Other formats are read with PIL.

    Raises:
        ImageReadError: with reason ``unreadable_image`` or ``unsupported_image``.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_EXTS:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        try:
            with warnings.catch_warnings():
                # Plain TIFFs (UC Merced) carry no CRS; that is fine for classification.
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    count = src.count
                    if bands and not rgb_bands:
                        if len(bands) != count:
                            raise ImageReadError("band_count_mismatch",
                                                 f"{path}: {count} bands, the benchmark names {len(bands)}: "
                                                 f"{list(bands)}")
                        arr = src.read(indexes=[i + 1 for i in rgb_band_indexes(bands)])
                    elif rgb_bands:
                        if max(rgb_bands) > count:
                            raise ImageReadError("unsupported_image",
                                                 f"{path}: rgb_bands {list(rgb_bands)} but the file has {count} bands")
                        arr = src.read(indexes=list(rgb_bands))
                    elif count >= 3:
                        arr = src.read(indexes=[1, 2, 3])
                    elif count == 1:
                        arr = np.repeat(src.read(indexes=[1]), 3, axis=0)
                    else:
                        raise ImageReadError("unsupported_image", f"{path}: {count} bands; set rgb_bands")
        except RasterioIOError as e:
            raise ImageReadError("unreadable_image", f"{path}: {e}") from None
        try:
            return tile_to_rgb8(arr)
        except ValueError as e:
            raise ImageReadError("unsupported_image", f"{path}: {e}") from None
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError("unreadable_image", f"{path}: {e}") from None
