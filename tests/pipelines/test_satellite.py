import dataclasses
import json
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from pipelines.job import JobOptions
from pipelines.runs import RunPaths, is_committed
from pipelines.satellite import list_scenes, load_questions, plan_scenes, plan_tiles, run, tile_windows, to_rgb, window_bounds

QUESTIONS = [{"question": "is there a boat ?", "choices": '["yes", "no"]'}]


def test_tile_windows_cover_the_scene_with_overlap():
    wins = tile_windows(1000, 700, 400, 50)
    assert all(w == 400 and h == 400 for _, _, w, h in wins)
    covered = np.zeros((700, 1000), bool)
    for c, r, w, h in wins:
        covered[r:r + h, c:c + w] = True
    assert covered.all()
    assert {c for c, *_ in wins} == {0, 350, 600} and {r for _, r, *_ in wins} == {0, 300}
    with pytest.raises(ValueError):
        tile_windows(100, 100, 50, 50)


def test_window_bounds_follow_the_geotransform():
    from pipelines.rasters import SceneHeader

    t = tuple(from_origin(500000, 4600000, 0.5, 0.5))[:6]
    header = SceneHeader(width=1000, height=1000, stored_width=1000, stored_height=1000, bands=1, dtype="uint8",
                         crs="EPSG:32633", transform=t, orientation=1, palette=False, default_bands=(1,),
                         has_overviews=False)
    assert window_bounds(header, 100, 200, 50, 40) == [500050.0, 4599880.0, 500075.0, 4599900.0]
    assert window_bounds(dataclasses.replace(header, crs="", transform=()), 100, 200, 50, 40) == []


def test_a_lon_lat_geotiff_past_180_is_planned_and_placed_within_180(tmp_path):
    """An EPSG:4326 GeoTIFF at Fiji whose pixel grid runs to 180.1: its planned bounds, footprints and
    evidence lon/lat were written past 180 (evidence_lon 180.0585), its footprints unsplit."""
    import geopandas
    import shapely

    from pipelines.geo import rewrite_staged_as_geoparquet
    from pipelines.satellite import _header_json

    path = tmp_path / "fiji.tif"
    with rasterio.open(path, "w", driver="GTiff", width=400, height=400, count=3, dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(179.9, -16.8, 0.0005, 0.0005)) as ds:
        ds.write(np.full((3, 400, 400), 90, np.uint8))
    hdr = scene_header(str(path))
    rows = {r["id"]: r for r in plan_tiles({"uri": str(path), "rel": "fiji.tif", "header": _header_json(hdr)},
                                           QUESTIONS, 256, 112)}
    assert set(rows) == {f"fiji.tif/r{r}_c{c}/q0" for r in (0, 144) for c in (0, 144)}
    for row in rows.values():
        assert all(-180 <= x <= 180 for x in row["bounds"][::2])
    assert rows["fiji.tif/r0_c144/q0"]["bounds"] == pytest.approx([179.972, -16.928, -179.9, -16.8])  # west > east
    assert rows["fiji.tif/r0_c0/q0"]["bounds"] == pytest.approx([179.9, -16.928, -179.972, -16.8])

    ids = sorted(rows)
    table = pa.table({"id": ids, "source": [str(path)] * 4, "scene": ["fiji.tif"] * 4,
                      "tile_col_off": [rows[i]["tile_col_off"] for i in ids],
                      "tile_row_off": [rows[i]["tile_row_off"] for i in ids],
                      "tile_width": [256] * 4, "tile_height": [256] * 4,
                      "evidence_box": pa.array([None, [90, 90, 256, 256], None, None], pa.list_(pa.int64()))})
    staging = tmp_path / "staging"
    staging.mkdir()
    assert rewrite_staged_as_geoparquet(table, str(staging), {str(path): hdr}) == "EPSG:4326"
    gdf = geopandas.read_parquet(staging)
    assert gdf.geometry.is_valid.all() and (gdf.geometry.geom_type == "MultiPolygon").all()
    assert gdf.geometry.bounds[["minx", "maxx"]].abs().le(180).all().all()
    lon, lat = gdf["evidence_lon"].iloc[1], gdf["evidence_lat"].iloc[1]
    assert lon == pytest.approx(180.0585 - 360) and lat == pytest.approx(-16.8865)
    assert gdf["evidence_geometry"].iloc[1].covers(shapely.Point(lon, lat))


def test_to_rgb_stretches_16_bit_multiband():
    bands = np.stack([np.full((4, 4), v, np.uint16) for v in (100, 2000, 40000, 7)])
    bands[:, 0, 0] = 0
    rgb = to_rgb(bands, [2, 1, 0])
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3) and rgb[1, 1].tolist() == [255, 255, 255]


def test_yaml_questions_keep_yes_no_as_text(tmp_path):
    (tmp_path / "q.yaml").write_text("- question: is there a boat ?\n  choices: [yes, no]\n- {question: 'count ?', choices: '1,2'}\n")
    qs = load_questions(str(tmp_path / "q.yaml"))
    assert json.loads(qs[0]["choices"]) == ["yes", "no"] and json.loads(qs[1]["choices"]) == ["1", "2"]


def test_satellite_job_end_to_end(ray_local, random_tiny_dir, tmp_path, fast_policy):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, (4, 600, 900), dtype=np.uint16)      # 4-band, 16-bit
    with rasterio.open(scenes / "s1.tif", "w", driver="GTiff", width=900, height=600, count=4, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(500000, 4600000, 0.5, 0.5)) as ds:
        ds.write(data)
    Image.fromarray(rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)).save(scenes / "s2.png")
    (scenes / "s3.tif").write_bytes(b"II*\x00 not a tiff")
    refl = rng.uniform(0.02, 0.3, (3, 400, 700)).astype(np.float32)
    refl[:, :, :400] = -9999                                          # tile c=0 all nodata, tile c=300 partly
    with rasterio.open(scenes / "s4.tif", "w", driver="GTiff", width=700, height=400, count=3, dtype="float32",
                       nodata=-9999, crs="EPSG:32633", transform=from_origin(510000, 4600000, 10, 10)) as ds:
        ds.write(refl)
    (scenes / "notes.txt").write_text("not a scene")
    (tmp_path / "q.json").write_text(json.dumps([{"question": "is there a boat ?", "choices": ["yes", "no"]},
                                                 {"question": "what colour is the vehicle ?", "choices": "red,yellow,blue,white"}]))
    opts = JobOptions(str(scenes), str(tmp_path / "out"), str(random_tiny_dir), policy=fast_policy, run_id="sat")
    summary = run(opts, str(tmp_path / "q.json"), tile_size=400, overlap=100, bands="3,2,1")
    n_tiles = len(tile_windows(900, 600, 400, 100)) + len(tile_windows(500, 300, 400, 100)) + 2
    assert summary["items_in"] == 2 * n_tiles + 2 and summary["items_error"] == 2   # s3.tif: one error row per question
    assert summary["items_skipped"] == 2 and summary["skipped_by_reason"] == {"no valid pixels": 2}  # s4's first tile
    assert summary["items_ok"] == summary["items_in"] - 4
    assert summary["skipped_sources"]["count"] == 1 and summary["skipped_sources"]["named"][0]["source"] == "notes.txt"
    assert summary["scenes"] == 4 and summary["scenes_unreadable"] == 1
    assert summary["stretch"]["mode"] == "scene"
    df = pq.read_table(RunPaths(str(tmp_path / "out"), "sat").results).to_pandas()
    assert df["id"].is_unique and len(df) == summary["items_in"]
    assert (df.field == "q" + df.question_index.astype(str)).all()  # the question file's names, as documents carry
    assert summary["settings"]["tile_size"] == 400 and summary["settings"]["bands"] == [3, 2, 1]
    with pytest.raises(ValueError, match=r"run sat is committed with other settings \(tile_size 400 -> 512\)"):
        run(opts, str(tmp_path / "q.json"), tile_size=512, overlap=100, bands="3,2,1")   # not 400 px tiles for 512
    skipped = df[df.status == "skipped"]
    assert set(skipped.scene) == {"s4.tif"} and (skipped.tile_col_off == 0).all() and (skipped.forward_passes == 0).all()
    assert df[df.status == "ok"].evidence_box.map(lambda b: b is None or len(b) == 4).all()
    s1 = df[(df.scene == "s1.tif") & (df.status == "ok")]
    assert (s1.crs == "EPSG:32633").all()
    first = s1[(s1.tile_col_off == 0) & (s1.tile_row_off == 0)].iloc[0]
    assert list(first.bounds) == [500000.0, 4599800.0, 500200.0, 4600000.0] and first.id == "s1.tif/r0_c0/q0"
    meta = Path(RunPaths(str(tmp_path / "out"), "sat").meta)
    gj = json.loads((meta / "scenes" / "s1.tif.q0.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and gj["properties"]["crs"] == "EPSG:32633"
    yes = s1[(s1.question_index == 0) & (s1.answer == "yes")]
    assert sum(f["properties"]["n_tiles"] for f in gj["features"]) == len(yes)  # every "yes" tile in one detection
    rollup = json.loads((meta / "rollup.json").read_text())
    assert rollup["s1.tif/q0"]["tiles"] == len(tile_windows(900, 600, 400, 100)) and rollup["s1.tif/q0"]["crs"] == "EPSG:32633"
    assert rollup["s1.tif/q0"]["tiles_yes"] == len(yes)
    assert rollup["s1.tif/q0"]["detections"] == len(gj["features"]) <= len(yes)
    assert rollup["s4.tif/q0"]["tiles_skipped"] == 1
    assert rollup["s3.tif/q1"] == {"tiles": 1, "tiles_yes": 0, "tiles_error": 1, "tiles_skipped": 0, "detections": 0,
                                   "crs": ""}
    assert json.loads((meta / "scenes" / "s3.tif.q1.geojson").read_text())["features"] == []

    # the committed results are GeoParquet: tile footprints in the scene CRS, evidence inside its tile
    import geopandas
    from pyproj import CRS

    gdf = geopandas.read_parquet(RunPaths(str(tmp_path / "out"), "sat").results)
    assert len(gdf) == summary["items_in"] and gdf.crs == CRS("EPSG:32633") and summary["geometry_crs"] == "EPSG:32633"
    geo = gdf[gdf.geometry.notna()]
    assert set(geo.scene) == {"s1.tif", "s4.tif"} and geo.geometry.is_valid.all()
    first_geo = geo[(geo.scene == "s1.tif") & (geo.tile_col_off == 0) & (geo.tile_row_off == 0)].geometry.iloc[0]
    assert first_geo.bounds == (500000.0, 4599800.0, 500200.0, 4600000.0)
    ev = gdf[gdf["evidence_geometry"].notna()]
    assert (ev["evidence_geometry"].within(ev.geometry)).all()
    assert ev["evidence_lon"].between(14, 16).all() and ev["evidence_lat"].between(41, 42).all()
    assert gdf[gdf.scene == "s2.png"].geometry.isna().all()  # a PNG without georeferencing has no map footprint
    dets = geopandas.read_parquet(meta / "scenes" / "s1.tif.detections.parquet")
    assert dets.crs == CRS("EPSG:32633") and len(dets) == sum(rollup[f"s1.tif/q{i}"]["detections"] for i in (0, 1))
    assert geopandas.read_parquet(meta / "scenes" / "s2.png.detections.parquet").crs is None


# ------------------------------------------------------------------ what the loader reads: masks, stretch, bands
import warnings  # noqa: E402

from PIL import ImageOps  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from pipelines.rasters import (  # noqa: E402
    GDAL_CACHE_MB, SceneError, read_tile, scene_header, tile_ranges, to_rgb8,
)
from pipelines.satellite import SceneTileLoader, app  # noqa: E402
from spote.images import NEUTRAL_FILL  # noqa: E402

warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)


def _write(path, data, **kw):
    count, h, w = data.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": count, "dtype": str(data.dtype),
               "crs": "EPSG:32633", "transform": from_origin(500000, 4600000, 10, 10), **kw}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return str(path)


