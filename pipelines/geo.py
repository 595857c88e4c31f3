"""Satellite results on the map: tile and evidence footprints, GeoParquet 1.1, and the per-scene roll-up.

Footprints are polygons through the scene's affine transform (its four corners, so rotated or sheared
transforms stay exact), in the scene's CRS; a scene georeferenced by ground control points alone (raw L1
and SAR products) maps through GDAL's GCP transformer, each edge at ``GCP_EDGE_PIECES`` points. A tile's evidence is the answer's ``evidence_box`` (pixels
of the tile image, upright) moved to scene pixels and through the same transform. Non-georeferenced
scenes have no map footprint (null geometry); their roll-up is in upright scene pixels.

GeoParquet (https://geoparquet.org, version ``GEOPARQUET_VERSION``): WKB columns written by shapely,
CRS as PROJJSON from pyproj, one ``geo`` metadata key naming ``geometry`` (primary) and
``evidence_geometry``. A run whose scenes share one CRS is written in it; a run with several CRSs is
written in OGC:CRS84 (lon/lat), the ``crs`` column still naming each scene's own: each footprint's
edges cut into pieces of at most 1/(4 ``DENSIFY``) of its perimeter before it is transformed, and one
over the antimeridian or a pole split or closed there (the ``antimeridian`` package, after RFC 7946
section 3.1.9). A scene whose CRS PROJ cannot transform to lon/lat (a local engineering grid) has null
map geometry in such a run and null evidence lon/lat in any run.

Longitudes: every lon/lat the job writes (evidence lon/lat, footprints in OGC:CRS84 or in a scene's own
geographic CRS, the planned ``bounds``, the roll-up) passes through ``lonlat_geometry``, which puts each
longitude in [-180, 180] and splits a shape over the antimeridian there, so a geographic scene whose grid
runs past 180 (or is laid out 0-360) is written as any other. Its inputs are continuous: a scene's own
coordinates, computed on before they are written (centroids, merged detections), are never wrapped.
A ``bbox`` in a geographic CRS follows RFC 7946 section 5.2 (``lonlat_bbox``): over the antimeridian
its west longitude is greater than its east one.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import numpy as np

from spote.images import stored_point

from .rasters import SceneHeader
from .storage import filesystem, join, write_parquet_file, write_text

GEOPARQUET_VERSION = "1.1.0"
ROWS_PER_FILE = 1_000_000
WGS84 = "EPSG:4326"
CRS84 = "OGC:CRS84"
DENSIFY = 16  # into lon/lat, footprint edges are cut into pieces of at most 1/(4 DENSIFY) of the perimeter
GCP_EDGE_PIECES = 8  # through GCPs, each edge of a pixel box is mapped at this many points (corners included)
# in a geographic CRS a footprint's edges are cut into pieces of at most this many degrees before its
# longitudes are wrapped: a jump of over 180 degrees between two vertices then only ever means "over the
# antimeridian" (a tile of a coarse global grid, 360 degrees wide, is not taken for a sliver)
MAX_EDGE_DEGREES = 90.0


@functools.lru_cache(maxsize=64)
def is_lonlat(crs: str | None) -> bool:
    """Whether ``crs`` is geographic with its longitude in degrees (x is the longitude: rasterio and
    ``always_xy`` transformers put it first): the CRSs whose longitudes are normalised. A geographic CRS in
    other units (grads) is written as it is in its own CRS, and normalised in lon/lat (OGC:CRS84)."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    if not crs:
        return False
    try:
        c = CRS.from_user_input(crs)
    except CRSError:
        return False
    return c.is_geographic and any(a.direction == "east" and math.isclose(a.unit_conversion_factor, math.pi / 180)
                                   for a in c.axis_info)


def _wrap(x: np.ndarray) -> np.ndarray:
    """Longitudes into [-180, 180] by whole turns (180 and -180 kept as they are). A longitude within 1e-9
    degrees (0.1 mm) of the antimeridian is put on it: an edge along 180 computed with rounding noise
    (180.00000000000003 beside 180) straddles it by nothing, and the split there came out invalid."""
    x = np.asarray(x, float)
    turn = np.round((x - 180) / 360)
    x = np.where(np.abs(x - 180 - 360 * turn) < 1e-9, 180 + 360 * turn, x)
    return np.where((x < -180) | (x > 180), x - 360 * np.floor((x + 180) / 360), x)  # one rounding: 180.1 - 360


