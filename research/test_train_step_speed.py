import json

import pytest
import typer

import research.train_step_speed as speed
from research.train_step_speed import main, time_variants


def test_it_times_each_variant_and_reports_ratios_to_eager(tmp_path):
    out = tmp_path / "speed.json"
    main(tower_layers=2, batch=6, steps=2, warmup=1, threads=1, rounds=2, variants="eager,bf16", out=out)
    r = json.loads(out.read_text())
    assert set(r["seconds_per_step"]) == {"eager", "bf16"} and all(v > 0 for v in r["seconds_per_step"].values())
    assert r["ratio_to_eager"]["eager"] == 1.0
    assert r["ratio_to_eager"]["bf16"] == pytest.approx(r["seconds_per_step"]["bf16"] / r["seconds_per_step"]["eager"],
                                                        rel=0.05)


def test_variants_take_turns_each_turn_starting_one_later(monkeypatch):
    calls = []

    def fake_make_step(model, compiled, bf16, batch):
        name = {v: k for k, v in speed.VARIANTS.items()}[(compiled, bf16)]
        return lambda: calls.append(name) or 1.0
    monkeypatch.setattr(speed, "make_step", fake_make_step)
    seconds = time_variants(None, ["eager", "bf16", "compile"], batch=1, steps=6, warmup=1, rounds=3)
    assert seconds == {"eager": 1.0, "bf16": 1.0, "compile": 1.0}
    timed = calls[3:]  # after one warm-up step each
    assert timed == ["eager"] * 2 + ["bf16"] * 2 + ["compile"] * 2 + ["bf16"] * 2 + ["compile"] * 2 + ["eager"] * 2 \
        + ["compile"] * 2 + ["eager"] * 2 + ["bf16"] * 2
    with pytest.raises(ValueError, match="multiple of rounds"):
        time_variants(None, ["eager"], batch=1, steps=5, warmup=0, rounds=2)


def test_variants_must_start_with_eager(tmp_path):
    with pytest.raises(typer.BadParameter, match="start with eager"):
        main(tower_layers=2, batch=6, steps=4, warmup=0, threads=1, rounds=4, variants="bf16,eager", out=tmp_path / "x.json")
