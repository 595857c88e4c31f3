import json

import pytest

from research.answer_centring import REACHES, TOPS, centring_ious, iou, summary
from research.open_reading import oracle_box
from spote.bench.scenes import open_items


def _items(variant, k):
    return [it for it in open_items("val", 40, 3) if it.meta["variant"] == variant][:k]


@pytest.mark.parametrize("dx, dy", [(0.25, 0.0), (-0.2, 0.15), (0.0, -0.25)])
def test_centring_puts_a_window_a_quarter_off_back_on_the_field(dx, dy):
    """On a generated SpotBench page, the oracle's close-up moved by a fifth to a quarter of its side is
    centred back onto the field by the shipped reach and top."""
    for item in _items("small", 3) + _items("split", 2):
        agreed = oracle_box(item, 64).moved(dx, dy).shifted_inside(*item.image.size)
        got = centring_ious(item, agreed)
        assert set(got) == {"agreed", *(f"{r:g}/{t:g}" for r in REACHES for t in TOPS)}
        assert got["agreed"] < 0.75 and got["1.5/0.03"] > 0.8, (item.id, got["agreed"], got["1.5/0.03"])


def test_summary_is_median_mean_and_share_above_0_8():
    s = summary([{"a": 0.9}, {"a": 0.5}, {"a": 0.85}])
    assert s["a"] == {"n": 3, "median": 0.85, "mean": pytest.approx(0.75), "above_0.8": pytest.approx(2 / 3)}


def test_iou_reads_only_searched_items(tmp_path, capsys):
    item = _items("small", 1)[0]
    window = oracle_box(item, 64).moved(0.2, 0).as_list()
    rows = [{"id": item.id, "variant": "small", "readings": [{"window": window}], "searched": True},
            {"id": item.id, "variant": "small", "readings": [{"window": window}], "searched": False}]
    src = tmp_path / "choice.json"
    src.write_text(json.dumps({"split": "val", "n": 40, "seed": 3, "items": rows}))
    iou([src], out=tmp_path / "t.json")
    table = json.loads((tmp_path / "t.json").read_text())["table"]
    assert table["small"]["agreed"]["n"] == 1 and table["on field"]["1.5/0.03"]["n"] == 1
    assert "| reach / top |" in capsys.readouterr().out
