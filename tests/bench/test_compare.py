import pytest

from spote.bench.compare import disagreements, two_runs


def _row(method, i, kind, correct):
    return {"method": method, "id": i, "kind": kind, "correct": correct}


def test_disagreements_count_each_side_by_kind():
    rows = [_row("grid", "a", "boat", True), _row("spote", "a", "boat", False),   # only grid
            _row("grid", "b", "digit", False), _row("spote", "b", "digit", True),  # only spote
            _row("grid", "c", "digit", True), _row("spote", "c", "digit", True)]   # both
    only_a, only_b, lost = disagreements(rows, "grid", "spote")
    assert dict(only_a) == {"boat": 1} and dict(only_b) == {"digit": 1}
    assert [(ra["id"], rb["method"]) for ra, rb in lost] == [("a", "spote")]


def test_disagreements_need_both_methods():
    with pytest.raises(SystemExit):
        disagreements([_row("grid", "a", "boat", True)], "grid", "spote")


def test_two_runs_compare_one_method_across_files():
    before = [_row("spote", "a", "letter", False), _row("grid", "a", "letter", True), _row("spote", "b", "boat", True)]
    after = [_row("spote", "a", "letter", True), _row("spote", "b", "boat", False)]
    only_before, only_after, lost = disagreements(two_runs(before, after, "spote"), "before", "after")
    assert dict(only_before) == {"boat": 1} and dict(only_after) == {"letter": 1}
    assert [ra["id"] for ra, _ in lost] == ["b"]
