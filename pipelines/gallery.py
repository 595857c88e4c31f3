"""Pictures for the run report: thumbnails of chosen rows with their evidence box drawn, and per-scene
overviews with the "yes" tiles and their evidence. Each picture is a small JPEG (a ``data:`` URI in
the page); sources are re-read only for the rows shown, so the driver holds a few small images at most.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

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


MAX_THUMB_ASPECT = 4  # a thumbnail at most 4 times as long as it is wide: a strip (1 x 4000 px) is framed


def thumbnail(image: Image.Image, evidence_box=None, side: int = THUMB_SIDE) -> Picture:
    """``image`` shrunk to ``side`` pixels on its longer side, the evidence box ([x0, y0, x1, y1] in
    ``image`` pixels, or None: the whole image answered) drawn in cyan. An image longer than
    ``MAX_THUMB_ASPECT`` times its width (or the other way round) is centred on a grey frame of that shape,
    so that a strip a pixel wide still shows, and its box."""
    w, h = image.size
    s = min(1.0, side / max(w, h))
    small = image.convert("RGB").resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    short = -(-max(small.size) // MAX_THUMB_ASPECT)
    framed_size = (max(small.width, short), max(small.height, short))
    dx, dy = (framed_size[0] - small.width) // 2, (framed_size[1] - small.height) // 2
    if framed_size != small.size:
        framed = Image.new("RGB", framed_size, (238, 238, 238))
        framed.paste(small, (dx, dy))
        small = framed
    note = "no box: the whole image answered"
    if evidence_box is not None and len(evidence_box) == 4:
        x0, y0, x1, y1 = (float(v) * s for v in evidence_box)
        _box(ImageDraw.Draw(small), [x0 + dx, y0 + dy, x1 + dx, y1 + dy], EVIDENCE, max(2, round(min(small.size) / 80)))
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


def scene_overview(uri: str, storage_options=None, bands: tuple[int, ...] | list[int] | None = None,
                   stretch: str = "scene", side: int = OVERVIEW_SIDE) -> tuple[Image.Image, float]:
    """(RGB overview of a whole scene at most ``side`` pixels on its longer side, scale = overview / scene
    pixels), drawn by the rule the job's tiles are drawn by (``satellite.SceneTileLoader``), so the overview
    and the tiles of a scene look alike: read through rasterio as the tiles are (a decimated,
    overview-aware read), ``bands`` 1-based as ``--bands`` gives them (None: the scene's own colour bands,
    else band 1 as grey: ``rasters.check_bands``), upright, 8-bit data as stored, other data over the
    scene's stretch range (``stretch`` "scene", ``rasters.scene_ranges``) or, under ``--stretch tile``
    where every tile has its own range, over the overview's own; invalid pixels grey (``rasters.to_rgb8``).

    Raises:
        SceneError: a band the scene does not have, or complex-valued bands.
    """
    from pathlib import PurePosixPath

    from spote.images import upright_array

    from .rasters import Pixels, check_bands, open_scene, read_header, read_pixels, scene_ranges, tile_ranges, tile_stretch, to_rgb8

    with open_scene(uri, storage_options) as ds:
        header = read_header(ds, uri, storage_options)
        selected = check_bands(tuple(bands) if bands else None, header, PurePosixPath(uri).name)
        s = min(1.0, side / max(header.stored_width, header.stored_height))
        stored = read_pixels(ds, header, selected, out_shape=(max(1, round(header.stored_height * s)),
                                                        max(1, round(header.stored_width * s))))
        px = Pixels(upright_array(stored.values, header.orientation), upright_array(stored.valid, header.orientation))
        # the tiles' own choice of range (tile_stretch: the scene's, unless it misses the data shown)
        ranges = tile_stretch(px, scene_ranges(ds, header, selected)) if stretch == "scene" else tile_ranges(px)
    rgb = to_rgb8(px, ranges)
    return Image.fromarray(rgb), rgb.shape[1] / header.width


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
