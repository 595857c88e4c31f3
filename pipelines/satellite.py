"""Scene archives: large scenes cut into overlapping tiles, a question set asked of every tile,
per-tile results as GeoParquet (tile and evidence footprints, ``pipelines.geo``) plus a per-scene
roll-up of the "yes" detections, merged across tile overlaps.

    python -m pipelines.satellite --input s3://archive/scenes/ --output s3://archive/spote \
        --questions questions.yaml --tile-size 1024 --overlap 128 --bands 3,2,1

Inputs: every raster the installed GDAL reads among ``rasters.SCENE_FORMATS`` (GeoTIFF, PNG, JPEG,
JPEG 2000, VRT, ERDAS .img, WebP, BMP, NITF); every other file under the input is counted and named
in the summary (``files_skipped``). An input with no scene ends with a message and commits nothing.

The driver reads only headers (size, bands, CRS, transform) to plan tiles and to check ``--bands``;
pixels are read per tile window in CPU loader actors, within the memory bound stated in
``pipelines.rasters``. Non-georeferenced images are tiled upright (their EXIF orientation applied).
Bands become RGB by selection (``--bands``, default: the file's red/green/blue, else band 1 as grey);
8-bit data is shown as stored, other data stretched per band over the 2-98 percentiles of its valid
pixels, once per scene (``--stretch scene``, from an overview or a pixel sample) or per tile. Invalid
pixels (nodata, masks, alpha, NaN) are grey; a tile with no valid pixel is a ``skipped`` row.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Optional

import typer

from spote.images import DEFAULT_MAX_PIXELS

from .geo import ResultGeometry, rewrite_staged_as_geoparquet, write_rollup
from .job import JobOptions, job_command, run_job
from .questions import load_questions
from .rasters import (
    GDAL_CACHE_MB, SCENE_PERCENTILES, SIDECAR_SUFFIXES, SceneError, SceneHeader, check_bands, open_scene, parse_bands,
    read_header, read_tile, readable_extensions, scene_header, scene_ranges, stretch_bands, tile_pixel_cap,
    tile_ranges, to_rgb8,
)
from .stages import RowLoader, SkipItem
from .storage import filesystem, join, parse_storage_options, write_text

app = typer.Typer(add_completion=False)
STRETCH_MODES = ("scene", "tile")
NAMED_SKIPS = 200  # the summary names this many skipped files at most (all are counted)


def tile_windows(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(col_off, row_off, w, h) windows covering the scene; the last row/column is shifted inward."""
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile size ({tile})")
    step = tile - overlap

    def starts(n):
        if n <= tile:
            return [0]
        s = list(range(0, n - tile + 1, step))
        if s[-1] + tile < n:
            s.append(n - tile)
        return s

    return [(c, r, min(tile, width), min(tile, height)) for r in starts(height) for c in starts(width)]


def window_bounds(transform, col: int, row: int, w: int, h: int) -> list[float]:
    """Geographic [minx, miny, maxx, maxy] of a pixel window under an affine transform (a, b, c, d, e, f)."""
    if not transform:
        return []
    a, b, c, d, e, f = transform
    xs, ys = [], []
    for px, py in ((col, row), (col + w, row), (col, row + h), (col + w, row + h)):
        xs.append(a * px + b * py + c)
        ys.append(d * px + e * py + f)
    return [min(xs), min(ys), max(xs), max(ys)]


def to_rgb(bands, band_idx: list[int], valid=None):
    """(bands, h, w) of any dtype -> (h, w, 3) uint8 (``rasters.stretch_bands``: 0-based selection, 2-98
    percentile stretch of valid finite pixels per band, 8-bit as stored)."""
    if bands.shape[0] < 3 and len(band_idx) == 3:
        band_idx = [0]
    return stretch_bands(bands, band_idx, valid)