def lonlat_geometry(geom):
    """``geom`` in lon/lat degrees (x the longitude, any number of turns off [-180, 180]) as it is written:
    every longitude in [-180, 180], and a shape over the antimeridian split there (RFC 7946 section 3.1.9).

    The one place longitudes are normalised (and latitudes held to [-90, 90]). A polygon goes through the ``antimeridian`` package (split
    into a MultiPolygon, one around a pole closed through it, counter-clockwise), its crossings found on
    the straight edges as drawn (planar edges, GeoParquet's default). A point moves by whole turns; a line
    or a zero-area box (an evidence box of zero width) too, or is cut into a MultiLineString where it
    crosses. Consecutive vertices must be less than 180 degrees apart in their unwrapped longitudes (a
    footprint cut into pieces, ``MAX_EDGE_DEGREES`` or ``DENSIFY``), or an edge is taken the short way."""
    import antimeridian
    import shapely
    from shapely.geometry import LineString

    if geom is None or geom.is_empty:
        return geom
    # a latitude past a pole (a cell-centred global grid's half pixel, -90.125 to 90.125) is no place on
    # Earth: it is held at the pole, which the pixels there show
    wrapped = shapely.transform(geom, lambda xy: np.column_stack([_wrap(xy[:, 0]), np.clip(xy[:, 1], -90, 90)]))
    kind = geom.geom_type
    if kind in ("Polygon", "MultiPolygon") and geom.area > 0:
        fix = antimeridian.fix_polygon if kind == "Polygon" else antimeridian.fix_multi_polygon
        fixed = fix(wrapped, fix_winding=True, great_circle=False)
        # a tile of a global grid 360 degrees wide (0-360) or more (-180.125-180.125, cell-centred) comes
        # back as halves that touch or overlap: one shape, as on the globe
        return fixed if fixed.is_valid else shapely.make_valid(shapely.union_all(shapely.get_parts(fixed)))
    if kind in ("Point", "MultiPoint"):
        return wrapped
    lines = [LineString(p.exterior.coords if p.geom_type == "Polygon" else p.coords)
             for p in shapely.get_parts(wrapped)]
    cut = [antimeridian.fix_line_string(line, great_circle=False) for line in lines]
    if all(c.geom_type == "LineString" for c in cut):
        return wrapped  # nothing crosses: the same shape, its longitudes in range
    return shapely.MultiLineString([part for c in cut for part in shapely.get_parts(c)])


def lonlat_bbox(geoms) -> list[float] | None:
    """[west, south, east, north] of lon/lat geometries as ``lonlat_geometry`` writes them (RFC 7946
    section 5.2, GeoParquet 1.1's ``bbox`` for a geographic CRS): the shortest span of longitudes holding
    every part, so over the antimeridian west > east ([179.9, -17, -179.9, -16.8] for a strip split at 180,
    not [-180, -17, 180, -16.8], the whole globe). None when there is no geometry."""
    import shapely

    parts = shapely.get_parts(np.array([g for g in geoms if g is not None and not g.is_empty], dtype=object))
    if not len(parts):
        return None
    b = shapely.bounds(parts)
    south, north = float(b[:, 1].min()), float(b[:, 3].max())
    spans = b[np.argsort(b[:, 0]), :][:, [0, 2]]
    merged = [list(spans[0])]
    for lo, hi in spans[1:]:
        if lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    # the box is the circle less its widest gap between the parts' longitudes: the gap across 180 (an
    # ordinary box), or one between two parts (a box over the antimeridian, from the gap's east side)
    across_180 = merged[0][0] + 360 - merged[-1][1]
    width, i = max(((merged[i + 1][0] - merged[i][1], i) for i in range(len(merged) - 1)), default=(0.0, 0))
    if width <= across_180:
        return [float(merged[0][0]), south, float(merged[-1][1]), north]
    return [float(merged[i + 1][0]), south, float(merged[i][1]), north]


def in_crs(geom, crs: str | None):
    """``geom`` in the scene CRS ``crs`` as it is written: in a geographic CRS (``is_lonlat``) its edges cut
    at ``MAX_EDGE_DEGREES`` and its longitudes normalised (``lonlat_geometry``); else as it is."""
    import shapely

    if geom is None or not is_lonlat(crs):
        return geom
    if geom.area > 0:
        geom = shapely.segmentize(geom, MAX_EDGE_DEGREES)
    return lonlat_geometry(geom)


