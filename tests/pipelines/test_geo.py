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
    # two boxes 80 px apart, each overlapping one whole-tile answer: two objects, not one through the tile, which
    # joins the one it overlaps most
    dets = merge_detections([box(0, 0, 400, 400), box(100, 100, 140, 140), box(220, 100, 250, 130)],
                            [False, True, True], list("tuv"), [[0]] * 3, [0.5] * 3)
    assert {tuple(sorted(d.ids)) for d in dets} == {("t", "u"), ("v",)}
    # an evidence box of zero width inside a whole-tile answer is the same object, not two detections
    dets = merge_detections([box(0, 0, 400, 400), box(100, 100, 100, 140)], [False, True], list("tu"), [[0]] * 2,
                            [0.5] * 2)
    assert [sorted(d.ids) for d in dets] == [["t", "u"]]


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
    for feature in fc["features"]:  # RFC 7946 3.1.6: exterior rings counter-clockwise (a union came out clockwise)
        polygons = [feature["geometry"]["coordinates"]] if feature["geometry"]["type"] == "Polygon" else \
            feature["geometry"]["coordinates"]
        for rings in polygons:
            assert shapely.LinearRing(rings[0]).is_ccw
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
    assert 'no transformation from LOCAL_CS["site grid"' in said and "to OGC:CRS84" in said   # said, not silent
    assert "rows have null geometry, evidence_geometry, evidence_lon and evidence_lat" in said
    alone = ResultGeometry({"site.tif": headers["site.tif"]}).columns(table.slice(0, 1))
    said = capsys.readouterr().out   # alone, only its lon/lat are null, and the line says so
    assert "to EPSG:4326" in said and said.rstrip().endswith("its scenes' rows have null evidence_lon and evidence_lat")
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


# ------------------------------------------------------------------ longitudes: [-180, 180], split at the antimeridian
FIJI_4326 = _scene("EPSG:4326", from_origin(179.9, -16.8, 0.0005, 0.0005), 400, 400)   # lon 179.9 .. 180.1
FIJI_UTM = _scene("EPSG:32760", from_origin(817000, 8120000, 10, 10), 400, 400)        # lon ~179.98 .. -179.98


def _tile_rows(source: str, tiles: list, boxes: list) -> pa.Table:
    return pa.table({"source": [source] * len(tiles), "tile_col_off": [t[0] for t in tiles],
                     "tile_row_off": [t[1] for t in tiles], "tile_width": [t[2] for t in tiles],
                     "tile_height": [t[3] for t in tiles], "evidence_box": pa.array(boxes, pa.list_(pa.int64()))})


def _longitudes(geom) -> np.ndarray:
    return shapely.get_coordinates(geom)[:, 0]


@pytest.mark.parametrize("run", ["one geographic CRS", "several CRSs"])
def test_evidence_lon_is_within_180_and_inside_its_own_evidence_geometry(run):
    """A lon/lat scene whose grid runs past 180 gave evidence_lon 180.0585, where a UTM scene of the same
    place gave -179.99; in a mixed run the point then lay outside its own (split) evidence geometry."""
    from pipelines.geo import ResultGeometry

    headers = {"fiji.tif": FIJI_4326} if run == "one geographic CRS" else {"fiji.tif": FIJI_4326, "utm.tif": FIJI_UTM}
    table = pa.concat_tables([_tile_rows(s, [(144, 0, 256, 256)], [[90, 90, 256, 256]]) for s in headers])
    cols = ResultGeometry(headers).columns(table)
    expected = {"fiji.tif": 179.9 + (144 + 173) * 0.0005 - 360, "utm.tif": -179.9933}    # the box centre's longitude
    for i, source in enumerate(headers):
        lon, lat, evidence = cols["evidence_lon"][i], cols["evidence_lat"][i], cols["evidence_geometry"][i]
        assert -180 <= lon <= 180 and lon == pytest.approx(expected[source], abs=1e-4)
        assert evidence.is_valid and evidence.covers(shapely.Point(lon, lat))
        assert (np.abs(_longitudes(evidence)) <= 180).all() and (np.abs(_longitudes(cols["geometry"][i])) <= 180).all()


