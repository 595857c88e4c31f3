from collections import Counter

import numpy as np
import pytest

from spote.bench.scenes import TASKS, item_digest, make_item, spotbench


def test_deterministic_per_seed_and_split():
    a = [item_digest(i) for i in spotbench("test", 6, seed=0)]
    assert a == [item_digest(i) for i in spotbench("test", 6, seed=0)]
    assert a != [item_digest(i) for i in spotbench("test", 6, seed=1)]
    assert a != [item_digest(i) for i in spotbench("val", 6, seed=0)]
    with pytest.raises(ValueError):
        list(spotbench("dev", 1))


def test_items_are_well_formed():
    items = list(spotbench("test", 70, seed=3))
    kinds = Counter(i.kind for i in items)
    assert set(kinds) == {t[1] for t in TASKS}
    for it in items:
        assert it.answer in it.choices and it.question.strip()
        w, h = it.image.size
        assert 480 <= w <= 1280 and 480 <= h <= 1280
        if it.evidence is not None:
            x0, y0, x1, y1 = it.evidence
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        else:
            assert it.kind in ("boat", "defect") and it.answer == "no"
    assert any(i.image.size[0] != i.image.size[1] for i in items)


def test_evidence_is_mostly_tiny_with_an_easy_minority():
    items = list(spotbench("test", 200, seed=0))
    with_ev = [i for i in items if i.evidence is not None]
    small = np.mean([i.evidence_frac < 0.01 for i in with_ev])
    easy = np.mean([i.easy for i in items])
    assert small > 0.7 and 0.05 < easy < 0.3
    assert all(i.evidence_frac >= 0.01 for i in with_ev if i.easy and i.kind != "colour")
    assert not any(i.easy for i in items if i.evidence is None)  # easy = large evidence, so none when absent


def test_easy_evidence_is_large_in_the_whole_view():
    """Early exit needs easy evidence legible at the model's input size: about half the long side,
    i.e. 29-42 px of a 64 px letterboxed whole view, while the rest stays a few pixels across."""
    items = list(spotbench("test", 200, seed=1))
    share = lambda i: max(i.evidence[2] - i.evidence[0], i.evidence[3] - i.evidence[1]) / max(i.image.size)  # noqa: E731
    easy = [share(i) for i in items if i.easy]
    hard = [share(i) for i in items if i.evidence is not None and not i.easy]
    assert easy and min(easy) * 64 >= 28 and max(easy) * 64 <= 43
    assert max(hard) * 64 < 6


def test_collapse_tempting_items_are_presence_yes():
    items = list(spotbench("test", 100, seed=2))
    tempting = [i for i in items if i.collapse_tempting]
    assert tempting and all(i.kind in ("boat", "defect") and i.answer == "yes" for i in tempting)


def test_make_item_kind_filter():
    assert make_item(0, "train", 5, kind="digit").kind == "digit"
