"""Scene archives: large scenes cut into overlapping tiles, a question set asked of every tile,
per-tile results as GeoParquet (tile and evidence footprints, ``pipelines.geo``) plus a per-scene
roll-up of the "yes" detections, merged across tile overlaps.

    python -m pipelines.satellite --input s3://archive/scenes/ --output s3://archive/spote \
        --questions questions.yaml --tile-size 1024 --overlap 128 --bands 3,2,1

Inputs: every raster the installed GDAL reads among ``rasters.SCENE_FORMATS`` (GeoTIFF, PNG, JPEG,
JPEG 2000, VRT, ERDAS .img, WebP, BMP, NITF); every other file under the input (sidecars, hidden
files, other formats) is counted and named in the summary's ``skipped_sources``. An input with no
scene commits an empty run with a one-line message.

The driver lists the scenes and reads each one's header (size, bands, CRS, transform) to check
``--bands`` before any work; Ray Data tasks cut each scene into tile rows (``plan_tiles``), so the
driver's memory grows with scenes, not tiles. Item ids are ``<path under the input>/r<row>_c<col>/q<i>``.
Pixels are read per tile window in CPU loader actors, within the memory bound stated in
``pipelines.rasters``. Non-georeferenced images are tiled upright (their EXIF orientation applied).
Bands become RGB by selection (``--bands``, default: the file's red/green/blue, else its first three bands that are
not alpha, else band 1 as grey);
8-bit data is shown as stored, other data stretched per band over the 2-98 percentiles of its valid
pixels, once per scene (``--stretch scene``, from an overview or a pixel sample; a tile whose valid data
that range misses, e.g. a small valid patch no sample landed on, is drawn with its own) or per tile. Each
row's ``stretch_range`` is the range its tile was drawn with. Invalid pixels (nodata, masks, alpha, NaN)
are grey; a tile with no valid pixel is a ``skipped`` row.

Before the commit, each staged Parquet part is rewritten as GeoParquet by its own Ray task, and the
roll-up is computed with Ray Data group-bys: no result table passes through the driver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from pathlib import PurePosixPath
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import typer

from spote.images import DEFAULT_MAX_PIXELS
from spote.uris import redact_uri

from .geo import (
    ResultGeometry, detections_feature_collection, geometry_bbox, in_crs, scene_detections, scene_polygon,
    with_geometry,
)
from .job import JobOptions, job_command, run_job
from .planning import Plan, check_source_ids_unique, list_sources, listing_version, plan_schema, source_uri
from .questions import load_questions
from .rasters import (
    GDAL_CACHE_MB, SCENE_PERCENTILES, SIDECAR_SUFFIXES, SceneError, SceneHeader, check_bands, describe_error,
    open_scene, parse_bands, read_header, read_tile, readable_extensions, scene_header, scene_ranges, stretch_bands,
    tile_pixel_cap, tile_ranges, tile_stretch, to_rgb8,
)
from .stages import RowLoader, SkipItem
from .storage import filesystem, join, parse_storage_options, write_parquet_file, write_text

app = typer.Typer(add_completion=False)
STRETCH_MODES = ("scene", "tile")
SHUFFLE_PARTITIONS = 64  # most hash partitions of a roll-up group-by
TILE_FIELDS = (("scene", pa.string()), ("question_index", pa.int64()), ("field", pa.string()), ("tile_col_off", pa.int64()),
               ("tile_row_off", pa.int64()), ("tile_width", pa.int64()), ("tile_height", pa.int64()),
               ("crs", pa.string()), ("bounds", pa.list_(pa.float64())), ("stretch_range", pa.string()))
TILE_SCHEMA = plan_schema(*TILE_FIELDS)


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


def window_bounds(header: SceneHeader, col: int, row: int, w: int, h: int) -> list[float]:
    """[minx, miny, maxx, maxy] in the scene's CRS of a stored-pixel window (its footprint's bounds, through
    the affine transform or the GCPs); [] for a scene that is not georeferenced. In a geographic CRS the
    longitudes are in [-180, 180] and a window over the antimeridian has minx > maxx (RFC 7946 section 5.2,
    as the GeoParquet ``bbox``: ``geo.geometry_bbox``)."""
    poly = in_crs(scene_polygon(header, col, row, col + w, row + h), header.crs)
    return [] if poly is None else geometry_bbox([poly], header.crs)


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
            self._ranges = None
            self._ds = open_scene(uri, self.so)
            self._header = read_header(self._ds, uri, self.so)
            self._bands = check_bands(self.bands, self._header, PurePosixPath(uri).name)
            if self.stretch == "scene":
                # sampled through a handle of its own: after a failed read (a VRT whose source is gone) GDAL gives
                # zeros for that band on later reads of the same handle, and the tiles would be answered from
                # them. One handle at a time: rasterio keys an fsspec file by the file object, and fsspec's
                # read-mode files of one object are equal, so two open at once share one entry and closing the
                # second failed (KeyError in pyopener_close)
                probe, self._ds = self._ds, None
                with probe:
                    self._ranges = scene_ranges(probe, self._header, self._bands)
                self._ds = open_scene(uri, self.so)
            self._uri = uri
        return self._ds, self._header

    def forget(self) -> None:
        """Close the scene kept open. A handle that fails to close is dropped: the next row is another
        scene's, whose tile must not become an error for it."""
        ds, self._uri, self._ds = self._ds, None, None
        if ds is not None:
            with contextlib.suppress(Exception):
                ds.close()

    def read(self, row: dict):
        ds, header = self._scene(row["source"])
        c, r, w, h = row["tile_col_off"], row["tile_row_off"], row["tile_width"], row["tile_height"]
        if w * h > self.max_tile_pixels:
            raise SceneError(f"tile {w}x{h} is over the cap of {self.max_tile_pixels:,} pixels per tile")
        px = read_tile(ds, header, self._bands, c, r, w, h)
        if not px.valid.any():
            raise SkipItem("no valid pixels: the tile is all nodata or masked")
        ranges = tile_stretch(px, self._ranges) if self.stretch == "scene" else tile_ranges(px)
        row["stretch_range"] = json.dumps(ranges) if ranges is not None else ""
        return to_rgb8(px, ranges)

    def describe(self, row: dict, err: Exception) -> str:
        return f"{self.failure}: {describe_error(err)}"  # GDAL's own message, not rasterio's pointer to it


