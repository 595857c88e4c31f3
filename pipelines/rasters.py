"""Reading scenes: headers, upright tile windows, validity masks, and the stretch to 8-bit RGB.

Everything is read through rasterio (GDAL), which reads windows of GeoTIFF, PNG, JPEG, JPEG 2000, VRT,
ERDAS .img and the other formats in ``SCENE_FORMATS`` that the installed GDAL has a driver for.

Memory bound of one loader process: the tile being read (``tile_size^2 x bands``, as stored plus a
float64 copy during the stretch, plus one mask byte per pixel and band) and GDAL's block cache, capped
at ``GDAL_CACHE_MB``. A tile over ``max_tile_pixels`` is refused before any work. The scene stretch
reads the coarsest overview that keeps ``OVERVIEW_MIN_SIDE`` pixels a side, if that overview is at most
``OVERVIEW_MAX_PIXELS``; else (no overviews, or none that size: a long narrow strip) at most
``SAMPLE_GRID^2`` windows of ``SAMPLE_WINDOW^2`` pixels. Remote scenes are read by range requests
(rasterio's fsspec opener), never downloaded whole.
(GDAL refuses progressive JPEGs whose decoder would need more than libjpeg's memory limit, with its
own message, which becomes the scene's error row.)

Pixels a viewer would not show are invalid: nodata values, internal masks and alpha bands (GDAL's mask
bands, ``read_masks``), and NaN/inf. They are left out of the stretch percentiles and shown as
``NEUTRAL_FILL`` grey; a tile without a single valid pixel is not read into an image at all. Valid data of
one value (a stretch range with lo == hi) is drawn mid-grey one step darker, ``CONSTANT_GREY``, so it is
never the nodata value. Complex-valued bands (SAR SLC) are refused: they are not an image until converted
to amplitude.
"""

from __future__ import annotations

import atexit
import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np

from spote.images import NEUTRAL_FILL, apply_range, robust_range, stored_window, upright_array, upright_size

from .storage import filesystem, local_path

GDAL_CACHE_MB = 256
SCENE_PERCENTILES = (2.0, 98.0)  # of the valid pixels, per band: QGIS' default cumulative cut
SAMPLE_GRID = 16                 # scene stretch without overviews: a 16 x 16 grid of sample windows ...
SAMPLE_WINDOW = 32               # ... of 32 x 32 pixels (262,144 pixels per band at most)
OVERVIEW_MIN_SIDE = 256          # the coarsest overview read for the scene stretch keeps this many pixels a side ...
OVERVIEW_MAX_PIXELS = 1024 ** 2  # ... and holds at most this many (else the sample grid is read)
# valid data of one value: apply_range's mid-grey (127.5) rounds to NEUTRAL_FILL, the nodata colour
CONSTANT_GREY = NEUTRAL_FILL - 1
COMPLEX_BANDS = "complex-valued bands (e.g. SAR SLC) are not images; convert them to amplitude (|z|) first"

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


def describe_error(err: BaseException) -> str:
    """One line for an error row: ``<Type>: <message>``, or a ``SceneError``'s own message (it says why).

    rasterio (1.4) raises a failed read as "Read failed. See previous exception for details." and chains
    GDAL's error stack behind it as CPLE_* exceptions (``__cause__``; an open failure as ``__context__``);
    only those say what is wrong ("gone.tif: No such file or directory"), so their messages are added, most
    recent first, each once."""
    from rasterio._err import CPLE_BaseError

    if isinstance(err, SceneError):
        return str(err)
    own = str(err).replace(" See previous exception for details.", "").strip().rstrip(".")
    parts = [own] if own else []
    seen, cause = {id(err)}, err.__cause__ if err.__cause__ is not None else err.__context__
    while cause is not None and id(cause) not in seen and len(seen) < 20:
        seen.add(id(cause))
        if isinstance(cause, CPLE_BaseError):
            msg = " ".join(str(cause).split()).rstrip(".")
            if msg and not any(msg in p for p in parts):
                parts.append(msg)
        cause = cause.__cause__ if cause.__cause__ is not None else cause.__context__
    return f"{type(err).__name__}: {': '.join(parts[:2])}{''.join('; ' + p for p in parts[2:])}"


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

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            if "://" in uri and not uri.startswith("file://"):
                fs, path = filesystem(uri, storage_options)
                return rasterio.open(path, opener=fs)
            return rasterio.open(local_path(uri))
    except rasterio.errors.RasterioIOError:
        if _is_empty(uri, storage_options):  # GDAL says only "not recognized as a supported file format"
            raise SceneError("empty file (0 bytes)") from None
        raise