def geometry_bbox(geoms, crs: str | None) -> list[float] | None:
    """The ``bbox`` of geometries as written in ``crs``: RFC 7946 (``lonlat_bbox``) in a geographic CRS,
    else [xmin, ymin, xmax, ymax]; None when there is none."""
    import shapely

    present = [g for g in geoms if g is not None and not g.is_empty]
    if not present:
        return None
    if is_lonlat(crs):
        return lonlat_bbox(present)
    return [float(v) for v in shapely.total_bounds(np.array(present, dtype=object))]


def scene_polygon(header: SceneHeader, x0: float, y0: float, x1: float, y1: float, *, map_coords: bool = True):
    """The upright-scene pixel box [x0, y0, x1, y1] as a shapely Polygon: map coordinates in the scene CRS
    (through the stored frame and ``SceneHeader.to_map``), or upright pixels when ``map_coords`` is False or
    the scene is not georeferenced (then None if ``map_coords``). Through an affine transform the four
    corners are exact; through GCPs (a polynomial) each edge is cut into ``GCP_EDGE_PIECES`` first, since a
    straight pixel edge is a curve on the map."""
    from shapely.geometry import Polygon

    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if not map_coords:
        return Polygon(corners)
    if not header.georeferenced:
        return None
    if not header.transform:
        t = np.arange(GCP_EDGE_PIECES) / GCP_EDGE_PIECES
        corners = [(ax + (bx - ax) * k, ay + (by - ay) * k)
                   for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1]) for k in t]
    stored = np.array([stored_point(x, y, header.stored_width, header.stored_height, header.orientation)
                       for x, y in corners], float)
    xs, ys = header.to_map(stored[:, 0], stored[:, 1])
    return Polygon(np.column_stack([xs, ys]))


def tile_and_evidence(header: SceneHeader, row, map_coords: bool = True):
    """(tile footprint, evidence footprint or None) of one result row (a mapping or a namedtuple)."""
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    c, r, w, h = get("tile_col_off"), get("tile_row_off"), get("tile_width"), get("tile_height")
    tile = scene_polygon(header, c, r, c + w, r + h, map_coords=map_coords)
    box = get("evidence_box")
    if box is None or len(box) != 4:
        return tile, None
    x0, y0, x1, y1 = (float(v) for v in box)
    return tile, scene_polygon(header, c + x0, r + y0, c + x1, r + y1, map_coords=map_coords)


def _projjson(crs: str | None):
    if not crs:
        return None
    from pyproj import CRS

    return CRS.from_user_input(crs).to_json_dict()


def _column_meta(geoms: np.ndarray, crs: str | None) -> dict:
    present = [g for g in geoms if g is not None]
    types = sorted({g.geom_type for g in present})
    meta = {"encoding": "WKB", "geometry_types": types, "crs": _projjson(crs)}  # explicit null: CRS unknown
    bbox = geometry_bbox(present, crs)
    if bbox is not None:
        meta["bbox"] = bbox
    return meta


def with_geometry(table, columns: dict[str, np.ndarray], primary: str, crs: str | None):
    """``table`` plus WKB columns (shapely geometries or None per row) and the GeoParquet ``geo`` metadata."""
    import pyarrow as pa
    import shapely

    for name, geoms in columns.items():
        wkb = shapely.to_wkb(np.array(geoms, dtype=object))
        table = table.append_column(name, pa.array(list(wkb), type=pa.binary()))
    geo = {"version": GEOPARQUET_VERSION, "primary_column": primary,
           "columns": {name: _column_meta(geoms, crs) for name, geoms in columns.items()}}
    meta = dict(table.schema.metadata or {})
    meta[b"geo"] = json.dumps(geo).encode()
    return table.replace_schema_metadata(meta)


def write_parquet(table, folder_uri: str, storage_options=None) -> list[str]:
    """``table`` as ``part-00000.parquet``, ... (``ROWS_PER_FILE`` rows each) under a folder; returns the URIs."""
    uris = []
    for i, start in enumerate(range(0, max(1, len(table)), ROWS_PER_FILE)):
        uris.append(join(folder_uri, f"part-{i:05d}.parquet"))
        write_parquet_file(table.slice(start, ROWS_PER_FILE), uris[-1], storage_options)
    return uris