class SceneTileLoader(RowLoader):
    """CPU stage: read one upright tile window per row as RGB; the last scene stays open (tiles arrive in
    scene order), with its header and scene stretch."""

    failure = "unreadable scene"
    image_errors_as_image = False

    def __init__(self, storage_options=None, bands: tuple[int, ...] | None = None, stretch: str = "scene",
                 max_tile_pixels: int = DEFAULT_MAX_PIXELS):
        from rasterio.env import set_gdal_config

        set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_MB * 2 ** 20)  # bytes; part of the stated memory bound
        self.so, self.bands, self.stretch, self.max_tile_pixels = storage_options, bands, stretch, max_tile_pixels
        self._uri, self._ds, self._header, self._bands, self._ranges = None, None, None, None, None

    def _scene(self, uri: str):
        if uri != self._uri:
            self.forget()
            self._ds = open_scene(uri, self.so)
            self._header = read_header(self._ds, uri, self.so)
            self._bands = check_bands(self.bands, self._header, PurePosixPath(uri).name)
            self._ranges = scene_ranges(self._ds, self._header, self._bands) if self.stretch == "scene" else None
            self._uri = uri
        return self._ds, self._header

    def forget(self) -> None:
        if self._ds is not None:
            self._ds.close()
        self._uri, self._ds = None, None

    def read(self, row: dict):
        ds, header = self._scene(row["source"])
        c, r, w, h = row["tile_col_off"], row["tile_row_off"], row["tile_width"], row["tile_height"]
        if w * h > self.max_tile_pixels:
            raise SceneError(f"tile {w}x{h} is over the cap of {self.max_tile_pixels:,} pixels per tile")
        px = read_tile(ds, header, self._bands, c, r, w, h)
        if not px.valid.any():
            raise SkipItem("no valid pixels: the tile is all nodata or masked")
        ranges = self._ranges if self.stretch == "scene" else tile_ranges(px)
        row["stretch_range"] = json.dumps(ranges) if ranges is not None else ""
        return to_rgb8(px, ranges)


def list_scenes(input_uri: str, storage_options=None) -> tuple[list[str], list[dict]]:
    """(scene URIs, skipped files as {"path", "reason"}) under a scene file or a folder/prefix.

    Raises:
        SceneError: the input does not exist.
    """
    fs, path = filesystem(input_uri, storage_options)
    if not fs.exists(path):
        raise SceneError(f"--input {input_uri}: no such file or folder")
    exts = readable_extensions()
    files = [path] if fs.isfile(path) else sorted(fs.find(path))
    proto = input_uri.split("://", 1)[0] + "://" if "://" in input_uri else ""
    scenes, skipped = [], []
    for p in files:
        uri = proto + p if proto and not p.startswith(proto) else p
        lower = p.lower()
        if lower.endswith(SIDECAR_SUFFIXES):
            skipped.append({"path": uri, "reason": "sidecar file (read with its scene)"})
        elif PurePosixPath(lower).suffix in exts:
            scenes.append(uri)
        else:
            suffix = PurePosixPath(lower).suffix or "(no extension)"
            skipped.append({"path": uri, "reason": f"not a raster format the installed GDAL reads: {suffix}"})
    return scenes, skipped


def plan_tiles(scenes: list[str], questions: list[dict], tile: int, overlap: int, storage_options=None,
               bands: tuple[int, ...] | None = None) -> tuple[list[dict], dict[str, SceneHeader]]:
    """Rows (one per tile and question) and the headers of the readable scenes, by URI.

    An unreadable scene is one error row per question.

    Raises:
        SceneError: ``bands`` names a band a scene does not have (before any work).
    """
    rows, headers = [], {}
    for uri in scenes:
        name = PurePosixPath(uri.split("://")[-1]).stem
        try:
            hdr = scene_header(uri, storage_options)
        except Exception as err:  # an unreadable scene is one error row per question, not a failed job
            for qi, q in enumerate(questions):
                rows.append({"id": f"{name}/unreadable/q{qi}", "source": uri, **q, "scene": name, "question_index": qi,
                             "tile_col_off": 0, "tile_row_off": 0, "tile_width": 0, "tile_height": 0, "crs": "",
                             "bounds": [], "stretch_range": "", "status": "error",
                             "error": f"unreadable scene: {type(err).__name__}: {err}"})
            continue
        check_bands(bands, hdr, PurePosixPath(uri).name)
        headers[uri] = hdr
        for (c, r, w, h) in tile_windows(hdr.width, hdr.height, tile, overlap):
            bounds = window_bounds(hdr.transform, c, r, w, h)  # georeferenced scenes are never re-oriented
            for qi, q in enumerate(questions):
                rows.append({"id": f"{name}/r{r}_c{c}/q{qi}", "source": uri, **q, "scene": name, "question_index": qi,
                             "tile_col_off": c, "tile_row_off": r, "tile_width": w, "tile_height": h,
                             "crs": hdr.crs, "bounds": bounds, "stretch_range": "", "status": "", "error": ""})
    return rows, headers


