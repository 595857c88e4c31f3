"""Turning bytes, files and arrays into the RGB images SPOT-E works on, with clear errors.

What the model sees is what an image viewer shows:

- EXIF orientation (all eight values, JPEG, PNG ``eXIf``, TIFF tag 274) is applied, so the image is
  upright and every box SPOT-E reports is in that upright frame (``ImageOps.exif_transpose`` semantics).
- 8-bit images are shown as stored. 16-bit images whose values use the 16-bit range (their 99.5th
  percentile at least ``FULL_RANGE_SHARE`` of 65535: a scan, a photo developed to 16 bits) are shown as a
  viewer shows them, value / 257. Other 16-bit images (12-bit sensor counts, reflectances x 10000, which
  a viewer shows almost black), 32-bit integer and float images are stretched robustly to 8 bits: the 0.5th and 99.5th percentiles of the *finite* values (all channels together, so
  colours keep their balance) map to 0 and 255; NaN and +-inf never set the range and are shown as a
  neutral grey (``NEUTRAL_FILL``); one hot pixel cannot darken the image. 16-bit colour PNG/TIFF are
  decoded at full depth (rasterio or tifffile when installed; otherwise Pillow's 8 most significant bits,
  stretched the same way).

Guards: decompression bombs (a pixel cap checked *before* decoding), zero-size images,
palette/alpha/CMYK/grey modes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000  # ~ a 6300 x 6300 scene; larger ones are cut into tiles by the pipeline
STRETCH_PERCENTILES = (0.5, 99.5)  # of the finite values; the range a high-bit-depth image is stretched over
FULL_RANGE_SHARE = 0.25  # a 16-bit image whose 99.5th percentile reaches this share of 65535 is scaled, not stretched
NEUTRAL_FILL = 128  # 8-bit value shown where a pixel has no valid data (NaN, inf, nodata)
EXIF_ORIENTATION = 0x0112
_PIL_LOAD_LOCK = threading.Lock()  # a caller's PIL image decoded by one thread at a time

# EXIF orientation -> the PIL transpose that makes the stored image upright (as ImageOps.exif_transpose)
_PIL_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


class BadImage(ValueError):
    """The input cannot be used as an image; the message says why.

    ``kind``: where the file is another known format instead of an image, what it is ("a PDF", "a Word
    document (.docx)", ...), and ``advice``, what to do with it; both None otherwise."""

    def __init__(self, message: str, kind: str | None = None, advice: str | None = None):
        super().__init__(message)
        self.kind, self.advice = kind, advice


class ImageTooLarge(BadImage):
    """More pixels than the decompression-bomb guard lets through (``max_pixels``)."""


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise BadImage(f"zero-size image ({width} x {height})")
    if width * height > max_pixels:
        # no flag named: a job's loader has none, and spote ask adds its own
        raise ImageTooLarge(f"image too large: {width} x {height} = {width * height:,} pixels exceeds the limit of "
                            f"{max_pixels:,} (decompression-bomb guard); downscale or tile it first")


# ---------------------------------------------------------------------------------------------- orientation
def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when absent or invalid."""
    try:
        value = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return 1
    return value if 1 <= value <= 8 else 1


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) of the upright image; orientations 5-8 swap the axes."""
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def upright_array(arr: np.ndarray, orientation: int) -> np.ndarray:
    """An HxW[xC] array as stored -> upright (the same pixels ``ImageOps.exif_transpose`` gives)."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def stored_point(x: float, y: float, width: int, height: int, orientation: int) -> tuple[float, float]:
    """A point (pixel-edge coordinates) of the upright image -> the same point in the stored image.

    ``width``, ``height`` are the *stored* size."""
    if orientation == 2:
        return width - x, y
    if orientation == 3:
        return width - x, height - y
    if orientation == 4:
        return x, height - y
    if orientation == 5:
        return y, x
    if orientation == 6:
        return y, height - x
    if orientation == 7:
        return width - y, height - x
    if orientation == 8:
        return width - y, x
    return x, y


def stored_window(col: int, row: int, w: int, h: int, width: int, height: int,
                  orientation: int) -> tuple[int, int, int, int]:
    """(col_off, row_off, w, h) of an upright-frame window -> the stored-frame window holding the same pixels.

    Read that window, pass it through ``upright_array`` and it equals the upright crop."""
    x0, y0 = stored_point(col, row, width, height, orientation)
    x1, y1 = stored_point(col + w, row + h, width, height, orientation)
    c0, r0 = int(round(min(x0, x1))), int(round(min(y0, y1)))
    return c0, r0, int(round(max(x0, x1))) - c0, int(round(max(y0, y1))) - r0


def _upright_image(image: Image.Image, orientation: int) -> Image.Image:
    return image.transpose(_PIL_UPRIGHT[orientation]) if orientation in _PIL_UPRIGHT else image


# ---------------------------------------------------------------------------------------------- stretch
def robust_range(values: np.ndarray, valid: np.ndarray | None = None,
                 percentiles: tuple[float, float] = STRETCH_PERCENTILES) -> tuple[float, float] | None:
    """(lo, hi) stretch range over the finite (and ``valid``) values: the given percentiles, or the
    finite min/max where the percentiles coincide (a mostly-constant image with a few marks).

    None when no value is usable."""
    vals = np.asarray(values)
    keep = np.isfinite(vals) if vals.dtype.kind == "f" else np.ones(vals.shape, bool)
    if valid is not None:
        keep &= np.broadcast_to(valid, vals.shape)
    vals = vals[keep]
    if vals.size == 0:
        return None
    return _range_from(vals, np.percentile(vals, percentiles))


def _range_from(vals: np.ndarray, cuts) -> tuple[float, float]:
    """(lo, hi) from the two percentile values ``cuts`` of ``vals``, or their min/max where the cuts coincide."""
    lo, hi = (float(v) for v in cuts)
    if hi <= lo:
        lo, hi = float(vals.min()), float(vals.max())
    return lo, hi


def apply_range(values: np.ndarray, lo_hi: tuple[float, float] | None, valid: np.ndarray | None = None,
                fill: int = NEUTRAL_FILL) -> np.ndarray:
    """Values -> uint8: ``lo`` -> 0, ``hi`` -> 255, clipped; non-finite or invalid pixels -> ``fill``.

    A constant image (lo == hi) is shown as mid-grey."""
    a = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(a)
    if valid is not None:
        bad |= ~np.broadcast_to(valid, a.shape)
    if lo_hi is None:
        return np.full(a.shape, fill, np.uint8)
    lo, hi = lo_hi
    with np.errstate(invalid="ignore", over="ignore"):
        out = (a - lo) / (hi - lo) * 255 if hi > lo else np.full(a.shape, 127.5)
    out = np.where(bad, fill, np.clip(out, 0, 255))
    return np.round(out).astype(np.uint8)


def stretch_to_uint8(arr: np.ndarray, valid: np.ndarray | None = None,
                     percentiles: tuple[float, float] = STRETCH_PERCENTILES) -> np.ndarray:
    """Any numeric array -> uint8 of the same shape, one robust range over all of it (``robust_range``)."""
    return apply_range(arr, robust_range(arr, valid, percentiles), valid)


def pixels_to_uint8(arr: np.ndarray) -> np.ndarray:
    """An image file's or array's pixels -> uint8 as a viewer shows them: 16-bit values that use the 16-bit
    range scaled by 1/257 (``FULL_RANGE_SHARE``), everything else stretched (``stretch_to_uint8``)."""
    a = np.asarray(arr)
    if a.dtype == np.uint16 and a.size:
        cuts = np.percentile(a, STRETCH_PERCENTILES)  # one pass: the top one decides, both stretch otherwise
        if float(cuts[1]) >= FULL_RANGE_SHARE * 65535:
            return np.round(a / 257.0).astype(np.uint8)
        return apply_range(a, _range_from(a, cuts))
    return stretch_to_uint8(a)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; 16-bit/32-bit/float images are stretched robustly (``stretch_to_uint8``)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(pixels_to_uint8(np.asarray(image))).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def array_to_image(arr: np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """HxW, HxWx1, HxWx2 (grey + alpha), HxWx3 or HxWx4 arrays of any numeric dtype to RGB.

    uint8 is shown as stored, uint16 that uses its range scaled (``pixels_to_uint8``); every other dtype is
    stretched robustly (``stretch_to_uint8``). The alpha
    channel of HxWx4 is not stretched: it is scaled from its type's full range (an integer type's
    maximum, 1.0 for floats, as PNG and TIFF store it) and composited on white after the stretch."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":  # complex, strings, objects: no pixel values to show
        raise BadImage(f"unsupported array dtype {arr.dtype}; expected integers, floats or booleans")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 2:  # grey + alpha (PNG colour type 4, a 2-sample TIFF)
        arr = np.dstack([arr[..., 0], arr[..., 0], arr[..., 0], arr[..., 1]])
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise BadImage(f"unsupported array shape {arr.shape}; expected HxW or HxWx(1|2|3|4)")
    _check_size(arr.shape[1], arr.shape[0], max_pixels)
    if arr.dtype == np.uint8:
        return to_rgb(Image.fromarray(arr))
    if arr.dtype == bool:  # as 0 and 255 in every channel, alpha included (it was dropped: transparent went black)
        return array_to_image(arr.astype(np.uint8) * 255, max_pixels)
    if arr.ndim == 3 and arr.shape[2] == 4:
        alpha = alpha_to_uint8(arr[..., 3])
        rgb = pixels_to_uint8(arr[..., :3])
        return to_rgb(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    return Image.fromarray(pixels_to_uint8(arr)).convert("RGB")


def alpha_to_uint8(alpha: np.ndarray) -> np.ndarray:
    """An alpha channel of any numeric type -> uint8 opacity: an integer type's maximum (65535 in 16 bits) or
    1.0 for floats is opaque (255); NaN is transparent. A stretch would turn a constant, opaque alpha into
    half-transparent grey."""
    a = np.asarray(alpha)
    full = float(np.iinfo(a.dtype).max) if a.dtype.kind in "ui" else 1.0
    with np.errstate(invalid="ignore"):
        scaled = np.nan_to_num(a.astype(np.float64) / full * 255, nan=0.0, posinf=255.0, neginf=0.0)
    return np.round(np.clip(scaled, 0, 255)).astype(np.uint8)


def _deep_colour(im: Image.Image) -> bool:
    """True for 16-bit-per-channel colour files, which Pillow opens as 8-bit RGB(A) (keeping the top byte)."""
    try:
        rawmode = im.tile[0][3]
        rawmode = rawmode[0] if isinstance(rawmode, tuple) else rawmode
    except (IndexError, TypeError):
        return False
    return im.mode in ("RGB", "RGBA") and isinstance(rawmode, str) and ";16" in rawmode


def _read_deep_colour(data: bytes, frame: int = 0) -> np.ndarray | None:
    """HxWxC array of frame ``frame`` of a 16-bit colour file at full depth (rasterio for the first frame,
    else tifffile), None if neither reads it."""
    try:
        if frame:
            raise LookupError("rasterio opens a file's first image only")
        import warnings

        from rasterio.errors import NotGeoreferencedWarning
        from rasterio.io import MemoryFile

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile(data) as mem, mem.open() as ds:
                from rasterio.enums import ColorInterp

                # a TIFF says itself what its extra band is; GDAL calls straight and premultiplied alpha alike
                try:
                    alpha = (_tiff_alpha(data, frame) if data[:4] in TIFF_MAGIC
                             else "straight" if ds.colorinterp[-1] == ColorInterp.alpha else None)
                except Exception:  # GDAL trips over a broken EXIF block when asked: no alpha known
                    alpha = None
                return _extra_band(np.moveaxis(ds.read(), 0, -1), alpha)
    except Exception:
        pass
    return _read_tiff_page(data, frame) if data[:4] in TIFF_MAGIC else None


def frame_count(im: Image.Image) -> int:
    """Frames (pages) of an opened image: 1 for a single image, and for an MPO JPEG, whose other images are
    a camera's previews, depth maps or second eye (CIPA DC-007), not pages. Raises ``BadImage`` where the
    file is cut short or damaged so that they cannot be counted (Pillow raises on a multi-page TIFF cut
    mid-way). A TIFF's pages are better counted from its bytes (``page_count``)."""
    if im.format == "MPO":
        return 1
    try:
        return max(1, int(getattr(im, "n_frames", 1)))
    except Exception as err:  # TypeError, OSError, struct.error, EOFError: whatever its reader trips over
        raise BadImage(f"corrupt or truncated image: its pages cannot be counted ({type(err).__name__}: {err})") from err


class _TiffComplaints(logging.Handler):
    """What tifffile logs while it reads: kept quiet (its warnings about a damaged file would print beside
    the one-line errors), and whether the chain walker complained (an IFD offset past the file's end: cut
    short), as opposed to a tag it skips."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.chain_damaged = False

    def emit(self, record):
        self.chain_damaged = self.chain_damaged or "TiffPages" in record.getMessage()


@contextlib.contextmanager
def _tiff_file(data):
    """``tifffile.TiffFile`` over ``data`` (bytes or a seekable file object), its log kept quiet; yields
    (file, complaints), ``complaints.chain_damaged`` set once the pages read so far show a damaged chain."""
    import tifffile

    log, complaints = logging.getLogger("tifffile"), _TiffComplaints()
    log.addHandler(complaints)
    propagate, log.propagate = log.propagate, False
    try:
        with tifffile.TiffFile(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data) as tif:
            yield tif, complaints
    finally:
        log.removeHandler(complaints)
        log.propagate = propagate


def tiff_pages(data) -> list[tuple[int, int]] | None:
    """(IFD index, orientation) of each page of a TIFF, in order, read from its tags with tifffile: every
    image of the file's IFD chain but the reduced-resolution ones (NewSubfileType bit 0, TIFF 6.0 section 8:
    the thumbnails scanners write beside a page), whatever its pixels (Pillow cannot open a float RGB page,
    nor count past one); orientation 1-8 (tag 274; 1 when absent or invalid). ``data``: the file's bytes, or
    a seekable file object (only the tags are read). None where tifffile cannot walk the whole chain (cut
    short, damaged: it complains and stops); a tag it skips (an unknown field type) is no damage."""
    try:
        with _tiff_file(data) as (tif, complaints):
            found = []
            for i, page in enumerate(tif.pages):
                found.append((i, _page_orientation(page), int(page.subfiletype or 0) & 1))
    except Exception:
        return None
    if complaints.chain_damaged:  # cut short or damaged: the pages cannot be counted from the tags
        return None
    full = [(i, o) for i, o, reduced in found if not reduced]
    return (full or [(i, o) for i, o, _ in found[:1]]) or None


def page_count(data: bytes) -> int:
    """Pages of an image file's bytes: a TIFF's by ``tiff_pages``, else ``frame_count``'s (1 for a file
    Pillow cannot open: its loader says what is wrong with it). Raises ``BadImage`` as ``frame_count``, and
    for a TIFF whose chain of pages tifffile cannot walk whole (cut short, damaged)."""
    if data[:4] in TIFF_MAGIC:
        if (pages := tiff_pages(data)) is None:  # Pillow counts what it reaches: one clean page, or two of three
            raise BadImage("corrupt or truncated image: its pages cannot be counted (a TIFF whose chain of pages "
                           "is damaged or cut short)")
        return len(pages)
    try:
        im = Image.open(io.BytesIO(data))
    except Exception:
        return 1
    with im:
        return frame_count(im)


def _tiff_orientation(data: bytes, ifd: int) -> int:
    """Page ``ifd``'s orientation tag (1-8; 1 when absent, invalid or unreadable), for a TIFF whose chain
    ``tiff_pages`` could not walk whole."""
    try:
        with _tiff_file(data) as (tif, _):
            return _page_orientation(tif.pages[ifd])
    except Exception:
        return 1


def _page_orientation(page) -> int:
    """A tifffile page's orientation tag (274): 1-8, or 1 when absent or invalid."""
    tag = page.tags.get(EXIF_ORIENTATION)
    value = tag.value if tag is not None and isinstance(tag.value, int) else 1
    return value if 1 <= value <= 8 else 1