def _is_empty(uri: str, storage_options=None) -> bool:
    try:
        fs, path = filesystem(uri, storage_options)
        return fs.size(path) == 0
    except Exception:  # gone, or unreachable: GDAL's own message says it
        return False


def _exif_orientation(uri: str, storage_options=None) -> int:
    """The orientation of the file's first image, from its header: a TIFF's tag 274 (tifffile, whatever its
    samples: Pillow opens no float RGB TIFF), else EXIF (Pillow); 1 when none or unreadable."""
    from PIL import Image

    from spote.images import TIFF_MAGIC, exif_orientation, tiff_pages

    try:
        fs, path = filesystem(uri, storage_options)
        with fs.open(path, "rb") as f:
            if f.read(4) in TIFF_MAGIC:
                f.seek(0)
                return next((o for ifd, o in tiff_pages(f) or [] if ifd == 0), 1)  # GDAL reads the first image
            f.seek(0)
            with Image.open(f) as im:
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
    default_bands: tuple[int, ...]   # 1-based: red, green, blue by colour interpretation, else the first three not alpha, else band 1 (grey)
    has_overviews: bool
    # ground control points (col, row, x, y) in stored pixels and ``crs`` units, for a scene with no affine
    # transform (raw L1 and SAR products); () otherwise
    gcps: tuple[tuple[float, float, float, float], ...] = ()
    # a multi-page TIFF's pages after the first, as GDAL describes them ("Page 2 (128P x 128L x 3B)"): GDAL
    # opens the first page as the scene, so these are not tiled; the job names them among skipped sources
    other_pages: tuple[str, ...] = ()

    @property
    def georeferenced(self) -> bool:
        return bool(self.transform or self.gcps)

    def to_map(self, cols, rows) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates (in ``crs``) of stored-pixel points (``cols``, ``rows``: x and y in pixels, 0 at
        the top-left corner of the first pixel): through the affine transform, or through GDAL's GCP
        transformer (a polynomial fitted to the GCPs, its order chosen by GDAL from their number, as gdalwarp does).

        Raises:
            ValueError: the scene is not georeferenced.
        """
        cols, rows = np.atleast_1d(np.asarray(cols, float)), np.atleast_1d(np.asarray(rows, float))
        if self.transform:
            a, b, c, d, e, f = self.transform
            return a * cols + b * rows + c, d * cols + e * rows + f
        if not self.gcps:
            raise ValueError("the scene is not georeferenced")
        xs, ys = _gcp_transformer(self.gcps).xy(rows, cols, offset="ul")
        return np.asarray(xs, float), np.asarray(ys, float)


_GCP_TRANSFORMERS: dict = {}
GCP_TRANSFORMERS_KEPT = 16


def _gcp_transformer(gcps: tuple[tuple[float, float, float, float], ...]):
    """rasterio's ``GCPTransformer`` for (col, row, x, y) points, kept for the next footprint of the scene:
    building one fits the polynomial, work to do once per scene, not once per footprint of millions of
    tiles. It holds a GDAL object, which must be closed before the interpreter unloads GDAL (or its
    destructor fails at exit): the oldest is closed past ``GCP_TRANSFORMERS_KEPT``, the rest at exit."""
    from rasterio.control import GroundControlPoint
    from rasterio.transform import GCPTransformer

    if gcps not in _GCP_TRANSFORMERS:
        if not _GCP_TRANSFORMERS:
            atexit.register(_close_gcp_transformers)
        if len(_GCP_TRANSFORMERS) >= GCP_TRANSFORMERS_KEPT:
            _GCP_TRANSFORMERS.pop(next(iter(_GCP_TRANSFORMERS))).close()
        _GCP_TRANSFORMERS[gcps] = GCPTransformer([GroundControlPoint(row=r, col=c, x=x, y=y) for c, r, x, y in gcps])
    return _GCP_TRANSFORMERS[gcps]


def _close_gcp_transformers() -> None:
    while _GCP_TRANSFORMERS:
        _GCP_TRANSFORMERS.popitem()[1].close()


def read_header(ds, uri: str = "", storage_options=None) -> SceneHeader:
    """The ``SceneHeader`` of an open dataset (``uri`` is used to look for an EXIF orientation)."""
    from rasterio.enums import ColorInterp

    if all(np.dtype(d).kind == "c" for d in ds.dtypes):  # no band could be shown: refused before any tile
        raise SceneError(COMPLEX_BANDS)
    gcps, gcp_crs = ds.gcps
    # rasterio gives the identity for a file without a geotransform (exactly: a real transform near it is kept)
    georef = tuple(ds.transform)[:6] != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    # GCPs alone (no affine, a CRS for them, at least 3 to fit a plane through): mapped through GDAL's GCP transformer
    by_gcps = not georef and gcp_crs is not None and len(gcps) >= 3
    points = _gcp_points(gcps, gcp_crs) if by_gcps else ()
    said = f"[satellite] {uri or 'a scene'}: "
    if by_gcps and points is None:
        by_gcps = False
        _say_once(said + f"its {len(gcps)} ground control points surround a pole, where a polynomial in longitude "
                  "and latitude cannot be fitted; the scene is tiled as not georeferenced (warp it to a polar CRS "
                  "first, e.g. gdalwarp -t_srs EPSG:3413)")
    elif not georef and not by_gcps and ds.rpcs is not None:  # a Level-1 optical product
        _say_once(said + "it is placed by RPCs alone, which this job does not use; the scene is tiled as not "
                  "georeferenced (orthorectify it first, e.g. gdalwarp -rpc -t_srs EPSG:4326)")
    elif not georef and not by_gcps and gcps:
        _say_once(said + f"it has {len(gcps)} ground control point(s)" + ("" if gcp_crs is not None else " without a CRS")
                  + ", too few to place it (3 with a CRS at least); the scene is tiled as not georeferenced")
    elif ds.crs is not None and not georef and not by_gcps:
        _say_once(said + "it names a CRS but has no geotransform (nothing places its pixels); the scene is tiled as "
                  "not georeferenced")
    orientation = 1 if georef or by_gcps or not uri else _exif_orientation(uri, storage_options)
    width, height = upright_size(ds.width, ds.height, orientation)
    ci = list(ds.colorinterp)
    palette = ds.count == 1 and ci[0] == ColorInterp.palette
    if all(c in ci for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
        default = tuple(ci.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue))
    else:
        colour = [i + 1 for i, c in enumerate(ci) if c != ColorInterp.alpha]
        default = tuple(colour[:3]) if len(colour) >= 3 else tuple(colour[:1] or [1])
    header = SceneHeader(width=width, height=height, stored_width=ds.width, stored_height=ds.height,
                         bands=ds.count, dtype=_common_dtype(ds.dtypes),
                         crs=ds.crs.to_string() if ds.crs and georef else gcp_crs.to_string() if by_gcps else "",
                         transform=tuple(ds.transform)[:6] if georef else (), orientation=orientation,
                         palette=palette, default_bands=default, has_overviews=bool(ds.overviews(1)),
                         gcps=points if by_gcps else (),
                         other_pages=_other_pages(ds))
    return header if not by_gcps else _fitted_or_not_georeferenced(header, uri)


def _common_dtype(dtypes) -> str:
    """The type that holds every (real) band's values: what ``read_pixels`` gives for bands of several types (a
    VRT of Byte and UInt16 bands is not 8-bit data to show as stored, and gets the scene stretch)."""
    real = [d for d in dtypes if np.dtype(d).kind != "c"] or list(dtypes)
    return str(np.result_type(*real))


def _gcp_points(gcps, crs) -> tuple[tuple[float, float, float, float], ...] | None:
    """(col, row, x, y) of each GCP. In a geographic CRS the longitudes are made contiguous, so that the
    polynomial fitted to them runs as the ground does, not the long way round the globe: taken into
    [-180, 180) (a 0-360 layout, 359.8 beside 0.2), then, where they lie both sides of the antimeridian
    (179.9 beside -179.9, as Sentinel-1 products write them), the western ones moved by a turn (180.1).
    None where they still span more than half the globe: points around a pole."""
    points = [(g.col, g.row, g.x, g.y) for g in gcps]
    if crs is None or not crs.is_geographic or not points:
        return tuple(points)
    points = [(c, r, (x + 180.0) % 360.0 - 180.0, y) for c, r, x, y in points]
    if max(p[2] for p in points) - min(p[2] for p in points) > 180:
        points = [(c, r, x + 360.0 if x < 0 else x, y) for c, r, x, y in points]
    if max(p[2] for p in points) - min(p[2] for p in points) > 180:
        return None
    return tuple(points)


_SAID: set[str] = set()


def _say_once(line: str) -> None:
    """Print ``line`` once per process: a scene's header is read by the planner, the stretch and each loader."""
    if line not in _SAID:
        _SAID.add(line)
        print(line)


