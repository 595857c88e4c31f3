import pytest

from research.agreed_answers import neighbours, run, setting_name, shifts, summarise
from tests.conftest import random_tiny_dir  # noqa: F401 (fixture: a random spote-tiny)


def _row(gold, answers, passes, iou):
    return {"gold": gold, "answers": answers, "passes": passes, "iou": iou}


def test_summary_scores_each_setting_and_skips_whole_image_windows():
    rows = [_row("K7", {"whole_image": "K1", "top1_grid1": "K7"}, {"whole_image": 1, "top1_grid1": 96},
                 {"whole_image": None, "top1_grid1": 0.5}),
            _row("3A9Q", {"whole_image": "3A", "top1_grid1": "3A9"}, {"whole_image": 1, "top1_grid1": 90},
                 {"whole_image": None, "top1_grid1": None})]
    s = summarise(rows)
    assert s["top1_grid1"]["exact_match"] == 0.5 and s["whole_image"]["exact_match"] == 0.0
    assert s["top1_grid1"]["char_accuracy"] == pytest.approx((1 + 0.75) / 2)
    assert s["top1_grid1"]["forward_passes_mean"] == 93 and s["top1_grid1"]["window_iou_median"] == 0.5
    assert s["whole_image"]["window_iou_median"] is None
    assert setting_name(8, 3) == "top8_grid3"


def test_a_run_on_two_items_writes_every_setting(random_tiny_dir, tmp_path):  # noqa: F811
    out = tmp_path / "a.json"
    run(model=str(random_tiny_dir), n=2, seed=0, split="val", tops="1,4", grids="1,3", out=out)
    import json

    got = json.loads(out.read_text())
    assert set(got["summary"]) == {"whole_image", "top1_grid1", "top1_grid3", "top4_grid1", "top4_grid3",
                                   "oracle", "oracle_agreed"}
    assert all(r["passes"]["oracle_agreed"] == 9 and r["passes"]["top4_grid3"] <= 96 for r in got["items"])


def test_shifts_reads_the_oracle_at_each_shift(random_tiny_dir, tmp_path):  # noqa: F811
    import json

    out = tmp_path / "s.json"
    shifts(model=str(random_tiny_dir), n=2, seed=0, split="val", shift_list="0,0.03", out=out)
    assert set(json.loads(out.read_text())["summary"]) == {"shift_0", "shift_0.03"}


def test_neighbours_runs_spote_at_each_step(random_tiny_dir, tmp_path):  # noqa: F811
    import json

    out = tmp_path / "n.json"
    neighbours(model=str(random_tiny_dir), n=2, seed=0, split="val", steps="0,0.15", out=out)
    got = json.loads(out.read_text())
    assert set(got["summary"]) == {"step_0", "step_0.15", "step_0_short"}
    assert all(r["passes"]["step_0.15"] <= 96 and r["passes"]["step_0_short"] <= 60 for r in got["items"])
    assert all(r["neighbour_answered"]["step_0"] is None for r in got["items"])