# ------------------------------------------------------------------------------------------------ planning
def _reason_to_skip(exts: dict[str, str]):
    def reason(rel: str) -> str | None:
        lower = rel.lower()
        if lower.endswith(SIDECAR_SUFFIXES):
            return "sidecar file (read with its scene)"
        suffix = PurePosixPath(lower).suffix
        if suffix in exts:
            return None
        return f"not a scene format this job tiles: {suffix or '(no extension)'}"

    return reason


def list_scenes(input_uri: str, storage_options=None) -> tuple[list[dict], list[dict]]:
    """(scenes, skipped) under a scene file or a folder/prefix: scenes as {"uri", "rel", "size", "mtime",
    "etag"} (``rel``: the path under the input, the scene's id); skipped as {"source", "reason"} (hidden
    files, sidecars, formats the installed GDAL does not read), every file accounted for.

    Raises:
        SceneError: a local input that does not exist. An object-store prefix with no objects under it
            is an empty input, as in the other jobs (on a store a prefix exists only through its objects).
    """
    try:
        return list_sources(input_uri, storage_options, _reason_to_skip(readable_extensions()))
    except FileNotFoundError as err:
        raise SceneError(str(err)) from None


def other_pages(scenes: list[dict], headers: dict[str, SceneHeader]) -> list[dict]:
    """Skipped-source entries for the pages after the first of multi-page TIFFs, which are not tiled (GDAL
    opens a file's first page as the scene), each said once as the driver plans."""
    skipped = []
    for s in scenes:
        pages = headers[s["uri"]].other_pages if s["uri"] in headers else ()
        if not pages:
            continue
        n = len(pages) + 1
        print(f"[satellite] {s['rel']}: a TIFF of {n} pages; only its first is tiled (the others are named among "
              "skipped sources)")
        skipped += [{"source": f"{s['rel']}: {desc} of {n}", "reason": "page of a multi-page TIFF (only the first "
                     "page is tiled)"} for desc in pages]
    return skipped


def _header_json(header: SceneHeader) -> str:
    return json.dumps(dataclasses.asdict(header))


def _header_from_json(text: str) -> SceneHeader:
    d = json.loads(text)
    def frozen(v):  # JSON lists back to the header's (nested) tuples
        return tuple(frozen(x) for x in v) if isinstance(v, list) else v

    return SceneHeader(**{k: frozen(v) for k, v in d.items()})