def _stored_tiff(data: bytes, ifd: int) -> bytes:
    """``data`` with page ``ifd``'s Orientation tag set to 1, so that Pillow decodes the pixels as stored:
    Pillow 13 turns a TIFF page upright itself while it loads, and scrambles L, P, RGBA, CMYK and 16-bit
    pages of orientations 5-8 doing it; ``load_image`` turns the stored pixels as it does every format's."""
    with _tiff_file(data) as (tif, _):
        tag = tif.pages[ifd].tags.get(EXIF_ORIENTATION)
        if tag is None or tag.value == 1 or tag.valuebytecount not in (2, 4):  # SHORT, or LONG from some writers
            return data
        fixed = bytearray(data)
        n = tag.valuebytecount
        fixed[tag.valueoffset:tag.valueoffset + n] = (1).to_bytes(n, "little" if tif.byteorder == "<" else "big")
        return bytes(fixed)


def load_image(source, max_pixels: int = DEFAULT_MAX_PIXELS, frame: int = 0) -> Image.Image:
    """Open a path, bytes, file object, array or PIL image as upright RGB, refusing bombs and broken files.

    A PIL image with an EXIF orientation is turned upright too; arrays carry none and are taken as they are.
    ``frame``: which frame (page) of a multi-frame file (multi-page TIFF, GIF, WebP), 0-based; every frame is
    decoded as the first is (16-bit colour at full depth, stretched; its own orientation).

    Raises:
        BadImage: missing or empty file, unknown or corrupt format, zero size, over ``max_pixels``, no
            frame ``frame`` (or a negative one), a ``source`` of another type (None, a list); a known
            format that is no image (a PDF, an Office document, a web page: ``other_format``) with its
            ``kind`` and ``advice`` set.
        ValueError: ``frame`` given for an array or a PIL image, which have one frame.
    """
    if frame < 0:
        raise BadImage(f"frame {frame}: frames are counted from 0")
    if frame and not isinstance(source, (str, Path, bytes, bytearray, memoryview, io.IOBase)):
        raise ValueError(f"frame {frame}: only a file, bytes or a file object have frames")
    if isinstance(source, Image.Image):
        _check_size(*source.size, max_pixels)
        if source.format == "TIFF" and exif_orientation(source) != 1 and getattr(source, "filename", None):
            # not loaded yet (loading drops the tag): from its file, as Pillow would turn some pages wrongly
            pages = [ifd for ifd, _ in tiff_pages(Path(source.filename).read_bytes()) or []]
            if source.tell() in pages:
                return load_image(source.filename, max_pixels, pages.index(source.tell()))
        try:
            with _PIL_LOAD_LOCK:  # one lazily opened image given to several threads is decoded once, not at once
                source.load()  # Pillow's TIFF reader applies (and drops) the orientation tag itself on load
            rgb = to_rgb(source)
        except (ValueError, OSError) as err:  # a closed image, a mode Pillow cannot convert (La, ...)
            raise BadImage(f"cannot use this PIL image (mode {source.mode}): {err}") from None
        return _upright_image(rgb, exif_orientation(source))
    if isinstance(source, np.ndarray):
        return array_to_image(source, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise BadImage("empty file (0 bytes)")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, str) and not source.strip():  # Path("") is the working folder
        raise BadImage("empty path: give an image file")
    elif isinstance(source, (str, Path)) and not Path(source).exists():
        raise BadImage(f"no such file: {source}")
    elif isinstance(source, (str, Path)) and Path(source).is_dir():
        raise BadImage(f"{source} is a folder, not an image file")
    elif not isinstance(source, (str, Path)) and not hasattr(source, "read"):  # Image.open would fail on .read
        raise BadImage(f"not an image: got {type(source).__name__}; give a path, a URI, bytes, a file object, "
                       f"a PIL image or an HxW / HxWxC numpy array")
    elif not isinstance(source, (str, Path)):
        source = _seekable_binary(source)
    # a TIFF's pages and orientations come from its tags (tifffile): Pillow counts no page past one it cannot
    # decode, counts thumbnails as pages, and turns some pages upright wrongly; it then decodes the stored pixels
    tiff, orientation = None, None
    if _head(source) in TIFF_MAGIC and (pages := tiff_pages(data := _bytes_of(source))) is not None:
        if frame >= len(pages):
            raise BadImage(f"page {frame} of {len(pages)}: no such frame")
        tiff, (frame, orientation) = data, pages[frame]
        source = io.BytesIO(_stored_tiff(tiff, frame))
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # we check the header size ourselves, with our own message
    try:
        with Image.open(source) as im:
            if frame and tiff is None and frame >= (n := frame_count(im)):
                raise BadImage(f"page {frame} of {n}: no such frame")
            if frame:
                try:
                    im.seek(frame)
                except (OSError, SyntaxError, ValueError, EOFError):  # a TIFF page Pillow cannot decode
                    if tiff is None or (pixels := _read_tiff_page(tiff, frame)) is None:
                        raise
                    return _upright_image(array_to_image(pixels, max_pixels), orientation)
            _check_size(*im.size, max_pixels)
            was_deep, misread = _deep_colour(im), im.format == "TIFF" and _pillow_misreads(im)
            # the frame's own, for pixels read as stored (a PNG's EXIF loads its pixels: the tile is read first)
            stored = orientation if orientation is not None else exif_orientation(im)
            if misread and (pixels := _read_tiff_page(_bytes_of(source), frame)) is not None:
                return _upright_image(array_to_image(pixels, max_pixels), stored)
            deep = _read_deep_colour(_bytes_of(source), frame) if was_deep else None
            if deep is not None and deep.ndim == 3 and deep.shape[:2] == (im.height, im.width):
                return _upright_image(array_to_image(deep, max_pixels), stored)  # as stored: turn it
            im.load()  # a TIFF whose tag was cleared above is decoded as stored; any other TIFF Pillow turns itself
            rgb = to_rgb(im)
            if was_deep:  # no full-depth reader: the top byte, stretched like the full value would be
                rgb = Image.fromarray(stretch_to_uint8(np.asarray(rgb)))
            # what is left to turn: Pillow drops the tag of a TIFF it turned while loading
            return _upright_image(rgb, orientation if orientation is not None else exif_orientation(im))
    except UnidentifiedImageError as err:
        data = _bytes_of(source)
        name = Path(source).name if isinstance(source, (str, Path)) else None
        other = other_format(data, name)
        if other is not None:  # a PDF, an Office document, a web page: say what it is, not "broken"
            kind, advice = other
            raise BadImage(f"the file is {kind}, not an image: {advice}", kind, advice) from err
        if data[:4] in TIFF_MAGIC:
            if (pixels := _read_tiff_page(data, frame)) is not None:  # a layout Pillow does not decode
                turn = orientation if orientation is not None else _tiff_orientation(data, frame)
                return _upright_image(array_to_image(pixels, max_pixels), turn)
            raise BadImage(_tiff_refusal(data)) from err
        if (bits := _jpeg_precision(data)) not in (None, 8):  # 12-bit (medical, astronomy, some cameras): GDAL's
            if (pixels := _read_deep_colour(data)) is not None:
                if frame:
                    raise BadImage(f"page {frame} of 1: no such frame") from err
                return _upright_image(array_to_image(pixels, max_pixels), _jpeg_orientation(data))
            raise BadImage(f"a {bits}-bit JPEG, which cannot be decoded here: convert it to a 16-bit PNG or TIFF "
                           "first (e.g. gdal_translate -ot UInt16)") from err
        if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
            raise BadImage("a HEIC/HEIF photo, which cannot be decoded here: convert it to JPEG or PNG first "
                           "(e.g. heif-convert, or export from the phone or Photos as 'Most Compatible')") from err
        raise BadImage("not a readable image (unknown or broken format)") from err
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, BadImage):
            raise
        raise BadImage(f"corrupt or truncated image: {err}") from err
    finally:
        Image.MAX_IMAGE_PIXELS = old


TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, either byte order
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
# a ZIP holding one of these is that kind of document (Office Open XML by its folders, OpenDocument and EPUB
# by the "mimetype" member they start with)
_ZIP_DOCUMENTS = (("word/", "a Word document (.docx)"), ("xl/", "an Excel workbook (.xlsx)"),
                  ("ppt/", "a PowerPoint presentation (.pptx)"))


def other_format(data: bytes, name: str | None = None) -> tuple[str, str] | None:
    """(what the file is, what to do with it) where ``data`` is a known format that is no image: a PDF, a
    ZIP archive (an Office or OpenDocument file, an EPUB), an HTML page or an SVG drawing; None otherwise.
    ``name``: the file's name, where it has one (the advice for a PDF depends on it)."""
    head = data[:2048].lstrip()
    if head[:5] == b"%PDF-":
        # pipelines.documents takes a file for a PDF by its name
        named = name is not None and name.lower().endswith(".pdf")
        return "a PDF", ("render the page as an image first, or run pipelines.documents, which reads PDFs"
                         + ("" if named else " named .pdf"))
    if data[:4] in _ZIP_MAGIC:
        return _zip_kind(data), "export the page or picture it holds as an image (PNG, JPEG) and give that"
    lower = head[:1024].lower()
    if lower.startswith((b"<!doctype html", b"<html")) or (lower.startswith(b"<") and b"<html" in lower):
        return "an HTML page", "save the image itself, not the web page that shows it"
    if lower.startswith(b"<") and b"<svg" in lower:
        return "an SVG drawing", "render it as a PNG first (e.g. rsvg-convert or Inkscape)"
    return None