class ResultGeometry:
    """Tile and evidence footprints and evidence lon/lat for a result table, one CRS for the run."""

    def __init__(self, headers: dict[str, SceneHeader]):
        self.headers = headers
        crss = sorted({h.crs for h in headers.values() if h.crs})
        self.crs = crss[0] if len(crss) == 1 else (CRS84 if crss else None)
        self._transformers: dict[tuple[str, str], object] = {}

    def _transformer(self, src: str, dst: str):
        """pyproj's transformer from ``src`` to ``dst``; None where PROJ has none (a local engineering
        grid, another planet's datum): that scene's rows get null map geometry, the run goes on."""
        from pyproj import Transformer
        from pyproj.exceptions import CRSError, ProjError

        key = (src, dst)
        if key not in self._transformers:
            try:
                self._transformers[key] = Transformer.from_crs(src, dst, always_xy=True)
            except (ProjError, CRSError) as err:
                self._transformers[key] = None
                name = src if len(src) <= 80 else src[:77] + "..."
                nulls = ("evidence_lon and evidence_lat" if dst == WGS84 and dst != self.crs
                         else "geometry, evidence_geometry, evidence_lon and evidence_lat")
                print(f"[satellite] no transformation from {name} to {dst} ({err}); its scenes' rows have null {nulls}")
        return self._transformers[key]

    def _to(self, geom, src: str, dst: str):
        """``geom`` from ``src`` to ``dst``; None where it cannot be (no transformer, points outside the
        projection's domain). Into lon/lat the edges are first cut into pieces of at most 1/(4 ``DENSIFY``)
        of the perimeter (a straight edge in a projection is a curve in lon/lat). In lon/lat, transformed or
        a geographic scene's own CRS, the longitudes are normalised and a footprint across the antimeridian
        or around a pole split or closed there (``lonlat_geometry``): four transformed corners made a band
        round the globe of a tile over 180 degrees, a self-crossing ring of one over a pole, and a
        geographic scene's grid past 180 was written past 180."""
        import shapely
        from shapely.geometry.polygon import orient

        if geom is None or src == dst:
            return in_crs(geom, dst)
        t = self._transformer(src, dst)
        if t is None:
            return None
        lonlat = is_lonlat(dst)
        if lonlat and geom.area > 0:  # a box of zero area (an evidence box of zero width) is not a ring to cut
            geom = shapely.segmentize(orient(geom), geom.exterior.length / (4 * DENSIFY))
        with np.errstate(invalid="ignore"):
            out = shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
        if not np.isfinite(shapely.get_coordinates(out)).all():
            return None
        if not lonlat:
            return out
        try:
            return lonlat_geometry(out)
        except shapely.errors.GEOSException:
            # a shape GEOS cannot split at the antimeridian: a tile past a projection's edge near a pole (a
            # MODIS sinusoidal tile of 80-90 degrees spans many turns of longitude there) has no map geometry
            return None

    def columns(self, table) -> dict[str, list]:
        """geometry, evidence_geometry (shapely or None) and evidence_lon, evidence_lat (degrees or None)."""
        names = ("source", "tile_col_off", "tile_row_off", "tile_width", "tile_height", "evidence_box")
        data = {n: table.column(n).to_pylist() if n in table.column_names else [None] * len(table) for n in names}
        out = {"geometry": [], "evidence_geometry": [], "evidence_lon": [], "evidence_lat": []}
        for i in range(len(table)):
            row = {n: data[n][i] for n in names}
            header = self.headers.get(row["source"])
            tile, evidence = (None, None)
            if header is not None and header.crs and row["tile_width"]:
                tile, evidence = tile_and_evidence(header, row)
            lon = lat = None
            to_lonlat = self._transformer(header.crs, WGS84) if evidence is not None else None
            if to_lonlat is not None:
                from shapely.geometry import Point

                c = evidence.centroid  # in the scene's continuous coordinates, then normalised like the footprint
                lon, lat = to_lonlat.transform(c.x, c.y)
                if np.isfinite(lon) and np.isfinite(lat):
                    p = lonlat_geometry(Point(lon, lat))
                    lon, lat = float(p.x), float(p.y)
                else:
                    lon = lat = None
            src = header.crs if header is not None else None
            out["geometry"].append(self._to(tile, src, self.crs))
            out["evidence_geometry"].append(self._to(evidence, src, self.crs))
            out["evidence_lon"].append(lon)
            out["evidence_lat"].append(lat)
        return out

    def geoparquet_table(self, table):
        """``table`` with geometry (primary), evidence_geometry, evidence_lon/lat and GeoParquet metadata."""
        import pyarrow as pa

        cols = self.columns(table)
        for name in ("evidence_lon", "evidence_lat"):
            table = table.append_column(name, pa.array(cols[name], type=pa.float64()))
        return with_geometry(table, {"geometry": cols["geometry"], "evidence_geometry": cols["evidence_geometry"]},
                             "geometry", self.crs)


