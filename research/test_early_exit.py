import json

from research.early_exit import easy_by_kind, exit_what_if, load


def _rows(tmp_path):
    rows = []
    # item a: easy digit, whole image unsure and wrong; spote searched 40 passes and got it
    # item b: hard boat, whole image sure and right; spote stopped after 1 pass
    # item c: hard letter, whole image fairly sure (0.75) but wrong; spote searched 20 passes, right
    for i, kind, easy, conf, base_ok, passes, ok in [("a", "digit", True, 0.3, False, 40, True),
                                                     ("b", "boat", False, 0.95, True, 1, True),
                                                     ("c", "letter", False, 0.75, False, 20, True)]:
        common = {"id": i, "kind": kind, "easy": easy}
        rows.append({**common, "method": "baseline", "confidence": conf, "correct": base_ok, "forward_passes": 1})
        rows.append({**common, "method": "spote", "confidence": 0.9, "correct": ok, "forward_passes": passes})
    path = tmp_path / "run.items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return load(str(path))


def test_exit_what_if_trades_accuracy_for_passes(tmp_path):
    base, spote = _rows(tmp_path)
    assert exit_what_if(base, spote, 0.9) == (1.0, (40 + 1 + 20) / 3, 40.0)
    acc, passes, easy = exit_what_if(base, spote, 0.7)  # c now stops on its wrong whole-image answer
    assert (acc, passes, easy) == (2 / 3, (40 + 1 + 1) / 3, 40.0)
    assert exit_what_if(base, spote, 0.2)[2] == 1.0  # even the unsure easy item stops


def test_easy_by_kind_counts_only_easy_items(tmp_path):
    base, spote = _rows(tmp_path)
    assert easy_by_kind(base, spote) == {"digit": (1, 0.3, 0.0, 0)}