def _other_pages(ds) -> tuple[str, ...]:
    """GDAL's descriptions of a multi-page TIFF's pages after the first (its GTiff subdatasets, named
    ``GTIFF_DIR:<n>:<path>``); () for a file of one page or another format."""
    if ds.driver != "GTiff":
        return ()
    tags = ds.tags(ns="SUBDATASETS")
    pages = sorted((int(k.split("_")[1]), v) for k, v in tags.items()
                   if k.endswith("_DESC") and str(tags.get(k[:-5] + "_NAME", "")).startswith("GTIFF_DIR:"))
    return tuple(desc for _, desc in pages[1:])


def _fitted_or_not_georeferenced(header: SceneHeader, uri: str) -> SceneHeader:
    """``header`` if its GCPs map the scene's corners to finite points; else the scene is not georeferenced
    (GCPs all on one line, or NaN in them: GDAL cannot fit them), said once, not failed at the commit."""
    from rasterio._err import CPLE_BaseError  # GDAL's errors (rasterio exports no public name for their base)

    w, h = header.stored_width, header.stored_height
    try:
        xs, ys = header.to_map([0, w, 0, w], [0, 0, h, h])
        fitted = bool(np.isfinite(xs).all() and np.isfinite(ys).all())
    except CPLE_BaseError:
        fitted = False
    if fitted:
        return header
    _say_once(f"[satellite] {uri or 'a scene'}: its {len(header.gcps)} ground control points cannot be fitted to a "
              "mapping (on one line, or not finite); the scene is tiled as not georeferenced")
    return dataclasses.replace(header, crs="", gcps=())


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