def _zip_kind(data: bytes) -> str:
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
            mimetype = z.read("mimetype")[:80].decode("ascii", "replace") if "mimetype" in names else ""
    except Exception:  # a damaged archive is still an archive
        return "a ZIP archive"
    if "opendocument" in mimetype:
        return "an OpenDocument file (.odt, .ods, .odp)"
    if "epub" in mimetype:
        return "an EPUB book"
    for folder, kind in _ZIP_DOCUMENTS:
        if any(n.startswith(folder) for n in names):
            return kind
    return "a ZIP archive"


_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")  # ISO/IEC 23008-12


def _pillow_misreads(im: Image.Image) -> bool:
    """True for a TIFF page whose samples Pillow decodes wrongly or not at all: planar bands of more than 8
    bits (its raw modes read them as interleaved), or 2 samples per pixel deeper than 8 bits."""
    tags = getattr(im, "tag_v2", {})
    bits = tags.get(258, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    deep = any(int(b) > 8 for b in bits)
    return deep and (tags.get(284, 1) == 2 or tags.get(277, 1) == 2)


def _extra_band(pixels: np.ndarray, alpha: str | None) -> np.ndarray:
    """HxWx2 / HxWx4 pixels with their last band as straight alpha, which ``array_to_image`` composites:
    ``alpha`` None drops a band the file does not mark as alpha (TIFF ExtraSamples "unspecified", TIFF 6.0
    section 18: a near-infrared band, which shown as opacity would fade the image to white);
    ``"premultiplied"`` (ExtraSamples 1, associated alpha) divides the colour by the alpha, which
    composited again would darken it; ``"straight"`` keeps it as it is. Other shapes as they are."""
    if pixels.ndim != 3 or pixels.shape[2] not in (2, 4):
        return pixels
    if alpha is None:
        return pixels[..., 0] if pixels.shape[2] == 2 else pixels[..., :3]
    if alpha == "premultiplied":
        full = float(np.iinfo(pixels.dtype).max) if pixels.dtype.kind in "ui" else 1.0
        share = pixels[..., -1:].astype(np.float64) / full
        colour = pixels[..., :-1].astype(np.float64) / np.where(share > 0, share, 1.0)
        colour = np.clip(colour, 0, full) if pixels.dtype.kind in "ui" else colour
        return np.concatenate([colour.astype(pixels.dtype), pixels[..., -1:]], axis=-1)
    return pixels


def _tiff_alpha(data: bytes, frame: int = 0) -> str | None:
    """What page ``frame`` of a TIFF marks its first extra sample as: ``"premultiplied"`` (ExtraSamples 1),
    ``"straight"`` (2), or None (unspecified, none, or a header tifffile cannot read). Tags only: no pixel
    is decoded."""
    try:
        with _tiff_file(data) as (tif, _):
            return _alpha_of(tif.pages[frame].extrasamples)
    except Exception:
        return None


def _alpha_of(extrasamples) -> str | None:
    """A TIFF page's ExtraSamples (TIFF 6.0 section 18) as ``_extra_band`` takes them: 1 premultiplied
    (associated) alpha, 2 straight (unassociated) alpha, anything else or none no alpha."""
    return {1: "premultiplied", 2: "straight"}.get(int(extrasamples[0])) if len(extrasamples) else None


def _read_tiff_page(data: bytes, frame: int = 0) -> np.ndarray | None:
    """HxW or HxWxC pixels of page ``frame`` of a TIFF Pillow cannot decode (planar bands, a 4-band layout it
    lacks), read with tifffile where it holds 1, 3 or 4 bands of integers or floats; a 4th band that the
    file does not mark as alpha (ExtraSamples 1 or 2, TIFF 6.0 section 18) is left out. None otherwise."""
    try:
        with _tiff_file(data) as (tif, _):
            page = tif.pages[frame]
            bands = page.samplesperpixel
            if page.dtype is None or page.dtype.kind not in "uif" or bands not in (1, 2, 3, 4):
                return None
            pixels = page.asarray()
            if page.photometric == 3 and page.colormap is not None and pixels.ndim == 2:  # palette: indices to colour
                colormap = np.asarray(page.colormap)                  # 3 x 2**bits, 16-bit (TIFF 6.0 section 5)
                pixels = np.moveaxis(colormap[:, np.clip(pixels, 0, colormap.shape[1] - 1)], 0, -1)
            if pixels.ndim == 3 and pixels.shape[0] == bands and page.planarconfig == 2:  # bands first
                pixels = np.moveaxis(pixels, 0, -1)
            pixels = _extra_band(pixels, _alpha_of(page.extrasamples))
            return pixels if pixels.ndim in (2, 3) else None
    except Exception:  # damaged, or a layout tifffile cannot read either: the refusal says why
        return None


def _tiff_refusal(data: bytes) -> str:
    """Why Pillow refused a TIFF (often a GeoTIFF: many bands, 64-bit or complex samples), and what to do."""
    try:
        with _tiff_file(data) as (tif, _):
            bands, dtype = tif.pages[0].samplesperpixel, tif.pages[0].dtype
    except Exception:
        bands = dtype = None
    if dtype is None:  # tifffile reads the header of any TIFF layout: one it cannot read is damaged
        return "corrupt or truncated image: a TIFF whose first page cannot be read"
    satellite = "or run pipelines.satellite, which reads such rasters"
    what = f"a TIFF of {bands} band{'' if bands == 1 else 's'} of {dtype}"
    if dtype.kind == "c":
        return f"{what}: complex values (e.g. SAR SLC) are no image; convert them to amplitude (|z|) first"
    if bands not in (1, 3, 4):
        return (f"{what}, which is no single image: save 1 or 3 of its bands first (e.g. gdal_translate -b 1 -b 2 "
                f"-b 3 -ot Byte -scale), {satellite} and picks bands (--bands)")
    return f"{what}, which cannot be decoded: save it as 8 or 16 bits first (e.g. gdal_translate -ot Byte -scale), {satellite}"


def _jpeg_segments(data: bytes):
    """(marker, payload) of each segment of a JPEG's header, up to its first frame header (SOFn), which is
    the last one given (ITU T.81 B.1.1: a marker 0xFF xx, a 2-byte big-endian length, the payload)."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        yield marker, data[i + 4:i + 2 + length]
        if _is_frame_header(marker):
            return
        i += 2 + length


def _is_frame_header(marker: int) -> bool:
    """A JPEG SOFn marker (ITU T.81 B.1.1.3): 0xC0-0xCF but DHT, JPG and DAC (0xC4, 0xC8, 0xCC)."""
    return 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)


def _jpeg_precision(data: bytes) -> int | None:
    """The sample precision (bits) of a JPEG's frame header (ITU T.81 B.2.2: the first byte of an SOFn
    payload), or None for no JPEG or none found."""
    if data[:2] != b"\xff\xd8":
        return None
    for marker, payload in _jpeg_segments(data):
        if _is_frame_header(marker):
            return payload[0] if payload else None
    return None


def _jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation of a JPEG Pillow cannot open (12-bit), from its APP1 "Exif" segment (parsed by
    Pillow's ``Image.Exif``); 1 when absent, invalid or unreadable."""
    for marker, payload in _jpeg_segments(data):
        if marker == 0xE1 and payload.startswith(b"Exif\0\0"):
            try:
                exif = Image.Exif()
                exif.load(payload)
                value = int(exif.get(EXIF_ORIENTATION, 1))
            except Exception:  # a broken EXIF block is no reason to refuse the pixels
                return 1
            return value if 1 <= value <= 8 else 1
    return 1


