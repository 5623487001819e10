"""graft.pipeline.photos: every bad-image kind gets its reason; good images resize deterministically."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from graft.pipeline.photos import content_hash, prepare_photo
from graft.rejections import PhotoRejected


def _noise(h: int, w: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "RGB":
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    raise ValueError(mode)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _reason(data: bytes, **kw) -> str:
    with pytest.raises(PhotoRejected) as info:
        prepare_photo(data, **kw)
    return info.value.reason


def test_corrupt_bytes():
    assert _reason(b"this is not an image at all" * 20) == "corrupt_image"
    assert _reason(b"") == "corrupt_image"


def test_truncated_jpeg():
    data = _encode(_noise(120, 160), "JPEG")
    assert _reason(data[: len(data) // 2]) == "truncated_image"


def test_truncated_png():
    data = _encode(_noise(120, 160), "PNG")
    assert _reason(data[: len(data) // 2]) == "truncated_image"


def test_cmyk_jpeg():
    data = _encode(Image.new("CMYK", (64, 64), (10, 20, 30, 40)), "JPEG")
    assert _reason(data) == "cmyk_image"


def test_16bit_png():
    arr = np.random.default_rng(0).integers(0, 65535, (64, 64), dtype=np.uint16)
    data = _encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # the fixture really is 16-bit
    assert _reason(data) == "high_bit_depth"


def test_rgba_png():
    assert _reason(_encode(_noise(64, 64, "RGBA"), "PNG")) == "alpha_channel"


def test_palette_with_transparency():
    img = _noise(64, 64).convert("P")
    assert _reason(_encode(img, "PNG", transparency=0)) == "alpha_channel"


def test_decompression_bomb_checked_from_header():
    data = _encode(_noise(100, 100), "PNG")
    assert _reason(data, max_pixels=100 * 100 - 1) == "decompression_bomb"
    prepare_photo(data, max_pixels=100 * 100)  # exactly at the limit is fine


def test_too_small():
    assert _reason(_encode(_noise(20, 200), "JPEG"), min_side=32) == "too_small"


def test_bilevel_unsupported():
    img = _noise(64, 64).convert("1")
    assert _reason(_encode(img, "PNG")) == "unsupported_mode"


def test_good_jpeg_resized_and_deterministic():
    data = _encode(_noise(600, 900), "JPEG", quality=95)
    a = prepare_photo(data, short_side=256)
    b = prepare_photo(data, short_side=256)
    assert a == b  # same bytes, same size, same hash
    assert (a.width, a.height) == (384, 256)
    out = Image.open(io.BytesIO(a.jpeg))
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == (384, 256)
    assert a.sha256 == content_hash(data)


def test_portrait_and_no_upscale():
    tall = prepare_photo(_encode(_noise(1000, 500), "PNG"), short_side=100)
    assert (tall.width, tall.height) == (100, 200)
    small = prepare_photo(_encode(_noise(50, 70), "PNG"), short_side=256)
    assert (small.width, small.height) == (70, 50)


def test_grey_and_palette_become_rgb():
    for img in (_noise(80, 80, "L"), _noise(80, 80).convert("P")):
        out = Image.open(io.BytesIO(prepare_photo(_encode(img, "PNG")).jpeg))
        assert out.mode == "RGB"


def test_exif_orientation_applied():
    # Stored 200 wide x 100 high with "rotate 90" (orientation 6): upright it is 100 x 200.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(_noise(100, 200), "JPEG", exif=exif)
    p = prepare_photo(data, short_side=50)
    assert (p.width, p.height) == (50, 100)


def test_content_hash_is_of_original_bytes():
    data = _encode(_noise(64, 64), "PNG")
    assert content_hash(data) == content_hash(bytes(data))
    assert content_hash(data) != content_hash(data + b"\0")
    assert len(content_hash(data)) == 64
