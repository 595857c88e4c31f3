import math

import pytest

from research.open_reading import (by_size_table, glyph_px, oracle_box, phrasing_exact_match, standout_table,
                                   teacher_forced_places, winning_views_report)
from spote.bench.scenes import make_open_item
from spote.spotlight import ViewRenderer
from tests.conftest import random_adapter, random_tiny_dir  # noqa: F401 (fixtures: a random spote-tiny)


def _row(i, correct, char_accuracy, method="oracle"):
    item = make_open_item(0, "val", i)
    return {"method": method, "id": item.id, "open": True, "gold": item.answer, "correct": correct,
            "char_accuracy": char_accuracy}


def test_a_tighter_close_up_shows_the_same_glyphs_larger():
    item = make_open_item(0, "val", 1)  # a small code: the oracle's square is the 64 px minimum
    box = oracle_box(item, 64)
    assert all(box.contains_frac(type(box)(*c)) == 1.0 for c in item.meta["chars"])
    h = min(c[3] - c[1] for c in item.meta["chars"])
    assert glyph_px(item, 64) == pytest.approx(h * 64 / box.width)
    ev = item.evidence
    field = 1.05 * max(ev[2] - ev[0], ev[3] - ev[1])  # the field's own square, under the 64 px minimum
    assert 32 < field < 64 and glyph_px(item, 64, min_side=32) == pytest.approx(h * 64 / field)


def test_by_size_groups_every_row_once_by_size_and_once_by_length():
    rows = [_row(i, i % 3 == 0, (i % 4) / 4) for i in range(12)] + [_row(0, True, 1.0, method="spote")]
    table = by_size_table(rows)
    sizes = [r for r in table if r["group"].startswith("glyphs")]
    lengths = [r for r in table if r["group"].endswith("characters")]
    assert sum(r["n"] for r in sizes) == 12 and sum(r["n"] for r in lengths) == 12
    # the groups' means weighted by their sizes give back the overall means
    em = sum(r["exact_match"] * r["n"] for r in lengths) / 12
    assert em == pytest.approx(sum(i % 3 == 0 for i in range(12)) / 12)
    for r in lengths:
        k = int(r["group"].split()[0])
        picked = [x for x in rows[:12] if len(x["gold"]) == k]
        assert r["char_accuracy"] == pytest.approx(sum(x["char_accuracy"] for x in picked) / len(picked))
    with pytest.raises(ValueError, match="no open rows"):
        by_size_table(rows, method="grid")


def test_standout_table_answers_on_the_whole_image_below_each_threshold():
    """Four items: z 0.5 (search wrong, whole right), 2.5 (both right), 50 (search right, whole wrong) and
    one the search never ran on (no standout: counts as infinitely far out)."""
    cases = [("large", 0.5, False, True), ("large", 2.5, True, True), ("small", 50.0, True, False), ("small", None, False, False)]
    rows = []
    for i, (variant, z, search_ok, whole_ok) in enumerate(cases):
        rows.append({"method": "baseline", "id": f"o{i}", "open": True, "variant": variant, "correct": whole_ok})
        rows.append({"method": "spote", "id": f"o{i}", "open": True, "variant": variant, "correct": search_ok,
                     **({} if z is None else {"standout": z})})
    t = standout_table(rows, [1.0, 3.0, 100.0])
    assert t["all"]["n"] == 4 and t["large"]["n"] == 2 and t["small"]["n"] == 2
    assert t["all"]["exact_match_search"] == 0.5 and t["all"]["exact_match_whole"] == 0.5
    assert t["large"]["exact_match_at"] == {"1.0": 1.0, "3.0": 1.0, "100.0": 1.0}
    assert t["small"]["exact_match_at"] == {"1.0": 0.5, "3.0": 0.5, "100.0": 0.0}
    assert t["all"]["exact_match_at"]["3.0"] == 0.75 and t["all"]["exact_match_at"]["100.0"] == 0.5
    with pytest.raises(ValueError, match="no baseline row"):
        standout_table(rows[1:], [1.0])
    with pytest.raises(ValueError, match="no open spote rows"):
        standout_table([r for r in rows if r["method"] == "baseline"], [1.0])


def test_teacher_forced_places_follow_each_code_and_match_greedy_reading(random_adapter):  # noqa: F811
    items = [make_open_item(0, "val", i) for i in range(3)]
    res = teacher_forced_places(random_adapter, items)
    tok = random_adapter.tokenizer
    lengths = [len(tok(it.answer, add_special_tokens=False).input_ids) for it in items]
    assert [r["n"] for r in res["places"]] == [sum(n > k for n in lengths) for k in range(max(lengths))]
    assert all(0 < r["p_gold"] < 1 and 0 <= r["sure"] <= 1 for r in res["places"])
    assert 0 < res["p_eos_after_last"] < 1
    # place 0 on one item is the probability greedy generation gives the same first token
    from spote.spotlight import ViewRenderer

    item = items[0]
    views = ViewRenderer(item.image, random_adapter.input_size).render(oracle_box(item, random_adapter.input_size),
                                                                      "zoom+context")
    one = teacher_forced_places(random_adapter, [item])["places"][0]["p_gold"]
    gen = random_adapter.generate(views, item.question, max_new_tokens=1)
    gold_first = tok(item.answer, add_special_tokens=False).input_ids[0]
    if gen.token_ids and gen.token_ids[0] == gold_first:
        assert one == pytest.approx(math.exp(gen.logprobs[0]), rel=1e-3)
    else:
        assert one <= math.exp(max(gen.logprobs, default=0.0)) + 1e-6


