"""Satellite results on the map: GeoParquet read back by GeoPandas, evidence located, roll-up merged."""

import json

import geopandas
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from pyproj import CRS, Transformer
from rasterio.transform import from_origin

from pipelines.geo import merge_detections, rewrite_staged_as_geoparquet, scene_polygon, write_rollup
from pipelines.rasters import SceneHeader


def _header(crs="EPSG:32633", origin=(500000, 4600000), size=(900, 600), orientation=1):
    transform = tuple(from_origin(*origin, 0.5, 0.5))[:6] if crs else ()
    return SceneHeader(width=size[0], height=size[1], stored_width=size[0], stored_height=size[1], bands=3,
                       dtype="uint16", crs=crs, transform=transform, orientation=orientation, palette=False,
                       default_bands=(1, 2, 3), has_overviews=False)


def _rows(source, tiles, boxes, answers=None, scene="s1", qi=0):
    n = len(tiles)
    return {"id": [f"{scene}/r{t[1]}_c{t[0]}/q{qi}" for t in tiles], "source": [source] * n, "scene": [scene] * n,
            "question": ["is there a boat ?"] * n, "question_index": [qi] * n,
            "tile_col_off": [t[0] for t in tiles], "tile_row_off": [t[1] for t in tiles],
            "tile_width": [t[2] for t in tiles], "tile_height": [t[3] for t in tiles],
            "status": ["ok"] * n, "answer": answers or ["yes"] * n, "confidence": [0.9] * n,
            "evidence_box": pa.array(boxes, pa.list_(pa.int64())), "crs": ["EPSG:32633"] * n}


