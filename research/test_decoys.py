import numpy as np

from research.decoys import SIZES, decoy_readings, locate_bridge
from spote.bench.scenes import make_item


def _boat_scenes(answer, n):
    items = (make_item(0, "val", i, kind="boat") for i in range(100))
    return [it for it in items if it.answer == answer][:n]


def test_bridge_is_on_the_road_inside_the_water_and_open_water_is_not_road():
    for item in _boat_scenes("no", 4):
        (bx, by), (wx, wy) = locate_bridge(item)
        a = np.asarray(item.image).astype(int)
        r, g, b = a[int(by), int(bx)]
        assert abs(r - g) < 14 and abs(g - b) < 14  # grey road
        left, right = a[int(by), max(0, int(bx) - 30)], a[int(by), min(a.shape[1] - 1, int(bx) + 30)]
        assert max(left[2] - left[0], right[2] - right[0]) > 50  # water beside it
        r, g, b = a[int(wy), int(wx)]
        assert b > r + 50 and abs(wx - bx) > 60  # open water, away from the road


def test_no_bridge_in_a_scene_without_road_or_water():
    assert locate_bridge(make_item(0, "val", 0, kind="digit")) is None


def test_one_reading_per_scene_and_size(random_adapter):
    absent, present = _boat_scenes("no", 2), _boat_scenes("yes", 1)
    out = decoy_readings(random_adapter, absent + present, sizes=SIZES[:2], shifts=(0.0, 0.3))
    assert set(out) == {(w, px) for w in ("bridge", "open water", "boat") for px in SIZES[:2]}
    assert all(len(v) == (1 if w == "boat" else 2) and all(0 <= p <= 1 for p in v) for (w, _), v in out.items())
