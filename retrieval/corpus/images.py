"""Decode one image safely: every failure becomes an :class:`ItemError`, odd modes are repaired."""
from __future__ import annotations

import io
import os
import warnings
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ItemError

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default bomb limit (~ 9459 x 9459)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

Source = Union[str, os.PathLike, bytes]


def _to_rgb(im: Image.Image, repairs: list[str]) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; alpha is composited on white, 16-bit is rescaled."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        repairs.append(f"{mode} image rescaled to 8-bit")
        return Image.fromarray(((a - lo) * scale).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        repairs.append(f"{im.mode} alpha composited on white")
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode == "CMYK":
        repairs.append("CMYK converted to RGB")
    return im.convert("RGB")


# Our own limit (``max_pixels``, checked from the header before any pixel is decoded) replaces PIL's
# bomb warning, so it is silenced once here. Turning it into an error per call with
# ``warnings.catch_warnings`` is not thread-safe: concurrent decodes in the server left the "error"
# filter installed for good.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def allow_pil(max_pixels: int) -> None:
    """Raise PIL's own hard limit (2 x MAX_IMAGE_PIXELS) when ours is set higher; never lowers it."""
    if Image.MAX_IMAGE_PIXELS is not None and 2 * Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1


def decode_image(source: Source, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, list[str]]:
    """Return (RGB image, repairs) or raise ItemError(stage='image', reason)."""
    repairs: list[str] = []
    try:
        if isinstance(source, (bytes, bytearray)):
            if len(source) == 0:
                raise ItemError("image", "zero-byte file")
            fp = io.BytesIO(source)
        else:
            if os.path.getsize(source) == 0:
                raise ItemError("image", "zero-byte file")
            fp = open(source, "rb")
        allow_pil(max_pixels)
        with fp:
            im = Image.open(fp)
            w, h = im.size
            if w * h > max_pixels:
                raise ItemError("image", f"decompression bomb: {w}x{h} pixels exceeds limit {max_pixels}")
            if w == 0 or h == 0:
                raise ItemError("image", "empty image (0 pixels)")
            im.load()
            im = ImageOps.exif_transpose(im) if im.getexif() else im
            return _to_rgb(im, repairs), repairs
    except ItemError:
        raise
    except FileNotFoundError:
        raise ItemError("image", "file not found") from None
    except UnidentifiedImageError:
        raise ItemError("image", "not an image (unidentified format)") from None
    except Image.DecompressionBombError as e:
        raise ItemError("image", f"decompression bomb: {e}") from None
    except Exception as e:  # truncated data, codec errors, permission errors...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ItemError("image", f"unreadable: {type(e).__name__}: {msg[:200]}") from None


def image_size(source: Source) -> tuple[int, int]:
    """(width, height) from the image header alone (nothing decoded); ItemError when unreadable."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
            return im.size
    except FileNotFoundError:
        raise ItemError("image", "file not found") from None
    except UnidentifiedImageError:
        raise ItemError("image", "not an image (unidentified format)") from None
    except Exception as e:  # noqa: BLE001 - any header failure is the input's
        raise ItemError("image", f"unreadable: {type(e).__name__}") from None


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def decode_text(data: Optional[bytes]) -> tuple[Optional[str], list[str]]:
    """Decode a caption: strict UTF-8 (BOM stripped), else replacement characters + a repair note."""
    if data is None:
        return None, []
    repairs: list[str] = []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        repairs.append("caption is not valid UTF-8; bad bytes replaced")
    text = " ".join(text.split())
    return (text or None), repairs
