import json

import pytest

from research.answer_reading import ORACLE_READINGS, READINGS, ROWS, copies, grid_places, place_fit, pmi_choice, run, score_rows
from spote.core import PolicyConfig
from spote.loading import load_adapter
from spote.spotlight import Box
from tests.conftest import random_tiny_dir  # noqa: F401 (fixture: a random spote-tiny)


def test_copies_are_spotes_nine_shifts_five_of_them_or_the_nine_at_three_scales():
    place = Box.square(300, 200, 100)
    nine = copies(place, 9, PolicyConfig(), 800, 600)
    assert len(nine) == 9 and nine[0].as_list() == place.as_list()
    assert max(abs(b.centre[0] - 300) for b in nine) == pytest.approx(3.0)  # 0.03 of the side
    five = copies(place, 5, PolicyConfig(), 800, 600)
    assert five[0].as_list() == place.as_list()
    assert sorted((round(b.centre[0] - 300, 6), round(b.centre[1] - 200, 6)) for b in five[1:]) == [(-3, -3), (-3, 3), (3, -3), (3, 3)]
    many = copies(place, 27, PolicyConfig(), 800, 600)
    assert len(many) == 27
    assert sorted({round(b.width, 6) for b in many}) == pytest.approx([90.0, 100.0, 110.0])
    assert all(b.x0 >= 0 and b.y0 >= 0 and b.x1 <= 800 and b.y1 <= 600 for b in copies(Box.square(10, 10, 100), 27,
                                                                                       PolicyConfig(), 800, 600))
    assert all(b.x0 >= 0 and b.x1 <= 800 for b in copies(Box.square(400, 300, 600), 27, PolicyConfig(), 800, 600))
    with pytest.raises(ValueError, match="5, 9 or 27"):
        copies(place, 4, PolicyConfig(), 800, 600)


def test_pmi_ranks_an_empty_reading_last():
    adapter = load_adapter("spote-tiny")  # the shipped tokenizer spells codes per character
    readings = [("", []), ("3A", [-1.0, -1.0])]
    assert pmi_choice(adapter, "what is the code in the reference field ?", readings, 2) == 1


def test_pmi_prefers_the_reading_the_blank_view_does_not_predict():
    """The surer reading per token loses when a blank view gives it almost as high a log p (a language
    model prior, not the image); a reading the tokenizer does not spell back ranks last."""
    import torch

    adapter = load_adapter("spote-tiny")
    tok = adapter.tokenizer
    prior = {tuple(tok("333", add_special_tokens=False).input_ids): -0.6, tuple(tok("3A8", add_special_tokens=False).input_ids): -3.0}
    adapter.teacher_forced = lambda views, prompt, ids: (torch.full((1, len(ids)), prior[tuple(ids)]), None)
    readings = [("333", [-0.5] * 3), ("3A8", [-1.0] * 3)]  # surest: "333"; against the blank: 0.1 and 2.0 nats
    assert pmi_choice(adapter, "what is the code in the reference field ?", readings, 2) == 1
    assert pmi_choice(adapter, "q", [("3A8", [-1.0]), ("333", [-0.5] * 3)], 2) == 1  # 1 log p for 3 tokens: last


def test_score_rows_scores_every_column_per_variant():
    row = {"gold": "AB", "variant": "small", "spote": "AB", "pmi": "A",
           **{name: "AB" for name in READINGS}, **{"oracle_" + name: "XY" for name in ORACLE_READINGS}}
    t = score_rows([row, {**row, "variant": "split", "spote": "AC"}])
    assert set(t["all"]) == set(ROWS) and t["all"]["spote"]["n"] == 2
    assert t["all"]["spote"]["exact_match"] == 0.5 and t["split"]["spote"]["char_accuracy"] == 0.5
    assert t["small"]["oracle_ctx9"]["exact_match"] == 0.0 and t["all"]["pmi"]["char_accuracy"] == 0.5


def test_re_reading_spotes_places_its_own_way_gives_its_answer(random_tiny_dir, tmp_path):  # noqa: F811
    out = tmp_path / "r.json"
    run(model=str(random_tiny_dir), n=3, seed=0, split="val", out=out)
    items = json.loads(out.read_text())["items"]
    assert len(items) == 3
    assert any(r["searched"] for r in items)  # else every column would be SPOT-E's answer by construction
    for r in items:
        assert r["ctx9"] == r["spote"]  # the same places, copies and rendering as SPOT-E's answer step
        assert all(isinstance(r[name], str) for name in ROWS)


def test_place_fit_gives_side_ratio_and_iou():
    oracle = Box(0, 0, 100, 100)
    assert place_fit(Box(0, 0, 100, 100), oracle) == (1.0, 1.0)
    ratio, iou = place_fit(Box(20, 0, 120, 100), oracle)  # a fifth of the side off: IoU 0.8 / 1.2
    assert ratio == 1.0 and iou == pytest.approx(2 / 3)
    assert place_fit(Box(200, 200, 250, 250), oracle) == (0.5, 0.0)


def test_grid_places_are_the_agreed_window_and_its_eight_neighbours():
    agreed = Box.square(400, 300, 100)
    grid = grid_places(agreed, 0.15, 800, 600)
    assert len(grid) == 9 and grid[0].as_list() == agreed.as_list()
    assert sorted((round(b.centre[0] - 400), round(b.centre[1] - 300)) for b in grid) == sorted(
        (dx, dy) for dx in (-15, 0, 15) for dy in (-15, 0, 15))
    assert all(b.x0 >= 0 for b in grid_places(Box.square(50, 300, 100), 0.15, 800, 600))