MAX_STREAM_BYTES = 1 << 30
"""The most bytes read from a pipe, a device or a stream that cannot seek: far more than any image under
``DEFAULT_MAX_PIXELS`` holds (float32 RGBA: 640 MB), so that an endless one (/dev/zero) is refused rather than
filling the memory."""


def read_at_most(f, limit: int | None = None) -> bytes:
    """A stream's bytes to its end or to ``limit + 1`` (default ``MAX_STREAM_BYTES``), whichever comes first:
    more than ``limit`` means it is too long (the caller says so). An unbuffered stream (a raw socket or
    pipe, an HTTP body without a length) returns what has arrived on each read, so it is read until it ends.
    Raises BadImage for a stream that reads text."""
    limit = MAX_STREAM_BYTES if limit is None else limit
    chunks, size = [], 0
    while size <= limit and (chunk := f.read(min(1 << 20, limit + 1 - size))):
        if isinstance(chunk, str):
            raise BadImage("a file object that reads text: open the image in binary mode ('rb')")
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _seekable_binary(f):
    """A file object as Pillow reads it: a seekable binary one as it is; a pipe or an HTTP body (no seek) read
    into memory from where it stands, at most ``MAX_STREAM_BYTES``. Raises BadImage for a text-mode file, an
    empty or an endless stream."""
    if isinstance(f, io.TextIOBase):  # a mode attribute says less: a zip member's is 'r', a GzipFile's an int
        raise BadImage("a file object opened as text: open the image in binary mode ('rb')")
    try:
        if f.seekable():
            return f
    except (AttributeError, OSError, ValueError):  # no seekable(), or a closed file (read below says so)
        pass
    try:
        data = read_at_most(f)
    except (OSError, ValueError) as err:
        if isinstance(err, BadImage):
            raise
        raise BadImage(f"cannot read the file object: {err}") from None
    if len(data) > MAX_STREAM_BYTES:
        raise BadImage(f"more than {MAX_STREAM_BYTES:,} bytes from a stream without an end; not an image to read")
    if not data:
        raise BadImage("empty file (0 bytes)")
    return io.BytesIO(data)