def plan_tiles(scene: dict, questions: list[dict], tile: int, overlap: int, storage_options=None):
    """Item rows of one scene (runs in a Ray task): every upright tile window x every question.

    ``scene``: {"uri", "rel"} and, when the driver read it, "header" (``SceneHeader`` as JSON) or "error"
    (why the header could not be read). Ids are ``<rel>/r<row>_c<col>/q<i>``, unique because ``rel`` (the
    path under the input) is. An unreadable scene gives one error row per question.
    """
    uri, name = scene["uri"], scene["rel"]
    error, hdr = scene.get("error") or "", None
    if not error:
        try:
            hdr = _header_from_json(scene["header"]) if scene.get("header") else scene_header(uri, storage_options)
        except Exception as err:  # an unreadable scene is one error row per question, not a failed job
            error = describe_error(err)
    if hdr is None:
        for qi, q in enumerate(questions):
            yield {"id": f"{name}/unreadable/q{qi}", "source": uri, **q, "scene": name, "question_index": qi,
                   "tile_col_off": 0, "tile_row_off": 0, "tile_width": 0, "tile_height": 0, "crs": "",
                   "bounds": [], "stretch_range": "", "status": "error", "error": f"unreadable scene: {error}"}
        return
    for (c, r, w, h) in tile_windows(hdr.width, hdr.height, tile, overlap):
        bounds = window_bounds(hdr, c, r, w, h)  # georeferenced scenes are never re-oriented
        for qi, q in enumerate(questions):
            yield {"id": f"{name}/r{r}_c{c}/q{qi}", "source": uri, **q, "scene": name, "question_index": qi,
                   "tile_col_off": c, "tile_row_off": r, "tile_width": w, "tile_height": h,
                   "crs": hdr.crs, "bounds": bounds, "stretch_range": ""}


def read_headers(scenes: list[dict], storage_options=None, bands: tuple[int, ...] | None = None,
                 ) -> dict[str, SceneHeader]:
    """The driver's header pass (headers only, no pixels): each readable scene's ``SceneHeader`` by URI;
    each scene dict gains "header" (JSON) or "error" for ``plan_tiles``.

    Raises:
        SceneError: ``bands`` names a band a scene does not have (before any work).
    """
    headers = {}
    for s in scenes:
        try:
            hdr = scene_header(s["uri"], storage_options)
        except Exception as err:  # an unreadable scene becomes error rows, not a failed job
            s["header"], s["error"] = "", describe_error(err)
            continue
        check_bands(bands, hdr, PurePosixPath(s["rel"]).name)
        headers[s["uri"]] = hdr
        s["header"], s["error"] = _header_json(hdr), ""
    return headers


def plan_scenes(input_uri: str, questions: list[dict], tile: int, overlap: int, storage_options=None,
                scenes: list[dict] | None = None, skipped: list[dict] | None = None) -> Plan:
    """The driver's part of planning: the listed scenes (listed here unless given); tasks cut each into
    tiles (``plan_tiles``). Raises ValueError for a bad tile/overlap pair or two scenes with one id."""
    tile_windows(tile, tile, tile, overlap)  # a bad tile/overlap pair is refused before any work
    if scenes is None:
        scenes, skipped = list_scenes(input_uri, storage_options)
    check_source_ids_unique(scenes)
    expand = functools.partial(plan_tiles, questions=questions, tile=tile, overlap=overlap,
                               storage_options=storage_options)
    keys = ("uri", "rel", "header", "error")
    return Plan([{k: s.get(k, "") for k in keys} for s in scenes], expand, TILE_SCHEMA, skipped=skipped or [],
                input_version=listing_version(scenes))


# ------------------------------------------------------------------------------------------------ GeoParquet
def _geoparquet_part(uri: str, tmp_uri: str, geometry: ResultGeometry, storage_options=None) -> bool:
    """Rewrite one staged Parquet part as GeoParquet (same rows, plus the geometry columns and ``geo``
    metadata): written beside, then moved over the part. A part that already is GeoParquet (a resumed
    run) is left as it is. Returns whether it was rewritten."""
    import pyarrow.parquet as pq

    fs, path = filesystem(uri, storage_options)
    with fs.open(path, "rb") as f:
        part = pq.ParquetFile(f)
        if b"geo" in (part.schema_arrow.metadata or {}):
            return False
        table = part.read()
    write_parquet_file(geometry.geoparquet_table(table), tmp_uri, storage_options)
    _, tmp = filesystem(tmp_uri, storage_options)
    fs.mv(tmp, path)
    return True