def rewrite_staged_as_geoparquet(table, staging_uri: str, headers: dict[str, SceneHeader], storage_options=None):
    """Replace a run's staged Parquet files by GeoParquet ones holding the same rows plus the geometry columns
    (before the commit, so the committed results are GeoParquet or nothing). Returns the geometry CRS."""
    geometry = ResultGeometry(headers)
    geo_table = geometry.geoparquet_table(table)
    fs, staging = filesystem(staging_uri, storage_options)
    for path in fs.find(staging):
        fs.rm(path)
    write_parquet(geo_table, staging_uri, storage_options)
    return geometry.crs


# ------------------------------------------------------------------------------------------------ roll-up
@dataclass
class Detection:
    """One object seen by one or more tiles: the merged footprint and the tiles that answered "yes" for it."""

    geometry: object
    ids: list[str]
    tiles: list[list[int]]
    confidence_max: float
    localised: bool


def merge_detections(footprints: list, localised: list[bool], ids: list[str], tiles: list[list[int]],
                     confidences: list[float]) -> list[Detection]:
    """Merge "yes" footprints that overlap (positive intersection area) into one detection each.

    Two whole-tile footprints (no evidence box on either) are not merged with each other: neighbouring tiles
    overlap by construction, and neither says where its object is. Localised evidence footprints that overlap
    merge, so the same object seen from two tiles of an overlap counts once; a whole-tile footprint joins the
    one detection it overlaps most, and never joins two: a tile that saw "yes" somewhere is no evidence that
    two boxes 80 px apart inside it are one object. The merged geometry is the union of the localised
    footprints where there is one, else of the tiles.
    """
    import shapely
    from shapely.strtree import STRtree

    n = len(footprints)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n:
        tree = STRtree(footprints)
        for i, geom in enumerate(footprints):  # localised with localised
            if not localised[i]:
                continue
            for j in tree.query(geom):
                j = int(j)
                if j > i and localised[j] and shapely.intersection(geom, footprints[j]).area > 0:
                    parent[find(j)] = find(i)
        for i, geom in enumerate(footprints):  # each whole tile to the localised detection it overlaps most
            if localised[i]:
                continue
            # touching counts for an evidence box of zero width (a line), which overlaps nothing by area
            overlaps = [(shapely.intersection(geom, footprints[int(j)]).area, int(j)) for j in tree.query(geom)
                        if localised[int(j)] and shapely.intersects(geom, footprints[int(j)])]
            best = max((o for o in overlaps if o[0] > 0 or footprints[o[1]].area == 0), default=None)
            if best is not None:
                parent[i] = find(best[1])
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    out = []
    for members in groups.values():
        loc = [i for i in members if localised[i]]
        geom = shapely.union_all([footprints[i] for i in (loc or members)])
        out.append(Detection(geom, [ids[i] for i in members], [tiles[i] for i in members],
                             float(max(confidences[i] for i in members)), bool(loc)))
    return sorted(out, key=lambda d: d.ids[0])


def _geojson(geom) -> dict:
    """``geom`` as a GeoJSON geometry, its polygons' exterior rings counter-clockwise and holes clockwise (the
    right-hand rule of RFC 7946 section 3.1.6; a union of projected footprints came out clockwise)."""
    import shapely
    from shapely.geometry.polygon import orient

    parts = [orient(p, sign=1.0) if p.geom_type == "Polygon" else p for p in shapely.get_parts(geom)]
    if geom.geom_type == "Polygon":
        geom = parts[0]
    elif geom.geom_type == "MultiPolygon":
        geom = shapely.MultiPolygon(parts)
    return json.loads(shapely.to_geojson(geom))