@pytest.mark.parametrize("origin, crosses", [(179.9, True), (-180.1, True), (200.0, False), (359.95, False)])
def test_a_lon_lat_scene_past_180_has_valid_footprints_in_range_split_at_the_antimeridian(origin, crosses):
    """One EPSG:4326 scene, written in its own CRS: its tiles reached 180.1 (or 200-210 for a grid laid out
    0-360) and were not split, where the mixed-CRS path split them."""
    from pipelines.geo import ResultGeometry

    header = _scene("EPSG:4326", from_origin(origin, -16.8, 0.0005, 0.0005), 400, 400)
    geometry = ResultGeometry({"s.tif": header})
    assert geometry.crs == "EPSG:4326"
    tiles = [(0, 0, 400, 400), (144, 0, 256, 256), (0, 0, 400, 400)]
    cols = geometry.columns(_tile_rows("s.tif", tiles, [None, [0, 0, 256, 10], [0, 5, 400, 5]]))
    for tile in cols["geometry"] + [cols["evidence_geometry"][1]]:
        assert tile.is_valid and (np.abs(_longitudes(tile)) <= 180).all()
        assert tile.geom_type == ("MultiPolygon" if crosses else "Polygon")
    line = cols["evidence_geometry"][2]                              # an evidence box of zero height: a line
    assert (np.abs(_longitudes(line)) <= 180).all() and line.geom_type == ("MultiLineString" if crosses else "Polygon")
    assert -180 <= cols["evidence_lon"][2] <= 180
    whole = cols["geometry"][0]
    assert whole.area == pytest.approx(0.2 * 0.2)                                 # as large as on the ground
    assert whole.covers(shapely.Point(origin + 0.1 - 360 * (origin + 0.1 > 180), -16.9))


def test_a_global_lon_lat_tile_is_one_valid_shape():
    """A tile of a global 0-360 grid, all its longitudes at once: two halves of the globe touching at 0
    (an invalid MultiPolygon) were one shape."""
    from pipelines.geo import ResultGeometry

    headers = {"gfs.tif": _scene("EPSG:4326", from_origin(0, 90, 0.25, 0.25), 1440, 720)}
    tile = ResultGeometry(headers).columns(_tile_rows("gfs.tif", [(0, 0, 1440, 720)], [None]))["geometry"][0]
    assert tile.is_valid and tile.bounds == (-180, -90, 180, 90) and tile.area == pytest.approx(360 * 180)


def test_a_cell_centred_global_grid_past_the_poles_is_held_to_latitudes_within_90():
    """A global grid of cells centred on the poles reaches half a cell past each (90.125): no latitude
    written lies beyond a pole, and the shapes stay valid."""
    from pipelines.geo import ResultGeometry

    headers = {"g.tif": _scene("EPSG:4326", from_origin(-180.125, 90.125, 0.25, 0.25), 1441, 721)}
    cols = ResultGeometry(headers).columns(_tile_rows("g.tif", [(0, 0, 1441, 721), (720, 0, 8, 8)],
                                                      [None, [0, 0, 2, 2]]))
    whole, polar = cols["geometry"]
    assert whole.is_valid and whole.bounds == (-180, -90, 180, 90) and whole.area == pytest.approx(360 * 180)
    assert polar.is_valid and polar.bounds == pytest.approx((-0.125, 88.125, 1.875, 90))
    assert cols["evidence_geometry"][1].bounds[3] == 90 and cols["evidence_lat"][1] <= 90


def test_geoparquet_bbox_over_the_antimeridian_runs_west_to_east(tmp_path):
    """GeoParquet 1.1 (bbox after RFC 7946 section 5.2): over the antimeridian west > east. The split
    footprints' plain bounds, [-180, -17, 180, -16.8], claimed the whole globe for a 0.2 degree area."""
    table = pa.table(_rows("fiji.tif", [(0, 0, 400, 400), (144, 0, 256, 256)], [None, [30, 90, 256, 256]]))
    for name, headers in (("one", {"fiji.tif": FIJI_4326}), ("mixed", {"fiji.tif": FIJI_4326, "u.tif": FIJI_UTM})):
        staging = tmp_path / name
        staging.mkdir()
        rewrite_staged_as_geoparquet(table, str(staging), headers)
        geo = json.loads(pq.read_schema(staging / "part-00000.parquet").metadata[b"geo"])
        assert geo["columns"]["geometry"]["bbox"] == pytest.approx([179.9, -17.0, -179.9, -16.8])
        west, south, east, north = geo["columns"]["evidence_geometry"]["bbox"]
        assert (west, east) == pytest.approx((179.9 + 174 * 0.0005, 179.9 + 400 * 0.0005 - 360))