def rewrite_parts_as_geoparquet(staged_uri: str, tmp_uri: str, headers: dict[str, SceneHeader],
                                storage_options=None, in_process: bool = False) -> int:
    """Every staged Parquet part rewritten as GeoParquet, one Ray task per part (the driver reads no rows),
    or here, one after another, with ``in_process`` (a run of no items: one part of no rows, and no Ray
    started). The run's geometry CRS comes from ``headers`` (one CRS, else OGC:CRS84). Returns the parts
    rewritten."""
    fs, staged = filesystem(staged_uri, storage_options)
    parts = [p for p in fs.find(staged) if p.endswith(".parquet")] if fs.exists(staged) else []
    if not parts:
        return 0
    moves = [(source_uri(staged_uri, p), join(tmp_uri, f"{i:06d}-{PurePosixPath(p).name}"))
             for i, p in enumerate(parts)]  # (part, where its rewrite is written first)
    if in_process:
        geometry = ResultGeometry(headers)
        return sum(_geoparquet_part(part, tmp, geometry, storage_options) for part, tmp in moves)
    import ray

    geometry = ray.put(ResultGeometry(headers))
    task = ray.remote(num_cpus=0.5)(_geoparquet_part)
    return sum(ray.get([task.remote(part, tmp, geometry, storage_options) for part, tmp in moves]))


# ------------------------------------------------------------------------------------------------ roll-up
def _is_yes(table: pa.Table):
    answer = pc.utf8_lower(pc.cast(pc.fill_null(table.column("answer"), ""), pa.string()))
    return pc.and_(pc.equal(table.column("status"), "ok"), pc.equal(answer, "yes"))


def _yes_tiles(table: pa.Table) -> pa.Table:
    return table.filter(_is_yes(table))


def _rollup_flags(table: pa.Table) -> pa.Table:
    status, n = table.column("status"), table.num_rows
    return pa.table({"scene": table.column("scene"), "question_index": table.column("question_index"),
                     "tile": pa.array([1] * n, pa.int64()), "yes": pc.cast(_is_yes(table), pa.int64()),
                     "error": pc.cast(pc.equal(status, "error"), pa.int64()),
                     "skipped": pc.cast(pc.equal(status, "skipped"), pa.int64())})


def _geojson_path(meta: str, scene: str, qi: int) -> str:
    return join(meta, "scenes", f"{scene}.q{qi}.geojson")


def _scene_crs(header: SceneHeader | None) -> str:
    return header.crs if header is not None and header.georeferenced else ""


def write_scene_detections(scene: str, header: SceneHeader | None, by_question: dict[int, tuple[str, list]],
                           meta: str, storage_options=None) -> dict[int, int]:
    """One scene's merged detections: ``scenes/<scene>.q<i>.geojson`` per question in ``by_question``
    ({question_index: (question, [Detection])}) and ``scenes/<scene>.detections.parquet`` (GeoParquet) for
    all of them; returns {question_index: detections}."""
    crs = _scene_crs(header)
    records = []
    for qi, (question, detections) in sorted(by_question.items()):
        fc = detections_feature_collection(scene, question, detections, crs,
                                           map_coords=header is not None and header.georeferenced)
        write_text(_geojson_path(meta, scene, qi), json.dumps(fc), storage_options)
        records += [(int(qi), question, d) for d in detections]
    t = pa.table({"scene": pa.array([scene] * len(records), pa.string()),
                  "question_index": pa.array([r[0] for r in records], pa.int64()),
                  "question": pa.array([r[1] for r in records], pa.string()),
                  "ids": pa.array([r[2].ids for r in records], pa.list_(pa.string())),
                  "n_tiles": pa.array([len(r[2].ids) for r in records], pa.int64()),
                  "confidence_max": pa.array([r[2].confidence_max for r in records], pa.float64()),
                  "localised": pa.array([r[2].localised for r in records], pa.bool_())})
    t = with_geometry(t, {"geometry": [r[2].geometry for r in records]}, "geometry", crs or None)
    write_parquet_file(t, join(meta, "scenes", f"{scene}.detections.parquet"), storage_options)
    return {qi: len(dets) for qi, (_, dets) in by_question.items()}