def test_the_shipped_model_reads_its_training_phrasing_better_than_another(shipped_adapter):
    items = [make_open_item(0, "val", i) for i in range(24)]
    res = phrasing_exact_match(shipped_adapter, items, [None, "what is the reference code ?"])
    assert set(res) == {"spotbench", "what is the reference code ?"}
    assert res["spotbench"] >= 0.125 and res["what is the reference code ?"] < res["spotbench"]  # measured 7 of 24, 0


def test_whole_image_endings_count_empty_answers_and_the_sure_ones(shipped_adapter):
    """The shipped model on pages it cannot read: asked in its own words it spells something, asked in the
    documents job's it mostly ends at once, and surely (so SPOT-E stops there with nothing read)."""
    from research.open_reading import whole_image_endings

    items = [make_open_item(0, "val", i) for i in range(10)]
    own = whole_image_endings(shipped_adapter, items, "what is the code in the reference field ?")
    other = whole_image_endings(shipped_adapter, items, "what is the reference code ?")
    assert own["empty"] <= 0.2 and other["empty"] >= 0.5
    assert (own["median_end_entropy"] is None) == (own["empty"] == 0)  # a median only of empty answers (valid JSON)
    assert other["sure_empty"] >= 0.5 and other["median_end_entropy"] < 0.35  # measured 0.7, 0.01 nats
    assert whole_image_endings(shipped_adapter, items, "what is the reference code ?", sure=10.0)["sure_empty"] == other["empty"]


def test_phrasing_exact_match_runs_the_whole_loop_or_refuses_another_method(shipped_adapter):
    """``method="spote"`` answers through the search (asked in SpotBench's words it reads some of the codes);
    any other method than oracle or spote is refused by name."""
    items = [make_open_item(0, "val", i) for i in range(4)]
    res = phrasing_exact_match(shipped_adapter, items, [None], method="spote")
    assert set(res) == {"spotbench"} and res["spotbench"] >= 0.25  # measured 2 of 4
    with pytest.raises(ValueError, match="grid"):
        phrasing_exact_match(shipped_adapter, items, [None], method="grid")


def test_answer_windows_table_finds_large_fields_wider_than_every_search_window(random_adapter):  # noqa: F811
    """The search's largest window is half the page's short side (``window_grid``); a large code's field is
    wider than that, a small code's is not, and the shares describe every item."""
    from research.open_reading import answer_windows_table

    large = answer_windows_table(random_adapter, [make_open_item(0, "val", i, variant="large") for i in range(2)])
    small = answer_windows_table(random_adapter, [make_open_item(0, "val", i, variant="small") for i in range(2)])
    assert large["largest_window"] == pytest.approx(0.5) and small["largest_window"] == pytest.approx(0.5)
    assert large["share_fields_larger_than_any_window"] == 1.0 and large["median_field_side"] > 0.5
    assert small["share_fields_larger_than_any_window"] == 0.0 and small["median_field_side"] < 0.25
    assert large["n"] == small["n"] == 2


def test_winning_views_are_the_runs_best_rewards_and_each_place_reads_the_whole_images_tokens(random_adapter):  # noqa: F811
    item = make_open_item(0, "val", 2, variant="large")
    rep = winning_views_report(random_adapter, item, top=5)
    rewards = [v["reward"] for v in rep["best_views"]]
    assert len(rewards) == min(5, rep["views_read"]) and rewards == sorted(rewards, reverse=True)
    assert all(0 <= v["field_held"] <= 1 and 0 < v["side"] <= 1 for v in rep["best_views"])
    n = len(rep["whole_image_tokens"])
    assert set(rep["teacher_forced"]) == {"whole image", "best view", "field-holding square"}
    for name, read in rep["teacher_forced"].items():
        assert len(read["p"]) == len(read["entropy"]) == n and all(0 <= p <= 1 for p in read["p"])
    assert rep["teacher_forced"]["whole image"]["reward"] == 0.0
    # the best view read again scores its logged reward (with this adapter; boxes are logged at whole pixels, and
    # the shipped model's reading of a box moved by a fraction of a pixel can differ in the third decimal)
    assert rep["teacher_forced"]["best view"]["reward"] == pytest.approx(rewards[0], abs=1e-4)