MIN_TILE_SIZE = 32  # pixels: a smaller tile shows too little to answer from, and cuts a scene into a flood of them


def tile_pixel_cap(tile_size: int, max_tile_pixels: int) -> None:
    """Raises SceneError, naming the flag at fault and its valid range, when ``--max-tile-pixels`` is below
    one ``MIN_TILE_SIZE`` tile, ``--tile-size`` is below ``MIN_TILE_SIZE`` (``--tile-size 1`` planned 350,000
    tiles of a 700 x 500 scene), or one tile would be over the cap (checked before any work; the cap first,
    as the valid tile sizes follow from it)."""
    from math import isqrt

    if max_tile_pixels < MIN_TILE_SIZE ** 2:
        raise SceneError(f"--max-tile-pixels {max_tile_pixels}: must be at least {MIN_TILE_SIZE ** 2:,} pixels "
                         f"per tile (one {MIN_TILE_SIZE}x{MIN_TILE_SIZE} tile)")
    largest = isqrt(max_tile_pixels)
    if tile_size < MIN_TILE_SIZE:
        raise SceneError(f"--tile-size {tile_size}: must be {MIN_TILE_SIZE} to {largest:,} pixels (a square tile "
                         f"within --max-tile-pixels {max_tile_pixels:,})")
    if tile_size * tile_size > max_tile_pixels:
        raise SceneError(f"--tile-size {tile_size}: one tile is {tile_size}x{tile_size} = {tile_size ** 2:,} pixels, "
                         f"over the cap of {max_tile_pixels:,} pixels per tile; use a --tile-size of at most "
                         f"{largest:,} (or raise --max-tile-pixels)")


