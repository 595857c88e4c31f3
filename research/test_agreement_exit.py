import pytest

from research.agreement_exit import agree_exit, item_from_id, product_exit, tally, two_views
from spote.core import PolicyConfig


def _row(i, pw, pg, answer="a", easy=False, tau=0.3):
    return {"id": i, "easy": easy, "answer": answer, "choices": ["a", "b"], "tau": tau,
            "p_whole": pw, "p_glance": pg, "h_whole": 0.6, "h_glance": 0.6}


def test_agree_exit_needs_the_same_answer_and_both_sure_enough():
    assert agree_exit(_row("x", [0.7, 0.3], [0.65, 0.35]), 0.6)
    assert not agree_exit(_row("x", [0.7, 0.3], [0.55, 0.45]), 0.6)   # glance not sure enough
    assert not agree_exit(_row("x", [0.7, 0.3], [0.3, 0.7]), 0.5)     # different answers


def test_product_exit_sharpens_two_agreeing_views():
    # 0.8 and 0.8 -> 0.94 after the product: H 0.23 <= 0.3; 0.7 and 0.7 -> 0.84: H 0.44 > 0.3
    assert product_exit(_row("x", [0.8, 0.2], [0.8, 0.2]))
    assert not product_exit(_row("x", [0.7, 0.3], [0.7, 0.3]))


def test_tally_counts_only_items_unsure_on_both_views_and_scores_them_against_the_search():
    rows = [_row("right", [0.7, 0.3], [0.7, 0.3]),                  # stopped, right
            _row("wrong", [0.7, 0.3], [0.7, 0.3], answer="b"),      # stopped, wrong
            {**_row("clear", [0.7, 0.3], [0.7, 0.3]), "h_glance": 0.1},  # the glance already stops it
            _row("split", [0.7, 0.3], [0.4, 0.6])]                  # views disagree
    searched = {"right": {"correct": False, "forward_passes": 70}, "wrong": {"correct": True, "forward_passes": 40}}
    t = tally(rows, lambda r: agree_exit(r, 0.6), searched)
    assert t == {"stopped": 2, "easy": 0, "wrong": 1, "search_right_rule_wrong": 1, "rule_right_search_wrong": 1,
                 "passes_saved": 68 + 38}


def test_two_views_reads_a_real_item(shipped_adapter):
    item = item_from_id("val-0-00003")
    assert item.id == "val-0-00003"
    row = two_views(shipped_adapter, item, PolicyConfig())
    assert sum(row["p_whole"]) == pytest.approx(1.0, abs=1e-4) and sum(row["p_glance"]) == pytest.approx(1.0, abs=1e-4)
    assert len(row["p_whole"]) == len(item.choices) and row["tau"] > 0