def test_a_lon_lat_bbox_is_the_shortest_span_of_longitudes():
    from pipelines.geo import lonlat_bbox

    # RFC 7946's own example: points in Fiji either side of 180; data apart keeps an ordinary box
    assert lonlat_bbox([shapely.Point(177, -20), shapely.Point(-178, -16)]) == [177, -20, -178, -16]
    assert lonlat_bbox([shapely.box(-100, 0, -90, 1), shapely.box(10, 0, 20, 1)]) == [-100, 0, 20, 1]
    assert lonlat_bbox([shapely.box(-180, 0, 180, 1)]) == [-180, 0, 180, 1]


def test_the_roll_up_of_a_lon_lat_scene_over_the_antimeridian_is_merged_then_split(tmp_path):
    """One boat seen from two tiles either side of 180 is one detection (merged where the coordinates run
    on), written with its longitudes in range and split at 180, in the GeoJSON and the GeoParquet."""
    from pipelines.geo import scene_detections
    from pipelines.satellite import write_scene_detections

    tiles = [(0, 0, 256, 256), (144, 0, 256, 256)]
    table = pa.table(_rows("fiji.tif", tiles, [[180, 100, 256, 140], [36, 100, 112, 140]], scene="fiji.tif"))
    write_rollup(table, str(tmp_path / "mem"), {"fiji.tif": FIJI_4326})
    write_scene_detections("fiji.tif", FIJI_4326, {0: ("q ?", scene_detections(table.to_pandas(), FIJI_4326))},
                           str(tmp_path / "job"))
    for out in ("mem", "job"):
        fc = json.loads((tmp_path / out / "scenes" / "fiji.tif.q0.geojson").read_text())
        assert len(fc["features"]) == 1 and fc["features"][0]["properties"]["n_tiles"] == 2
        geom = shapely.geometry.shape(fc["features"][0]["geometry"])
        assert geom.geom_type == "MultiPolygon" and geom.is_valid and (np.abs(_longitudes(geom)) <= 180).all()
        assert geom.area == pytest.approx(0.038 * 0.02)
        parquet = tmp_path / out / "scenes" / "fiji.tif.detections.parquet"
        bbox = json.loads(pq.read_schema(parquet).metadata[b"geo"])["columns"]["geometry"]["bbox"]
        assert bbox == pytest.approx([179.99, -16.87, -179.972, -16.85])


def test_a_sinusoidal_tile_at_the_pole_in_a_mixed_crs_run_has_no_map_geometry_and_fails_nothing():
    """A MODIS sinusoidal tile of 80-90 degrees north (h17v00) reaches past the projection's edge, where a row
    spans many turns of longitude: GEOS could not split its footprint at the antimeridian ("side location
    conflict"), and the run failed at its commit, every tile answered. Such a footprint is null; the others
    stay."""
    from pipelines.geo import ResultGeometry

    side = 1111950.5197665  # a MODIS tile's side, m
    sinu = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs"
    polar = SceneHeader(width=128, height=128, stored_width=128, stored_height=128, bands=1, dtype="uint8", crs=sinu,
                        transform=tuple(from_origin(-20015109.354 + 17 * side, 10007554.677, side / 128, side / 128))[:6],
                        orientation=1, palette=False, default_bands=(1,), has_overviews=False)
    tiles = [(c, r, 64, 64) for r in (0, 64) for c in (0, 64)]
    table = pa.table({"source": ["sinu.tif"] * 4 + ["utm.tif"], "tile_col_off": [t[0] for t in tiles] + [0],
                      "tile_row_off": [t[1] for t in tiles] + [0], "tile_width": [64] * 5, "tile_height": [64] * 5,
                      "evidence_box": pa.array([[0, 0, 64, 64]] * 5, pa.list_(pa.int64()))})
    geometry = ResultGeometry({"sinu.tif": polar, "utm.tif": _header()})
    assert geometry.crs == "OGC:CRS84"
    cols = geometry.columns(table)
    assert None in cols["geometry"][:4]
    assert cols["geometry"][4] is not None and cols["geometry"][4].is_valid
    lonlat = shapely.get_coordinates(cols["geometry"][4])
    assert 14 < lonlat[:, 0].min() and lonlat[:, 0].max() < 16     # UTM 33N near its central meridian
