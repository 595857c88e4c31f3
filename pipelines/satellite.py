"""Scene archives: large GeoTIFF/PNG/JPEG scenes cut into overlapping tiles, a question set asked
of every tile, per-tile results plus a per-scene GeoJSON of the tiles that answered "yes".

    python -m pipelines.satellite --input s3://archive/scenes/ --output s3://archive/spote \
        --questions questions.yaml --tile-size 1024 --overlap 128 --bands 3,2,1

The driver only lists the scenes; Ray Data tasks read each scene's header (size, CRS, transform)
and cut it into tile rows (``plan_tiles``), so the driver's memory does not grow with tiles. Pixels
are read per tile window in CPU tasks (rasterio windowed reads), never whole scenes in the driver. Multi-band
8/16-bit rasters become RGB by band selection and a 2-98 percentile stretch per tile.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import typer

from .job import JobOptions, job_command, run_job
from .planning import Plan, check_source_ids_unique, list_sources, plan_schema, skip_by_extension
from .questions import load_questions
from .stages import RowLoader
from .storage import filesystem, join, parse_storage_options, read_bytes, write_text

app = typer.Typer(add_completion=False)


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
    """Size, band count, CRS and affine transform, from the header only (rasterio for georeferenced
    rasters, PIL for plain images)."""
    if uri.lower().endswith(RASTER_EXTS):
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


# formats the listing accepts: what rasterio (GDAL) reads with georeferencing, and plain images
RASTER_EXTS = (".tif", ".tiff", ".jp2", ".j2k")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".jfif", ".webp", ".bmp")
TILE_FIELDS = (("scene", pa.string()), ("question_index", pa.int64()), ("tile_col_off", pa.int64()),
               ("tile_row_off", pa.int64()), ("tile_width", pa.int64()), ("tile_height", pa.int64()),
               ("crs", pa.string()), ("bounds", pa.list_(pa.float64())))
TILE_SCHEMA = plan_schema(*TILE_FIELDS)


def list_scenes(input_uri: str, storage_options=None) -> tuple[list[dict], list[dict]]:
    """(scenes, skipped) under the input: scenes as {"uri", "rel", ...}; skipped as {"source", "reason"}."""
    return list_sources(input_uri, storage_options, skip_by_extension(RASTER_EXTS + IMAGE_EXTS, "scene"))


def plan_tiles(scene: dict, questions: list[dict], tile: int, overlap: int, storage_options=None):
    """Item rows of one scene (runs in a Ray task): every tile window x every question.

    ``scene``: {"uri", "rel"}; ids are ``<rel>/r<row>_c<col>/q<i>``, unique because ``rel`` (the
    path under the input) is. An unreadable scene gives one error row per question.
    """
    uri, name = scene["uri"], scene["rel"]
    try:
        hdr = scene_header(uri, storage_options)
    except Exception as err:  # an unreadable scene is one error row per question, not a failed job
        for qi, q in enumerate(questions):
            yield {"id": f"{name}/unreadable/q{qi}", "source": uri, **q, "scene": name, "question_index": qi,
                   "tile_col_off": 0, "tile_row_off": 0, "tile_width": 0, "tile_height": 0, "crs": "",
                   "bounds": [], "status": "error", "error": f"unreadable scene: {type(err).__name__}: {err}"}
        return
    for (c, r, w, h) in tile_windows(hdr["width"], hdr["height"], tile, overlap):
        bounds = window_bounds(hdr["transform"], c, r, w, h)
        for qi, q in enumerate(questions):
            yield {"id": f"{name}/r{r}_c{c}/q{qi}", "source": uri, **q, "scene": name, "question_index": qi,
                   "tile_col_off": c, "tile_row_off": r, "tile_width": w, "tile_height": h,
                   "crs": hdr["crs"], "bounds": bounds}


def plan_scenes(input_uri: str, questions: list[dict], tile: int, overlap: int, storage_options=None) -> Plan:
    """The driver's part of planning: list the scenes; tasks cut each into tiles (``plan_tiles``)."""
    tile_windows(tile, tile, tile, overlap)  # a bad tile/overlap pair is refused before any work
    scenes, skipped = list_scenes(input_uri, storage_options)
    check_source_ids_unique(scenes)
    expand = functools.partial(plan_tiles, questions=questions, tile=tile, overlap=overlap,
                               storage_options=storage_options)
    return Plan([{"uri": s["uri"], "rel": s["rel"]} for s in scenes], expand, TILE_SCHEMA, skipped=skipped)


def _is_yes(table: pa.Table):
    answer = pc.utf8_lower(pc.fill_null(table.column("answer"), ""))
    return pc.and_(pc.equal(table.column("status"), "ok"), pc.equal(answer, "yes"))


def _yes_tiles(table: pa.Table) -> pa.Table:
    return table.filter(_is_yes(table))