def _head(source, n: int = 4) -> bytes:
    """The first ``n`` bytes of a path or file object (its position kept)."""
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            return f.read(n)
    pos = source.tell()
    try:
        return source.read(n)
    finally:
        source.seek(pos)


# the most bytes of a file Pillow cannot identify that are read to say what it is (a PDF, a 12-bit JPEG): more
# than such images under the pixel guard hold; past it only the head is read (but of a TIFF, which tifffile
# decodes whole), so a 3 GB file of something else is not loaded whole
MAX_UNIDENTIFIED_BYTES = 1 << 30


def _bytes_of(source) -> bytes:
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            head = f.read(1 << 20)
            if os.fstat(f.fileno()).st_size > MAX_UNIDENTIFIED_BYTES and head[:4] not in TIFF_MAGIC:
                return head  # a TIFF layout Pillow does not decode is read whole, by tifffile; anything else is named by its head
            return head + f.read()
    pos = source.tell()
    source.seek(0)
    try:
        return source.read()
    finally:
        source.seek(pos)


def shows_nothing(text: str) -> bool:
    """True where ``text`` has no character that shows: only spaces, line breaks, controls and format
    characters (Unicode categories Z*, Cc, Cf: a zero-width space U+200B, a byte-order mark U+FEFF)."""
    return all(c.isspace() or unicodedata.category(c)[0] == "Z" or unicodedata.category(c) in ("Cc", "Cf")
               for c in text)


