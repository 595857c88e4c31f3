"""Turning bytes, files and arrays into the RGB images SPOT-E works on, with clear errors.

Guards: decompression bombs (a pixel cap checked *before* decoding), zero-size images,
16-bit and float images (rescaled by their range, not clipped), palette/alpha/CMYK/grey modes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000  # ~ a 6300 x 6300 scene; larger ones are cut into tiles by the pipeline


class BadImage(ValueError):
    """The input cannot be used as an image; the message says why."""


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise BadImage(f"zero-size image ({width} x {height})")
    if width * height > max_pixels:
        raise BadImage(f"image too large: {width} x {height} = {width * height:,} pixels exceeds the limit of "
                       f"{max_pixels:,} (decompression-bomb guard); tile it or raise max_pixels")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; 16-bit/32-bit/float images are stretched by their own range."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def array_to_image(arr: np.ndarray) -> Image.Image:
    """HxW, HxWx1, HxWx3 or HxWx4 arrays of any numeric dtype to RGB (16-bit and float stretched)."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise BadImage(f"unsupported array shape {arr.shape}; expected HxW or HxWx(1|3|4)")
    _check_size(arr.shape[1], arr.shape[0], DEFAULT_MAX_PIXELS)
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        arr = ((a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)).astype(np.uint8)
    return to_rgb(Image.fromarray(arr))


def load_image(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open a path, bytes, file object, array or PIL image as RGB, refusing bombs and broken files."""
    if isinstance(source, Image.Image):
        _check_size(*source.size, max_pixels)
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        return array_to_image(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise BadImage("empty file (0 bytes)")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)) and not Path(source).exists():
        raise BadImage(f"no such file: {source}")
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # we check the header size ourselves, with our own message
    try:
        with Image.open(source) as im:
            _check_size(*im.size, max_pixels)
            im.load()
            return to_rgb(im)
    except UnidentifiedImageError as err:
        raise BadImage("not a readable image (unknown or broken format)") from err
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, BadImage):
            raise
        raise BadImage(f"corrupt or truncated image: {err}") from err
    finally:
        Image.MAX_IMAGE_PIXELS = old


def check_question(question: str) -> str:
    if question is None or not str(question).strip():
        raise ValueError("empty question")
    return str(question).strip()


def check_choices(choices) -> tuple[str, ...] | None:
    if choices is None:
        return None
    if isinstance(choices, str):
        choices = [c for c in choices.split(",")]
    choices = tuple(str(c).strip() for c in choices if str(c).strip())
    if len(choices) < 2:
        raise ValueError(f"need at least two choices, got {list(choices)}")
    if len(set(choices)) != len(choices):
        raise ValueError(f"duplicate choices: {list(choices)}")
    return choices


CORRUPTIONS = ("none", "noise", "blur", "jpeg")


def corrupt(image: Image.Image, kind: str, seed: int = 0) -> Image.Image:
    """Benchmark corruptions of the source image (robustness study)."""
    if kind == "none":
        return image
    if kind == "noise":
        rng = np.random.default_rng(seed)
        x = np.asarray(image, np.float32) + rng.normal(0, 12, (image.height, image.width, 3))
        return Image.fromarray(x.clip(0, 255).astype(np.uint8))
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(1.0))
    if kind == "jpeg":
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=30)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")