def geo_outputs(headers: dict[str, SceneHeader]):
    """The job's hook before the commit: staged results rewritten as GeoParquet, then the per-scene roll-up
    (``rollup.json``, GeoJSON and GeoParquet detections under the run's ``scenes/``)."""

    def write(table, paths, storage_options) -> None:
        if not len(table) or "scene" not in table.column_names:
            return
        rewrite_staged_as_geoparquet(table, paths.staging, headers, storage_options)
        rollup = write_rollup(table, paths.meta, headers, storage_options)
        write_text(join(paths.meta, "rollup.json"), json.dumps(rollup, indent=2), storage_options)

    return write


def run(opts: JobOptions, questions_uri: str, tile_size: int = 512, overlap: int = 64, bands: str | None = None,
        stretch: str = "scene", max_tile_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Plan, check and run the job; returns the summary.

    Raises:
        SceneError: a request that cannot be served, found before any work (missing input, ``--bands`` out
            of a scene's range, a tile over the pixel cap, an unknown stretch).
    """
    if stretch not in STRETCH_MODES:
        raise SceneError(f"--stretch {stretch!r}: expected one of {', '.join(STRETCH_MODES)}")
    if overlap < 0 or overlap >= tile_size:
        raise SceneError(f"--overlap {overlap}: must be at least 0 and smaller than --tile-size ({tile_size})")
    tile_pixel_cap(tile_size, max_tile_pixels)
    band_sel = parse_bands(bands)
    so = parse_storage_options(opts.storage_options)
    scenes, skipped = list_scenes(opts.input, so)
    skipped_summary = {"files_skipped": len(skipped), "files_skipped_named": skipped[:NAMED_SKIPS]}
    if not scenes:
        message = (f"nothing to do: no scene under {opts.input} that the installed GDAL reads "
                   f"({len(skipped)} other file(s) skipped); readable: {', '.join(sorted(readable_extensions()))}")
        print(f"[satellite] {message}")
        return {"run_id": None, "items_in": 0, "scenes": 0, "message": message, **skipped_summary}
    questions = load_questions(questions_uri, so)
    rows, headers = plan_tiles(scenes, questions, tile_size, overlap, so, band_sel)
    loader = (SceneTileLoader, {"storage_options": so, "bands": band_sel, "stretch": stretch,
                                "max_tile_pixels": max_tile_pixels})
    return run_job("satellite", opts, rows, post_commit=geo_outputs(headers), loader=loader,
                   extra_summary=lambda t: {"scenes": len(scenes), "scenes_unreadable": len(scenes) - len(headers),
                                            "questions": len(questions), "tile_size": tile_size, "overlap": overlap,
                                            "bands": list(band_sel) if band_sel else "auto",
                                            "stretch": {"mode": stretch, "percentiles": list(SCENE_PERCENTILES),
                                                        "8-bit": "as stored"},
                                            "geometry_crs": ResultGeometry(headers).crs,
                                            **skipped_summary})


@app.command()
@job_command
def main(
    input: str = typer.Option(..., help="a scene, or a folder/prefix of scenes (GeoTIFF, PNG, JPEG, JPEG 2000, VRT, "
                                        ".img, ... whatever the installed GDAL reads)"),
    output: str = typer.Option(...),
    questions: str = typer.Option(..., help="JSON or YAML list of {question, choices}"),
    tile_size: int = typer.Option(512, help="tile side in pixels; one tile must stay under --max-tile-pixels"),
    overlap: int = typer.Option(64, help="pixels shared by neighbouring tiles"),
    bands: Optional[str] = typer.Option(None, help="1-based band numbers mapped to R,G,B (or one band as grey); "
                                                   "default: the file's red/green/blue bands, else band 1"),
    stretch: str = typer.Option("scene", help="scene: one 2-98 percentile stretch per scene (from an overview or a sample of "
                                              "valid pixels); tile: each tile its own. 8-bit data is shown as stored"),
    max_tile_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="pixel cap per tile. Memory per loader: one tile "
                                        f"(pixels x bands x ~10 bytes) plus GDAL's block cache ({GDAL_CACHE_MB} MB)"),
    *, opts: JobOptions,
):
    """Tile every scene, ask every question of every tile, roll results up per scene."""
    try:
        run(opts, questions, tile_size, overlap, bands, stretch, max_tile_pixels)
    except SceneError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)


if __name__ == "__main__":
    app()