def check_question(question: str) -> str:
    """The question, stripped.

    Raises:
        ValueError: ``"empty question"``, where it is None, blank or shows nothing (``shows_nothing``).
    """
    if question is None or not str(question).strip():
        raise ValueError("empty question")
    if shows_nothing(str(question)):
        odd = ", ".join(dict.fromkeys(f"U+{ord(c):04X}" for c in str(question) if not c.isspace()))
        raise ValueError(f"empty question: it holds only characters that show nothing ({odd})")
    _check_encodable("question", str(question))
    return str(question).strip()


def _check_encodable(what: str, text: str) -> None:
    """ValueError for text holding a lone surrogate (``os.fsdecode`` of a byte that is not UTF-8, ``"\\udcfc"``),
    which no tokenizer reads and no file holds."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{what} holds {text[err.start]!r}, half of a UTF-16 pair, which is no character "
                         "(text decoded from bytes in another encoding?)") from None


def check_choices(choices) -> tuple[str, ...] | None:
    """The answer set as stripped strings: None (open-ended), a comma-separated string or a list.

    Raises:
        ValueError: not a string or a list; an empty choice (``"yes,,no"``); fewer than two; duplicates.
    """
    if choices is None:
        return None
    if isinstance(choices, str):
        choices = [c for c in choices.split(",")] if choices.strip() else []
    elif not isinstance(choices, (list, tuple)):
        raise ValueError(f"choices must be a list or a comma-separated string, got a {type(choices).__name__}")
    choices = tuple(str(c).strip() for c in choices)
    for c in choices:
        _check_encodable(f"choice {c!r}", c)
    if any(shows_nothing(c) for c in choices):  # "" and a zero-width space alike
        raise ValueError(f"empty choice in {list(choices)}")
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