def _row(path, c, r, w, h):
    return {"id": "t", "source": str(path), "question": "is there a boat ?", "choices": '["yes", "no"]',
            "tile_col_off": c, "tile_row_off": r, "tile_width": w, "tile_height": h, "stretch_range": ""}


def _pixels(out):
    return np.frombuffer(out["pixels"], np.uint8).reshape(out["height"], out["width"], 3)


def _reflectance(rng, h=200, w=300):
    """float32 reflectance (0.02-0.3) with a bright boat, the left third nodata (-9999)."""
    data = rng.uniform(0.02, 0.3, (3, h, w)).astype(np.float32)
    data[:, 90:100, 200:220] = 0.9
    data[:, :, :100] = -9999
    return data


@pytest.mark.parametrize("stretch", ["scene", "tile"])
def test_nodata_is_left_out_of_the_stretch_and_shown_grey(tmp_path, stretch):
    path = _write(tmp_path / "refl.tif", _reflectance(np.random.default_rng(0)), nodata=-9999)
    out = SceneTileLoader(stretch=stretch).load(_row(path, 0, 0, 300, 200))
    assert out["status"] == "ok"
    rgb = _pixels(out)
    assert (rgb[:, :100] == NEUTRAL_FILL).all()
    valid = rgb[:, 100:]
    assert 90 < valid.mean() < 160, valid.mean()  # with nodata in the percentiles the tile went ~92% white
    assert rgb[95, 210].min() == 255 and json.loads(out["stretch_range"])[0][0] > 0