@dataclass
class Pixels:
    """Values (h, w, C) as read (C = 1 or 3; palette already expanded) and where they are valid (h, w)."""

    values: np.ndarray
    valid: np.ndarray

    @property
    def is_8bit(self) -> bool:
        return self.values.dtype == np.uint8


def read_pixels(ds, header: SceneHeader, bands: tuple[int, ...], window=None, out_shape=None) -> Pixels:
    """Values and validity of a stored-frame window (or a decimated read of the scene, ``out_shape`` (rows,
    columns) in pixels); ``bands`` are 1-based.

    Raises:
        SceneError: complex-valued bands.
    """
    if any(np.dtype(ds.dtypes[b - 1]).kind == "c" for b in bands):  # (numpy's percentile would raise TypeError)
        raise SceneError(COMPLEX_BANDS)
    kw = {"window": window} if window is not None else {}
    if out_shape is not None:
        kw["out_shape"] = (len(bands), *out_shape)
    kinds = {ds.dtypes[b - 1] for b in bands}
    if len(kinds) > 1:  # a VRT of bands of several types (gdalbuildvrt -separate), which rasterio reads one at a time
        one = {**kw, "out_shape": kw["out_shape"][1:]} if "out_shape" in kw else kw
        values = np.stack([ds.read(b, **one).astype(np.result_type(*kinds)) for b in bands])
    else:
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
    px = read_pixels(ds, header, bands, window=Window(sc, sr, sw, sh))
    return Pixels(upright_array(px.values, header.orientation), upright_array(px.valid, header.orientation))


Ranges = list  # per channel: (lo, hi) or None (no valid value)


def tile_ranges(px: Pixels, percentiles=SCENE_PERCENTILES) -> Ranges | None:
    """Per-channel stretch ranges of one tile's valid pixels; None for 8-bit data (shown as stored)."""
    if px.is_8bit:
        return None
    return [robust_range(px.values[..., c], px.valid, percentiles) for c in range(px.values.shape[-1])]


