import math

from research.exit_threshold import stops, whole_image_rows
from spote.bench.scenes import spotbench


def test_normalised_rule_asks_the_same_certainty_of_every_choice_count():
    # (easy, correct, entropy nats, choices): a 10-way digit at 0.6 nats, a yes/no at 0.3, a hard wrong yes/no at 0.4
    rows = [(True, True, 0.6, 10), (True, True, 0.3, 2), (False, False, 0.4, 2)]
    assert stops(rows, 0.35, normalised=False) == {"easy_stop_rate": 0.5, "hard_stopped": 0, "hard_stopped_wrong": 0}
    # 0.6 / ln 10 = 0.26 and 0.3 / ln 2 = 0.43: the digit stops, the yes/no no longer does
    assert stops(rows, 0.3, normalised=True)["easy_stop_rate"] == 0.5
    assert stops(rows, 0.6, normalised=True) == {"easy_stop_rate": 1.0, "hard_stopped": 1, "hard_stopped_wrong": 1}


def test_whole_image_rows_one_per_item(shipped_adapter):
    items = list(spotbench("val", 6, 0))
    rows = whole_image_rows(shipped_adapter, items)
    assert [r[0] for r in rows] == [i.easy for i in items]
    assert all(0.0 <= r[2] <= math.log(r[3]) + 1e-4 and r[3] == len(i.choices) for r, i in zip(rows, items))