def _detect_scene(group: pa.Table, *, headers: dict[str, SceneHeader], questions: list[str], meta: str,
                  storage_options) -> pa.Table:
    """Ray Data UDF: one scene's "yes" rows -> its merged detections written per question and as GeoParquet;
    returns (scene, question_index, detections) per question the scene has."""
    df = group.to_pandas()
    scene, source = str(df["scene"].iloc[0]), str(df["source"].iloc[0])
    header = headers.get(source)
    by_question = {qi: (questions[qi] if qi < len(questions) else "", []) for qi in range(len(questions))}
    for qi, grp in df.groupby("question_index"):
        by_question[int(qi)] = (str(grp["question"].iloc[0]), scene_detections(grp, header))
    counts = write_scene_detections(scene, header, by_question, meta, storage_options)
    return pa.table({"scene": pa.array([scene] * len(counts), pa.string()),
                     "question_index": pa.array(list(counts), pa.int64()),
                     "detections": pa.array(list(counts.values()), pa.int64())})


def scene_rollup(results, meta: str, headers: dict[str, SceneHeader], scene_sources: dict[str, str],
                 questions: list[str], storage_options=None) -> dict:
    """Per scene and question: tile counts (Ray Data group-by sums) and the "yes" tiles merged into
    detections where their footprints overlap (``geo.merge_detections``), each scene's detections in the
    task that holds its "yes" rows. Writes GeoJSON per (scene, question) and GeoParquet per scene under
    ``<meta>/scenes/``; returns ``rollup.json``'s content:
    {"<scene>/q<i>": {tiles, tiles_yes, tiles_error, tiles_skipped, detections, crs}}."""
    cols = ["scene", "question_index", "status", "answer"]
    shards = max(1, min(len(scene_sources), SHUFFLE_PARTITIONS))  # a group-by's hash partitions: no more than scenes
    counts = (results.dataset(cols).map_batches(_rollup_flags, batch_format="pyarrow", batch_size=None)
              .groupby(["scene", "question_index"], num_partitions=shards)
              .sum(["tile", "yes", "error", "skipped"]).take_all())
    detections: dict[tuple[str, int], int] = {}
    if any(int(r["sum(yes)"]) for r in counts):
        yes = results.dataset(["id", "source", "question", "confidence", "tile_col_off", "tile_row_off", "tile_width",
                               "tile_height", "evidence_box", *cols])
        udf = functools.partial(_detect_scene, headers=headers, questions=questions, meta=meta,
                                storage_options=storage_options)
        found = (yes.map_batches(_yes_tiles, batch_format="pyarrow", batch_size=None)
                 .groupby("scene", num_partitions=shards).map_groups(udf, batch_format="pyarrow").take_all())
        detections = {(r["scene"], int(r["question_index"])): int(r["detections"]) for r in found}
    scenes_done = {s for s, _ in detections}
    empty: dict[str, dict[int, tuple[str, list]]] = {}
    rollup: dict = {}
    for r in counts:
        scene, qi = r["scene"], int(r["question_index"])
        header = headers.get(scene_sources.get(scene, ""))
        rollup[f"{scene}/q{qi}"] = {"tiles": int(r["sum(tile)"]), "tiles_yes": int(r["sum(yes)"]),
                                    "tiles_error": int(r["sum(error)"]), "tiles_skipped": int(r["sum(skipped)"]),
                                    "detections": detections.get((scene, qi), 0), "crs": _scene_crs(header)}
        if scene not in scenes_done:  # no "yes" anywhere in the scene: its files say so, empty
            question = questions[qi] if qi < len(questions) else ""
            empty.setdefault(scene, {})[qi] = (question, [])
    for scene, by_question in empty.items():
        write_scene_detections(scene, headers.get(scene_sources.get(scene, "")), by_question, meta, storage_options)
    return dict(sorted(rollup.items()))


