import json

import pytest

from spote.bench.compare import agreement, collapse_items, disagreements, main, two_runs


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


def test_runs_of_different_sizes_compare_on_the_items_both_answered():
    cpu = [{**_row("spote", i, "boat", ok), "answer": ans} for i, ok, ans in [("a", True, "yes"), ("b", False, "no"), ("c", True, "3")]]
    gpu = [{**_row("spote", i, "boat", ok), "answer": ans} for i, ok, ans in [("a", True, "yes"), ("b", True, "yes")]]
    rows = two_runs(cpu, gpu, "spote")
    only_cpu, only_gpu, lost = disagreements(rows, "before", "after")
    assert sum(only_cpu.values()) == 0 and dict(only_gpu) == {"boat": 1} and lost == []
    assert agreement(rows, "before", "after") == {"n": 2, "before": 0.5, "after": 1.0, "same_answer": 1}


def test_collapse_flag_keeps_only_collapse_tempting_items(tmp_path, capsys):
    rows = [{**_row("baseline", "a", "boat", True), "collapse": True}, {**_row("spote", "a", "boat", False), "collapse": True},
            {**_row("baseline", "b", "digit", True), "collapse": False}, {**_row("spote", "b", "digit", False), "collapse": False}]
    assert [r["id"] for r in collapse_items(rows)] == ["a", "a"]
    path = tmp_path / "run.items.jsonl"
    path.write_text("\n".join(json.dumps({**r, "answer": "x", "confidence": 0.5, "forward_passes": 1, "has_evidence": True})
                              for r in rows))
    main(str(path), "baseline", "spote", "--collapse")
    out = capsys.readouterr().out
    assert "only baseline right 1" in out and "| a | boat |" in out and "| b |" not in out
    main(str(path), "baseline", "spote")
    assert "only baseline right 2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(str(path), "baseline", "spote", "--colapse")


def test_collapse_on_rows_without_collapse_items_says_so(tmp_path):
    """It said "rows need both methods", of a file holding both."""
    rows = [_row("baseline", "a", "boat", True), _row("spote", "a", "boat", True)]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(SystemExit, match="no collapse-tempting items"):
        main(str(tmp_path / "items.jsonl"), "baseline", "spote", "--collapse")