def test_results_are_geoparquet_with_tile_and_evidence_footprints(tmp_path):
    header = _header()
    tiles = [(0, 0, 400, 400), (300, 0, 400, 400), (500, 200, 400, 400)]
    table = pa.table(_rows("s1.tif", tiles, [[10, 20, 110, 60], None, [390, 0, 400, 400]]))
    staging = tmp_path / "staging"
    staging.mkdir()
    pq.write_table(table, staging / "ray-written.parquet")
    crs = rewrite_staged_as_geoparquet(table, str(staging), {"s1.tif": header})
    assert crs == "EPSG:32633" and [p.name for p in staging.iterdir()] == ["part-00000.parquet"]

    gdf = geopandas.read_parquet(staging)
    assert gdf.geometry.name == "geometry" and gdf.crs == CRS("EPSG:32633")
    assert isinstance(gdf["evidence_geometry"], geopandas.GeoSeries) and gdf["evidence_geometry"].crs == gdf.crs
    assert gdf.geometry.is_valid.all()
    assert gdf.geometry.iloc[0].equals(shapely.box(500000, 4600000 - 200, 500200, 4600000))
    ev = gdf["evidence_geometry"]
    assert ev.iloc[1] is None and np.isnan(gdf["evidence_lon"].iloc[1])
    assert ev.iloc[0].equals(shapely.box(500005, 4600000 - 30, 500055, 4600000 - 10))
    for i in (0, 2):
        assert ev.iloc[i].is_valid and ev.iloc[i].within(gdf.geometry.iloc[i])
        lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(
            ev.iloc[i].centroid.x, ev.iloc[i].centroid.y)
        assert gdf["evidence_lon"].iloc[i] == pytest.approx(lon) and 14 < lon < 16 and 41 < lat < 42
        assert gdf["evidence_lat"].iloc[i] == pytest.approx(lat)
    geo = json.loads(pq.read_schema(staging / "part-00000.parquet").metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert set(geo["columns"]) == {"geometry", "evidence_geometry"}
    assert geo["columns"]["geometry"]["encoding"] == "WKB" and geo["columns"]["geometry"]["crs"]["id"]["code"] == 32633
    assert pq.read_table(staging).column("evidence_box").type == pa.list_(pa.int64())


def test_several_crs_are_written_in_crs84_and_unreferenced_scenes_have_no_footprint(tmp_path):
    a, b, png = _header(), _header("EPSG:32634", origin=(300000, 4600000)), _header("")
    parts = [_rows("a.tif", [(0, 0, 400, 400)], [[10, 10, 50, 50]], scene="a"),
             _rows("b.tif", [(0, 0, 400, 400)], [None], scene="b"),
             _rows("c.png", [(0, 0, 400, 400)], [[0, 0, 50, 50]], scene="c")]
    table = pa.concat_tables([pa.table(p) for p in parts])
    staging = tmp_path / "staging"
    staging.mkdir()
    crs = rewrite_staged_as_geoparquet(table, str(staging), {"a.tif": a, "b.tif": b, "c.png": png})
    gdf = geopandas.read_parquet(staging)
    assert crs == "OGC:CRS84" and gdf.crs == CRS("OGC:CRS84")
    assert gdf.geometry.iloc[0].within(shapely.box(14, 41, 16, 42)) and gdf.geometry.iloc[1].within(shapely.box(18, 41, 19, 42))
    assert gdf["evidence_geometry"].iloc[0].within(gdf.geometry.iloc[0])
    assert gdf.geometry.iloc[2] is None and gdf["evidence_geometry"].iloc[2] is None


def test_evidence_of_an_oriented_image_maps_back_to_stored_pixels():
    stored = _header(size=(300, 200), orientation=6)  # upright 200 x 300
    stored = SceneHeader(**{**stored.__dict__, "width": 200, "height": 300})
    poly = scene_polygon(stored, 0, 0, 10, 20)
    # orientation 6 is shown turned 90 degrees clockwise: upright top-left is stored bottom-left,
    # upright (10 wide, 20 high) is stored x in [0, 20], y in [190, 200]
    assert poly.equals(shapely.box(500000, 4600000 - 200 * 0.5, 500000 + 20 * 0.5, 4600000 - 190 * 0.5))


def test_roll_up_merges_the_same_object_seen_from_two_tiles():
    box = shapely.box
    # tiles 0 and 1 overlap in x 300-400; both localise one boat there; tile 2 a different boat; tiles 3 and 4
    # are whole-tile "yes" answers that overlap each other and a localised box
    footprints = [box(320, 10, 360, 40), box(322, 12, 362, 42), box(600, 300, 640, 330),
                  box(0, 400, 400, 800), box(300, 400, 700, 800)]
    localised = [True, True, True, False, False]
    dets = merge_detections(footprints, localised, ["a", "b", "c", "d", "e"], [[0]] * 5, [0.8, 0.9, 0.7, 0.6, 0.6])
    by_ids = {tuple(sorted(d.ids)): d for d in dets}
    assert set(by_ids) == {("a", "b"), ("c",), ("d",), ("e",)}
    assert by_ids[("a", "b")].confidence_max == 0.9 and by_ids[("a", "b")].localised
    assert by_ids[("a", "b")].geometry.equals(shapely.union_all(footprints[:2]))
    # a localised box inside the overlap of the two whole-tile answers joins both into one detection
    dets = merge_detections(footprints + [box(320, 500, 340, 520)], localised + [True], list("abcdef"),
                            [[0]] * 6, [0.5] * 6)
    assert {tuple(sorted(d.ids)) for d in dets} == {("a", "b"), ("c",), ("d", "e", "f")}
    assert next(d for d in dets if "f" in d.ids).geometry.equals(box(320, 500, 340, 520))


def test_roll_up_files_are_geojson_and_geoparquet(tmp_path):
    header = _header()
    tiles = [(0, 0, 400, 400), (300, 0, 400, 400), (500, 200, 400, 400), (0, 200, 400, 400)]
    boxes = [[330, 100, 380, 140], [30, 100, 80, 140], [100, 100, 150, 150], None]
    table = pa.table(_rows("s1.tif", tiles, boxes, answers=["yes", "Yes", "yes", "no"]))
    rollup = write_rollup(table, str(tmp_path), {"s1.tif": header})
    assert rollup["s1/q0"] == {"tiles": 4, "tiles_yes": 3, "detections": 2, "tiles_error": 0, "tiles_skipped": 0,
                               "crs": "EPSG:32633"}
    fc = json.loads((tmp_path / "scenes" / "s1.q0.geojson").read_text())
    assert fc["crs"]["properties"]["name"] == "EPSG:32633" and len(fc["features"]) == 2
    merged = next(f for f in fc["features"] if f["properties"]["n_tiles"] == 2)
    assert sorted(merged["properties"]["ids"]) == ["s1/r0_c0/q0", "s1/r0_c300/q0"]
    gdf = geopandas.read_parquet(tmp_path / "scenes" / "s1.detections.parquet")
    assert gdf.crs == CRS("EPSG:32633") and len(gdf) == 2 and gdf.geometry.is_valid.all()
    assert sorted(gdf["n_tiles"]) == [1, 2]


def _scene(crs, transform, w, h):
    return SceneHeader(width=w, height=h, stored_width=w, stored_height=h, bands=3, dtype="uint8", crs=crs,
                       transform=tuple(transform)[:6], orientation=1, palette=False, default_bands=(1, 2, 3),
                       has_overviews=False)


def _whole_tiles(headers: dict, boxes: list) -> pa.Table:
    return pa.table({"source": list(headers), "tile_col_off": [0] * len(headers), "tile_row_off": [0] * len(headers),
                     "tile_width": [h.width for h in headers.values()],
                     "tile_height": [h.height for h in headers.values()],
                     "evidence_box": pa.array(boxes, pa.list_(pa.int64()))})


SITE_GRID = 'LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'


def test_a_scene_whose_crs_has_no_way_to_lon_lat_gets_null_map_columns_and_the_run_goes_on(tmp_path, capsys):
    """PROJ has no transformation from a local engineering grid: rewriting the run used to raise ProjError
    after every tile was answered, so the run could never be committed."""
    from pipelines.geo import ResultGeometry

    headers = {"site.tif": _scene(SITE_GRID, from_origin(1000, 2000, 0.5, 0.5), 100, 100),
               "utm.tif": _scene("EPSG:32633", from_origin(500000, 4650000, 10, 10), 100, 100)}
    table = _whole_tiles(headers, [[0, 0, 10, 10], [0, 0, 10, 10]])
    columns = ResultGeometry(headers).columns(table)
    assert columns["geometry"][0] is None and columns["evidence_lon"][0] is None   # not placeable in CRS84
    assert columns["geometry"][1].is_valid and 14 < columns["evidence_lon"][1] < 16
    said = capsys.readouterr().out
    assert 'no transformation from LOCAL_CS["site grid"' in said and "rows are null" in said   # said, not silent
    alone = ResultGeometry({"site.tif": headers["site.tif"]}).columns(table.slice(0, 1))
    assert alone["geometry"][0].equals(shapely.box(1000, 1950, 1050, 2000))        # in its own grid it has a footprint
    assert alone["evidence_lon"][0] is None                                          # but no lon/lat
    staging = tmp_path / "staging"
    staging.mkdir()
    assert rewrite_staged_as_geoparquet(table, str(staging), headers) == "OGC:CRS84"


def test_footprints_in_lon_lat_over_the_antimeridian_and_a_pole_are_valid_and_their_true_size():
    """Four transformed corners made a tile over 180 degrees a band round the globe (65 square degrees for a
    30 x 20 km tile) and a tile over the North Pole a self-crossing ring."""
    from pipelines.geo import ResultGeometry

    headers = {"fiji.tif": _scene("EPSG:32760", from_origin(806000, 8230000, 100, 100), 300, 200),  # across 180 E
               "pole.tif": _scene("EPSG:3413", from_origin(-10000, 10000, 100, 100), 200, 300),     # over 90 N
               "italy.tif": _scene("EPSG:32633", from_origin(500000, 4650000, 10, 10), 300, 200)}
    geometry = ResultGeometry(headers)
    assert geometry.crs == "OGC:CRS84"
    columns = geometry.columns(_whole_tiles(headers, [[10, 10, 10, 40], None, [0, 0, 0, 0]]))  # zero-area boxes too
    fiji, pole, italy = columns["geometry"]
    assert columns["evidence_geometry"][0].area == 0 and 179 < abs(columns["evidence_lon"][0]) <= 180
    assert fiji.geom_type == "MultiPolygon" and fiji.is_valid                      # split at the antimeridian
    assert {round(b, 6) for b in (fiji.bounds[0], fiji.bounds[2])} == {-180.0, 180.0}
    assert 0.04 < fiji.area < 0.06                                                  # 0.27 x 0.19 degrees
    assert pole.is_valid and pole.bounds[3] == 90 and pole.contains(shapely.Point(0, 89.95))
    assert italy.is_valid and italy.within(shapely.box(14.9, 41.9, 15.1, 42.1))


def test_a_scene_with_a_geotransform_but_no_crs_is_labelled_as_map_coordinates_of_unknown_crs(tmp_path):
    """Its roll-up is in map coordinates (through the transform): labelled "pixel", it misled a reader."""
    no_crs = _header("EPSG:32633")
    no_crs = SceneHeader(**{**no_crs.__dict__, "crs": ""})
    table = pa.table(_rows("s1.tif", [(0, 0, 400, 400)], [[10, 10, 50, 50]]))
    write_rollup(table, str(tmp_path), {"s1.tif": no_crs})
    fc = json.loads((tmp_path / "scenes" / "s1.q0.geojson").read_text())
    assert fc["properties"]["crs"] == "unknown" and "crs" not in fc
    assert fc["features"][0]["geometry"]["coordinates"][0][0][0] > 500000          # easting, not a pixel column
    write_rollup(table, str(tmp_path / "png"), {"s1.tif": _header("")})
    assert json.loads((tmp_path / "png" / "scenes" / "s1.q0.geojson").read_text())["properties"]["crs"] == "pixel"
    from pipelines.geo import scene_detections
    from pipelines.satellite import write_scene_detections                       # the job's own path

    df = table.to_pandas()
    write_scene_detections("s1", no_crs, {0: ("q ?", scene_detections(df, no_crs))}, str(tmp_path / "job"))
    assert json.loads((tmp_path / "job" / "scenes" / "s1.q0.geojson").read_text())["properties"]["crs"] == "unknown"