def stretch_sample_reads(ds, header: SceneHeader, bands: tuple[int, ...]) -> list[dict]:
    """The reads the scene stretch makes, as ``read_pixels`` keyword arguments (``out_shape`` or ``window``): the
    coarsest overview that keeps ``OVERVIEW_MIN_SIDE`` pixels a side, if it holds at most
    ``OVERVIEW_MAX_PIXELS``; else a regular grid of sample windows (at most ``SAMPLE_GRID^2 x
    SAMPLE_WINDOW^2`` pixels). Without that bound a strip whose overviews are all too narrow, or a file
    with only a fine overview, was read whole (a decimated read by factor 1), growing with the scene."""
    from rasterio.windows import Window

    W, H = header.stored_width, header.stored_height
    if header.has_overviews:
        fits = [f for f in ds.overviews(bands[0])
                if min(W, H) // f >= OVERVIEW_MIN_SIDE and (W // f) * (H // f) <= OVERVIEW_MAX_PIXELS]
        if fits:
            f = max(fits)
            return [{"out_shape": (H // f, W // f)}]
    n_x, n_y = min(SAMPLE_GRID, max(1, W // SAMPLE_WINDOW)), min(SAMPLE_GRID, max(1, H // SAMPLE_WINDOW))
    sw, sh = min(SAMPLE_WINDOW, W), min(SAMPLE_WINDOW, H)
    xs = np.linspace(0, W - sw, n_x).round().astype(int)
    ys = np.linspace(0, H - sh, n_y).round().astype(int)
    return [{"window": Window(int(x), int(y), sw, sh)} for y in ys for x in xs]


def scene_ranges(ds, header: SceneHeader, bands: tuple[int, ...], percentiles=SCENE_PERCENTILES) -> Ranges | None:
    """Per-channel stretch ranges of the whole scene, from the valid pixels of ``stretch_sample_reads``
    (an overview or a grid of sample windows); a channel is None when no sampled pixel is valid (sparse
    data the samples missed: ``tile_stretch`` then falls back to each tile's own range). None for 8-bit
    data (shown as stored). A sample that cannot be read (a file cut short, a damaged block) is left out:
    the readable tiles of such a scene are still drawn, and only the lost ones become error rows; where no
    sample can be read every channel is None, and each tile is drawn with its own range."""
    from rasterio.errors import RasterioIOError

    if header.palette or np.dtype(header.dtype) == np.uint8:
        return None
    samples = []
    for kw in stretch_sample_reads(ds, header, bands):
        try:
            samples.append(read_pixels(ds, header, bands, **kw))
        except RasterioIOError:  # the tile reads that need this part of the file will fail, with GDAL's message
            continue
    if not samples:
        return [None] * len(bands)
    values = np.concatenate([s.values.reshape(-1, s.values.shape[-1]) for s in samples])
    valid = np.concatenate([s.valid.reshape(-1) for s in samples])
    return [robust_range(values[:, c], valid, percentiles) for c in range(values.shape[-1])]


def tile_stretch(px: Pixels, scene: Ranges | None) -> Ranges | None:
    """The ranges a tile is drawn with under ``--stretch scene``: the scene's, unless they miss the tile's
    valid data, then the tile's own (``tile_ranges``; what the row's ``stretch_range`` records).

    The scene's ranges miss a tile when a channel has none (no sampled pixel was valid: a small valid patch
    in a large nodata scene; drawn with it, every pixel would be the nodata grey) or when they would draw
    every valid pixel of a channel alike although the tile holds different values: all of them at or
    below ``lo`` (black), at or above ``hi`` (white), or a one-value scene range (mid-grey)."""
    if px.is_8bit:
        return None
    if scene is None or not px.valid.any():
        return tile_ranges(px) if scene is None else scene
    for c, rng in enumerate(scene):
        if rng is None:
            return tile_ranges(px)
        values = px.values[..., c][px.valid]
        vmin, vmax, (lo, hi) = values.min(), values.max(), rng
        if vmin < vmax and (hi <= lo or vmax <= lo or vmin >= hi):
            return tile_ranges(px)
    return scene


def _stretch_channel(values: np.ndarray, lo_hi, valid: np.ndarray) -> np.ndarray:
    out = apply_range(values, lo_hi, valid)
    if lo_hi is not None and lo_hi[1] <= lo_hi[0]:
        # apply_range draws one value as mid-grey, 127.5, rounded to 128 = NEUTRAL_FILL: valid data of one
        # value looked exactly like nodata. Still mid-grey, rounded the other way.
        shown = valid & np.isfinite(values) if values.dtype.kind == "f" else valid
        out[shown] = CONSTANT_GREY
    return out


def to_rgb8(px: Pixels, ranges: Ranges | None) -> np.ndarray:
    """(h, w, 3) uint8: 8-bit values as stored (``ranges`` None), others stretched per channel over ``ranges``
    (a one-value range: ``CONSTANT_GREY``); invalid pixels ``NEUTRAL_FILL``. Grey (C = 1) is repeated into
    three channels."""
    if ranges is None:
        out = np.where(px.valid[..., None], px.values, NEUTRAL_FILL).astype(np.uint8)
    else:
        out = np.stack([_stretch_channel(px.values[..., c], ranges[c], px.valid) for c in range(px.values.shape[-1])],
                       -1)
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
