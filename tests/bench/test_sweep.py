"""The budget sweep: one point per method and budget, the same whether budgets run one after another or at once."""

import json

import pytest

from spote.bench.sweep import sweep


def test_sweep_points_per_method_and_budget_and_parallel_runs_agree(tmp_path):
    kw = dict(split="val", n=3, seed=0, budgets=[3, 6], methods=("spote", "grid"), progress=False, defaults=False)
    one = sweep(**kw, out=tmp_path / "one.json", jobs=1)
    two = sweep(**kw, out=tmp_path / "two.json", jobs=2)
    key = lambda r: {m: [(p["budget"], p["accuracy"], p["forward_passes_mean"]) for p in pts]  # noqa: E731
                     for m, pts in r["methods"].items()}
    assert key(one) == key(two)  # seconds differ; answers and passes do not
    for m in ("spote", "grid"):
        pts = {p["budget"]: p for p in one["methods"][m]}
        assert set(pts) == {3, 6}
        assert pts[3]["forward_passes_mean"] <= 3 and pts[6]["forward_passes_mean"] <= 6
    assert json.loads((tmp_path / "two.json").read_text())["methods"] == two["methods"]
    assert (tmp_path / "two.png").stat().st_size > 0 and (tmp_path / "two.b6.json").exists()


def test_keep_copies_the_other_methods_points_and_refuses_another_run(tmp_path):
    kw = dict(split="val", n=2, seed=0, budgets=[3], progress=False, defaults=False)
    first = sweep(**kw, methods=("spote", "grid"), out=tmp_path / "all.json")
    again = sweep(**kw, methods=("spote",), out=tmp_path / "spote.json", keep=tmp_path / "all.json")
    assert again["methods"]["grid"] == first["methods"]["grid"]  # kept, not re-run
    assert [p["forward_passes_mean"] for p in again["methods"]["spote"]] == \
        [p["forward_passes_mean"] for p in first["methods"]["spote"]]
    with pytest.raises(ValueError, match="differ"):
        sweep(**{**kw, "seed": 1}, methods=("spote",), out=tmp_path / "x.json", keep=tmp_path / "all.json")
    with pytest.raises(ValueError, match="differ"):  # another model's points are not merged
        sweep(**kw, methods=("spote",), out=tmp_path / "x.json", keep=tmp_path / "all.json", model="other/model")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "text.json").write_text("not json")
    for bad in ("missing.json", "list.json", "text.json"):
        with pytest.raises(ValueError, match=f"--keep .*{bad}: not a readable budget-sweep JSON"):
            sweep(**kw, methods=("spote",), out=tmp_path / "x.json", keep=tmp_path / bad)
