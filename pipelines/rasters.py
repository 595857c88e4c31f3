"""Reading scenes: headers, upright tile windows, validity masks, and the stretch to 8-bit RGB.

Everything is read through rasterio (GDAL), which reads windows of GeoTIFF, PNG, JPEG, JPEG 2000, VRT,
ERDAS .img and the other formats in ``SCENE_FORMATS`` that the installed GDAL has a driver for.

Memory bound of one loader process: the tile being read (``tile_size^2 x bands``, as stored plus a
float64 copy during the stretch, plus one mask byte per pixel and band) and GDAL's block cache, capped
at ``GDAL_CACHE_MB``. A tile over ``max_tile_pixels`` is refused before any work. The scene stretch
reads an overview where the file has one, else at most ``SAMPLE_GRID^2`` windows of ``SAMPLE_WINDOW^2``
pixels. Remote scenes are read by range requests (rasterio's fsspec opener), never downloaded whole.
(GDAL refuses progressive JPEGs whose decoder would need more than libjpeg's memory limit, with its
own message, which becomes the scene's error row.)

Pixels a viewer would not show are invalid: nodata values, internal masks and alpha bands (GDAL's mask
bands, ``read_masks``), and NaN/inf. They are left out of the stretch percentiles and shown as
``NEUTRAL_FILL`` grey; a tile without a single valid pixel is not read into an image at all.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from spote.images import NEUTRAL_FILL, apply_range, robust_range, stored_window, upright_array, upright_size

from .storage import filesystem

GDAL_CACHE_MB = 256
SCENE_PERCENTILES = (2.0, 98.0)  # of the valid pixels, per band: QGIS' default cumulative cut
SAMPLE_GRID = 16                 # scene stretch without overviews: a 16 x 16 grid of sample windows ...
SAMPLE_WINDOW = 32               # ... of 32 x 32 pixels (262,144 pixels per band at most)
OVERVIEW_MIN_SIDE = 256          # the coarsest overview read for the scene stretch keeps this many pixels a side

# extension -> GDAL drivers that read it (the first the installed GDAL has is used)
_JP2 = ("JP2OpenJPEG", "JP2KAK", "JP2ECW", "JP2MrSID", "JPEG2000")
SCENE_FORMATS = {".tif": ("GTiff",), ".tiff": ("GTiff",), ".png": ("PNG",), ".jpg": ("JPEG",), ".jpeg": ("JPEG",),
                 ".jp2": _JP2, ".j2k": _JP2, ".vrt": ("VRT",), ".img": ("HFA",), ".webp": ("WEBP",),
                 ".bmp": ("BMP",), ".ntf": ("NITF",), ".nitf": ("NITF",)}
# companions of a scene that GDAL reads beside it; listed, never tiled on their own
SIDECAR_SUFFIXES = (".aux.xml", ".ovr", ".msk", ".tfw", ".tifw", ".jgw", ".jpgw", ".pgw", ".pngw", ".j2w", ".wld",
                    ".prj", ".rpb", ".imd", ".rrd", ".xml")


class SceneError(ValueError):
    """A scene or a request about it that cannot be served; the message says why."""


def readable_extensions() -> dict[str, str]:
    """{".tif": "GTiff", ...}: the extensions of ``SCENE_FORMATS`` whose driver the installed GDAL has."""
    import rasterio

    with rasterio.Env() as env:
        have = env.drivers()
    out = {}
    for ext, drivers in SCENE_FORMATS.items():
        found = next((d for d in drivers if d in have), None)
        if found:
            out[ext] = found
    return out


def open_scene(uri: str, storage_options=None):
    """A rasterio dataset; remote objects are opened through fsspec (range reads, sidecars found too)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        if "://" in uri and not uri.startswith("file://"):
            fs, path = filesystem(uri, storage_options)
            return rasterio.open(path, opener=fs)
        return rasterio.open(uri.removeprefix("file://"))


def _exif_orientation(uri: str, storage_options=None) -> int:
    """EXIF orientation from the file's header (Pillow reads only the header); 1 when none or unreadable."""
    from PIL import Image

    from spote.images import exif_orientation

    try:
        fs, path = filesystem(uri, storage_options)
        with fs.open(path, "rb") as f, Image.open(f) as im:
            return exif_orientation(im)
    except Exception:  # formats Pillow does not know carry no EXIF orientation we could honour
        return 1


