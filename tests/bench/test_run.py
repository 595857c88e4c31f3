import json

import pytest

from spote.bench.run import auroc, evidence_hit, run_bench


def test_auroc_and_hit():
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.5, 0.5], [True, True]) is None
    assert evidence_hit([0, 0, 100, 100], [10, 10, 20, 20], (1000, 1000))
    assert not evidence_hit([0, 0, 1000, 1000], [10, 10, 20, 20], (1000, 1000))  # the whole image is no spotlight
    assert not evidence_hit(None, [10, 10, 20, 20], (1000, 1000))


def test_bench_writes_the_documented_json(random_tiny_dir, tmp_path):
    out = tmp_path / "b.json"
    from spote.core import PolicyConfig

    report = run_bench(n=4, seed=0, methods=["baseline", "oracle", "spote", "random", "api", "vicrop"], out=out,
                       model=str(random_tiny_dir), cfg=PolicyConfig(budget=10), plot=True, progress=False)
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(report))
    assert {"n_items", "seed", "split", "model", "methods"} <= set(data) and data["n_items"] == 4
    import torch
    assert data["environment"]["torch"] == torch.__version__ and data["environment"]["cpu"]  # what a re-run must match
    for m in ("baseline", "oracle", "spote", "random", "api", "vicrop"):
        s = data["methods"][m]
        assert {"accuracy", "forward_passes_mean", "seconds_per_item", "evidence_hit_rate", "accuracy_by_evidence_size",
                "accuracy_collapse_items", "auroc"} <= set(s)
        assert 0 <= s["accuracy"] <= 1
    assert data["methods"]["baseline"]["forward_passes_mean"] == 1
    assert data["methods"]["spote"]["forward_passes_mean"] <= 10
    assert out.with_suffix(".png").exists()


def test_gpu_memory_is_none_without_a_gpu():
    import shutil

    import torch

    from spote.bench.gpu import GpuMemoryPeak, torch_peak_mb

    if torch.cuda.is_available() or shutil.which("nvidia-smi"):
        pytest.skip("this machine has a GPU")
    with GpuMemoryPeak() as gpu:
        pass
    assert gpu.peak_mb is None and gpu.idle_mb is None and torch_peak_mb() is None


# ----------------------------------------------------------------------------- open items
from spote.bench.run import (  # noqa: E402
    anchor_positions,
    anchors_kept,
    char_accuracy,
    exact_match,
    normalise_code,
    summarise,
)


def test_exact_match_normalises_case_and_white_space():
    assert normalise_code(" 3a 9q\n") == "3A9Q"
    assert exact_match("3a 9Q", "3A9Q") and not exact_match("3A9", "3A9Q") and not exact_match("", "K7")


@pytest.mark.parametrize("answer,gold,expected", [
    ("3A9Q", "3A9Q", 1.0),
    ("3A9", "3A9Q", 0.75),    # one of four missing: 1 - 1/4
    ("3B9Q", "3A9Q", 0.75),   # one substituted
    ("3A9QX", "3A9Q", 0.8),   # one extra: 1 - 1/5 (the longer length)
    ("7K", "K7", 0.0),        # two edits over two characters: a swap is no half-right answer
    ("", "K7", 0.0),
    ("k 7", "K7", 1.0),       # normalised first
])
def test_char_accuracy_is_one_minus_normalised_levenshtein(answer, gold, expected):
    assert char_accuracy(answer, gold) == pytest.approx(expected)


def test_anchors_are_low_entropy_positions_kept_by_the_same_token_in_place():
    assert anchor_positions([0.01, 0.5, 0.05, 0.1], 0.1) == [0, 2]  # strictly below epsilon
    base = [5, 6, 7]
    assert anchors_kept(base, [0, 2], [5, 9, 7]) == 2
    assert anchors_kept(base, [0, 2], [5]) == 1           # a shorter answer loses the anchors past its end
    assert anchors_kept(base, [0, 2], [7, 5, 6]) == 0     # shifted tokens are not the same positions
    assert anchors_kept(base, [0, 2], None) == 0


def _open_row(correct, char_acc, anchors, kept, collapse, passes, confidence, variant="small"):
    return {"open": True, "correct": correct, "char_accuracy": char_acc, "anchors": anchors, "anchors_kept": kept,
            "collapse": collapse, "forward_passes": passes, "confidence": confidence, "variant": variant}


