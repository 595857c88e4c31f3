"""`make bench-loop`'s report: pooled means, and each round kept on its own (a round is the figure to
quote when the machine's speed changed between rounds)."""

import json

import pytest

from benchmarks.loop_efficiency import main


def test_report_keeps_every_round_and_pools_them(tmp_path):
    out = tmp_path / "loop.json"
    main(n=4, seed=0, rounds=2, batch=4, raw_seconds=0.3, policies=json.dumps({"defaults": {}, "tight": {"budget": 4}}),
         out=out)
    report = json.loads(out.read_text())
    rounds = report["per_round"]
    assert len(rounds) == 2 and all(r["raw_passes_per_second"] > 0 for r in rounds)
    assert report["raw_passes_per_second"] == pytest.approx(sum(r["raw_passes_per_second"] for r in rounds) / 2)
    for name in ("defaults", "tight"):
        pooled = report["policies"][name]
        per = [r["policies"][name] for r in rounds]
        assert pooled["passes_per_item"] == pytest.approx(sum(p["passes_per_item"] for p in per) / 2)
        for r, p in zip(rounds, per):
            assert p["efficiency"] == pytest.approx(p["passes_per_second"] / r["raw_passes_per_second"])
    assert all(r["policies"]["tight"]["passes_per_item"] <= 4 for r in rounds)  # the budget holds per item
