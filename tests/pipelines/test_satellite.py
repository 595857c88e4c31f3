import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from pipelines.job import JobOptions
from pipelines.runs import RunPaths
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
    t = list(from_origin(500000, 4600000, 0.5, 0.5))[:6]
    assert window_bounds(t, 100, 200, 50, 40) == [500050.0, 4599880.0, 500075.0, 4599900.0]


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
    (tmp_path / "q.json").write_text(json.dumps([{"question": "is there a boat ?", "choices": ["yes", "no"]},
                                                 {"question": "what colour is the vehicle ?", "choices": "red,yellow,blue,white"}]))
    opts = JobOptions(str(scenes), str(tmp_path / "out"), str(random_tiny_dir), policy=fast_policy, run_id="sat")
    summary = run(opts, str(tmp_path / "q.json"), tile_size=400, overlap=100, bands="3,2,1")
    n_tiles = len(tile_windows(900, 600, 400, 100)) + len(tile_windows(500, 300, 400, 100))
    assert summary["items_in"] == 2 * n_tiles + 2 and summary["items_error"] == 2   # s3.tif: one error row per question
    df = pq.read_table(RunPaths(str(tmp_path / "out"), "sat").results).to_pandas()
    assert df["id"].is_unique and len(df) == summary["items_in"]
    s1 = df[(df.scene == "s1.tif") & (df.status == "ok")]
    assert (s1.crs == "EPSG:32633").all()
    first = s1[(s1.tile_col_off == 0) & (s1.tile_row_off == 0)].iloc[0]
    assert list(first.bounds) == [500000.0, 4599800.0, 500200.0, 4600000.0]
    meta = Path(RunPaths(str(tmp_path / "out"), "sat").meta)
    gj = json.loads((meta / "scenes" / "s1.tif.q0.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and gj["properties"]["crs"] == "EPSG:32633"
    yes = s1[(s1.question_index == 0) & (s1.answer == "yes")]
    assert len(gj["features"]) == len(yes)
    rollup = json.loads((meta / "rollup.json").read_text())
    assert rollup["s1.tif/q0"]["tiles"] == len(tile_windows(900, 600, 400, 100)) and rollup["s1.tif/q0"]["crs"] == "EPSG:32633"
    assert rollup["s1.tif/q0"]["tiles_yes"] == len(yes) and rollup["s3.tif/q1"] == {"tiles": 1, "tiles_yes": 0,
                                                                                     "tiles_error": 1, "crs": ""}
    assert json.loads((meta / "scenes" / "s3.tif.q1.geojson").read_text())["features"] == []


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
        ".DS_Store": "hidden file", "2024-01/scene.tif.aux.xml": "not a scene format this job reads: .xml",
        "notes.txt": "not a scene format this job reads: .txt"}


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
    assert "nothing to do (no input it can read; skipped 1: 1 x not a scene format this job reads: .md)" in capsys.readouterr().out
    assert json.loads((Path(RunPaths(str(tmp_path / "out"), "none").meta) / "rollup.json").read_text()) == {}
