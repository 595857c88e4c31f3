import math

import pytest

from research.open_views import choose, greedy_batch, picks, summarise
from spote.bench.scenes import make_open_item
from spote.spotlight import Box, ViewRenderer
from tests.conftest import random_adapter, random_tiny_dir  # noqa: F401 (fixtures: a random spote-tiny)


def test_batched_greedy_reads_as_one_view_at_a_time(random_adapter):  # noqa: F811
    item = make_open_item(0, "val", 2)
    renderer = ViewRenderer(item.image, random_adapter.input_size)
    w, h = item.image.size
    boxes = [Box(0, 0, w // 2, h // 2), Box(w // 3, h // 3, w, h), Box(*item.evidence)]
    views = [renderer.render(b, "zoom+context") for b in boxes]  # unequal prompts pad on the left
    batched = greedy_batch(random_adapter, views, item.question, max_new_tokens=5)
    for v, got in zip(views, batched):
        one = random_adapter.generate(v, item.question, max_new_tokens=5)
        assert got["text"] == one.text
        if one.entropies:
            assert got["entropy"] == pytest.approx(sum(one.entropies) / len(one.entropies), abs=1e-3)
            assert got["logp"] == pytest.approx(sum(one.logprobs) / len(one.logprobs), abs=1e-3)
        else:
            assert math.isinf(got["entropy"]) and math.isinf(got["logp"])


def _read(text, entropy, logp, reward):
    return {"text": text, "entropy": entropy, "logp": logp, "reward": reward}


def test_each_rule_picks_its_window_and_the_summary_scores_it():
    reads = [_read("K7", 1.0, -0.9, 0.30), _read("K", 0.2, -0.1, 0.10), _read("K1", 0.9, -0.5, 0.25)]
    assert choose(reads, "own_entropy")["text"] == "K"
    assert choose(reads, "own_logp")["text"] == "K"
    assert choose(reads, "finalists_2")["text"] == "K1"   # the two best by reward, then the surer reading
    assert choose(reads, "finalists_1")["text"] == "K7"
    assert choose([], "own_logp") is None
    with pytest.raises(ValueError, match="unknown rule"):
        choose(reads, "vote")
    items = [{"gold": "K7", "answers": {"spote": "K1", "oracle": "K7"}, "reads": reads},
             {"gold": "3A", "answers": {"spote": "3A", "oracle": "3"}, "reads": []}]
    s = summarise(items)
    assert s["spote"]["exact_match"] == 0.5 and s["oracle"]["exact_match"] == 0.5
    assert s["finalists_2"]["exact_match"] == 0.5  # no reads: the loop's own answer stands
    assert s["any"]["exact_match"] == 0.5
    assert s["own_logp"]["char_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["spote_window_shifted_reads_otherwise"] == 0.5  # K7 re-read where the loop said K1; no reads: no
    assert picks(items[0]) == {"spote": "K1", "oracle": "K7", "own_entropy": "K", "own_logp": "K", "finalists_1": "K7",
                               "finalists_2": "K1", "finalists_4": "K", "finalists_8": "K"}


def test_field_window_ratio_is_the_smallest_window_holding_the_field_over_the_oracles():
    from research.open_reading import oracle_box
    from research.open_views import field_window_ratio

    item = make_open_item(0, "val", 1)
    ob = oracle_box(item, 64)
    big = Box.square(*ob.centre, 2 * ob.width)
    off = Box(0, 0, ob.width / 2, ob.height / 2)  # a corner: not the field
    assert field_window_ratio(item, [{"box": big.as_list()}], 64) == pytest.approx(2.0, rel=0.02)
    assert field_window_ratio(item, [{"box": big.as_list()}, {"box": ob.as_list()}], 64) == pytest.approx(1.0, rel=0.02)
    assert field_window_ratio(item, [{"box": off.as_list()}], 64) is None
