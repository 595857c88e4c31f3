import math

from research.stop_rules import RULES, replay_item
from spote.core import PolicyConfig


def _lp(*p):
    return [math.log(v) for v in p]


def _record(calls, gold=1, passes=None):
    return {"choices": ["yes", "no"], "gold": gold, "calls": calls, "passes": passes or calls[-1][0], "easy": False}


def test_replay_keeps_a_clear_glance_only_and_truncates_at_the_rule():
    # baseline unsure (leans yes), an unclear glance leaning no (paid for, not kept), then two chunks:
    # the first leans no (clearer than the baseline), the second is clear for no
    calls = [[1, [_lp(0.6, 0.4)]], [2, [_lp(0.3, 0.7)]], [6, [_lp(0.25, 0.75)] * 4], [10, [_lp(0.02, 0.98)] * 4]]
    cfg = PolicyConfig()
    ok, passes, conf = replay_item(_record(calls), cfg, RULES["recorded"])
    assert (ok, passes) == (True, 10) and conf > 0.97
    ok, passes, conf = replay_item(_record(calls), cfg, lambda s: s["passes"] >= 6)
    assert (ok, passes) == (True, 6) and math.isclose(conf, 0.75, rel_tol=1e-6)  # the chunk, not the unclear glance
    ok, passes, _ = replay_item(_record(calls), cfg, lambda s: s["passes"] >= 2)
    assert (ok, passes) == (False, 2)  # only the baseline is kept after the glance: "yes"


def test_yes_no_absence_rule_waits_for_its_passes_and_any_view_saying_yes():
    rule = RULES["yes/no: no view p(yes)>=0.5 after 8"]
    flat = [[1, [_lp(0.4, 0.6)]], [2, [_lp(0.45, 0.55)]], [6, [_lp(0.45, 0.55)] * 4], [10, [_lp(0.4, 0.6)] * 4],
            [14, [_lp(0.4, 0.6)] * 4]]
    assert replay_item(_record(flat, passes=14), PolicyConfig(), rule)[1] == 10  # stops at the first read past 8 passes
    seen = [c if i != 2 else [6, [_lp(0.55, 0.45)] + [_lp(0.45, 0.55)] * 3] for i, c in enumerate(flat)]
    assert replay_item(_record(seen, passes=14), PolicyConfig(), rule)[1] == 14  # a view said yes: search on


def test_replayed_settle_rule_is_the_loops_own_settle_stop():
    """A recording without the settle stop, replayed with the settle rule, ends where and as the loop with it does."""
    from research.stop_rules import RecordingAdapter
    from spote.bench.scenes import spotbench
    from spote.core import spote
    from spote.loading import load_adapter

    adapter = RecordingAdapter(load_adapter(None, device="cpu"))
    rule = RULES["settle: no other answer p>=0.7 after 24"]
    settled = 0
    for item in spotbench("val", 12, 0):
        if item.easy:
            continue
        adapter.calls, p0 = [], adapter.inner.forward_passes
        full = spote(adapter, item.image, item.question, item.choices, PolicyConfig(settle_after=0))
        rec = {"choices": list(item.choices), "gold": item.choices.index(item.answer), "easy": False,
               "passes": full.forward_passes, "calls": [[p - p0, rows] for p, rows in adapter.calls]}
        ok, passes, _ = replay_item(rec, PolicyConfig(), rule)
        loop = spote(adapter.inner, item.image, item.question, item.choices, PolicyConfig())
        assert (passes, ok) == (loop.forward_passes, loop.answer == item.answer)
        settled += loop.forward_passes < full.forward_passes
    assert settled >= 1  # the rule did end some searches early