@dataclass(frozen=True)
class SceneHeader:
    """What the planner needs, from the header only. Sizes in pixels; ``width``/``height`` are upright."""

    width: int
    height: int
    stored_width: int
    stored_height: int
    bands: int
    dtype: str
    crs: str                         # "" when the scene has none
    transform: tuple[float, ...]     # affine (a, b, c, d, e, f) of *stored* pixels; () when not georeferenced
    orientation: int                 # EXIF orientation applied to non-georeferenced images (1 = as stored)
    palette: bool
    default_bands: tuple[int, ...]   # 1-based: red, green, blue by colour interpretation, else band 1 as grey
    has_overviews: bool

    @property
    def georeferenced(self) -> bool:
        return bool(self.transform)


def read_header(ds, uri: str = "", storage_options=None) -> SceneHeader:
    """The ``SceneHeader`` of an open dataset (``uri`` is used to look for an EXIF orientation)."""
    from rasterio.enums import ColorInterp

    georef = ds.crs is not None or not ds.transform.is_identity
    orientation = 1 if georef or not uri else _exif_orientation(uri, storage_options)
    width, height = upright_size(ds.width, ds.height, orientation)
    ci = list(ds.colorinterp)
    palette = ds.count == 1 and ci[0] == ColorInterp.palette
    if all(c in ci for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
        default = tuple(ci.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue))
    else:
        colour = [i + 1 for i, c in enumerate(ci) if c != ColorInterp.alpha]
        default = tuple(colour[:3]) if len(colour) >= 3 else tuple(colour[:1] or [1])
    return SceneHeader(width=width, height=height, stored_width=ds.width, stored_height=ds.height, bands=ds.count,
                       dtype=str(ds.dtypes[0]), crs=ds.crs.to_string() if ds.crs else "",
                       transform=tuple(ds.transform)[:6] if georef else (), orientation=orientation,
                       palette=palette, default_bands=default, has_overviews=bool(ds.overviews(1)))


def scene_header(uri: str, storage_options=None) -> SceneHeader:
    with open_scene(uri, storage_options) as ds:
        return read_header(ds, uri, storage_options)


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """``--bands`` ("4,3,2" or "1"), 1-based; None for the scene's own colour bands.

    Raises:
        SceneError: not integers, or not one or three of them.
    """
    if text is None or not str(text).strip():
        return None
    try:
        bands = tuple(int(b) for b in str(text).split(","))
    except ValueError as err:
        raise SceneError(f"--bands {text!r}: expected 1-based band numbers such as 3,2,1") from err
    if len(bands) not in (1, 3):
        raise SceneError(f"--bands {text!r}: give one band (grey) or three (red, green, blue), not {len(bands)}")
    return bands


def check_bands(bands: tuple[int, ...] | None, header: SceneHeader, name: str) -> tuple[int, ...]:
    """The 1-based bands to read from a scene.

    Raises:
        SceneError: a requested band is not in the file (0, negative, or over its band count).
    """
    if bands is None:
        return header.default_bands
    bad = [b for b in bands if not 1 <= b <= header.bands]
    if bad:
        plural = "band" if header.bands == 1 else "bands"
        raise SceneError(f"--bands {','.join(map(str, bands))}: {name} has {header.bands} {plural} "
                         f"(valid: 1-{header.bands}); band {', '.join(map(str, bad))} does not exist")
    return bands


def tile_pixel_cap(tile_size: int, max_tile_pixels: int) -> None:
    """Raises SceneError when one tile would be over the pixel cap (checked before any work)."""
    if tile_size <= 0:
        raise SceneError(f"--tile-size must be positive, got {tile_size}")
    if tile_size * tile_size > max_tile_pixels:
        raise SceneError(f"--tile-size {tile_size}: one tile is {tile_size}x{tile_size} = {tile_size ** 2:,} pixels, "
                         f"over the cap of {max_tile_pixels:,} pixels per tile; use a smaller --tile-size")


@dataclass
class Pixels:
    """Values (h, w, C) as read (C = 1 or 3; palette already expanded) and where they are valid (h, w)."""

    values: np.ndarray
    valid: np.ndarray

    @property
    def is_8bit(self) -> bool:
        return self.values.dtype == np.uint8


def _read(ds, header: SceneHeader, bands: tuple[int, ...], window=None, out_shape=None) -> Pixels:
    """Values and validity of a stored-frame window (or a decimated read of the scene)."""
    kw = {"window": window} if window is not None else {}
    if out_shape is not None:
        kw["out_shape"] = (len(bands), *out_shape)
    values = ds.read(list(bands), **kw)
    valid = (ds.read_masks(list(bands), **kw) > 0).all(0)
    if values.dtype.kind == "f":
        valid &= np.isfinite(values).all(0)
    values = np.moveaxis(values, 0, -1)
    if header.palette:
        lut = np.zeros((256, 4), np.uint8)
        for index, rgba in ds.colormap(bands[0]).items():
            if 0 <= index < 256:
                lut[index] = rgba
        entries = lut[values[..., 0].astype(np.intp).clip(0, 255)]
        values, valid = entries[..., :3], valid & (entries[..., 3] > 0)
    return Pixels(values, valid)


