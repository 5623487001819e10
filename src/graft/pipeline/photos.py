"""Validating and normalising ground photos before they enter a dataset.

Every photo a ground source delivers goes through :func:`prepare_photo` once.
It either returns a small, upright, 8-bit RGB JPEG that every later stage
(indoor filter, CLIP embedding, shards) can decode without surprises, or
raises :class:`PhotoRejected` with a short stable reason that the build counts
in its :class:`~graft.rejections.Rejections` ledger.

Reasons (stable keys, they appear in ``stats.json``):

- ``corrupt_image``: not an image Pillow can identify, or its pixel data
  cannot be decoded.
- ``truncated_image``: the file ends before its pixel data does. Pillow's
  ``LOAD_TRUNCATED_IMAGES`` stays off on purpose: a half-grey photo would be
  embedded by CLIP as if it were real.
- ``decompression_bomb``: more than ``max_pixels`` pixels, judged from the
  header before any pixel is decoded.
- ``cmyk_image``: CMYK (print) JPEGs; converting them needs the ICC profile
  to look right, and they are almost never field photos.
- ``high_bit_depth``: 16-bit or float single-channel modes (``I;16*``,
  ``I``, ``F``): scientific or depth images, not camera photos.
- ``alpha_channel``: any alpha (an ``RGBA``/``LA``/``PA``/... mode, or a
  ``transparency`` entry on a palette/grey/RGB image), whether or not the
  alpha is actually used. Camera photos never carry alpha; images that do are
  screenshots, logos and graphics, and flattening them would invent a
  background colour.
- ``unsupported_mode``: any other pixel mode that is not RGB, L (grey) or P
  (palette without transparency), e.g. bilevel ``1`` images.
- ``too_small``: shorter side below ``min_side`` pixels.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from graft.imagery import is_truncation
from graft.rejections import PhotoRejected

JPEG_QUALITY = 90

# Modes that hold an alpha channel (Pillow's names, incl. premultiplied ones).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_HIGH_BIT_MODES = frozenset({"I", "F"})
_ACCEPTED_MODES = frozenset({"RGB", "L", "P"})


@dataclass(frozen=True)
class PreparedPhoto:
    """A validated photo, re-encoded.

    Attributes:
        jpeg: JPEG bytes (quality 90, 8-bit RGB, upright, no metadata).
        width: width of ``jpeg`` in pixels.
        height: height of ``jpeg`` in pixels.
        sha256: :func:`content_hash` of the original bytes (for exact-duplicate removal).
    """

    jpeg: bytes
    width: int
    height: int
    sha256: str


def content_hash(data: bytes) -> str:
    """SHA-256 hex digest of the original encoded bytes.

    Deduplication uses the bytes as delivered, not the decoded pixels: it is
    exact, costs no decoding, and catches the common case (the same file
    uploaded twice or listed under two names). A photo re-encoded by someone
    else is a different file and is not caught; the per-location cap of the
    sampler limits the damage of such near-duplicates.
    """
    return hashlib.sha256(data).hexdigest()


def _target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Size with the shorter side equal to ``short_side``, aspect kept; never larger than the input."""
    short = min(width, height)
    if short <= short_side:
        return width, height
    scale = short_side / short
    if width <= height:
        return short_side, max(short_side, round(height * scale))
    return max(short_side, round(width * scale)), short_side


def prepare_photo(
    data: bytes,
    short_side: int = 256,
    max_pixels: int = 50_000_000,
    min_side: int = 32,
) -> PreparedPhoto:
    """Validate an encoded photo and re-encode it as a small RGB JPEG.

    The EXIF orientation is applied (phones store most photos sideways plus a
    rotation tag), the shorter side is reduced to ``short_side`` (never
    enlarged), and the result is written as a baseline JPEG at quality 90
    without metadata. The same input bytes always give the same output bytes
    with a given Pillow/libjpeg build.

    Args:
        data: the photo as delivered (JPEG, PNG, or anything Pillow reads).
        short_side: target length of the shorter side, in pixels.
        max_pixels: larger images are rejected as ``decompression_bomb``.
        min_side: images whose shorter side is below this are ``too_small``.

    Returns:
        The re-encoded photo, its size, and the hash of ``data``.

    Raises:
        PhotoRejected: with one of the reasons listed in this module's docstring.
    """
    if short_side < 1 or min_side < 1 or max_pixels < 1:
        raise ValueError(
            f"short_side, min_side and max_pixels must be positive, got {short_side}, {min_side}, {max_pixels}"
        )
    digest = content_hash(data)
    try:
        # Pillow's own bomb guard warns above MAX_IMAGE_PIXELS and raises above twice that;
        # our max_pixels check below is the one that decides, so silence its warning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise PhotoRejected("decompression_bomb", str(e)) from None
    except UnidentifiedImageError as e:
        raise PhotoRejected("corrupt_image", f"cannot identify image ({len(data)} bytes): {e}") from None
    except (OSError, EOFError, SyntaxError, ValueError) as e:
        # The header itself is cut short or malformed.
        reason = "truncated_image" if is_truncation(e) else "corrupt_image"
        raise PhotoRejected(reason, f"{type(e).__name__}: {e}") from None

    with img:
        width, height = img.size
        # Everything below up to load() reads only the header: no pixel is decoded yet.
        if width * height > max_pixels:
            raise PhotoRejected("decompression_bomb", f"{width}x{height} = {width * height} px > max_pixels={max_pixels}")
        if min(width, height) < min_side:
            raise PhotoRejected("too_small", f"{width}x{height}, shorter side < min_side={min_side}")
        mode = img.mode
        if mode == "CMYK":
            raise PhotoRejected("cmyk_image", "CMYK JPEG")
        if mode in _HIGH_BIT_MODES or mode.startswith("I;16"):
            raise PhotoRejected("high_bit_depth", f"mode {mode}")
        if mode in _ALPHA_MODES or "transparency" in img.info:
            raise PhotoRejected("alpha_channel", f"mode {mode}" + (" with transparency" if mode not in _ALPHA_MODES else ""))
        if mode not in _ACCEPTED_MODES:
            raise PhotoRejected("unsupported_mode", f"mode {mode}; expected RGB, L or P")

        target = _target_size(width, height, short_side)
        if img.format == "JPEG" and target != (width, height):
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below the target):
            # a 12 MP photo then decodes about 10x faster. Deterministic for a given input.
            img.draft(mode, target)
        try:
            img.load()
        except Image.DecompressionBombError as e:
            raise PhotoRejected("decompression_bomb", str(e)) from None
        except (OSError, EOFError, SyntaxError, ValueError) as e:
            reason = "truncated_image" if is_truncation(e) else "corrupt_image"
            raise PhotoRejected(reason, f"{type(e).__name__}: {e}") from None

        try:
            upright = ImageOps.exif_transpose(img)
        except Exception as e:  # noqa: BLE001 - a malformed EXIF block must not kill the build
            raise PhotoRejected("corrupt_image", f"cannot apply EXIF orientation: {type(e).__name__}: {e}") from None
        rgb = upright.convert("RGB")
        # Recompute the target after rotation (width and height may have swapped) and draft scaling.
        target = _target_size(rgb.width, rgb.height, short_side)
        if target != rgb.size:
            rgb = rgb.resize(target, Image.Resampling.BICUBIC)
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
        return PreparedPhoto(jpeg=out.getvalue(), width=rgb.width, height=rgb.height, sha256=digest)