def _rollup_flags(table: pa.Table) -> pa.Table:
    status, yes = table.column("status"), _is_yes(table)
    return pa.table({"scene": table.column("scene"), "question_index": table.column("question_index"),
                     "crs": pc.fill_null(table.column("crs"), ""), "tile": pa.array([1] * table.num_rows, pa.int64()),
                     "error": pc.cast(pc.equal(status, "error"), pa.int64()), "yes": pc.cast(yes, pa.int64())})


def _feature(rec: dict) -> dict:
    b = list(rec["bounds"] or []) or [rec["tile_col_off"], rec["tile_row_off"], rec["tile_col_off"] + rec["tile_width"],
                                      rec["tile_row_off"] + rec["tile_height"]]
    ring = [[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"id": rec["id"], "question": rec["question"], "confidence": rec["confidence"],
                           "pixel_window": [rec["tile_col_off"], rec["tile_row_off"], rec["tile_width"], rec["tile_height"]]}}


def _geojson_path(meta: str, scene: str, qi: int) -> str:
    return join(meta, "scenes", f"{scene}.q{qi}.geojson")


def _write_yes_geojson(group: pa.Table, *, meta: str, storage_options) -> pa.Table:
    """Ray Data UDF: one (scene, question)'s "yes" tiles -> its GeoJSON file; returns nothing to keep."""
    recs = group.to_pylist()
    scene, qi = recs[0]["scene"], int(recs[0]["question_index"])
    crs = next((r["crs"] for r in recs if r["crs"]), "")
    fc = {"type": "FeatureCollection", "features": [_feature(r) for r in recs],
          "properties": {"scene": scene, "crs": crs or "pixel"}}
    write_text(_geojson_path(meta, scene, qi), json.dumps(fc), storage_options)
    return pa.table({"written": [1]})


def scene_rollup(results, paths, storage_options) -> None:
    """Per scene and question: the tiles that answered "yes", as GeoJSON (pixel boxes where no CRS),
    and ``rollup.json`` with tile counts. Counted with Ray Data group-bys; each GeoJSON is written by
    the task that holds its (scene, question) group, so no tile list passes through the driver."""
    if not results.has_rows():
        write_text(join(paths.meta, "rollup.json"), "{}", storage_options)
        return
    cols = ["scene", "question_index", "crs", "status", "answer"]
    counts = (results.dataset(cols).map_batches(_rollup_flags, batch_format="pyarrow", batch_size=None)
              .groupby(["scene", "question_index", "crs"]).sum(["tile", "error", "yes"]).take_all())
    rollup: dict = {}
    for r in counts:
        key = f"{r['scene']}/q{r['question_index']}"
        entry = rollup.setdefault(key, {"tiles": 0, "tiles_yes": 0, "tiles_error": 0, "crs": ""})
        entry["tiles"] += int(r["sum(tile)"])
        entry["tiles_yes"] += int(r["sum(yes)"])
        entry["tiles_error"] += int(r["sum(error)"])
        entry["crs"] = entry["crs"] or r["crs"]
    if any(e["tiles_yes"] for e in rollup.values()):
        yes = results.dataset(["id", "question", "confidence", "tile_col_off", "tile_row_off", "tile_width",
                               "tile_height", "bounds", *cols])
        yes = yes.map_batches(_yes_tiles, batch_format="pyarrow", batch_size=None)
        udf = functools.partial(_write_yes_geojson, meta=paths.meta, storage_options=storage_options)
        yes.groupby(["scene", "question_index"]).map_groups(udf, batch_format="pyarrow").materialize()
    for key, e in rollup.items():
        if not e["tiles_yes"]:
            scene, q = key.rsplit("/q", 1)
            fc = {"type": "FeatureCollection", "features": [], "properties": {"scene": scene, "crs": e["crs"] or "pixel"}}
            write_text(_geojson_path(paths.meta, scene, int(q)), json.dumps(fc), storage_options)
    write_text(join(paths.meta, "rollup.json"), json.dumps(dict(sorted(rollup.items())), indent=2), storage_options)


def run(opts: JobOptions, questions_uri: str, tile_size: int = 512, overlap: int = 64, bands: str = "1,2,3") -> dict:

    so = parse_storage_options(opts.storage_options)
    questions = load_questions(questions_uri, so)
    plan = plan_scenes(opts.input, questions, tile_size, overlap, so)
    print(f"[satellite] {len(plan.sources)} scenes under {opts.input}"
          + (f"; skipped {len(plan.skipped)} files that are not scenes" if plan.skipped else ""))
    band_idx = [int(b) - 1 for b in bands.split(",")]
    loader = (SceneTileLoader, {"storage_options": so, "bands": band_idx})
    return run_job("satellite", opts, plan, post_commit=scene_rollup, loader=loader,
                   extra_summary={"scenes": len(plan.sources), "questions": len(questions),
                                  "tile_size": tile_size, "overlap": overlap})


@app.command()
@job_command
def main(
    input: str = typer.Option(..., help="a scene, or a folder/prefix of scenes (GeoTIFF, JPEG 2000, PNG, JPEG, WebP, BMP)"),
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