def detections_feature_collection(scene: str, question: str, detections, crs: str, map_coords: bool = False) -> dict:
    """One scene's detections for one question as a GeoJSON FeatureCollection, in the scene's CRS; its
    ``crs`` property is ``unknown`` for map coordinates without a CRS (a geotransform alone) and ``pixel``
    for upright scene pixels (no geotransform)."""
    feats = [{"type": "Feature", "geometry": _geojson(d.geometry),
              "properties": {"question": question, "ids": d.ids, "tiles": d.tiles, "n_tiles": len(d.ids),
                             "confidence_max": d.confidence_max, "localised": d.localised}}
             for d in detections]
    fc = {"type": "FeatureCollection", "features": feats,
          "properties": {"scene": scene, "question": question, "crs": crs or ("unknown" if map_coords else "pixel")}}
    if crs:  # the pre-RFC 7946 member GDAL/QGIS read, since the coordinates are not WGS84
        fc["crs"] = {"type": "name", "properties": {"name": crs}}
    return fc


def scene_detections(df, header: SceneHeader | None) -> list[Detection]:
    """The merged "yes" detections of one scene and question (a pandas frame of its result rows)."""
    yes = df[(df["status"] == "ok") & (df["answer"].astype(str).str.lower() == "yes")]
    map_coords = header is not None and header.georeferenced
    footprints, localised, ids, tiles, conf = [], [], [], [], []
    for rec in yes.itertuples():
        if header is None:
            continue
        tile, evidence = tile_and_evidence(header, rec, map_coords=map_coords)
        footprints.append(evidence if evidence is not None else tile)
        localised.append(evidence is not None)
        ids.append(rec.id)
        tiles.append([int(rec.tile_col_off), int(rec.tile_row_off), int(rec.tile_width), int(rec.tile_height)])
        conf.append(float(rec.confidence))
    detections = merge_detections(footprints, localised, ids, tiles, conf)  # merged in continuous coordinates
    if map_coords:
        for d in detections:
            d.geometry = in_crs(d.geometry, header.crs)
    return detections


def write_rollup(table, meta_uri: str, headers: dict[str, SceneHeader], storage_options=None) -> dict:
    """Per scene and question: merged detections as GeoJSON (``scenes/<scene>.q<i>.geojson``) and per scene as
    GeoParquet (``scenes/<scene>.detections.parquet``); returns the counts written to ``rollup.json``."""
    import pyarrow as pa

    if not len(table) or "scene" not in table.column_names:
        return {}
    df = table.to_pandas()
    rollup = {}
    for scene, scene_df in df.groupby("scene"):
        source = scene_df["source"].iloc[0]
        header = headers.get(source)
        crs = header.crs if header is not None and header.georeferenced else ""
        records = []
        for qi, grp in scene_df.groupby("question_index"):
            detections = scene_detections(grp, header)
            question = str(grp["question"].iloc[0])
            fc = detections_feature_collection(scene, question, detections, crs,
                                               map_coords=header is not None and header.georeferenced)
            feats = fc["features"]
            write_text(join(meta_uri, "scenes", f"{scene}.q{qi}.geojson"), json.dumps(fc), storage_options)
            yes = grp[(grp["status"] == "ok") & (grp["answer"].astype(str).str.lower() == "yes")]
            rollup[f"{scene}/q{qi}"] = {"tiles": int(len(grp)), "tiles_yes": int(len(yes)), "detections": len(feats),
                                        "tiles_error": int((grp["status"] == "error").sum()),
                                        "tiles_skipped": int((grp["status"] == "skipped").sum()), "crs": crs}
            records += [(int(qi), question, d) for d in detections]
        t = pa.table({"scene": [scene] * len(records), "question_index": [r[0] for r in records],
                      "question": [r[1] for r in records], "ids": [r[2].ids for r in records],
                      "n_tiles": [len(r[2].ids) for r in records],
                      "confidence_max": pa.array([r[2].confidence_max for r in records], pa.float64()),
                      "localised": pa.array([r[2].localised for r in records], pa.bool_())})
        t = with_geometry(t, {"geometry": [r[2].geometry for r in records]}, "geometry", crs or None)
        write_parquet_file(t, join(meta_uri, "scenes", f"{scene}.detections.parquet"), storage_options)
    return rollup
