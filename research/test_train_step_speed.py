import json

import pytest
import typer

from research.train_step_speed import main


def test_it_times_each_variant_and_reports_ratios_to_eager(tmp_path):
    out = tmp_path / "speed.json"
    main(tower_layers=2, batch=6, steps=2, warmup=1, threads=1, variants="eager,bf16", out=out)
    r = json.loads(out.read_text())
    assert set(r["seconds_per_step"]) == {"eager", "bf16"} and all(v > 0 for v in r["seconds_per_step"].values())
    assert r["ratio_to_eager"]["eager"] == 1.0
    assert r["ratio_to_eager"]["bf16"] == pytest.approx(r["seconds_per_step"]["bf16"] / r["seconds_per_step"]["eager"],
                                                        rel=0.05)


def test_variants_must_start_with_eager(tmp_path):
    with pytest.raises(typer.BadParameter, match="start with eager"):
        main(tower_layers=2, batch=6, steps=1, warmup=0, threads=1, variants="bf16,eager", out=tmp_path / "x.json")