def test_anchor_table_counts_places_below_each_threshold_and_the_right_ones():
    from research.open_reading import anchor_table

    readings = [{"variant": "mixed", "entropies": [0.8, 2.5], "hits": [True, False], "length_right": False},
                {"variant": "mixed", "entropies": [1.5, 3.55, 3.55], "hits": [False, False, True], "length_right": True},
                {"variant": "small", "entropies": [], "hits": [], "length_right": False},
                {"variant": "large", "entropies": [1.0], "hits": [True], "length_right": True}]
    t = anchor_table(readings, [1.0, 2.0, 3.0, float("inf")])
    assert (t["n"], t["places"], t["length_right"]) == (4, 6, 0.5)
    assert (t["min_entropy"], t["median_entropy"], t["max_entropy"]) == (0.8, 2.0, 3.55)
    assert t["by_epsilon"]["1.0"] == {"anchors": 1, "right": 1, "items": 1}  # below, as find_anchors: 1.0 is not
    assert t["by_epsilon"]["2.0"] == {"anchors": 3, "right": 2, "items": 3}
    assert t["by_epsilon"]["3.0"] == {"anchors": 4, "right": 2, "items": 3}
    assert t["by_epsilon"]["inf"] == {"anchors": 6, "right": 3, "items": 3}  # an empty answer has no place
    empty = anchor_table([], [1.0])
    assert empty["places"] == 0 and empty["median_entropy"] is None and empty["by_epsilon"]["1.0"]["anchors"] == 0


def test_whole_image_readings_mark_the_characters_the_whole_image_gets_right(shipped_adapter):
    """Per-place hits agree with the answer's own text: all places right and the length right is exact match."""
    from research.open_reading import whole_image_readings
    from spote.bench.run import exact_match

    items = [make_open_item(0, "val", i, variant=v) for i, v in enumerate(["large"] * 4 + ["small"] * 2)]
    readings = whole_image_readings(shipped_adapter, items)
    for it, r in zip(items, readings):
        whole = shipped_adapter.generate([ViewRenderer(it.image, shipped_adapter.input_size).global_view], it.question)
        assert len(r["entropies"]) == len(r["hits"]) == len(whole.token_ids)
        assert (all(r["hits"]) and r["length_right"]) == exact_match(whole.text, it.answer)
        assert r["variant"] == it.meta["variant"]
    assert any(any(r["hits"]) for r in readings[:4])  # large glyphs: some read on the whole page


def test_generate_after_the_greedy_answers_own_start_gives_the_same_answer(shipped_adapter):
    """Given the first tokens greedy decoding chose, decoding goes on as it did: the start survives being
    written into the prompt and read back (codes spelled "T", "##T", ...)."""
    from research.open_reading import generate_after, oracle_box

    for i in range(4):
        it = make_open_item(0, "val", i)
        views = ViewRenderer(it.image, shipped_adapter.input_size).render(oracle_box(it, shipped_adapter.input_size),
                                                                          "zoom+context")
        plain = shipped_adapter.generate(views, it.question)
        assert generate_after(shipped_adapter, views, it.question, []) == plain.text
        for k in range(1, len(plain.token_ids) + 1):
            assert generate_after(shipped_adapter, views, it.question, plain.token_ids[:k]) == plain.text


def test_prefixed_table_counts_every_item_once_per_way(shipped_adapter):
    from research.open_reading import prefixed_table

    items = [make_open_item(0, "val", i, variant=v) for i, v in enumerate(["mixed", "mixed", "small"])]
    t = prefixed_table(shipped_adapter, items, [0.0, 100.0])
    assert set(t) == {"mixed", "small"}
    assert {k: n for k, (_, n, _) in t["mixed"].items()} == {"plain": 2, "start<0.0": 2, "start<100.0": 2,
                                                             "true_large_start": 2}
    assert {k: n for k, (_, n, _) in t["small"].items()} == {"plain": 1, "start<0.0": 1, "start<100.0": 1}
    for v in t.values():
        assert v["start<0.0"] == [v["plain"][0], v["plain"][1], 0]  # no start: the plain read
        assert v["start<100.0"][2] == v["start<100.0"][1]           # every item started (the whole answer)
    assert t["mixed"]["true_large_start"][2] == 2


def test_prefixed_table_starts_from_the_whole_answer_and_the_true_large_characters(shipped_adapter, monkeypatch):
    import research.open_reading as orr
    from spote.bench.run import normalise_code

    item = make_open_item(0, "val", 0, variant="mixed")
    seen = []
    real = orr.generate_after
    monkeypatch.setattr(orr, "generate_after", lambda a, v, q, ids, **kw: seen.append(list(ids)) or real(a, v, q, ids, **kw))
    orr.prefixed_table(shipped_adapter, [item], [100.0])
    whole = shipped_adapter.generate([ViewRenderer(item.image, shipped_adapter.input_size).global_view], item.question)
    large = normalise_code(item.answer)[:orr.leading_run(item.meta["legible_whole"])]
    assert large and seen[0] == [] and seen[1] == whole.token_ids
    assert shipped_adapter.decode_answer(seen[2]) == large


def test_leading_run_counts_until_the_first_false():
    from research.open_reading import leading_run

    assert [leading_run(f) for f in ([], [False], [True, True], [True, False, True])] == [0, 0, 2, 1]