def test_internal_masks_alpha_and_nan_are_invalid(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(1000, 3000, (3, 64, 64)).astype(np.uint16)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(tmp_path / "masked.tif", "w", driver="GTiff", width=64, height=64, count=3,
                           dtype="uint16") as ds:
            ds.write(data)
            mask = np.full((64, 64), 255, np.uint8)
            mask[:16] = 0
            ds.write_mask(mask)
    rgba = np.concatenate([data, np.full((1, 64, 64), 65535, np.uint16)])
    rgba[3, :, :20] = 0
    with rasterio.open(tmp_path / "alpha.tif", "w", driver="GTiff", width=64, height=64, count=4, dtype="uint16",
                       photometric="RGB", alpha="YES") as ds:
        ds.write(rgba)
    nan = data.astype(np.float32)
    nan[:, 40:, :] = np.nan
    _write(tmp_path / "nan.tif", nan)
    for name, invalid in (("masked.tif", np.s_[:16, :]), ("alpha.tif", np.s_[:, :20]), ("nan.tif", np.s_[40:, :])):
        hdr = scene_header(str(tmp_path / name))
        with rasterio.open(tmp_path / name) as ds:
            px = read_tile(ds, hdr, hdr.default_bands, 0, 0, 64, 64)
        assert not px.valid[invalid].any() and px.valid.sum() > 64 * 20, name
        rgb = to_rgb8(px, tile_ranges(px))
        assert (rgb[invalid] == NEUTRAL_FILL).all() and 80 < rgb[px.valid].mean() < 175, name
    assert scene_header(str(tmp_path / "alpha.tif")).default_bands == (1, 2, 3)


def test_a_tile_without_valid_pixels_is_skipped_not_answered(tmp_path):
    path = _write(tmp_path / "refl.tif", _reflectance(np.random.default_rng(2)), nodata=-9999)
    out = SceneTileLoader().load(_row(path, 0, 0, 100, 100))
    assert out["status"] == "skipped" and "no valid pixels" in out["error"] and out["pixels"] == b""


def test_one_hot_pixel_cannot_darken_a_12_bit_scene(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.normal(2000, 250, (3, 128, 128)).clip(0, 4095).astype(np.uint16)
    data[:, 7, 9] = 65535
    path = _write(tmp_path / "s.tif", data)
    for stretch in ("scene", "tile"):
        rgb = _pixels(SceneTileLoader(stretch=stretch).load(_row(path, 0, 0, 128, 128)))
        assert 100 < rgb.mean() < 155, (stretch, rgb.mean())
    png = tmp_path / "s16.png"
    with rasterio.open(png, "w", driver="PNG", width=128, height=128, count=3, dtype="uint16") as ds:
        ds.write(data)
    assert 100 < _pixels(SceneTileLoader().load(_row(png, 0, 0, 128, 128))).mean() < 155


@pytest.mark.parametrize("bands", ["4,3,2", "0,1,2", "9,9,9", "-1,2,3", "2"])
def test_bands_out_of_range_is_one_clear_error_before_any_work(tmp_path, bands):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    _write(scenes / "rgb.tif", np.ones((3, 32, 32), np.uint16))
    if bands == "2":  # a valid selection on a 3-band file, out of range on a 1-band one
        _write(scenes / "grey.tif", np.ones((1, 32, 32), np.uint16))
    (tmp_path / "q.json").write_text(json.dumps([{"question": "is there a boat ?", "choices": ["yes", "no"]}]))
    args = ["--input", str(scenes), "--output", str(tmp_path / "out"), "--questions", str(tmp_path / "q.json"),
            "--bands", bands]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --bands") and "Traceback" not in res.output
    assert ("has 1 band " if bands == "2" else "has 3 bands") in lines[0]
    assert not (tmp_path / "out").exists()


def test_scene_formats_rasterio_reads_are_accepted_and_the_rest_named(tmp_path):
    from rasterio.shutil import copy as rio_copy

    scenes = tmp_path / "scenes"
    (scenes / "S2" / "GRANULE").mkdir(parents=True)
    data = np.random.default_rng(4).integers(0, 4000, (1, 64, 64)).astype(np.uint16)
    tif = _write(tmp_path / "band.tif", data)
    rio_copy(tif, scenes / "S2" / "GRANULE" / "T33UUP_B04.jp2", driver="JP2OpenJPEG")
    rio_copy(tif, scenes / "scene.img", driver="HFA")
    _write(scenes / "base.tif", data)
    (scenes / "mosaic.vrt").write_text(
        '<VRTDataset rasterXSize="64" rasterYSize="64"><VRTRasterBand dataType="UInt16" band="1">'
        '<SimpleSource><SourceFilename relativeToVRT="1">base.tif</SourceFilename><SourceBand>1</SourceBand>'
        '</SimpleSource></VRTRasterBand></VRTDataset>')
    (scenes / "notes.txt").write_text("field notes")
    (scenes / "base.tif.aux.xml").write_text("<PAMDataset/>")
    scenes_found, skipped = list_scenes(str(scenes))
    found = [s["uri"] for s in scenes_found]
    assert [s["rel"] for s in scenes_found] == ["S2/GRANULE/T33UUP_B04.jp2", "base.tif", "mosaic.vrt", "scene.img"]
    reasons = {PurePosixPath(s["source"]).name: s["reason"].split(":")[0] for s in skipped}
    assert reasons["notes.txt"] == "not a scene format this job tiles"
    assert reasons["base.tif.aux.xml"] == "sidecar file (read with its scene)"
    assert len(found) + len(skipped) == sum(1 for p in scenes.rglob("*") if p.is_file())  # every file accounted for
    for p in found:  # each is read tile by tile like a GeoTIFF
        out = SceneTileLoader().load(_row(p, 0, 0, 64, 64))
        assert out["status"] == "ok" and _pixels(out).std() > 10, p


def test_an_input_with_nothing_to_do_ends_cleanly(tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    (scenes / "readme.txt").write_text("x")
    (tmp_path / "q.json").write_text(json.dumps([{"question": "is there a boat ?", "choices": ["yes", "no"]}]))
    summary = run(JobOptions(str(scenes), str(tmp_path / "out"), run_id="empty"), str(tmp_path / "q.json"))
    assert summary["items_in"] == 0 and summary["skipped_sources"]["count"] == 1
    assert summary["skipped_sources"]["named"] == [{"source": "readme.txt",
                                                    "reason": "not a scene format this job tiles: .txt"}]
    assert is_committed(RunPaths(str(tmp_path / "out"), "empty"))  # an empty run, committed
    res = CliRunner().invoke(app, ["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out"),
                                   "--questions", str(tmp_path / "q.json")])
    assert res.exit_code == 2 and "no such file or folder" in res.output and "Traceback" not in res.output


def test_an_empty_store_prefix_is_an_empty_input_as_in_the_other_jobs(s3, tmp_path):
    """On an object store a prefix exists only through its objects: one with none under it is an empty
    input (an empty run, committed, as vqa and documents do), while a missing local folder is refused."""
    (tmp_path / "q.json").write_text(json.dumps([{"question": "is there a boat ?", "choices": ["yes", "no"]}]))
    assert list_scenes("s3://spote/no-scenes-here/") == ([], [])
    summary = run(JobOptions("s3://spote/no-scenes-here/", "s3://spote/empty-prefix-out", run_id="empty"),
                  str(tmp_path / "q.json"))
    assert summary["items_in"] == summary["items_out"] == 0
    assert is_committed(RunPaths("s3://spote/empty-prefix-out", "empty"))


def test_large_png_and_jpeg_scenes_are_tiled_within_the_pixel_cap(tmp_path):
    from rasterio.env import get_gdal_config

    from spote.images import BadImage, load_image

    rng = np.random.default_rng(5)
    big = np.kron(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), np.ones((30, 30, 1), np.uint8))  # 1800x2400
    Image.fromarray(big).save(tmp_path / "ortho.png")
    Image.fromarray(big).save(tmp_path / "ortho.jpg", quality=95)
    cap = 1_000_000
    with pytest.raises(BadImage, match="too large"):
        load_image(tmp_path / "ortho.png", max_pixels=cap)  # the whole scene is over the cap ...
    loader = SceneTileLoader(max_tile_pixels=cap)
    assert get_gdal_config("GDAL_CACHEMAX") == GDAL_CACHE_MB * 2 ** 20
    for c, r in ((0, 0), (1400, 800), (700, 1300)):  # ... its tiles are not
        out = loader.load(_row(tmp_path / "ortho.png", c, r, 1000, 500))
        assert out["status"] == "ok" and np.array_equal(_pixels(out), big[r:r + 500, c:c + 1000])
        jpg = _pixels(loader.load(_row(tmp_path / "ortho.jpg", c, r, 1000, 500)))
        assert np.abs(jpg.astype(int) - big[r:r + 500, c:c + 1000]).mean() < 8
    with pytest.raises(SceneError, match="over the cap of 1,000,000 pixels per tile"):
        run(JobOptions(str(tmp_path / "ortho.png"), str(tmp_path / "out")), "unused.json", tile_size=1200,
            overlap=0, max_tile_pixels=cap)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_phone_jpeg_scenes_are_tiled_upright(tmp_path, orientation):
    store = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    yy, xx = np.mgrid[0:300, 0:200]
    upright = np.stack([xx * 255 // 200, yy * 255 // 300, np.zeros_like(xx)], -1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(upright).transpose(store[orientation]).save(tmp_path / "drone.jpg", quality=95, exif=exif.tobytes())
    viewer = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "drone.jpg")).convert("RGB"))
    hdr = scene_header(str(tmp_path / "drone.jpg"))
    assert (hdr.width, hdr.height, hdr.orientation) == (200, 300, orientation)
    out = SceneTileLoader().load(_row(tmp_path / "drone.jpg", 50, 120, 100, 150))
    assert np.abs(_pixels(out).astype(int) - viewer[120:270, 50:150]).mean() < 3


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_a_tiffs_orientation_is_read_from_its_tags_whatever_its_samples(tmp_path, dtype):
    """A float RGB TIFF (no georeference) was tiled as stored: its orientation was asked of Pillow, which
    cannot open it, and read as 1."""
    import tifffile

    stored = np.zeros((120, 200, 3), dtype)
    stored[5:35, 5:55] = 200
    tifffile.imwrite(tmp_path / "scan.tif", stored, photometric="rgb", extratags=[(0x0112, "H", 1, 6, True)])
    hdr = scene_header(str(tmp_path / "scan.tif"))
    assert (hdr.width, hdr.height, hdr.orientation) == (120, 200, 6)


def test_remote_scenes_are_tiled_through_fsspec(s3, tmp_path):
    from pipelines.storage import parse_storage_options

    data = np.random.default_rng(6).integers(0, 4000, (3, 256, 256)).astype(np.uint16)
    path = _write(tmp_path / "remote.tif", data, tiled=True, blockxsize=64, blockysize=64)
    s3.put(path, "spote/scenes/remote.tif")
    so = parse_storage_options(None)
    assert scene_header("s3://spote/scenes/remote.tif", so).width == 256
    out = SceneTileLoader(storage_options=so).load(_row("s3://spote/scenes/remote.tif", 64, 64, 128, 128))
    assert out["status"] == "ok" and _pixels(out).shape == (128, 128, 3) and _pixels(out).std() > 10