def read_tile(ds, header: SceneHeader, bands: tuple[int, ...], col: int, row: int, w: int, h: int) -> Pixels:
    """The upright-frame window (col, row, w, h) of the scene: its pixels as a viewer shows them."""
    from rasterio.windows import Window

    sc, sr, sw, sh = stored_window(col, row, w, h, header.stored_width, header.stored_height, header.orientation)
    px = _read(ds, header, bands, window=Window(sc, sr, sw, sh))
    return Pixels(upright_array(px.values, header.orientation), upright_array(px.valid, header.orientation))


Ranges = list  # per channel: (lo, hi) or None (no valid value)


def tile_ranges(px: Pixels, percentiles=SCENE_PERCENTILES) -> Ranges | None:
    """Per-channel stretch ranges of one tile's valid pixels; None for 8-bit data (shown as stored)."""
    if px.is_8bit:
        return None
    return [robust_range(px.values[..., c], px.valid, percentiles) for c in range(px.values.shape[-1])]


def scene_ranges(ds, header: SceneHeader, bands: tuple[int, ...], percentiles=SCENE_PERCENTILES) -> Ranges | None:
    """Per-channel stretch ranges of the whole scene, from its valid pixels: an overview where the file has
    one, else a regular grid of sample windows. None for 8-bit data (shown as stored)."""
    from rasterio.windows import Window

    if header.palette or np.dtype(header.dtype) == np.uint8:
        return None
    W, H = header.stored_width, header.stored_height
    if header.has_overviews:
        factors = ds.overviews(bands[0])
        f = max([x for x in factors if min(W, H) // x >= OVERVIEW_MIN_SIDE] or [1])
        samples = [_read(ds, header, bands, out_shape=(max(1, H // f), max(1, W // f)))]
    else:
        n_x, n_y = min(SAMPLE_GRID, max(1, W // SAMPLE_WINDOW)), min(SAMPLE_GRID, max(1, H // SAMPLE_WINDOW))
        sw, sh = min(SAMPLE_WINDOW, W), min(SAMPLE_WINDOW, H)
        xs = np.linspace(0, W - sw, n_x).round().astype(int)
        ys = np.linspace(0, H - sh, n_y).round().astype(int)
        samples = [_read(ds, header, bands, window=Window(int(x), int(y), sw, sh)) for y in ys for x in xs]
    values = np.concatenate([s.values.reshape(-1, s.values.shape[-1]) for s in samples])
    valid = np.concatenate([s.valid.reshape(-1) for s in samples])
    return [robust_range(values[:, c], valid, percentiles) for c in range(values.shape[-1])]


def to_rgb8(px: Pixels, ranges: Ranges | None) -> np.ndarray:
    """(h, w, 3) uint8: 8-bit values as stored (``ranges`` None), others stretched per channel over ``ranges``;
    invalid pixels ``NEUTRAL_FILL``. Grey (C = 1) is repeated into three channels."""
    if ranges is None:
        out = np.where(px.valid[..., None], px.values, NEUTRAL_FILL).astype(np.uint8)
    else:
        out = np.stack([apply_range(px.values[..., c], ranges[c], px.valid) for c in range(px.values.shape[-1])], -1)
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def stretch_bands(bands: np.ndarray, band_idx: list[int], valid: np.ndarray | None = None,
                  percentiles=SCENE_PERCENTILES) -> np.ndarray:
    """(bands, h, w) of any dtype -> (h, w, 3) uint8: 0-based band selection, then each band stretched over
    ``percentiles`` of its valid finite pixels (8-bit shown as stored).

    Raises:
        SceneError: a band index outside the array.
    """
    bad = [i for i in band_idx if not 0 <= i < bands.shape[0]]
    if bad:
        raise SceneError(f"band index {bad} outside the {bands.shape[0]} bands of the array")
    values = np.moveaxis(bands[list(band_idx)], 0, -1)
    ok = np.ones(values.shape[:2], bool) if valid is None else np.asarray(valid, bool).copy()
    if values.dtype.kind == "f":
        ok &= np.isfinite(values).all(-1)
    px = Pixels(values, ok)
    return to_rgb8(px, tile_ranges(px, percentiles))
