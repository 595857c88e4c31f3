"""Pictures for the run report: thumbnails of chosen rows with their evidence box drawn, and per-scene
overviews with the "yes" tiles and their evidence. Each picture is a small JPEG (a ``data:`` URI in
the page); sources are re-read only for the rows shown, so the driver holds a few small images at most.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

THUMB_SIDE = 320      # pixels, the longer side of a gallery thumbnail
OVERVIEW_SIDE = 900   # pixels, the longer side of a scene overview
EVIDENCE = (0, 200, 255)  # cyan: unlike the red and yellow marks that documents and scenes often carry
TILE_YES = (255, 200, 0)
OUTLINE = (20, 20, 20)


@dataclass(frozen=True)
class Picture:
    """A JPEG ready for the page: ``uri`` is a ``data:image/jpeg;base64,...`` URI; ``note`` says why there
    is none (``uri`` empty) or what it shows."""

    uri: str
    width: int = 0
    height: int = 0
    note: str = ""


def jpeg_uri(image: Image.Image, quality: int = 82) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def thumbnail(image: Image.Image, evidence_box=None, side: int = THUMB_SIDE) -> Picture:
    """``image`` shrunk to ``side`` pixels on its longer side, the evidence box ([x0, y0, x1, y1] in
    ``image`` pixels, or None: the whole image answered) drawn in red."""
    w, h = image.size
    s = min(1.0, side / max(w, h))
    small = image.convert("RGB").resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    note = "no box: the whole image answered"
    if evidence_box is not None and len(evidence_box) == 4:
        _box(ImageDraw.Draw(small), [float(v) * s for v in evidence_box], EVIDENCE, max(2, round(min(small.size) / 80)))
        note = "cyan box: the view the answer came from"
    return Picture(jpeg_uri(small), small.width, small.height, note)


def _box(draw: ImageDraw.ImageDraw, xyxy, colour, width: int) -> None:
    """A rectangle in ``colour`` with a thin dark edge each side, visible on light and dark pixels alike."""
    x0, y0, x1, y1 = xyxy
    x1, y1 = max(x0 + 1, x1), max(y0 + 1, y1)
    draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=OUTLINE, width=width + 2)
    draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)


def row_thumbnails(rows: list[dict], loader_spec, timeout_s: float | None) -> dict[str, Picture]:
    """id -> thumbnail, re-reading each row's pixels with the job's own loader (as the model saw them),
    within the item time limit; a row that cannot be re-read gets a Picture with only a note."""
    from .timelimit import TimedLoader

    pictures: dict[str, Picture] = {}
    if not rows:
        return pictures
    loader_cls, loader_kwargs = loader_spec
    loader = TimedLoader(loader_cls, loader_kwargs, timeout_s)
    try:
        for row in rows:
            out = loader.load({**row, "status": "", "error": ""})
            if out.get("status") != "ok":
                pictures[row["id"]] = Picture("", note=f"no preview: {out.get('error')}")
                continue
            img = Image.frombytes("RGB", (int(out["width"]), int(out["height"])), out["pixels"])
            pictures[row["id"]] = thumbnail(img, row.get("evidence_box"))
    finally:
        loader._stop_child()
    return pictures


def scene_overview(uri: str, storage_options=None, bands: list[int] | None = None,
                   side: int = OVERVIEW_SIDE) -> tuple[Image.Image, float]:
    """(RGB overview of a whole scene at most ``side`` pixels on its longer side, scale = overview / scene
    pixels). GeoTIFF/JPEG 2000 through rasterio's decimated (overview-aware) read of ``bands`` (0-based,
    as the job maps them to R, G, B), stretched over the 2-98 percentiles of valid pixels; PNG/JPEG
    through PIL, upright by EXIF orientation, as the tiles are cut."""
    from .storage import filesystem

    if uri.lower().endswith((".tif", ".tiff", ".jp2", ".vrt", ".img")):
        import rasterio
        from rasterio.enums import Resampling

        fs, path = filesystem(uri, storage_options)
        src = path if "://" not in uri or uri.startswith("file:") else fs.open(path, "rb")
        with rasterio.open(src) as ds:
            s = min(1.0, side / max(ds.width, ds.height))
            shape = (max(1, round(ds.height * s)), max(1, round(ds.width * s)))
            idx = [b + 1 for b in (bands or [0, 1, 2]) if 0 <= b < ds.count] if ds.count >= 3 else [1, 1, 1]
            if len(idx) != 3:
                idx = [1, 2, 3]
            data = ds.read(indexes=idx, out_shape=(3, *shape), resampling=Resampling.average, masked=True)
        return Image.fromarray(_stretch(data)), shape[1] / ds.width
    from PIL import ImageOps

    fs, path = filesystem(uri, storage_options)
    with fs.open(path, "rb") as f, Image.open(f) as im:
        full_w, full_h = im.size  # stored size, from the header
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientations that turn the image a quarter
            full_w, full_h = full_h, full_w
        im.draft("RGB", (side, side))  # JPEG: decode at a reduced scale
        upright = ImageOps.exif_transpose(im).convert("RGB")
    upright.thumbnail((side, side))
    return upright, upright.width / full_w


def _stretch(data: np.ma.MaskedArray) -> np.ndarray:
    """(3, h, w) masked array -> (h, w, 3) uint8 over each band's 2-98 percentiles of valid, finite pixels;
    invalid pixels grey."""
    out = np.zeros((*data.shape[1:], 3), np.uint8)
    for i in range(3):
        band = np.ma.masked_invalid(data[i].astype(np.float64))
        valid = band.compressed()
        if valid.size == 0:
            out[..., i] = 128
            continue
        lo, hi = np.percentile(valid, [2, 98])
        scaled = np.zeros(band.shape) if hi <= lo else (band.filled(lo) - lo) / (hi - lo)
        out[..., i] = (np.clip(scaled, 0, 1) * 255).astype(np.uint8)
        out[..., i][np.ma.getmaskarray(band)] = 128
    return out


def draw_scene(overview: Image.Image, scale: float, tiles: list[tuple[list[int], list[int] | None]]) -> Picture:
    """The overview with each "yes" tile ([col, row, w, h] scene pixels) outlined in yellow and its evidence
    box ([x0, y0, x1, y1] tile pixels, or None) in cyan."""
    img = overview.copy()
    draw = ImageDraw.Draw(img)
    width = max(2, round(min(img.size) / 150))
    for (c, r, w, h), _ in tiles:
        draw.rectangle([c * scale, r * scale, (c + w) * scale, (r + h) * scale], outline=TILE_YES, width=width)
    for (c, r, _, _), box in tiles:  # evidence over every tile outline
        if box is not None and len(box) == 4:
            _box(draw, [(c + box[0]) * scale, (r + box[1]) * scale, (c + box[2]) * scale, (r + box[3]) * scale],
                 EVIDENCE, width)
    return Picture(jpeg_uri(img), img.width, img.height, "yellow: tiles answered yes; cyan: their evidence")