def _coast(rng, h=256, w=512):
    """A 12-bit scene: dark water on the left half (~300), bright land on the right (~3000)."""
    data = np.empty((3, h, w), np.uint16)
    data[:, :, : w // 2] = rng.normal(300, 15, (3, h, w // 2)).clip(0, 4095)
    data[:, :, w // 2:] = rng.normal(3000, 300, (3, h, w - w // 2)).clip(0, 4095)
    return data


def test_scene_stretch_is_one_range_for_every_tile_and_tile_stretch_is_kept_as_an_option(tmp_path):
    path = _write(tmp_path / "coast.tif", _coast(np.random.default_rng(7)))
    water, across = _row(path, 0, 0, 128, 128), _row(path, 192, 0, 128, 128)
    scene = SceneTileLoader(stretch="scene")
    w_scene, a_scene = scene.load(dict(water)), scene.load(dict(across))
    assert w_scene["stretch_range"] == a_scene["stretch_range"] != ""
    # the same pixels (columns 192-255, water) look the same whichever tile they are in
    same_water = _row(path, 64, 0, 192, 128)
    assert np.array_equal(_pixels(scene.load(dict(same_water)))[:, 128:192], _pixels(a_scene)[:, :64])
    assert _pixels(w_scene).mean() < 40  # dark water stays dark ...
    tile = SceneTileLoader(stretch="tile")
    w_tile = tile.load(dict(water))
    assert 90 < _pixels(w_tile).mean() < 165 and _pixels(w_tile).std() > 3 * _pixels(w_scene).std()  # ... not noise
    assert w_tile["stretch_range"] != tile.load(dict(across))["stretch_range"]


def test_scene_stretch_reads_an_overview_when_the_file_has_one(tmp_path):
    from rasterio.enums import Resampling

    from pipelines.rasters import scene_ranges

    data = _coast(np.random.default_rng(8), 512, 1024)
    plain = _write(tmp_path / "plain.tif", data)
    with_ovr = _write(tmp_path / "ovr.tif", data)
    with rasterio.open(with_ovr, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.nearest)
    for path in (plain, with_ovr):
        hdr = scene_header(path)
        with rasterio.open(path) as ds:
            ranges = scene_ranges(ds, hdr, (1, 2, 3))
        assert hdr.has_overviews == (path == with_ovr)
        for lo, hi in ranges:
            assert 250 < lo < 330 and 3000 < hi < 3700, (path, lo, hi)


# ------------------------------------------------------------------ planning: the driver lists scenes, tasks cut tiles
def _geotiff(path: Path, w: int, h: int, driver: str = "GTiff"):
    with rasterio.open(path, "w", driver=driver, width=w, height=h, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 4600000, 10, 10)) as ds:
        ds.write(np.full((3, h, w), 90, np.uint8))


def test_listing_accepts_readable_formats_and_names_what_it_skips(tmp_path):
    for month in ("2024-01", "2024-02"):
        (tmp_path / month).mkdir()
        _geotiff(tmp_path / month / "scene.tif", 64, 64)
    Image.new("RGB", (50, 40)).save(tmp_path / "ortho.webp")
    Image.new("RGB", (50, 40)).save(tmp_path / "ortho.bmp")
    (tmp_path / "B04.jp2").write_bytes(b"")
    (tmp_path / "2024-01" / "scene.tif.aux.xml").write_text("<PAMDataset/>")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    scenes, skipped = list_scenes(str(tmp_path))
    assert [s["rel"] for s in scenes] == ["2024-01/scene.tif", "2024-02/scene.tif", "B04.jp2", "ortho.bmp", "ortho.webp"]
    assert {s["source"]: s["reason"] for s in skipped} == {
        ".DS_Store": "hidden file", "2024-01/scene.tif.aux.xml": "sidecar file (read with its scene)",
        "notes.txt": "not a scene format this job tiles: .txt"}


def test_tiles_are_planned_per_scene_with_ids_from_the_relative_path(tmp_path):
    for month in ("2024-01", "2024-02"):
        (tmp_path / month).mkdir()
        _geotiff(tmp_path / month / "scene.tif", 300, 200)
    plan = plan_scenes(str(tmp_path), QUESTIONS, 128, 0, None)
    assert [s["rel"] for s in plan.sources] == ["2024-01/scene.tif", "2024-02/scene.tif"]
    rows = [r for s in plan.sources for r in plan.expand(s)]
    assert len(rows) == 2 * len(tile_windows(300, 200, 128, 0)) and len({r["id"] for r in rows}) == len(rows)
    assert rows[0]["id"] == "2024-01/scene.tif/r0_c0/q0" and rows[0]["bounds"] == [500000.0, 4598720.0, 501280.0, 4600000.0]
    broken = list(plan_tiles({"uri": str(tmp_path / "nope.tif"), "rel": "nope.tif"}, QUESTIONS, 128, 0))
    assert len(broken) == 1 and broken[0]["status"] == "error" and broken[0]["error"].startswith("unreadable scene")
    with pytest.raises(ValueError, match="overlap"):
        plan_scenes(str(tmp_path), QUESTIONS, 128, 128, None)


def test_headers_read_by_the_driver_travel_with_the_plan(tmp_path):
    from pipelines.satellite import read_headers

    _geotiff(tmp_path / "a.tif", 300, 200)
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    scenes, skipped = list_scenes(str(tmp_path))
    headers = read_headers(scenes, None, (3, 2, 1))
    assert list(headers) == [str(tmp_path / "a.tif")] and scenes[1]["error"]
    plan = plan_scenes(str(tmp_path), QUESTIONS, 128, 0, None, scenes=scenes, skipped=skipped)
    (tmp_path / "a.tif").unlink()  # the task plans from the header the driver read, not from the file
    rows = [r for s in plan.sources for r in plan.expand(s)]
    assert len(rows) == len(tile_windows(300, 200, 128, 0)) + 1 and rows[0]["crs"] == "EPSG:32633"
    assert rows[-1]["id"] == "broken.tif/unreadable/q0" and rows[-1]["error"].startswith("unreadable scene: ")


def test_jpeg2000_scene_is_planned_from_its_header(tmp_path):
    pytest.importorskip("rasterio")
    from rasterio.drivers import raster_driver_extensions

    if raster_driver_extensions().get("jp2") is None:
        pytest.skip("GDAL without a JPEG 2000 driver")
    src = tmp_path / "src.tif"
    _geotiff(src, 200, 100)
    with rasterio.open(src) as ds:
        profile = {**ds.profile, "driver": "JP2OpenJPEG"}
        profile.pop("tiled", None), profile.pop("interleave", None), profile.pop("blockxsize", None)
        profile.pop("blockysize", None), profile.pop("compress", None)
        with rasterio.open(tmp_path / "B04.jp2", "w", **profile) as out:
            out.write(ds.read())
    src.unlink()
    plan = plan_scenes(str(tmp_path), QUESTIONS, 100, 0, None)
    rows = [r for s in plan.sources for r in plan.expand(s)]
    assert [r["id"] for r in rows] == ["B04.jp2/r0_c0/q0", "B04.jp2/r0_c100/q0"] and rows[0]["crs"] == "EPSG:32633"


def test_no_scenes_ends_cleanly_with_a_clear_message(tmp_path, capsys):
    (tmp_path / "scenes").mkdir()
    (tmp_path / "scenes" / "readme.md").write_text("x")
    (tmp_path / "q.json").write_text(json.dumps([{"question": "is there a boat ?", "choices": ["yes", "no"]}]))
    opts = JobOptions(str(tmp_path / "scenes"), str(tmp_path / "out"), run_id="none")
    summary = run(opts, str(tmp_path / "q.json"))
    assert summary["items_in"] == 0 and summary["scenes"] == 0 and summary["skipped_sources"]["count"] == 1
    assert ("nothing to do (no input it can read; skipped 1: 1 x not a scene format this job tiles: .md)"
            in capsys.readouterr().out)
    assert json.loads((Path(RunPaths(str(tmp_path / "out"), "none").meta) / "rollup.json").read_text()) == {}


# ------------------------------------------------------------------ GeoParquet and roll-up in Ray tasks, per part
def test_staged_parts_become_geoparquet_in_tasks_and_the_rollup_matches_the_in_memory_one(ray_local, tmp_path):
    import geopandas
    import pyarrow as pa

    from pipelines.geo import write_rollup
    from pipelines.job import RunResults
    from pipelines.rasters import SceneHeader
    from pipelines.satellite import rewrite_parts_as_geoparquet, scene_rollup

    header = SceneHeader(width=1000, height=1000, stored_width=1000, stored_height=1000, bands=3, dtype="uint16",
                         crs="EPSG:32633", transform=tuple(from_origin(500000, 4600000, 10, 10))[:6], orientation=1,
                         palette=False, default_bands=(1, 2, 3), has_overviews=False)
    tiles = [(0, 0, 400, 400), (300, 0, 400, 400), (600, 0, 400, 400), (0, 300, 400, 400)]
    boxes = [[350, 10, 390, 50], [50, 10, 90, 50], None, None]  # one object seen from two tiles; a whole tile apart
    answers = ["yes", "yes", "yes", "no"]
    n = len(tiles)
    table = pa.table({"id": [f"s1.tif/r{t[1]}_c{t[0]}/q0" for t in tiles], "source": ["/x/s1.tif"] * n,
                      "scene": ["s1.tif"] * n, "question": ["is there a boat ?"] * n, "question_index": [0] * n,
                      "tile_col_off": [t[0] for t in tiles], "tile_row_off": [t[1] for t in tiles],
                      "tile_width": [t[2] for t in tiles], "tile_height": [t[3] for t in tiles],
                      "status": ["ok"] * n, "answer": answers, "confidence": [0.9] * n,
                      "evidence_box": pa.array(boxes, pa.list_(pa.int64()))})
    staged = tmp_path / "staging" / "results"
    staged.mkdir(parents=True)
    pq.write_table(table.slice(0, 2), staged / "a.parquet")
    pq.write_table(table.slice(2), staged / "b.parquet")
    headers = {"/x/s1.tif": header}
    assert rewrite_parts_as_geoparquet(str(staged), str(tmp_path / "staging" / "tmp"), headers) == 2
    assert rewrite_parts_as_geoparquet(str(staged), str(tmp_path / "staging" / "tmp"), headers) == 0  # idempotent
    assert sorted(p.name for p in staged.iterdir()) == ["a.parquet", "b.parquet"]
    for part in staged.iterdir():
        assert b"geo" in pq.read_schema(part).metadata
    gdf = geopandas.read_parquet(staged)
    assert len(gdf) == n and gdf.geometry.notna().all() and gdf["evidence_geometry"].notna().sum() == 2

    meta = tmp_path / "meta"
    rollup = scene_rollup(RunResults(str(staged), None, None), str(meta), headers, {"s1.tif": "/x/s1.tif"},
                          ["is there a boat ?"])
    expected = write_rollup(table, str(tmp_path / "in-memory"), headers)
    assert rollup == expected and rollup["s1.tif/q0"]["detections"] == 2 and rollup["s1.tif/q0"]["tiles_yes"] == 3
    got = json.loads((meta / "scenes" / "s1.tif.q0.geojson").read_text())
    want = json.loads((tmp_path / "in-memory" / "scenes" / "s1.tif.q0.geojson").read_text())
    assert got == want
    assert len(geopandas.read_parquet(meta / "scenes" / "s1.tif.detections.parquet")) == 2


# ------------------------------------------------------------------ scene stretch: sparse data, strips, constant data
def _sample_gap_patch(path, side=20):
    """(row, col) of a side x side patch no scene-stretch sample window touches (a 16 x 16 grid of 32 px
    windows on 1024 px leaves 34 px gaps: 98-132, ...), checked against the reads the stretch makes."""
    from pipelines.rasters import stretch_sample_reads

    hdr = scene_header(str(path))
    with rasterio.open(path) as ds:
        reads = stretch_sample_reads(ds, hdr, hdr.default_bands)
    r0 = c0 = 100
    for kw in reads:
        win = kw["window"]
        assert not (win.row_off < r0 + side and r0 < win.row_off + win.height
                    and win.col_off < c0 + side and c0 < win.col_off + win.width), win
    return np.s_[r0:r0 + side, c0:c0 + side]


def test_valid_data_no_scene_sample_lands_on_is_drawn_with_the_tile_range(tmp_path):
    """A 20 x 20 valid patch in a nodata scene, between the sample windows: the scene range is null and
    every tile was drawn nodata grey (answered from a blank image); now such a tile uses its own range."""
    from pipelines.rasters import scene_ranges

    data = np.zeros((1, 1024, 1024), np.uint16)
    path = _write(tmp_path / "island.tif", data, nodata=0)
    patch = _sample_gap_patch(path)
    data[0][patch] = np.arange(3000, 3400).reshape(20, 20)
    _write(tmp_path / "island.tif", data, nodata=0)
    hdr = scene_header(path)
    with rasterio.open(path) as ds:
        assert scene_ranges(ds, hdr, (1,)) == [None]  # the premise: no sample saw a valid pixel
    out = SceneTileLoader(stretch="scene").load(_row(path, 0, 0, 256, 256))
    assert out["status"] == "ok"
    assert json.loads(out["stretch_range"]) == [pytest.approx([3008, 3391], abs=0.1)]  # the tile's 2-98 %
    rgb = _pixels(out)
    assert rgb[patch].min() == 0 and rgb[patch].max() == 255 and rgb[patch].std() > 50
    valid = np.zeros(rgb.shape[:2], bool)
    valid[patch] = True
    assert (rgb[~valid] == NEUTRAL_FILL).all()
    far = SceneTileLoader(stretch="scene").load(_row(path, 512, 512, 256, 256))
    assert far["status"] == "skipped"  # a tile of nodata only is still not answered


def test_a_tile_whose_data_the_scene_range_misses_is_drawn_with_its_own(tmp_path):
    """Background 100-200 everywhere the samples look, a 3000-3400 patch between them: a tile holding only
    the patch was all white under the scene range (every value above its top); a tile holding both keeps
    the scene range (the patch white, the background as in every other tile)."""
    rng = np.random.default_rng(9)
    data = rng.integers(100, 201, (1, 1024, 1024)).astype(np.uint16)
    path = _write(tmp_path / "s.tif", data)
    patch = _sample_gap_patch(path)
    data[0][patch] = rng.integers(3000, 3401, (20, 20))
    _write(tmp_path / "s.tif", data)
    loader = SceneTileLoader(stretch="scene")
    wide = loader.load(_row(path, 0, 0, 256, 256))
    (lo, hi), = json.loads(wide["stretch_range"])
    assert 100 <= lo < 110 and 190 < hi <= 200  # the scene's range
    assert (_pixels(wide)[patch] == 255).all()
    only = loader.load(_row(path, 100, 100, 20, 20))
    (tlo, thi), = json.loads(only["stretch_range"])
    assert 3000 <= tlo < 3050 and 3350 < thi <= 3400  # the tile's own range ...
    assert _pixels(only).std() > 50  # ... so the patch is not one flat white
    assert loader.load(_row(path, 600, 600, 256, 256))["stretch_range"] == wide["stretch_range"]


def test_valid_data_of_one_value_is_not_drawn_as_nodata(tmp_path):
    """One value (a range with lo == hi) was drawn mid-grey 128, the nodata colour: a constant tile looked
    empty. It is mid-grey one step darker, CONSTANT_GREY (127); nodata stays NEUTRAL_FILL (128)."""
    from pipelines.rasters import CONSTANT_GREY

    assert CONSTANT_GREY != NEUTRAL_FILL
    flat = np.full((1, 64, 64), 0.25, np.float32)
    flat[:, :, :20] = -9999
    path = _write(tmp_path / "flat.tif", flat, nodata=-9999)
    for stretch in ("scene", "tile"):
        rgb = _pixels(SceneTileLoader(stretch=stretch).load(_row(path, 0, 0, 64, 64)))
        assert (rgb[:, 20:] == CONSTANT_GREY).all() and (rgb[:, :20] == NEUTRAL_FILL).all(), stretch
    # one value where the samples look, a patch between them: the one-value scene range would draw the
    # patch's tile flat grey; it gets the tile's range, the other tiles the scene's (CONSTANT_GREY)
    data = np.full((1, 1024, 1024), 100, np.uint16)
    path = _write(tmp_path / "calm.tif", data)
    patch = _sample_gap_patch(path)
    data[0][patch] = 3000
    _write(tmp_path / "calm.tif", data)
    loader = SceneTileLoader(stretch="scene")
    rgb = _pixels(loader.load(_row(path, 64, 64, 128, 128)))
    inside = np.s_[patch[0].start - 64:patch[0].stop - 64, patch[1].start - 64:patch[1].stop - 64]
    assert (rgb[inside] == 255).all() and rgb.min() == 0
    calm = loader.load(_row(path, 600, 600, 128, 128))
    assert json.loads(calm["stretch_range"]) == [[100.0, 100.0]] and (_pixels(calm) == CONSTANT_GREY).all()


def _stretch_pixels(path):
    """Pixels per band the scene stretch reads (``stretch_sample_reads``: what ``scene_ranges`` reads)."""
    from pipelines.rasters import stretch_sample_reads

    hdr = scene_header(str(path))
    with rasterio.open(path) as ds:
        reads = stretch_sample_reads(ds, hdr, hdr.default_bands)
    return sum(kw["window"].width * kw["window"].height if "window" in kw else kw["out_shape"][0] * kw["out_shape"][1]
               for kw in reads), reads


@pytest.mark.parametrize("shape, factors", [((200, 4000), [2, 4, 8]), ((600, 8000), [2])])
def test_scene_stretch_reads_a_bounded_sample_when_no_overview_is_small_enough(tmp_path, shape, factors):
    """A strip whose overviews are all under 256 px on the short side was read whole at full resolution
    (9,000,000 px for 300 x 30000, growing with the strip); so was a file whose only overview is still over
    OVERVIEW_MAX_PIXELS. Both read the sample grid, as a file without overviews does."""
    from rasterio.enums import Resampling

    from pipelines.rasters import OVERVIEW_MAX_PIXELS, OVERVIEW_MIN_SIDE, SAMPLE_GRID, SAMPLE_WINDOW, scene_ranges

    h, w = shape
    assert all(min(h, w) // f < OVERVIEW_MIN_SIDE or (h // f) * (w // f) > OVERVIEW_MAX_PIXELS for f in factors)
    data = np.random.default_rng(10).integers(1000, 3000, (1, h, w)).astype(np.uint16)
    path = _write(tmp_path / "strip.tif", data, tiled=True)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews(factors, Resampling.nearest)
    assert scene_header(path).has_overviews
    pixels, reads = _stretch_pixels(path)
    assert pixels <= SAMPLE_GRID ** 2 * SAMPLE_WINDOW ** 2 < h * w, (pixels, reads[:1])
    assert all("window" in kw for kw in reads)  # the sample grid, not a (whole) overview
    hdr = scene_header(path)
    with rasterio.open(path) as ds:
        (lo, hi), = scene_ranges(ds, hdr, (1,))
    assert 1000 <= lo < 1100 and 2900 < hi < 3000
    # a scene with an overview of the right size still reads that overview alone
    square = _write(tmp_path / "square.tif", data[:, :200, :200].repeat(4, 1).repeat(4, 2), tiled=True)
    with rasterio.open(square, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.nearest)
    assert _stretch_pixels(square) == (400 * 400, [{"out_shape": (400, 400)}])


# ------------------------------------------------------------------ error rows carry the cause
def test_error_rows_carry_gdals_message_and_complex_data_is_refused_by_name(tmp_path):
    from pipelines.satellite import read_headers

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    full = _write(tmp_path / "full.tif", np.random.default_rng(11).integers(0, 255, (3, 300, 300)).astype(np.uint8))
    raw = Path(full).read_bytes()
    (scenes / "truncated.tif").write_bytes(raw[: len(raw) // 3])
    (scenes / "missing_src.vrt").write_text(
        '<VRTDataset rasterXSize="200" rasterYSize="200"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{tmp_path / "gone.tif"}</SourceFilename><SourceBand>1</SourceBand>'
        '</SimpleSource></VRTRasterBand></VRTDataset>')
    slc = (np.ones((1, 64, 64), np.float32) + 1j * np.ones((1, 64, 64), np.float32)).astype(np.complex64)
    _write(scenes / "slc.tif", slc)
    # a VRT of a real band and a complex one: readable, until the complex band is asked for
    _write(tmp_path / "amp.tif", np.ones((1, 64, 64), np.float32))
    _write(tmp_path / "slc_src.tif", slc)
    (scenes / "mixed.vrt").write_text(
        '<VRTDataset rasterXSize="64" rasterYSize="64">' + "".join(
            f'<VRTRasterBand dataType="{t}" band="{i}"><SimpleSource><SourceFilename relativeToVRT="0">'
            f'{tmp_path / src}</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>'
            for i, (t, src) in enumerate((("Float32", "amp.tif"), ("CFloat32", "slc_src.tif")), 1)) + '</VRTDataset>')
    complex_row = "unreadable scene: complex-valued bands (e.g. SAR SLC) are not images; convert them to amplitude"
    # (the truncated file's tile lies in its lost part)
    errors = {name: SceneTileLoader().load(_row(scenes / name, off, off, 64, 64))["error"]
              for name, off in (("truncated.tif", 136), ("missing_src.vrt", 136), ("slc.tif", 0))}
    errors["mixed.vrt"] = SceneTileLoader(bands=(2,)).load(_row(scenes / "mixed.vrt", 0, 0, 64, 64))["error"]
    for name, error in errors.items():
        assert error.startswith("unreadable scene: ") and "See previous exception" not in error, (name, error)
        assert "\n" not in error
    assert f"{tmp_path / 'gone.tif'}: No such file or directory" in errors["missing_src.vrt"]
    assert "truncated.tif" in errors["truncated.tif"] and "TIFFRead" in errors["truncated.tif"]
    assert errors["slc.tif"].startswith(complex_row) and errors["mixed.vrt"].startswith(complex_row)
    assert SceneTileLoader().load(_row(scenes / "mixed.vrt", 0, 0, 64, 64))["status"] == "ok"  # band 1 is real
    # the driver's header pass refuses an all-complex scene: one error row per question, before any tile
    listed, _ = list_scenes(str(scenes))
    read_headers(listed)
    rows = [r for s in listed for r in plan_tiles(s, QUESTIONS, 64, 0) if r.get("status") == "error"]
    assert [(r["id"], r["error"][:len(complex_row)]) for r in rows] == [("slc.tif/unreadable/q0", complex_row)]
    # an empty file says so (GDAL: "not recognized as a supported file format")
    (scenes / "empty.tif").write_bytes(b"")
    listed, _ = list_scenes(str(scenes))
    read_headers(listed)
    rows = [r for s in listed for r in plan_tiles(s, QUESTIONS, 64, 0) if r["id"].startswith("empty.tif/")]
    assert [r["error"] for r in rows] == ["unreadable scene: empty file (0 bytes)"]


# ------------------------------------------------------------------ flags: the one at fault, its valid range
@pytest.mark.parametrize("flags, expected", [
    (["--tile-size", "0"], "error: --tile-size 0: must be 32 to 6,324 pixels"),
    (["--tile-size", "-5"], "error: --tile-size -5: must be 32 to 6,324 pixels"),
    (["--tile-size", "1", "--overlap", "0"], "error: --tile-size 1: must be 32 to 6,324 pixels"),
    (["--max-tile-pixels", "0"], "error: --max-tile-pixels 0: must be at least 1,024 pixels per tile"),
    (["--max-tile-pixels", "-1"], "error: --max-tile-pixels -1: must be at least 1,024 pixels per tile"),
    (["--tile-size", "100", "--max-tile-pixels", "2500"],
     "error: --tile-size 100: one tile is 100x100 = 10,000 pixels, over the cap of 2,500 pixels per tile; use a "
     "--tile-size of at most 50"),
    (["--tile-size", "100", "--overlap", "100"], "error: --overlap 100: must be 0 to 50"),
    (["--tile-size", "32", "--overlap", "31"], "error: --overlap 31: must be 0 to 16 (at most half of --tile-size"),
])
def test_bad_tile_flags_name_the_flag_at_fault_in_one_line(tmp_path, flags, expected):
    args = ["--input", str(tmp_path / "scenes"), "--output", str(tmp_path / "out"), "--questions",
            str(tmp_path / "q.json"), *flags]
    res = CliRunner().invoke(app, args)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith(expected), res.output
    assert not (tmp_path / "out").exists()


def test_a_truncated_scene_is_still_tiled_where_it_can_be_read(tmp_path):
    """A 16-bit scene cut short (a copy that stopped mid-file): under ``--stretch scene`` its stretch
    sample reads the lost part too. That failure made every tile an error row, even those in the readable
    part; now the stretch uses the samples that could be read, readable tiles are answered and only the
    lost ones are error rows, with GDAL's message."""
    from pipelines.rasters import scene_ranges

    rng = np.random.default_rng(5)
    full = _write(tmp_path / "full.tif", rng.integers(1000, 4000, (1, 1024, 1024)).astype(np.uint16),
                  tiled=True, blockxsize=256, blockysize=256)
    raw = Path(full).read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[: len(raw) // 2])  # tiles are stored row by row: the top half survives
    hdr = scene_header(str(cut))
    with rasterio.open(cut) as ds:
        (lo, hi), = scene_ranges(ds, hdr, (1,))
    assert 1000 <= lo < 1100 and 3900 < hi < 4000  # from the samples in the readable half
    top = SceneTileLoader(stretch="scene").load(_row(cut, 0, 0, 256, 256))
    assert top["status"] == "ok", top["error"]
    assert json.loads(top["stretch_range"]) == [pytest.approx([lo, hi])]
    bottom = SceneTileLoader(stretch="scene").load(_row(cut, 0, 768, 256, 256))
    assert bottom["status"] == "error" and bottom["error"].startswith("unreadable scene: ")
    assert "TIFFRead" in bottom["error"] or "cut.tif" in bottom["error"], bottom["error"]


def test_a_scene_georeferenced_by_gcps_alone_has_map_footprints(tmp_path):
    """Raw L1 and SAR products carry ground control points, no affine transform: their tiles used to have
    no map geometry at all. The GCPs here follow a known mapping with a bilinear term (a warped grid), so
    each tile's corners are known on the map; the planned bounds and the footprints must land on them,
    through the header's JSON round trip (the driver's header pass travels with the plan)."""
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    from pipelines.geo import ResultGeometry
    from pipelines.satellite import _header_from_json, _header_json, plan_tiles

    def truth(col, row):  # map x, y of a stored pixel point: 10 m pixels, x sheared along the rows
        return 500000 + 10 * col + 0.002 * col * row, 4600000 - 10 * row

    path = tmp_path / "l1.tif"
    with rasterio.open(path, "w", driver="GTiff", width=400, height=300, count=1, dtype="uint8") as ds:
        ds.write(np.full((1, 300, 400), 90, np.uint8))
        ds.gcps = ([GroundControlPoint(row=r, col=c, x=truth(c, r)[0], y=truth(c, r)[1])
                    for r in (0, 100, 200, 300) for c in (0, 200, 400)], CRS.from_epsg(32633))
    hdr = _header_from_json(_header_json(scene_header(str(path))))
    assert hdr.georeferenced and hdr.crs == "EPSG:32633" and hdr.transform == () and len(hdr.gcps) == 12
    rows = list(plan_tiles({"uri": str(path), "rel": "l1.tif", "header": _header_json(hdr)},
                           [{"question": "is there a boat ?", "choices": '["yes", "no"]'}], 200, 0))
    by_id = {r["id"]: r for r in rows}
    tile = by_id["l1.tif/r100_c200/q0"]
    corners = [truth(c, r) for c, r in ((200, 100), (400, 100), (400, 300), (200, 300))]
    xs, ys = zip(*corners)
    assert tile["crs"] == "EPSG:32633"
    assert tile["bounds"] == pytest.approx([min(xs), min(ys), max(xs), max(ys)], abs=1e-3)
    table = pa.table({"source": [str(path)], "tile_col_off": [200], "tile_row_off": [100], "tile_width": [200],
                      "tile_height": [200], "evidence_box": [[50.0, 50.0, 100.0, 100.0]]})
    cols = ResultGeometry({str(path): hdr}).columns(table)
    footprint = cols["geometry"][0]
    for corner in corners:  # the warped tile's true corners are vertices of its footprint
        assert min(np.hypot(x - corner[0], y - corner[1]) for x, y in footprint.exterior.coords) < 1e-3
    # area: the mapping's Jacobian |det| = 10 (10 + 0.002 row) m^2 a pixel, integrated over the tile
    assert footprint.area == pytest.approx(200 * 10 * (10 * 200 + 0.001 * (300 ** 2 - 100 ** 2)), rel=1e-6)
    ex, ey = truth(275, 175)  # the evidence box's centre, in stored pixels
    centre = cols["evidence_geometry"][0].centroid
    assert (centre.x, centre.y) == pytest.approx((ex, ey), abs=0.5)
    assert cols["evidence_lon"][0] == pytest.approx(15.0, abs=0.1) and 41 < cols["evidence_lat"][0] < 42


@pytest.mark.parametrize("points", ["on one line", "not finite"])
def test_gcps_gdal_cannot_fit_leave_the_scene_not_georeferenced(tmp_path, points, capsys):
    """GCPs on one line (or with NaN) cannot be fitted: the scene is tiled as not georeferenced and the
    log says why, where the footprints would otherwise fail the run's commit."""
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    from pipelines.geo import ResultGeometry

    spots = ((0, 0), (0, 100), (0, 200)) if points == "on one line" else ((0, 0), (0, 100), (100, 0))
    x = float("nan") if points == "not finite" else 500000.0
    path = tmp_path / "bad_gcps.tif"
    with rasterio.open(path, "w", driver="GTiff", width=200, height=200, count=1, dtype="uint8") as ds:
        ds.write(np.full((1, 200, 200), 90, np.uint8))
        ds.gcps = ([GroundControlPoint(row=r, col=c, x=x + c, y=4600000.0 - r) for r, c in spots], CRS.from_epsg(32633))
    hdr = scene_header(str(path))
    assert not hdr.georeferenced and hdr.crs == "" and hdr.gcps == ()
    assert "3 ground control points cannot be fitted" in capsys.readouterr().out
    table = pa.table({"source": [str(path)], "tile_col_off": [0], "tile_row_off": [0], "tile_width": [200],
                      "tile_height": [200], "evidence_box": [[5.0, 5.0, 50.0, 50.0]]})
    assert ResultGeometry({str(path): hdr}).columns(table)["geometry"] == [None]


@pytest.mark.parametrize("west, written", [(179.8, lambda x: (x + 180) % 360 - 180),   # 179.9 beside -179.9
                                           (359.8, lambda x: x % 360)])                # 359.9 beside 0.1
def test_gcps_written_both_sides_of_a_wrap_map_the_scene_across_it(tmp_path, west, written):
    """GCP longitudes written wrapped (179.9 beside -179.9, as Sentinel-1 products write them, or 359.9 beside
    0.1 in a 0-360 layout): the polynomial was fitted to the raw numbers, and 0.2-degree tiles had footprints
    hundreds of degrees wide."""
    from pyproj import Geod
    from rasterio.control import GroundControlPoint

    from pipelines.geo import ResultGeometry

    path = tmp_path / "dateline.tif"
    gcps = [GroundControlPoint(row=r, col=c, x=written(west + 0.4 * c / 256), y=-16.0 - 0.4 * r / 256)
            for r in np.linspace(0, 256, 5) for c in np.linspace(0, 256, 5)]
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=1, dtype="uint8", gcps=gcps,
                       crs="EPSG:4326") as ds:
        ds.write(np.zeros((1, 256, 256), np.uint8))
    hdr = scene_header(str(path))
    assert hdr.georeferenced and hdr.gcps
    table = pa.table({"source": [str(path)] * 2, "tile_col_off": [0, 128], "tile_row_off": [0, 0],
                      "tile_width": [128, 128], "tile_height": [128, 128],
                      "evidence_box": [[0.0, 0.0, 16.0, 16.0], [112.0, 0.0, 128.0, 16.0]]})
    cols = ResultGeometry({str(path): hdr}).columns(table)
    geod = Geod(ellps="WGS84")
    expected = (0.2 * 111.32) * (0.2 * 110.6) * np.cos(np.radians(16.1))   # km^2 of a 0.2 x 0.2 degree cell there
    for footprint in cols["geometry"]:
        assert abs(geod.geometry_area_perimeter(footprint)[0]) / 1e6 == pytest.approx(expected, rel=0.03)
    east = (west + 180) % 360 - 180   # the west edge in [-180, 180)
    assert cols["evidence_lon"][0] == pytest.approx(east + 0.0125, abs=0.01)   # 8 px of 256 east of the west edge
    assert cols["evidence_lon"][1] == pytest.approx((east + 0.3875 + 180) % 360 - 180, abs=0.01)


def test_gcps_around_a_pole_leave_the_scene_not_georeferenced_and_say_why(tmp_path, capsys):
    """A polynomial in longitude and latitude cannot be fitted around a pole: tiles were thousands of km^2 off."""
    from pyproj import Transformer
    from rasterio.control import GroundControlPoint

    to_lonlat = Transformer.from_crs("EPSG:3413", "EPSG:4326", always_xy=True)
    gcps = []
    for r in np.linspace(0, 300, 5):
        for c in np.linspace(0, 300, 5):
            lon, lat = to_lonlat.transform(-150000 + 1000 * c, 150000 - 1000 * r)
            gcps.append(GroundControlPoint(row=r, col=c, x=lon, y=lat))
    path = tmp_path / "pole.tif"
    with rasterio.open(path, "w", driver="GTiff", width=300, height=300, count=1, dtype="uint8", gcps=gcps,
                       crs="EPSG:4326") as ds:
        ds.write(np.zeros((1, 300, 300), np.uint8))
    hdr = scene_header(str(path))
    assert not hdr.georeferenced and hdr.crs == ""
    assert "25 ground control points surround a pole" in capsys.readouterr().out


def test_a_vrt_of_bands_of_several_types_is_read(tmp_path):
    """Byte and UInt16 bands in one VRT (``gdalbuildvrt -separate``): every tile was an error row, rasterio's
    "more than one 'dtype' found"."""
    from rasterio.transform import from_origin

    from pipelines.rasters import open_scene, read_pixels, scene_ranges

    for name, dtype, value in (("b8.tif", "uint8", 10), ("b16.tif", "uint16", 3000)):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=32, height=32, count=1, dtype=dtype,
                           crs="EPSG:32633", transform=from_origin(500000, 6000000, 10, 10)) as ds:
            ds.write(np.full((1, 32, 32), value, dtype))
    bands = "".join(f'<VRTRasterBand dataType="{t}" band="{i}"><SimpleSource><SourceFilename relativeToVRT="1">{f}'
                    f'</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>'
                    for i, (t, f) in enumerate([("Byte", "b8.tif"), ("UInt16", "b16.tif"), ("UInt16", "b16.tif")], 1))
    (tmp_path / "stack.vrt").write_text(f'<VRTDataset rasterXSize="32" rasterYSize="32"><SRS>EPSG:32633</SRS>'
                                        f'<GeoTransform>500000, 10, 0, 6000000, 0, -10</GeoTransform>{bands}</VRTDataset>')
    uri = str(tmp_path / "stack.vrt")
    hdr = scene_header(uri)
    assert hdr.dtype == "uint16"   # not band 1's uint8: the scene is stretched once, not tile by tile
    with open_scene(uri) as ds:
        pixels = read_pixels(ds, hdr, (1, 2, 3))
        assert scene_ranges(ds, hdr, (1, 2, 3)) is not None
    assert pixels.values.dtype == np.uint16 and pixels.values.shape == (32, 32, 3)
    assert (pixels.values[..., 0] == 10).all() and (pixels.values[..., 1:] == 3000).all() and pixels.valid.all()


def test_a_scene_placed_by_rpcs_alone_says_it_is_tiled_as_not_georeferenced(tmp_path, capsys):
    """An optical Level-1 product (RPCs, no geotransform, no GCPs) got null geometry without a word."""
    from rasterio.rpc import RPC

    rpc = RPC(height_off=100, height_scale=500, lat_off=50.0, lat_scale=0.1, line_den_coeff=[1] + [0] * 19,
              line_num_coeff=[0, 0, -1] + [0] * 17, line_off=150, line_scale=150, long_off=10.0, long_scale=0.1,
              samp_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18, samp_off=200, samp_scale=200)
    path = tmp_path / "l1.tif"
    with rasterio.open(path, "w", driver="GTiff", width=400, height=300, count=1, dtype="uint8", rpcs=rpc) as ds:
        ds.write(np.zeros((1, 300, 400), np.uint8))
    hdr = scene_header(str(path))
    assert not hdr.georeferenced
    assert "placed by RPCs alone, which this job does not use" in capsys.readouterr().out


def test_a_vrt_whose_source_is_gone_gives_error_rows_not_answers_from_zeros(tmp_path):
    """The scene stretch's samples failed on the missing band and were left out; later reads of the same GDAL
    handle gave zeros for that band, and the tiles were answered from them (ok rows)."""
    from rasterio.transform import from_origin

    from pipelines.satellite import SceneTileLoader

    with rasterio.open(tmp_path / "b16.tif", "w", driver="GTiff", width=128, height=64, count=1, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(500000, 6000000, 10, 10)) as ds:
        ds.write((np.arange(128 * 64).reshape(1, 64, 128) % 3000 + 100).astype(np.uint16))
    bands = "".join(f'<VRTRasterBand dataType="UInt16" band="{i}"><SimpleSource><SourceFilename relativeToVRT="1">{f}'
                    f'</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>'
                    for i, f in enumerate(["b16.tif", "gone.tif", "b16.tif"], 1))
    (tmp_path / "stack.vrt").write_text(f'<VRTDataset rasterXSize="128" rasterYSize="64"><SRS>EPSG:32633</SRS>'
                                        f'<GeoTransform>500000, 10, 0, 6000000, 0, -10</GeoTransform>{bands}</VRTDataset>')
    loader = SceneTileLoader(bands=(1, 2, 3))
    for col in (0, 64):
        out = loader.load({"id": f"t{col}", "source": str(tmp_path / "stack.vrt"), "question": "q ?", "status": "",
                           "error": "", "tile_col_off": col, "tile_row_off": 0, "tile_width": 64, "tile_height": 64})
        assert out["status"] == "error" and out["error"].startswith("unreadable scene: ") and "gone.tif" in out["error"]


def test_too_few_gcps_are_said_and_a_transform_near_the_identity_is_kept(tmp_path, capsys):
    """Two GCPs left a scene not georeferenced without a word; a real transform within 1e-5 of the identity was
    taken for rasterio's placeholder and dropped."""
    from affine import Affine
    from rasterio.control import GroundControlPoint

    two = tmp_path / "two_gcps.tif"
    with rasterio.open(two, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8", crs="EPSG:4326",
                       gcps=[GroundControlPoint(row=0, col=0, x=10, y=50), GroundControlPoint(row=64, col=64, x=11, y=49)]) as ds:
        ds.write(np.zeros((1, 64, 64), np.uint8))
    assert not scene_header(str(two)).georeferenced
    assert "it has 2 ground control point(s), too few to place it" in capsys.readouterr().out
    near = tmp_path / "near_identity.tif"
    with rasterio.open(near, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=Affine(1.000004, 0, 4e-6, 0, 1, 0)) as ds:
        ds.write(np.zeros((1, 64, 64), np.uint8))
    hdr = scene_header(str(near))
    assert hdr.georeferenced and hdr.transform[0] == pytest.approx(1.000004) and hdr.crs == "EPSG:32633"


def test_a_crs_without_a_geotransform_is_not_georeferenced(tmp_path, capsys):
    """GeoKeys naming a CRS but no tie point or pixel scale: rasterio gives the identity transform, which made
    pixel (col, row) a (lon, lat); a 1000 x 800 image had footprints over half the globe."""
    from pipelines.geo import ResultGeometry

    path = tmp_path / "crs_only.tif"
    with rasterio.open(path, "w", driver="GTiff", width=1000, height=800, count=1, dtype="uint8", crs="EPSG:4326") as ds:
        ds.write(np.zeros((1, 800, 1000), np.uint8))
    hdr = scene_header(str(path))
    assert not hdr.georeferenced and hdr.crs == "" and hdr.transform == ()
    assert "names a CRS but has no geotransform" in capsys.readouterr().out
    table = pa.table({"source": [str(path)], "tile_col_off": [0], "tile_row_off": [0], "tile_width": [512],
                      "tile_height": [512], "evidence_box": [[100.0, 50.0, 110.0, 60.0]]})
    cols = ResultGeometry({str(path): hdr}).columns(table)
    assert cols["geometry"] == [None] and cols["evidence_lon"] == [None]


def test_the_pages_of_a_multi_page_tiff_past_the_first_are_named_among_skipped_sources(tmp_path, s3):
    """GDAL opens a multi-page TIFF's first page as the scene; the job tiled it and said nothing of the rest (a
    thumbnail first hid the real scene after it). Every page after the first is a skipped source, with its size,
    locally and on a store; a TIFF of one page has none."""
    from pipelines.satellite import other_pages, read_headers
    from pipelines.storage import parse_storage_options

    pages = [Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)) for i, (h, w) in enumerate([(8, 8), (96, 128),
                                                                                                 (64, 64)])]
    pages[0].save(tmp_path / "thumb-first.tif", save_all=True, append_images=pages[1:])
    _write(tmp_path / "one.tif", np.zeros((3, 32, 32), np.uint8))
    s3.put(str(tmp_path / "thumb-first.tif"), "spote/pages/thumb-first.tif")
    for where, so in ((str(tmp_path), None), ("s3://spote/pages", parse_storage_options(None))):
        scenes, _ = list_scenes(where, so)
        skipped = other_pages(scenes, read_headers(scenes, so))
        first = "thumb-first.tif"  # relative to the input, as every other skipped source (it was the whole path)
        assert [s["source"] for s in skipped] == [f"{first}: Page 2 (128P x 96L x 3B) of 3",
                                                  f"{first}: Page 3 (64P x 64L x 3B) of 3"], where
        assert {s["reason"] for s in skipped} == {"page of a multi-page TIFF (only the first page is tiled)"}


@pytest.mark.parametrize("stretch", ["scene", "tile"])
def test_remote_scenes_in_turn_each_read_every_tile(s3, tmp_path, stretch):
    """One loader reads scene after scene from a store: every tile of each is read. With the scene stretch a
    second handle of the same object was open beside the tiles' one, and rasterio, keying fsspec files by
    the file object (equal for one object), failed to close the first: the next scene's first tile became
    an error row ("SystemError: ... DatasetBase.stop returned a result with an exception set")."""
    from pipelines.storage import parse_storage_options

    so = parse_storage_options(None)
    loader = SceneTileLoader(storage_options=so, stretch=stretch)
    for k in range(3):
        data = np.random.default_rng(k).integers(0, 4000, (3, 128, 128)).astype(np.uint16)
        s3.put(_write(tmp_path / f"s{k}.tif", data), f"spote/turns-{stretch}/s{k}.tif")
    for k in range(3):
        for c in (0, 64):
            out = loader.load(_row(f"s3://spote/turns-{stretch}/s{k}.tif", c, 0, 64, 64))
            assert out["status"] == "ok", (k, c, out.get("error"))
    loader.forget()


def test_a_question_file_the_model_cannot_read_is_one_line_before_any_work(tmp_path):
    """Choices the shipped model reads only in lower case ("Yes", "No") made every tile an error row, after
    planning; the job refuses the file at once, naming the field and what to change."""
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    _write(scenes / "rgb.tif", np.ones((3, 32, 32), np.uint8))
    (tmp_path / "q.yaml").write_text("- {question: 'is there a boat ?', choices: [yes, no], field: boat}\n"
                                     "- {question: 'is there a road ?', choices: [Yes, No], field: road}\n")
    args = ["--input", str(scenes), "--output", str(tmp_path / "out"), "--questions", str(tmp_path / "q.yaml")]
    res = CliRunner().invoke(app, args)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    assert lines[0].startswith(f"error: {tmp_path / 'q.yaml'}: the model spote-tiny cannot read it as written: "
                               "field 'road': choice 'Yes' is not read as written"), lines[0]
    assert "boat" not in lines[0] and "('yes' it reads)" in lines[0]
    assert not (tmp_path / "out").exists()