def geo_outputs(headers: dict[str, SceneHeader], scene_sources: dict[str, str], questions: list[str]):
    """The job's hook before the commit: staged parts rewritten as GeoParquet, then the per-scene roll-up
    (``rollup.json``, GeoJSON and GeoParquet detections under the run's ``scenes/``)."""

    def write(results, paths, storage_options) -> None:
        # a run of no rows has one part of no rows, which still becomes GeoParquet as every run's parts do
        empty = not results.has_rows()
        rewrite_parts_as_geoparquet(results.uri, join(paths.staging, "geoparquet-tmp"), headers, storage_options,
                                    in_process=empty)
        if empty:
            write_text(join(paths.staged_meta, "rollup.json"), "{}", storage_options)
            return
        rollup = scene_rollup(results, paths.staged_meta, headers, scene_sources, questions, storage_options)
        write_text(join(paths.staged_meta, "rollup.json"), json.dumps(rollup, indent=2), storage_options)

    return write


def run(opts: JobOptions, questions_uri: str, tile_size: int = 512, overlap: int = 64, bands: str | None = None,
        stretch: str = "scene", max_tile_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """List the scenes, read and check their headers, plan and run the job; returns the summary.

    Raises:
        SceneError: a request that cannot be served, found before any work (missing input, ``--bands`` out
            of a scene's range, a tile over the pixel cap, an unknown stretch, a bad overlap).
    """
    if stretch not in STRETCH_MODES:
        raise SceneError(f"--stretch {stretch!r}: expected one of {', '.join(STRETCH_MODES)}")
    tile_pixel_cap(tile_size, max_tile_pixels)  # first: the overlap's valid range depends on a valid tile size
    # an overlap of half a tile already puts every object up to half a tile wholly inside some tile; past it
    # the tiles multiply (--tile-size 32 --overlap 31: a tile per pixel, 3.8 million for two small scenes)
    if overlap < 0 or overlap > tile_size // 2:
        raise SceneError(f"--overlap {overlap}: must be 0 to {tile_size // 2} (at most half of --tile-size "
                         f"{tile_size}: an object up to the overlap then lies wholly inside some tile)")
    band_sel = parse_bands(bands)
    so = parse_storage_options(opts.storage_options)
    scenes, skipped = list_scenes(opts.input, so)
    headers = read_headers(scenes, so, band_sel)
    skipped = skipped + other_pages(scenes, headers)
    questions = load_questions(questions_uri, so)
    opts.check_questions(questions, redact_uri(questions_uri))
    plan = plan_scenes(opts.input, questions, tile_size, overlap, so, scenes=scenes, skipped=skipped)
    print(f"[satellite] {len(scenes)} scenes under {redact_uri(opts.input)}"
          + (f"; skipped {len(skipped)} sources it does not tile (in the summary)" if skipped else ""))
    loader = (SceneTileLoader, {"storage_options": so, "bands": band_sel, "stretch": stretch,
                                "max_tile_pixels": max_tile_pixels})
    hook = geo_outputs(headers, {s["rel"]: s["uri"] for s in scenes}, [q["question"] for q in questions])
    return run_job("satellite", opts, plan, before_commit=hook, loader=loader,
                   job_settings={"questions": questions, "tile_size": tile_size, "overlap": overlap,
                                 "bands": list(band_sel) if band_sel else None, "stretch": stretch,
                                 "max_tile_pixels": max_tile_pixels},
                   extra_summary={"scenes": len(scenes), "scenes_unreadable": len(scenes) - len(headers),
                                  "questions": len(questions), "tile_size": tile_size, "overlap": overlap,
                                  "bands": list(band_sel) if band_sel else "auto",
                                  "stretch": {"mode": stretch, "percentiles": list(SCENE_PERCENTILES),
                                              "8-bit": "as stored"},
                                  "geometry_crs": ResultGeometry(headers).crs})


@app.command()
@job_command
def main(
    input: str = typer.Option(..., help="a scene, or a folder/prefix of scenes (GeoTIFF, PNG, JPEG, JPEG 2000, VRT, "
                                        "ERDAS .img, WebP, BMP, NITF: those the installed GDAL has a driver for)"),
    output: str = typer.Option(...),
    questions: str = typer.Option(..., help="JSON or YAML list of {question, choices, field} asked of every tile"),
    tile_size: int = typer.Option(512, help="tile side in pixels; one tile must stay under --max-tile-pixels"),
    overlap: int = typer.Option(64, help="pixels shared by neighbouring tiles (at most half of --tile-size)"),
    bands: Optional[str] = typer.Option(None, help="1-based band numbers mapped to R,G,B (or one band as grey); "
                                                   "default: the file's red/green/blue bands, else its first three that are not alpha, else band 1"),
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
    from pipelines.job import run_as_program

    run_as_program(app)
