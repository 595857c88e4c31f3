import json

import numpy as np
import pytest

from research.easy_probe import FIRST_INDEX, easy_row, probe_passes, summarise
from spote.bench.scenes import make_item
from spote.core import PolicyConfig


def test_probe_passes_per_order():
    # a corner clear: the whole image + four corners; read first, the centre costs one pass more if not clear
    assert probe_passes([False, True, False, False, False], centre_first=False) == 5
    assert probe_passes([False, True, False, False, False], centre_first=True) == 6
    # only the centre clear: the corners first pay for all five squares
    assert probe_passes([False, False, False, False, True], centre_first=False) == 6
    assert probe_passes([False, False, False, False, True], centre_first=True) == 2
    # an unclear glance before the probe costs one pass more either way
    assert probe_passes([False, False, False, False, True], centre_first=True, glance=1) == 3


def test_summarise_separates_the_search_tail():
    rows = [{"path": "whole image", "passes": 1, "correct": True},
            {"path": "whole image", "passes": 1, "correct": True},
            {"path": "probe", "passes": 5, "correct": True, "probe_clear": [True, False, False, False, True]},
            {"path": "search (probe band)", "passes": 61, "correct": False, "probe_clear": [False] * 5}]
    s = summarise(rows)
    assert s["mean_passes"] == pytest.approx(17.0)
    assert s["searched_share"] == 0.25 and s["searched_passes_mean"] == 61
    assert s["mean_passes_without_search"] == pytest.approx(7 / 3)
    assert (s["probe_settled"], s["probe_passes_corners_first"], s["probe_passes_centre_first"]) == (1, 5, 2)
    assert s["accuracy"] == 0.75


def test_easy_row_path_matches_the_loop(shipped_adapter):
    from dataclasses import replace

    # with the shipped weights and the defaults, easy val scene 0 stops on the whole image, 11 at the glance
    # and 3 is searched; none of the first 300 stops at the probe (the glance takes those), so the probe
    # branch is exercised on scene 11 without the glance
    paths = []
    for i, cfg in ((0, PolicyConfig()), (11, PolicyConfig()), (3, PolicyConfig()),
                   (11, replace(PolicyConfig(), glance_side=0.0))):
        item = make_item(0, "val", FIRST_INDEX + i, easy_rate=1.0)
        row = easy_row(shipped_adapter, item, cfg)
        glance = int(cfg.glance_side > 0)
        if row["h_base"] <= row["tau"]:
            assert row["path"] == "whole image" and row["passes"] == 1
        elif row["path"] == "glance":
            assert row["glance_clear"] and row["passes"] == 2
        elif row["path"] == "probe":
            assert not row.get("glance_clear") and any(row["probe_clear"]) and row["passes"] in (1 + glance + 4, 2 + glance + 4)
        else:
            assert row["path"].startswith("search") and row["passes"] > 2 + glance + 4
        paths.append(row["path"].split(" ")[0])
    assert paths == ["whole", "glance", "search", "probe"]  # every branch exercised with the shipped model


def test_benchmark_mode_gives_the_bench_s_easy_item_passes(tmp_path):
    from research.easy_probe import main
    from spote.bench.run import run_bench

    report = run_bench(split="test", n=24, seed=1, methods=["spote"], out=tmp_path / "b.json", plot=False)
    bench = {json.loads(x)["id"]: json.loads(x) for x in (tmp_path / "b.items.jsonl").read_text().splitlines()}
    main(split="test", n=24, seed=1, model=None, hard_n=0, out=tmp_path / "e.json", benchmark=True)
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert rows and all(bench[r["id"]]["easy"] for r in rows)
    assert len(rows) == sum(r["easy"] for r in bench.values())
    assert [r["passes"] for r in rows] == [bench[r["id"]]["forward_passes"] for r in rows]
    assert report["methods"]["spote"]["forward_passes_mean_easy"] == np.mean([r["passes"] for r in rows])
