"""Scene archives: large GeoTIFF/PNG/JPEG scenes cut into overlapping tiles, a question set asked
of every tile, per-tile results plus a per-scene GeoJSON of the tiles that answered "yes".

    python -m pipelines.satellite --input s3://archive/scenes/ --output s3://archive/spote \
        --questions questions.yaml --tile-size 1024 --overlap 128 --bands 3,2,1

The driver reads only headers (size, CRS, transform) to plan tiles; pixels are read per tile
window in CPU tasks (rasterio windowed reads), never whole scenes in the driver. Multi-band
8/16-bit rasters become RGB by band selection and a 2-98 percentile stretch per tile.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath

import numpy as np
import typer

from .job import JobOptions, job_command, run_job
from .questions import load_questions
from .stages import RowLoader
from .storage import filesystem, join, parse_storage_options, read_bytes, write_text

app = typer.Typer(add_completion=False)
SCENE_EXTS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


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


def scene_header(uri: str, storage_options=None) -> dict:
    """Size, band count, CRS and affine transform, from the header only."""
    if uri.lower().endswith((".tif", ".tiff")):
        with _open_raster(uri, storage_options) as ds:
            return {"width": ds.width, "height": ds.height, "bands": ds.count,
                    "crs": ds.crs.to_string() if ds.crs else "", "transform": list(ds.transform)[:6]}
    from PIL import Image

    fs, path = filesystem(uri, storage_options)
    with fs.open(path, "rb") as f, Image.open(f) as im:
        return {"width": im.width, "height": im.height, "bands": len(im.getbands()), "crs": "", "transform": []}


def _open_raster(uri: str, storage_options=None):
    import rasterio

    if "://" in uri and not uri.startswith("file://"):
        fs, path = filesystem(uri, storage_options)
        return rasterio.open(fs.open(path, "rb"))
    return rasterio.open(uri.removeprefix("file://"))


def window_bounds(transform: list[float], col: int, row: int, w: int, h: int) -> list[float]:
    """Geographic [minx, miny, maxx, maxy] of a pixel window under an affine transform (a, b, c, d, e, f)."""
    if not transform:
        return []
    a, b, c, d, e, f = transform
    xs, ys = [], []
    for px, py in ((col, row), (col + w, row), (col, row + h), (col + w, row + h)):
        xs.append(a * px + b * py + c)
        ys.append(d * px + e * py + f)
    return [min(xs), min(ys), max(xs), max(ys)]


def to_rgb(bands: np.ndarray, band_idx: list[int]) -> np.ndarray:
    """(bands, h, w) of any dtype -> (h, w, 3) uint8 via band selection and a 2-98 percentile stretch."""
    sel = [bands[min(i, bands.shape[0] - 1)] for i in band_idx] if bands.shape[0] >= 3 else [bands[0]] * 3
    out = []
    for b in sel:
        b = b.astype(np.float64)
        lo, hi = np.nanpercentile(b, 2), np.nanpercentile(b, 98)
        out.append(np.zeros_like(b) if hi <= lo else ((b - lo) / (hi - lo)).clip(0, 1) * 255)
    return np.stack(out, -1).astype(np.uint8)


class SceneTileLoader(RowLoader):
    """CPU stage: read one tile window per row; the last scene stays open (tiles arrive in scene order)."""

    failure = "unreadable scene"
    image_errors_as_image = False

    def __init__(self, storage_options=None, bands: list[int] | None = None, max_pixels: int = 40_000_000):
        self.so, self.bands, self.max_pixels = storage_options, bands or [0, 1, 2], max_pixels
        self._uri, self._ds, self._pil = None, None, None

    def _scene(self, uri: str):
        if uri != self._uri:
            if self._ds is not None:
                self._ds.close()
            self._ds, self._pil = None, None
            if uri.lower().endswith((".tif", ".tiff")):
                self._ds = _open_raster(uri, self.so)
            else:
                from spote.images import load_image

                self._pil = np.asarray(load_image(read_bytes(uri, self.so), self.max_pixels))
            self._uri = uri
        return self._ds, self._pil

    def forget(self) -> None:
        self._uri = None

    def read(self, row: dict):
        from rasterio.windows import Window

        ds, pil = self._scene(row["source"])
        c, r, w, h = row["tile_col_off"], row["tile_row_off"], row["tile_width"], row["tile_height"]
        if ds is not None:
            return to_rgb(ds.read(window=Window(c, r, w, h)), self.bands)
        return pil[r:r + h, c:c + w, :3]


def list_scenes(input_uri: str, storage_options=None) -> list[str]:
    fs, path = filesystem(input_uri, storage_options)
    if fs.isfile(path):
        files = [path]
    else:
        files = sorted(p for p in fs.find(path) if p.lower().endswith(SCENE_EXTS))
    proto = input_uri.split("://", 1)[0] + "://" if "://" in input_uri else ""
    return [proto + p if proto and not p.startswith(proto) else p for p in files]


def plan_tiles(scenes: list[str], questions: list[dict], tile: int, overlap: int, storage_options=None) -> list[dict]:
    rows = []
    for uri in scenes:
        name = PurePosixPath(uri.split("://")[-1]).stem
        try:
            hdr = scene_header(uri, storage_options)
        except Exception as err:  # an unreadable scene is one error row per question, not a failed job
            for qi, q in enumerate(questions):
                rows.append({"id": f"{name}/unreadable/q{qi}", "source": uri, **q, "scene": name, "question_index": qi,
                             "tile_col_off": 0, "tile_row_off": 0, "tile_width": 0, "tile_height": 0, "crs": "",
                             "bounds": [], "status": "error",
                             "error": f"unreadable scene: {type(err).__name__}: {err}"})
            continue
        for (c, r, w, h) in tile_windows(hdr["width"], hdr["height"], tile, overlap):
            for qi, q in enumerate(questions):
                rows.append({"id": f"{name}/r{r}_c{c}/q{qi}", "source": uri, **q, "scene": name, "question_index": qi,
                             "tile_col_off": c, "tile_row_off": r, "tile_width": w, "tile_height": h,
                             "crs": hdr["crs"], "bounds": window_bounds(hdr["transform"], c, r, w, h),
                             "status": "", "error": ""})
    return rows


def scene_rollup(table, paths, storage_options) -> None:
    """Per scene and question: the tiles that answered "yes", as GeoJSON (pixel boxes where no CRS)."""
    df = table.to_pandas()
    rollup = {}
    for (scene, qi), grp in df.groupby(["scene", "question_index"]):
        yes = grp[(grp["status"] == "ok") & (grp["answer"].str.lower() == "yes")]
        feats = []
        for rec in yes.itertuples():
            b = list(rec.bounds) if len(rec.bounds) else [rec.tile_col_off, rec.tile_row_off,
                                                          rec.tile_col_off + rec.tile_width, rec.tile_row_off + rec.tile_height]
            ring = [[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]]
            feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                          "properties": {"id": rec.id, "question": rec.question, "confidence": rec.confidence,
                                         "pixel_window": [rec.tile_col_off, rec.tile_row_off, rec.tile_width, rec.tile_height]}})
        crs = next((c for c in grp["crs"] if c), "")
        fc = {"type": "FeatureCollection", "features": feats, "properties": {"scene": scene, "crs": crs or "pixel"}}
        write_text(join(paths.meta, "scenes", f"{scene}.q{qi}.geojson"), json.dumps(fc), storage_options)
        rollup[f"{scene}/q{qi}"] = {"tiles": int(len(grp)), "tiles_yes": len(feats),
                                    "tiles_error": int((grp["status"] == "error").sum()), "crs": crs}
    write_text(join(paths.meta, "rollup.json"), json.dumps(rollup, indent=2), storage_options)


def run(opts: JobOptions, questions_uri: str, tile_size: int = 512, overlap: int = 64, bands: str = "1,2,3") -> dict:

    so = parse_storage_options(opts.storage_options)
    questions = load_questions(questions_uri, so)
    scenes = list_scenes(opts.input, so)
    rows = plan_tiles(scenes, questions, tile_size, overlap, so)
    band_idx = [int(b) - 1 for b in bands.split(",")]
    loader = (SceneTileLoader, {"storage_options": so, "bands": band_idx})
    return run_job("satellite", opts, rows, post_commit=scene_rollup, loader=loader,
                   extra_summary=lambda t: {"scenes": len(scenes), "questions": len(questions),
                                            "tile_size": tile_size, "overlap": overlap})


@app.command()
@job_command
def main(
    input: str = typer.Option(..., help="a scene, or a folder/prefix of scenes (GeoTIFF, PNG, JPEG)"),
    output: str = typer.Option(...),
    questions: str = typer.Option(..., help="JSON or YAML list of {question, choices}"),
    tile_size: int = typer.Option(512),
    overlap: int = typer.Option(64),
    bands: str = typer.Option("1,2,3", help="1-based band indices mapped to R,G,B"),
    *, opts: JobOptions,
):
    """Tile every scene, ask every question of every tile, roll results up per scene."""
    run(opts, questions, tile_size, overlap, bands)


if __name__ == "__main__":
    app()