def test_summarise_keeps_closed_figures_closed_and_pools_open_anchors():
    closed = [{"correct": c, "confidence": p, "forward_passes": 1, "seconds": 0.1, "collapse": False, "easy": False,
               "size_bucket": "tiny(<0.1%)", "kind": "digit", "has_evidence": True, "hit": False}
              for c, p in ((True, 0.9), (False, 0.2))]
    opened = [_open_row(True, 1.0, 2, 1, False, 3, 0.9),
              _open_row(False, 0.5, 3, 3, True, 5, 0.3, "split"),
              _open_row(False, 0.25, 0, 0, True, 10, 0.1, "mixed")]
    s = summarise(closed + opened)
    assert s["accuracy"] == 0.5 and s["forward_passes_mean"] == 1 and s["n_collapse_items"] == 0  # closed rows only
    o = s["open"]
    assert o["n"] == 3 and o["exact_match"] == pytest.approx(1 / 3)
    assert o["char_accuracy"] == pytest.approx(1.75 / 3)
    assert o["anchor_preservation"] == pytest.approx(4 / 5)  # pooled: 4 of 5 anchors, not the mean of 1/2 and 3/3
    assert o["n_anchor_positions"] == 5
    assert o["exact_match_collapse_items"] == 0.0 and o["n_collapse_items"] == 2
    assert o["forward_passes_mean"] == 6 and o["auroc"] == 1.0
    assert o["exact_match_by_variant"] == {"mixed": 0.0, "small": 1.0, "split": 0.0}
    empty = summarise(closed)["open"]
    assert empty["n"] == 0 and empty["exact_match"] is None and empty["anchor_preservation"] is None
    only_open = summarise(opened)
    assert only_open["accuracy"] is None and only_open["open"]["n"] == 3


OPEN_KEYS = {"n", "exact_match", "char_accuracy", "anchor_preservation", "exact_match_collapse_items",
             "forward_passes_mean", "auroc"}


def test_bench_json_reports_open_items_apart_on_the_shipped_model(shipped_adapter, tmp_path):
    """The JSON's shape, not accuracy: the shipped weights were not trained to read codes."""
    from spote.bench.report import table
    from spote.core import PolicyConfig

    out = tmp_path / "open.json"
    methods = ["baseline", "oracle", "naive_entropy", "spote"]
    report = run_bench(n=2, n_open=3, seed=0, methods=methods, out=out, adapter=shipped_adapter,
                       cfg=PolicyConfig(budget=8), plot=False, progress=False)
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(report)) and data["n_items"] == 2 and data["n_open_items"] == 3
    for m in methods:
        s = data["methods"][m]
        assert sum(s["n_by_evidence_size"].values()) == 2          # closed figures: the closed items only
        assert OPEN_KEYS <= set(s["open"]) and s["open"]["n"] == 3
        assert 0 <= s["open"]["exact_match"] <= 1 and 0 <= s["open"]["char_accuracy"] <= 1
        assert s["open"]["forward_passes_mean"] <= 8
    rows = [json.loads(x) for x in out.with_suffix(".items.jsonl").read_text().splitlines()]
    opened = [r for r in rows if r.get("open")]
    assert len(opened) == 3 * len(methods) and all(r["gold"] and r["variant"] for r in opened)
    assert "Open items (n=3)" in table(data)


def test_anchor_preservation_follows_the_answer_tokens_of_each_method(random_adapter, tmp_path):
    """With every baseline position an anchor (epsilon huge): every method is scored on the same anchors,
    and the whole image's own answer keeps all of them."""
    from spote.core import PolicyConfig

    report = run_bench(n=0, n_open=3, seed=1, methods=["baseline", "oracle"], out=tmp_path / "a.json",
                       adapter=random_adapter, cfg=PolicyConfig(budget=4, anchor_epsilon=1e9), plot=False,
                       progress=False)
    base, oracle = report["methods"]["baseline"]["open"], report["methods"]["oracle"]["open"]
    assert base["n_anchor_positions"] > 0 and base["anchor_preservation"] == 1.0
    assert oracle["n_anchor_positions"] == base["n_anchor_positions"]
    assert report["methods"]["baseline"]["accuracy"] is None  # no closed items
    rows = [json.loads(x) for x in (tmp_path / "a.items.jsonl").read_text().splitlines()]
    for r in rows:
        assert 0 <= r["anchors_kept"] <= r["anchors"]
