import json
import math
import warnings
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from spote.bench.scenes import make_item
from spote.core import (STANDOUT_CAP, PolicyConfig, answer_centred, answer_neighbours, answer_window, answer_windows, mean_token_logp, standout, surest_reading, Reader, Reading, SpotlightPolicy, coarse_windows, find_anchors, glance_window,
                        in_probe_band, naive_entropy_config, reward, spote, window_grid)
from spote.saliency import saliency_map
from spote.loading import weights_checksum
from spote.spotlight import Box, ViewRenderer


def _image(w=640, h=480, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


Q, CHOICES = "what digit is in the red box ?", tuple("0123456789")


def test_window_grid_covers_scales_within_image():
    boxes, scale_idx = window_grid(1000, 600, 64)
    assert len(set(scale_idx.tolist())) >= 3
    for b in boxes:
        assert 0 <= b.x0 and b.x1 <= 1000 + 1e-6 and 0 <= b.y0 and b.y1 <= 600 + 1e-6
    smallest = min(b.width for b in boxes)
    assert 64 - 1e-6 <= smallest <= 1.5 * 64  # never zoom past native pixels


@pytest.mark.parametrize("step", [2.0, 2 ** 0.5, 1.26])
def test_window_sides_shrink_by_the_scale_step_down_to_the_model_input(step):
    boxes, scale_idx = window_grid(1000, 600, 64, scale_step=step)
    sides = [next(b.width for b, k in zip(boxes, scale_idx) if k == s) for s in sorted(set(scale_idx.tolist()))]
    assert sides[0] == pytest.approx(300) and min(sides) >= 64 - 1e-6
    ratios = [a / b for a, b in zip(sides, sides[1:])]
    assert all(r == pytest.approx(step) for r in ratios[:-1]) and 1 < ratios[-1] <= step * 1.001


@pytest.mark.parametrize("step", [1.26, 2.0, 3.0, 4.0])
@pytest.mark.parametrize("size", [(1000, 600), (4000, 3000), (333, 900)])
def test_the_finest_window_comes_within_one_and_a_half_model_inputs_of_min_window(step, size):
    """Whatever the step, the ladder ends at min_window or at most 1.5x above it (a coarse step once stopped
    two model inputs above it)."""
    for min_window in (1.0, 2.0):
        boxes, _ = window_grid(*size, 64, min_window, scale_step=step)
        assert min_window * 64 - 1e-6 <= min(b.width for b in boxes) <= 1.5 * min_window * 64


def test_numpy_settings_become_python_numbers_so_a_result_stays_json():
    cfg = PolicyConfig(scale_step=np.float64(1.5), group_size=np.int64(8), use_relevance=np.bool_(True),
                       exit_entropy_per_ln_k=np.float32(0.5), budget=np.int32(40))
    assert json.loads(json.dumps(asdict(cfg)))["scale_step"] == 1.5
    assert [type(v) for v in (cfg.scale_step, cfg.group_size, cfg.use_relevance, cfg.budget)] == [float, int, bool, int]
    assert cfg == PolicyConfig(scale_step=1.5, group_size=8, exit_entropy_per_ln_k=0.5, budget=40)


def _tightest_fit(step: float, side: float = 70) -> float:
    """Mean, over places along a row, of the smallest window side holding a square thing there."""
    boxes, _ = window_grid(1000, 600, 64, scale_step=step)
    things = [Box(x, 200, x + side, 200 + side) for x in range(0, 930, 31)]
    return float(np.mean([min(b.width for b in boxes if b.contains_frac(t) == 1.0) for t in things]))


def test_a_finer_scale_step_gives_more_scales_tighter_windows_and_a_bad_one_is_refused():
    assert len(set(window_grid(1000, 600, 64, scale_step=2 ** 0.5)[1].tolist())) > len(
        set(window_grid(1000, 600, 64, scale_step=2.0)[1].tolist()))
    assert _tightest_fit(1.26) < _tightest_fit(2 ** 0.5) < _tightest_fit(2.0)
    for bad in (1.0, 0.5, 5.0, 10 ** 400):  # an int too large for a float: ValueError, not OverflowError
        with pytest.raises(ValueError, match="scale_step"):
            PolicyConfig(scale_step=bad)
    for bad in (0, -1, 0.1, 100):  # 0 made the grid loop until memory ran out
        with pytest.raises(ValueError, match="min_window must be 0.5-16"):
            PolicyConfig(min_window=bad)


def test_batched_and_one_by_one_give_the_same_distributions(random_adapter):
    img = _image()
    from spote.spotlight import ViewRenderer

    r = ViewRenderer(img, random_adapter.input_size)
    views = [r.render(Box(i * 50, i * 30, i * 50 + 200, i * 30 + 200), "zoom") for i in range(5)]
    batched = random_adapter.choice_logprobs(views, Q, CHOICES)
    single = torch.cat([random_adapter.choice_logprobs([v], Q, CHOICES) for v in views])
    assert batched.shape == (5, 10)
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batched.exp().sum(-1), torch.ones(5), atol=1e-5, rtol=0)


def test_early_exit_after_one_pass(random_adapter):
    res = spote(random_adapter, _image(), Q, CHOICES, PolicyConfig(exit_entropy_per_ln_k=10.0))
    assert res.forward_passes == 1 and res.boxes == [] and len(res.entropy_trace) == 1


def test_exit_threshold_per_ln_k_scales_with_the_answer_set(random_adapter):
    base = spote(random_adapter, _image(), Q, CHOICES, PolicyConfig(budget=1)).entropy_trace[0]
    ratio = base / np.log(len(CHOICES))  # the whole image's entropy as a share of ln 10
    above = spote(random_adapter, _image(), Q, CHOICES, PolicyConfig(exit_entropy=0.0, exit_entropy_per_ln_k=ratio * 1.01))
    below = spote(random_adapter, _image(), Q, CHOICES, PolicyConfig(exit_entropy=10.0, exit_entropy_per_ln_k=ratio * 0.99,
                                                                      budget=40))
    assert above.forward_passes == 1 and below.forward_passes > 1
    raw = spote(random_adapter, _image(), Q, CHOICES, PolicyConfig(exit_entropy=base * 1.01, exit_entropy_per_ln_k=None))
    assert raw.forward_passes == 1  # None: the threshold in nats, as for open-ended answers


def test_coarse_probe_only_when_the_whole_image_is_almost_clear(random_adapter):
    base = spote(random_adapter, _image(), Q, CHOICES, PolicyConfig(budget=1)).entropy_trace[0]
    per_ln_k = base / np.log(len(CHOICES)) / 1.5  # the whole image sits at 1.5 x the exit threshold
    cfg = PolicyConfig(exit_entropy_per_ln_k=per_ln_k, group_size=8, first_group=0, steps=2, plateau_patience=9,
                       glance_side=0.0)
    near = spote(random_adapter, _image(), Q, CHOICES, cfg)
    far = spote(random_adapter, _image(), Q, CHOICES, replace(cfg, probe_below=1.4))
    coarse = [b.as_list() for group in coarse_windows(640, 480, cfg.probe_side) for b in group]
    # a random model is clear nowhere: the four corners in one group, the centre alone, then the policy
    assert near.boxes[:5] == coarse and near.box_steps[:5] == [0, 0, 0, 0, 1]
    assert near.box_steps[5:].count(2) == 8
    assert far.box_steps.count(0) == 8 and not any(b in far.boxes for b in coarse)
    # a threshold the clearest corner meets: done after the corners, no centre, no policy
    h_corner = min(near.box_entropies[:4])
    assert h_corner < base
    tau = (h_corner + base) / 2
    corner = spote(random_adapter, _image(), Q, CHOICES, replace(cfg, exit_entropy_per_ln_k=tau / np.log(len(CHOICES))))
    assert corner.boxes == coarse[:4] and corner.forward_passes == 5


def test_glance_comes_first_and_alone_settles_when_clear(random_adapter):
    img = _image()
    base = spote(random_adapter, img, Q, CHOICES, PolicyConfig(budget=1)).entropy_trace[0]
    cfg = PolicyConfig(exit_entropy_per_ln_k=base / np.log(len(CHOICES)) / 1.5, group_size=8, first_group=0, steps=1,
                       plateau_patience=9)
    look = glance_window(img, cfg.glance_side, saliency_map(img, cfg.saliency_size)).as_list()
    coarse = [b.as_list() for group in coarse_windows(*img.size, cfg.probe_side) for b in group]
    # clear nowhere: the glance alone (step 0), the corners (1), the centre (2), then the policy (3)
    run = spote(random_adapter, img, Q, CHOICES, cfg)
    assert run.boxes[:6] == [look] + coarse and run.box_steps[:6] == [0, 1, 1, 1, 1, 2]
    assert run.box_steps[6:].count(3) == 8
    # above the probe band the glance still comes first, then straight to the policy
    far = spote(random_adapter, img, Q, CHOICES, replace(cfg, probe_below=1.4))
    assert far.boxes[0] == look and far.box_steps[1:].count(1) == 8 and not any(b in far.boxes for b in coarse)
    # a threshold the glance meets (if it is clearer than the whole image): two passes, nothing else
    h_look = run.box_entropies[0]
    assert h_look < base  # true of this random model and image; what makes the next check meaningful
    tau = (h_look + base) / 2
    done = spote(random_adapter, img, Q, CHOICES, replace(cfg, exit_entropy_per_ln_k=tau / np.log(len(CHOICES))))
    assert done.boxes == [look] and done.forward_passes == 2 and done.evidence_box == look
    # an unclear glance is paid for but steers nothing: the rest of the run is the run without it
    off = spote(random_adapter, img, Q, CHOICES, replace(cfg, glance_side=0.0))
    assert run.boxes == [look] + off.boxes and run.forward_passes == off.forward_passes + 1
    assert run.box_steps[1:] == [s + 1 for s in off.box_steps] and run.answer == off.answer


def test_glance_window_is_a_square_of_the_short_side_inside_the_image():
    img = Image.new("RGB", (900, 500), (230, 230, 230))
    ImageDraw.Draw(img).rectangle([820, 400, 880, 480], fill=(200, 20, 20))  # salient thing in a corner
    b = glance_window(img, 0.8, saliency_map(img))
    assert b.width == pytest.approx(400) and b.height == pytest.approx(400)
    assert b.x1 == pytest.approx(900) and b.y1 == pytest.approx(500)  # pushed inside, holding the thing
    with pytest.raises(ValueError):
        PolicyConfig(glance_side=1.0)


def test_coarse_windows_are_the_corner_and_centre_squares_inside_the_image():
    corners, centre = coarse_windows(1000, 600, 0.65)
    wins = corners + centre
    assert len(corners) == 4 and len(centre) == 1 and all(b.width == b.height == pytest.approx(390) for b in wins)
    assert [(round(b.x0), round(b.y0)) for b in wins] == [(0, 0), (610, 0), (0, 210), (610, 210), (305, 105)]
    assert all(b.x1 <= 1000 + 1e-6 and b.y1 <= 600 + 1e-6 for b in wins)


@pytest.mark.parametrize("budget", [1, 5, 13, 30])
def test_budget_is_never_exceeded(random_adapter, budget):
    res = spote(random_adapter, _image(), Q, CHOICES, PolicyConfig(budget=budget, exit_entropy_per_ln_k=0.0, plateau_patience=99))
    assert 1 <= res.forward_passes <= budget


def test_result_record_is_json_and_complete(random_adapter):
    res = spote(random_adapter, _image(), Q, CHOICES, PolicyConfig(budget=20, exit_entropy_per_ln_k=0.0))
    rec = json.loads(json.dumps(res.to_dict()))
    assert set(rec) == {"method", "answer", "confidence", "distribution", "entropy_trace", "reward_trace", "anchors",
                        "boxes", "chosen_boxes", "evidence_box", "forward_passes", "seconds", "mode", "policy",
                        "token_confidences", "answer_cut_off", "reward_standout"}
    assert rec["method"] == "spote" and rec["answer_cut_off"] is None  # a closed set is never cut off
    assert rec["answer"] in CHOICES and abs(sum(rec["distribution"].values()) - 1) < 1e-4
    assert len(rec["entropy_trace"]) == len(rec["reward_trace"]) + 1 == len(rec["chosen_boxes"]) + 1
    assert all(len(b) == 4 for b in rec["boxes"])


def test_same_seed_same_result(random_adapter):
    cfg = PolicyConfig(budget=25, exit_entropy_per_ln_k=0.0, seed=3)
    a = spote(random_adapter, _image(), Q, CHOICES, cfg).to_dict()
    b = spote(random_adapter, _image(), Q, CHOICES, cfg).to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_model_stays_frozen(random_adapter):
    before = weights_checksum(random_adapter.model)
    spote(random_adapter, _image(), Q, CHOICES, PolicyConfig(budget=20, exit_entropy_per_ln_k=0.0))
    assert weights_checksum(random_adapter.model) == before
    assert not any(p.requires_grad for p in random_adapter.model.parameters())


def test_black_box_mode_runs_without_attention(random_adapter):
    res = spote(random_adapter, _image(), Q, CHOICES, PolicyConfig(budget=20, exit_entropy_per_ln_k=0.0, use_relevance=False))
    assert res.forward_passes <= 20 and len(res.boxes) > 0


def test_open_ended_generation_path(random_adapter):
    res = spote(random_adapter, _image(), "what colour is the vehicle ?", None, PolicyConfig(budget=12, exit_entropy=0.0))
    assert res.distribution is None and res.forward_passes <= 12
    assert isinstance(res.answer, str)


def _recorded_generations(monkeypatch, adapter) -> list:
    """Every generation ``adapter`` makes from now on, as (view sets read, Generation); ``generate`` is
    ``generate_agreed`` on one view set, so both are recorded."""
    calls = []
    real = adapter.generate_agreed

    def spy(views_batch, question, *args, **kwargs):
        gen = real(views_batch, question, *args, **kwargs)
        calls.append((len(views_batch), gen))
        return gen
    monkeypatch.setattr(adapter, "generate_agreed", spy)
    return calls


@pytest.mark.parametrize("grid", [1, 3])
def test_open_answer_is_decoded_jointly_where_the_best_windows_agree(random_adapter, grid, monkeypatch):
    """The search keeps grid^2 passes aside and spends them on the answer: one joint decoding of grid^2
    views, whose text is the answer, read at the evidence box (where the best windows agree)."""
    seen = _recorded_generations(monkeypatch, random_adapter)
    # no glance: it is logged among the boxes but never a candidate unless clear, which exit_entropy 0 forbids
    q, cfg = "what colour is the vehicle ?", PolicyConfig(budget=30, exit_entropy=0.0, answer_grid=grid, answer_top=4,
                                                          glance_side=0.0, standout_z=0.0)
    res = spote(random_adapter, _image(), q, None, cfg)
    assert res.evidence_box is not None and res.forward_passes <= 30
    assert (seen[-1][0], seen[-1][1].text) == (grid ** 2, res.answer)  # the last generation is the answer's, on grid^2 views
    where = answer_window([Box(*b) for b in res.boxes], res.box_rewards, 4, *_image().size)
    where = answer_centred(where, saliency_map(_image()), cfg.answer_centring, *_image().size)
    assert np.allclose(res.evidence_box, where.as_list(), atol=1)


def test_open_answer_at_the_defaults_is_one_reading_of_27_copies_of_the_centred_window(random_adapter, monkeypatch):
    """A 96-pass budget pays for the 9 shifted copies at three sides each, read once, at the agreed window
    centred on its salient surroundings: 27 views, the answer's text and the evidence box; the copies'
    passes are kept aside, so the budget holds. A budget whose third holds 9 copies but not 27 reads 9."""
    import spote.core as core

    seen = _recorded_generations(monkeypatch, random_adapter)
    centrings = []  # (agreed window, centred window): spote's own call, its rewards unrounded

    def centring(box, *args, **kwargs):
        centrings.append((box, answer_centred(box, *args, **kwargs)))
        return centrings[-1][1]

    monkeypatch.setattr(core, "answer_centred", centring)
    img = _image()
    cfg = PolicyConfig(exit_entropy=0.0, glance_side=0.0, plateau_patience=99, standout_z=0.0)  # the search answers
    res = spote(random_adapter, img, "what colour is the vehicle ?", None, cfg)
    assert res.forward_passes <= cfg.budget and res.evidence_box is not None
    assert (seen[-1][0], seen[-1][1].text) == (27, res.answer) and [n for n, _ in seen].count(27) == 1
    (agreed, centred), = centrings
    # the agreed window is the best-rewarded one's neighbourhood (the rewards logged are rounded to 5 places,
    # so recomputing it from them can move it by a pixel or more), then centred on the saliency about it
    top = max(res.box_rewards)  # the best window's, rounded: it is among the windows logged with it
    assert any(Box(*b).intersection(agreed) > 0 for b, r in zip(res.boxes, res.box_rewards) if r == top)
    assert centred.as_list() == answer_centred(agreed, saliency_map(img, cfg.saliency_size), cfg.answer_centring,
                                               *img.size).as_list()
    assert np.allclose(res.evidence_box, centred.as_list(), atol=1) and res.answer_from_neighbour is False
    seen.clear()
    small = spote(random_adapter, img, "what colour is the vehicle ?", None, replace(cfg, budget=60))
    assert seen[-1][0] == 9 and small.forward_passes <= 60


@pytest.mark.parametrize("budget", range(2, 30, 3))
def test_an_open_question_never_exceeds_the_budget_and_a_small_one_still_searches(random_adapter, budget):
    q = "what colour is the vehicle ?"
    res = spote(random_adapter, _image(), q, None, PolicyConfig(budget=budget, exit_entropy=0.0, plateau_patience=99))
    assert 1 <= res.forward_passes <= budget
    if budget >= 4:  # room for the whole image, a group of two and the answer: the search ran
        assert len(res.boxes) >= 2


def test_a_search_that_stops_on_a_clear_window_answers_there_in_one_generation(random_adapter, monkeypatch):
    """A legible window is not second-guessed: no agreed window, no shifted copies (they may read less)."""
    q, img = "what colour is the vehicle ?", _image()
    base, _ = Reader(random_adapter, q).baseline([ViewRenderer(img, random_adapter.input_size).global_view])
    calls = _recorded_generations(monkeypatch, random_adapter)
    cfg = PolicyConfig(budget=60, exit_entropy=base.entropy - 1e-6, glance_side=0.0, probe_side=0.0, anchor_weight=0.0)
    res = spote(random_adapter, img, q, None, cfg)
    assert res.evidence_box is not None and res.entropy_trace[-1] <= cfg.exit_entropy  # stopped on a clear window
    assert calls[-1][0] == 1  # the answer: one generation
    assert res.forward_passes < 60


@pytest.mark.parametrize("budget, reads", [(36, 2), (60, 3), (96, 5)])
def test_open_answer_is_the_surest_reading_of_the_agreed_window_and_its_neighbours(random_adapter, monkeypatch, budget, reads):
    """Half the budget pays for joint readings (9 views each) of the agreed window and as many of its
    neighbours as fit; the answer, its confidences and the evidence box are those of the reading with the
    highest mean token log p, and the budget holds."""
    calls = _recorded_generations(monkeypatch, random_adapter)
    img = _image()
    cfg = PolicyConfig(budget=budget, exit_entropy=0.0, glance_side=0.0, plateau_patience=99, answer_step=0.15, standout_z=0.0,
                       answer_rescale=0.0)
    res = spote(random_adapter, img, "what colour is the vehicle ?", None, cfg)
    assert res.forward_passes <= budget and res.evidence_box is not None
    last = calls[-reads:]
    assert [n for n, _ in last] == [9] * reads and (len(calls) == reads or calls[-reads - 1][0] != 9)
    surest = max(range(reads), key=lambda i: mean_token_logp(last[i][1].logprobs))
    assert res.answer == last[surest][1].text
    assert res.token_confidences == pytest.approx([math.exp(lp) for lp in last[surest][1].logprobs])
    agreed = answer_window([Box(*b) for b in res.boxes], res.box_rewards, cfg.answer_top, *img.size)
    agreed = answer_centred(agreed, saliency_map(img), cfg.answer_centring, *img.size)
    assert np.allclose(res.evidence_box, answer_neighbours(agreed, cfg.answer_step, *img.size)[surest].as_list(), atol=1)
    assert res.answer_from_neighbour is (surest > 0)
    # every reading is kept, in the order read, each with its window: the answer is one of them
    assert [(t, lp) for _, t, lp in res.answer_readings] == [(g.text, list(g.logprobs)) for _, g in last]
    assert Box(*res.answer_readings[surest][0]).as_list() == res.evidence_box
    # the neighbours' readings are at the g^2 shifts even where answer_rescale would give the window alone 27
    assert cfg.answer_rescale == 0 and replace(cfg, answer_rescale=0.1) != cfg
    calls.clear()
    spote(random_adapter, img, "what colour is the vehicle ?", None, replace(cfg, answer_rescale=0.1))
    assert [n for n, _ in calls[-reads:]] == [9] * reads
    # with the step at 0 the agreed window is read alone, and the search gets the passes
    alone = spote(random_adapter, img, "what colour is the vehicle ?", None, replace(cfg, answer_step=0.0))
    assert alone.forward_passes <= budget and len(alone.boxes) > len(res.boxes)


def test_standout_is_the_best_rewards_robust_z_score_among_all_read():
    r = [0.0, 0.1, -0.1, 0.05, -0.05, 0.2, -0.2, 0.0, 1.0]
    med = np.median(r)
    assert standout(r) == pytest.approx((1.0 - med) / (1.4826 * np.median(np.abs(np.array(r) - med))))
    assert standout([2 * x + 1 for x in r]) == pytest.approx(standout(r))  # free of the rewards' scale and offset
    assert standout(r[:-1] + [5.0]) > standout(r)  # a best further out stands out more
    assert standout([0.0] * 8 + [0.5]) == STANDOUT_CAP  # the others do not vary at all: infinitely far, kept finite
    assert standout([0.3] * 9) == 0.0  # nothing stands out
    assert standout([0.0] * 6 + [1.0]) == STANDOUT_CAP  # too few rewards to tell noise: the search answers


def test_an_open_search_whose_best_view_does_not_stand_out_answers_on_the_whole_image(random_adapter):
    """The same search, with the bar just above and just below its best view's robust z: below it the
    whole image's answer is given (no evidence box, no answer copies read), above it the search's."""
    q, img = "what colour is the vehicle ?", _image()
    _, whole = Reader(random_adapter, q).baseline([ViewRenderer(img, random_adapter.input_size).global_view])
    cfg = PolicyConfig(budget=60, exit_entropy=0.0, glance_side=0.0, standout_z=0.0)
    searched = spote(random_adapter, img, q, None, cfg)
    z = searched.reward_standout
    assert searched.evidence_box is not None and math.isfinite(z) and z > 0.1
    assert z == pytest.approx(standout(searched.box_rewards), rel=0.01)  # the logged rewards are rounded
    kept = spote(random_adapter, img, q, None, replace(cfg, standout_z=z + 0.05))
    assert kept.evidence_box is None and kept.answer == whole and kept.boxes == searched.boxes
    assert kept.forward_passes < searched.forward_passes and kept.answer_readings is None
    assert kept.token_confidences and kept.confidence == pytest.approx(min(kept.token_confidences), rel=1e-4)
    assert spote(random_adapter, img, q, None, replace(cfg, standout_z=z - 0.05)).evidence_box == searched.evidence_box
    # an unclear glance is logged first but may not answer: neither its reward nor its place in the spread counts
    glanced = spote(random_adapter, img, q, None, replace(cfg, glance_side=0.8))
    assert glanced.box_steps[0] == 0 and glanced.box_steps[1] == 1
    assert standout(glanced.box_rewards) != pytest.approx(standout(glanced.box_rewards[1:]), rel=0.01)  # it would count
    assert glanced.reward_standout == pytest.approx(standout(glanced.box_rewards[1:]), rel=0.01)
    # closed sets answer from their best view whatever the bar: the rule is for open answers
    choices = ["red", "blue", "yellow"]
    closed = PolicyConfig(budget=40, exit_entropy_per_ln_k=0.0, glance_side=0.0, settle_after=0)
    searched_closed = spote(random_adapter, img, q, choices, closed)
    from_search = searched_closed.evidence_box
    assert from_search is not None and spote(random_adapter, img, q, choices, replace(closed, standout_z=1e9)).evidence_box == from_search
    assert searched_closed.reward_standout is None  # nor is its z reported where the rule does not apply


def test_answer_neighbours_are_the_window_then_distinct_moves_inside_the_image():
    box = Box(100, 50, 300, 250)
    got = answer_neighbours(box, 0.15, 1000, 600)
    assert got[0] == box and len(got) == 5
    right, left, down, up = got[1:]
    assert (right.x0, left.x0, down.x0, up.x0) == (130, 70, 100, 100) and (down.y0, up.y0, right.y0) == (80, 20, 50)
    assert all(b.width == b.height == 200 for b in got)
    edge = answer_neighbours(Box(0, 0, 200, 200), 0.25, 1000, 600)  # left and up land back on the window: dropped
    assert edge == [Box(0, 0, 200, 200), Box(50, 0, 250, 200), Box(0, 50, 200, 250)]
    assert answer_neighbours(Box(0, 0, 600, 600), 0.15, 1000, 600)[1:] == [Box(90, 0, 690, 600)]  # the short side spanned
    wide = answer_neighbours(Box(100, 100, 300, 200), 0.1, 1000, 600)  # not square: moves by width across, height down
    assert [(b.x0, b.y0, b.width, b.height) for b in wide[1:]] == [(120, 100, 200, 100), (80, 100, 200, 100),
                                                                    (100, 110, 200, 100), (100, 90, 200, 100)]
    assert answer_neighbours(box, 0.0, 1000, 600) == [box]
    for bad in (-0.1, 0.6, float("nan")):
        with pytest.raises(ValueError, match="step must be in"):
            answer_neighbours(box, bad, 1000, 600)


def test_the_surest_reading_is_the_one_surest_per_token_not_in_all(random_adapter, monkeypatch):
    """Scripted readings: a one-token answer at log p -0.5 against a four-token one at -0.2 per token. The
    product of probabilities favours the short one; the mean per token, the rule, the long one."""
    real = random_adapter.generate_agreed
    script = iter([[-0.5], [-0.2] * 4, [-3.0, -3.0], [], [-1.0]])
    calls = []

    def scripted(views_batch, question, *args, **kwargs):
        gen = real(views_batch, question, *args, **kwargs)
        if len(views_batch) == 9:  # an answer's reading (the search reads no view set jointly)
            lp = next(script)
            gen = replace(gen, text=f"r{len(calls)}", token_ids=gen.token_ids[:len(lp)], logprobs=lp)
            calls.append(gen.text)
        return gen
    monkeypatch.setattr(random_adapter, "generate_agreed", scripted)
    cfg = PolicyConfig(budget=96, exit_entropy=0.0, glance_side=0.0, plateau_patience=99, answer_step=0.15, standout_z=0.0,
                       answer_rescale=0.0)
    res = spote(random_adapter, _image(), "what colour is the vehicle ?", None, cfg)
    assert calls == ["r0", "r1", "r2", "r3", "r4"] and res.answer == "r1"
    assert res.confidence == pytest.approx(math.exp(-0.2), abs=1e-6) and res.answer_from_neighbour is True  # its least sure token


def test_one_generation_per_window_reads_no_neighbours(random_adapter, monkeypatch):
    """An endpoint (no joint decoding) or answer_grid 1: one generation on the agreed window, and the
    search keeps the neighbours' passes."""
    calls = _recorded_generations(monkeypatch, random_adapter)
    cfg = PolicyConfig(budget=96, exit_entropy=0.0, glance_side=0.0, plateau_patience=99, standout_z=0.0)
    for adapter_joint, grid in ((False, 3), (True, 1)):
        calls.clear()
        monkeypatch.setattr(random_adapter, "joint_decoding", adapter_joint, raising=False)
        res = spote(random_adapter, _image(), "what colour is the vehicle ?", None, replace(cfg, answer_grid=grid))
        views_read = [n for n, _ in calls]
        assert views_read[-1] == 1 and 9 not in views_read and res.answer_from_neighbour is False
        assert res.forward_passes > 90  # the search had the passes


def test_mean_token_logp_is_nats_per_token_and_an_empty_answer_loses():
    assert mean_token_logp([-1.0, -3.0]) == -2.0
    assert mean_token_logp([]) == -math.inf and mean_token_logp([-50.0]) > mean_token_logp([])


def test_surest_reading_is_the_best_mean_per_token_and_a_tie_goes_to_the_first():
    assert surest_reading([[-0.5], [-0.2] * 4, [-3.0, -3.0], []]) == 1
    assert surest_reading([[-1.0, -1.0], [-0.5, -1.5], [-1.0]]) == 0


def test_answer_window_centres_on_the_reward_weighted_best_windows():
    boxes = [Box(0, 0, 100, 100), Box(40, 0, 140, 100), Box(500, 500, 560, 560), Box(20, 20, 120, 120)]
    rewards = [0.3, 0.1, -0.2, 0.2]
    w = answer_window(boxes, rewards, 3, 1000, 800)  # the three best: centres 50,50 / 70,70 / 90,50
    assert w.centre == pytest.approx(((0.3 * 50 + 0.2 * 70 + 0.1 * 90) / 0.6, (0.3 * 50 + 0.2 * 70 + 0.1 * 50) / 0.6))
    assert w.width == w.height == 100
    assert answer_window(boxes, rewards, 1, 1000, 800) == boxes[0]
    assert answer_window(boxes, rewards, 4, 1000, 800) == w  # a window below the whole image has no say
    # nor in the side: one positive window among larger negative ones keeps its own side
    assert answer_window([Box(0, 0, 50, 50), Box(0, 0, 400, 400), Box(0, 0, 400, 400)], [0.2, -0.1, -0.1], 3, 1000, 800).width == 50
    assert answer_window([Box(0, 0, 100, 100)], [1.0], 1, 80, 300).width == 80  # never larger than the image
    with pytest.raises(ValueError, match="no window has a positive reward"):
        answer_window(boxes, [0.0, -1.0, -1.0, 0.0], 2, 1000, 800)
    # windows spread over the page: those apart from the best have no say, so the window is where one looked
    spread = [Box(0, 0, 100, 100), Box(800, 600, 900, 700), Box(50, 0, 150, 100)]
    w = answer_window(spread, [0.5, 0.4, 0.1], 3, 1000, 800)
    assert w.centre == pytest.approx(((0.5 * 50 + 0.1 * 100) / 0.6, 50)) and w.intersection(spread[0]) > 0
    for bad in ((boxes, rewards, 0), (boxes, rewards[:3], 2), (boxes, [0.3, float("inf"), 0.1, 0.2], 2)):
        with pytest.raises(ValueError, match="one finite reward per box"):
            answer_window(*bad, 1000, 800)


def test_answer_windows_are_the_box_first_then_shifted_copies_inside_the_image():
    cfg = PolicyConfig(answer_grid=3, answer_shift=0.05)
    box = Box(100, 50, 300, 250)
    wins = answer_windows(box, cfg, 1000, 600)
    assert wins[0] == box and len(wins) == len({tuple(w.as_list()) for w in wins}) == 9
    assert {round(w.x0 - box.x0) for w in wins} == {-10, 0, 10} and {round(w.y0 - box.y0) for w in wins} == {-10, 0, 10}
    assert all(w.width == box.width and w.height == box.height for w in wins)
    edge = answer_windows(Box(0, 0, 200, 200), cfg, 1000, 600)  # shifted copies stay inside the image
    assert all(w.x0 >= 0 and w.y0 >= 0 for w in edge)
    assert answer_windows(box, PolicyConfig(answer_grid=1), 1000, 600) == [box]


def test_rescaled_answer_windows_follow_each_shifted_copy_with_a_smaller_and_a_larger_square():
    cfg = PolicyConfig(answer_grid=3, answer_shift=0.05, answer_rescale=0.1)
    box = Box(100, 50, 300, 250)
    plain = answer_windows(box, cfg, 1000, 600)
    wins = answer_windows(box, cfg, 1000, 600, rescaled=True)
    assert len(wins) == 27 and wins[0::3] == plain  # the shifted copies, each followed by its rescaled ones
    for w, smaller, larger in zip(wins[0::3], wins[1::3], wins[2::3]):
        assert (smaller.width, larger.width) == pytest.approx((180, 220))
        assert smaller.centre == pytest.approx(w.centre) and larger.centre == pytest.approx(w.centre)
    corner = answer_windows(Box(0, 0, 590, 590), cfg, 1000, 600, rescaled=True)  # 1.1 x 590 > 600: the short side
    assert all(0 <= w.x0 and w.x1 <= 1000 and 0 <= w.y0 and w.y1 <= 600 for w in corner) and corner[2].height == 600
    assert answer_windows(box, replace(cfg, answer_rescale=0.0), 1000, 600, rescaled=True) == plain


def test_answer_centred_moves_the_window_onto_the_field_near_it_keeping_its_side():
    rng = np.random.default_rng(3)
    img = Image.fromarray((rng.normal(235, 4, (600, 900, 1)) * np.ones((1, 1, 3))).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.rectangle([500, 300, 620, 340], outline=(215, 25, 25), width=3)  # the field, centre (560, 320)
    draw.rectangle([40, 40, 300, 200], outline=(215, 25, 25), width=6)  # another, far away and more salient
    sal = saliency_map(img)
    off = Box.square(525, 300, 130)  # about the field's side, a quarter of it off to the left and up
    got = answer_centred(off, sal, 1.5, *img.size)
    assert got.width == got.height == pytest.approx(130)
    assert abs(got.centre[0] - 560) < 10 and abs(got.centre[1] - 320) < 8 and got.iou(Box(495, 255, 625, 385)) > 0.8
    assert answer_centred(off, sal, 0, *img.size) == off  # reach 0: not moved
    edge = answer_centred(Box.square(860, 560, 120), sal, 2.0, *img.size)  # moved, then kept inside the image
    assert edge.x1 <= 900 and edge.y1 <= 600
    flat = saliency_map(Image.new("RGB", (900, 600), (90, 90, 90)))
    assert answer_centred(off, flat, 1.5, 900, 600) == off  # nothing salient: where it was
    wide = answer_centred(Box(500, 290, 600, 340), sal, 1.5, *img.size)  # not square: its width and height kept
    assert (wide.width, wide.height) == pytest.approx((100, 50)) and abs(wide.centre[0] - 560) < 15
    low = answer_centred(Box(0, 0, 100, 50), saliency_map(img.resize((100, 60))), 4, 100, 60)
    assert low.y0 >= 0 and low.y1 <= 60 and low.height == pytest.approx(50)
    for bad in (0.5, 5, -1):
        with pytest.raises(ValueError, match="reach must be 0 or 1-4"):
            answer_centred(off, sal, bad, *img.size)


def test_grpo_update_moves_probability_to_the_high_reward_spotlight():
    """Rewarded by overlap with a 100 px thing, the policy's mass on windows around it grows.

    One group of 8 rarely touches a thing holding 1% of the mass, so a single run can stay put when
    no sample overlaps it (no reward signal); over 8 sampling seeds most runs must move there."""
    cfg = PolicyConfig(learning_rate=0.5)
    target = Box(560, 380, 660, 480)
    ratios = []
    for seed in range(8):
        policy = SpotlightPolicy(800, 600, 64, cfg)
        near = torch.tensor([w.iou(target) > 0.3 for w in policy.windows])
        with torch.no_grad():
            m0 = float(policy.log_probs().exp()[near].sum())
        rng = np.random.default_rng(seed)
        for _ in range(15):
            idx = policy.sample(8, rng, set())
            rewards = np.array([policy.windows[i].iou(target) for i in idx])  # a test-made reward
            if rewards.std() > 0:
                policy.update(idx, (rewards - rewards.mean()) / rewards.std())
        with torch.no_grad():
            ratios.append(float(policy.log_probs().exp()[near].sum()) / m0)
    assert 0 < int(near.sum()) < len(policy.windows) // 20 and m0 < 0.05
    assert np.median(ratios) > 10 and sum(r > 3 for r in ratios) >= 6, ratios


def test_peak_windows_are_centred_on_the_peaks_at_the_two_finest_sides():
    plain = SpotlightPolicy(900, 700, 64, PolicyConfig())
    peaks = [(400.0, 300.0), (10.0, 690.0)]  # the second is at a corner: its windows are clamped inside
    policy = SpotlightPolicy(900, 700, 64, PolicyConfig(), peaks=peaks)
    extra = policy.windows[len(plain.windows):]
    finest = sorted(set(plain.scale_idx.tolist()))[-2:]
    assert len(extra) == 2 * len(peaks) and sorted(set(policy.scale_idx[len(plain.windows):].tolist())) == finest
    assert extra[0].centre == (400.0, 300.0)
    assert all(0 <= b.x0 and b.x1 <= 900 and 0 <= b.y0 and b.y1 <= 700 for b in extra)
    assert policy.A.shape[0] == len(policy.windows) and len(policy.log_probs()) == len(policy.windows)


def test_anchor_penalises_confident_flip_of_the_baseline():
    cfg = PolicyConfig()
    base = Reading(logp=torch.log(torch.tensor([0.93, 0.07])))     # almost sure of "yes"
    flip = Reading(logp=torch.log(torch.tensor([0.02, 0.98])))     # empty close-up: confident "no"
    keep = Reading(logp=torch.log(torch.tensor([0.98, 0.02])))     # close-up on the object
    anchors = find_anchors(base, cfg)
    assert anchors.choice == 0
    assert reward(base, keep, anchors, cfg) > 0 > reward(base, flip, anchors, cfg)
    naive = PolicyConfig(anchor_weight=0.0)
    assert reward(base, flip, anchors, naive) == pytest.approx(reward(base, keep, anchors, naive))


def test_anchor_vetoes_the_close_up_that_flips_a_confident_baseline(shipped_adapter):
    """The paper's collapse on a real item: a close-up of the middle of a large boat shows hull, no boat.

    The whole image is almost sure of "yes"; the close-up alone says a confident "no", which the
    clarity reward alone prefers (less entropy) and the anchor term vetoes. Beside the global view
    (the default rendering) the same close-up keeps "yes".
    """
    item = make_item(0, "test", 118)  # one of three such items in test seeds 0-3 for these weights
    assert item.kind == "boat" and item.easy and item.answer == "yes"
    cfg = PolicyConfig()
    views, reader = ViewRenderer(item.image, shipped_adapter.input_size), Reader(shipped_adapter, item.question, item.choices)
    base, answer = reader.baseline([views.global_view])
    anchors = find_anchors(base, cfg)
    assert answer == "yes" and anchors.choice == item.choices.index("yes")
    x0, y0, x1, y1 = item.evidence
    hull = Box.square((x0 + x1) / 2, (y0 + y1) / 2, 96)
    alone = reader.read([views.render(hull, "zoom")])[0]
    beside = reader.read([views.render(hull, "zoom+context")])[0]
    assert item.choices[int(alone.logp.argmax())] == "no" and alone.entropy < base.entropy
    assert reward(base, alone, anchors, naive_entropy_config(cfg)) > 0 > reward(base, alone, anchors, cfg)
    assert item.choices[int(beside.logp.argmax())] == "yes"


def test_no_closed_set_anchor_when_baseline_is_unsure():
    base = Reading(logp=torch.log(torch.full((10,), 0.1)))
    assert find_anchors(base, PolicyConfig()).choice is None
    lean = Reading(logp=torch.log(torch.tensor([0.7, 0.3])))  # a lean is not an anchor: it would veto the evidence
    assert find_anchors(lean, PolicyConfig()).choice is None
    assert find_anchors(lean, PolicyConfig(anchor_min_prob=0.6)).choice == 0


def test_open_ended_anchors_are_low_entropy_positions():
    base = Reading(span_entropy=torch.tensor([0.01, 1.5, 0.05]), span_logp=torch.zeros(3))
    anchors = find_anchors(base, PolicyConfig(anchor_epsilon=0.1))
    assert anchors.positions == [0, 2]
    worse = Reading(span_entropy=torch.tensor([0.9, 0.2, 0.05]), span_logp=torch.zeros(3))
    r = reward(base, worse, anchors, PolicyConfig(anchor_weight=0.5))
    gamma = base.entropy / (base.entropy + 0.1)
    assert r == pytest.approx(gamma * (base.entropy - worse.entropy) - 0.5 * (0.89 / 2), rel=1e-4)


def test_open_anchor_logp_penalty_sees_a_confident_flip_that_entropy_misses():
    # the baseline reads "ZV4" fairly surely; a partial close-up reads the second place confidently as
    # another glyph: its entropy there falls, the baseline token's log p falls with it
    base = Reading(span_entropy=torch.tensor([0.3, 0.4, 0.5]), span_logp=torch.log(torch.tensor([0.9, 0.85, 0.8])))
    flip = Reading(span_entropy=torch.tensor([0.2, 0.1, 0.4]), span_logp=torch.log(torch.tensor([0.95, 0.02, 0.85])))
    keep = Reading(span_entropy=torch.tensor([0.25, 0.35, 0.45]), span_logp=torch.log(torch.tensor([0.93, 0.88, 0.82])))
    by_entropy, by_logp = PolicyConfig(anchor_epsilon=1.0), PolicyConfig(anchor_epsilon=1.0, anchor_penalty="logp")
    anchors = find_anchors(base, by_logp)
    assert anchors.positions == [0, 1, 2]
    assert reward(base, flip, anchors, by_entropy) > reward(base, keep, anchors, by_entropy)  # clearer wins
    assert reward(base, flip, anchors, by_logp) < 0 < reward(base, keep, anchors, by_logp)
    drop = (math.log(0.85) - math.log(0.02)) / 3  # mean over the three anchors of the rises (only place 1 rises)
    gamma = base.entropy / (base.entropy + 0.1)
    assert reward(base, flip, anchors, by_logp) == pytest.approx(gamma * (base.entropy - flip.entropy) - 0.5 * drop, rel=1e-4)
    with pytest.raises(ValueError, match="anchor_penalty"):
        PolicyConfig(anchor_penalty="kl")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        PolicyConfig(mode="x")
    with pytest.raises(ValueError):
        PolicyConfig(group_size=1)
    with pytest.raises(ValueError, match=r"first_group must be 0 \(group_size\) or >= 2"):
        PolicyConfig(first_group=1)   # accepted before, it ended every search before its first group
    assert PolicyConfig(first_group=2).first_group == 2
    with pytest.raises(ValueError):
        PolicyConfig(probe_side=1.0)
    with pytest.raises(ValueError, match="settle_after must be >= 0"):
        PolicyConfig(settle_after=-1)
    with pytest.raises(ValueError, match="settle_p must be a probability"):
        PolicyConfig(settle_p=0.0)
    with pytest.raises(ValueError, match="answer_top must be >= 1"):
        PolicyConfig(answer_top=0)
    for bad_grid in (0, 2, 4, 7):
        with pytest.raises(ValueError, match="answer_grid must be 1, 3 or 5"):
            PolicyConfig(answer_grid=bad_grid)
    for bad_shift in (0.5, -0.01, 0.0):
        with pytest.raises(ValueError, match=r"answer_shift must be in \(0, 0.25\]"):
            PolicyConfig(answer_shift=bad_shift)
    assert PolicyConfig(answer_grid=1, answer_shift=0.0).answer_shift == 0.0
    for bad_step in (-0.1, 0.51):
        with pytest.raises(ValueError, match=r"answer_step must be in \[0, 0.5\]"):
            PolicyConfig(answer_step=bad_step)
    for bad_reach in (0.5, 4.5, -1.0):
        with pytest.raises(ValueError, match="answer_centring must be 0"):
            PolicyConfig(answer_centring=bad_reach)
    with pytest.raises(ValueError, match="standout_z must be >= 0"):
        PolicyConfig(standout_z=-1.0)
    for bad_rescale in (-0.1, 0.3):
        with pytest.raises(ValueError, match=r"answer_rescale must be in \[0, 0.25\]"):
            PolicyConfig(answer_rescale=bad_rescale)
    # every count, weight and rate below its floor names the field (a negative PPO clip or saliency peak count
    # used to run, and search with nonsense)
    from spote.core import _AT_LEAST

    for name, low in _AT_LEAST.items():
        below = low - 1 if isinstance(getattr(PolicyConfig(), name), int) else low - 0.5
        with pytest.raises(ValueError, match=f"^{name} must be >= {low}, got {below}$"):
            PolicyConfig(**{name: below})
        assert getattr(PolicyConfig(**{name: low}), name) == low          # the floor itself is allowed
    # ... and past a ceiling: grid=2000 ran 281 s for 24 passes, 10**7 asked 728 TiB; clip=1e39 overflowed
    # float32 mid-search
    from spote.core import _AT_MOST, FLOAT_LIMIT

    for name, high in _AT_MOST.items():
        with pytest.raises(ValueError, match=f"^{name} must be <= {high}, got {high + 1}$"):
            PolicyConfig(**{name: high + 1})
        assert getattr(PolicyConfig(**{name: high}), name) == high
    for name in ("clip", "learning_rate", "fine_scale_bias"):
        with pytest.raises(ValueError, match=f"^{name} must be at most 3.40282e\\+38 in size, got -?1e\\+39$"):
            PolicyConfig(**{name: 1e39 if name != "fine_scale_bias" else -1e39})
        assert getattr(PolicyConfig(**{name: FLOAT_LIMIT}), name) == FLOAT_LIMIT
    with pytest.raises(ValueError, match="clarity_c must be > 0"):
        PolicyConfig(clarity_c=0.0)
    for bad_p in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"anchor_min_prob must be a probability in \[0, 1\]"):
            PolicyConfig(anchor_min_prob=bad_p)
    # wrong types and non-finite numbers (e.g. from --policy JSON) name the field, before any arithmetic
    for bad, words in (({"peaks_first": "false"}, "peaks_first must be true or false"),
                       ({"settle_after": float("nan")}, "settle_after must be an integer"),
                       ({"settle_after": True}, "settle_after must be an integer"),
                       ({"saliency_size": 1e9}, "saliency_size must be an integer"),
                       ({"saliency_size": 10**6}, "saliency_size must be 32-4096 px"),
                       ({"settle_p": "0.7"}, "settle_p must be a finite number"),
                       ({"budget": None}, "budget must be an integer"),
                       ({"exit_entropy_per_ln_k": float("inf")}, "exit_entropy_per_ln_k must be a finite number or null")):
        with pytest.raises(ValueError, match=words):
            PolicyConfig(**bad)
    assert PolicyConfig(exit_entropy_per_ln_k=None, budget=np.int64(8), settle_p=np.float32(0.5)).budget == 8


def test_probe_band_is_above_the_exit_and_within_probe_below_of_it():
    cfg = PolicyConfig(probe_below=2.0)
    assert not in_probe_band(cfg, 0.5, 0.5)  # at the exit: stops on the whole image
    assert in_probe_band(cfg, 0.51, 0.5) and in_probe_band(cfg, 1.0, 0.5)
    assert not in_probe_band(cfg, 1.01, 0.5)  # too unsure: straight to the search
    assert not in_probe_band(PolicyConfig(probe_side=0.0), 0.8, 0.5)  # no probe configured


def test_a_chunked_group_ends_at_the_first_chunk_holding_a_clear_view(random_adapter):
    img = _image()
    base = spote(random_adapter, img, Q, CHOICES, PolicyConfig(budget=1)).entropy_trace[0]
    # clear = any view a little clearer than the whole image: some, not all, random views are
    cfg = PolicyConfig(exit_entropy_per_ln_k=(base - 1e-3) / np.log(len(CHOICES)), glance_side=0.0, probe_side=0.0,
                       group_size=16, first_group=0, read_chunk=0, steps=1, plateau_patience=9)
    whole = spote(random_adapter, img, Q, CHOICES, cfg)
    chunked = spote(random_adapter, img, Q, CHOICES, replace(cfg, read_chunk=2))
    tau = cfg.exit_entropy_per_ln_k * np.log(len(CHOICES))
    first_clear = next(i for i, h in enumerate(whole.box_entropies) if h <= tau)
    assert first_clear < 14  # this image's random model finds a clear view before the last chunk
    read = len(chunked.boxes)
    assert read == 2 * (first_clear // 2 + 1) and chunked.boxes == whole.boxes[:read]  # same draws, fewer read
    assert chunked.forward_passes == whole.forward_passes - (16 - read)
    assert min(chunked.box_entropies[-2:]) <= tau and all(h > tau for h in chunked.box_entropies[:-2])


def test_greedy_first_group_is_the_priors_top_windows_whatever_the_seed(random_adapter):
    img = _image()
    cfg = PolicyConfig(exit_entropy_per_ln_k=0.0, glance_side=0.0, probe_side=0.0, group_size=8, first_group=12,
                       greedy_steps=1, jitter=0.0, steps=2, plateau_patience=9)
    a = spote(random_adapter, img, Q, CHOICES, cfg)
    b = spote(random_adapter, img, Q, CHOICES, replace(cfg, seed=1))
    first = lambda r: [box for box, s in zip(r.boxes, r.box_steps) if s == 0]  # noqa: E731
    assert len(first(a)) == 12 and a.box_steps.count(1) == 8  # G_1 then G
    assert first(a) == first(b)  # no sampling in the first group
    sampled = [spote(random_adapter, img, Q, CHOICES, replace(cfg, greedy_steps=0, seed=s)) for s in (0, 1)]
    assert first(sampled[0]) != first(sampled[1])


def test_policy_top_is_the_most_likely_windows_in_order():
    pol = SpotlightPolicy(640, 480, 64, PolicyConfig())
    with torch.no_grad():
        pol.pos[5] += 4.0  # one cell far more likely: the windows holding it come first
    lp = pol.log_probs().detach().numpy()
    top = pol.top(6)
    assert len(set(top)) == 6 and list(lp[top]) == sorted(lp[top], reverse=True)
    assert lp[top[-1]] >= np.delete(lp, top).max()


def test_first_group_reads_the_strongest_saliency_peak_first_centred_and_unjittered(random_adapter):
    img = Image.new("RGB", (640, 480), (128, 128, 128))
    d = ImageDraw.Draw(img)
    d.rectangle([500, 380, 506, 386], fill=(250, 20, 20))  # the strongest contrast: the first peak
    d.rectangle([100, 90, 106, 96], fill=(160, 128, 128))  # faint
    cfg = PolicyConfig(exit_entropy_per_ln_k=0.0, glance_side=0.0, probe_side=0.0, first_group=8, read_chunk=0,
                       steps=1, jitter=0.5, peaks_first=True)
    res = spote(random_adapter, img, Q, CHOICES, cfg)
    x0, y0, x1, y1 = res.boxes[0]
    assert abs((x0 + x1) / 2 - 503.5) <= 3 and abs((y0 + y1) / 2 - 383.5) <= 3  # centred on the red dot
    assert x1 - x0 == min(res.boxes[1][2] - res.boxes[1][0], x1 - x0)  # at the finest side
    off = spote(random_adapter, img, Q, CHOICES, replace(cfg, peaks_first=False))
    assert off.boxes[0] != res.boxes[0]


def test_peaks_clamped_to_the_same_window_give_one_peak_window():
    # near a corner of a small image every peak's window is pushed to the same square inside it
    pol = SpotlightPolicy(160, 120, 64, PolicyConfig(), peaks=[(5.0, 5.0), (27.0, 5.0), (150.0, 110.0)])
    boxes = [tuple(pol.windows[w].as_list()) for w in pol.peak_windows]
    assert len(boxes) == len(set(boxes)) == 2 and boxes[0] == (0, 0, 64, 64)


def test_peaks_then_top_lists_the_finest_peak_windows_in_peak_order_then_the_top_others():
    peaks = [(300.0, 200.0), (100.0, 400.0), (600.0, 50.0)]
    pol = SpotlightPolicy(640, 480, 64, PolicyConfig(), peaks=peaks)
    assert len(pol.peak_windows) == 3 and all(pol.scale_idx[w] == pol.scale_idx.max() for w in pol.peak_windows)
    assert [pol.windows[w].centre for w in pol.peak_windows][0] == pytest.approx((300.0, 200.0))
    order = pol.peaks_then_top(8, exclude={pol.peak_windows[1]})
    assert order[:2] == [pol.peak_windows[0], pol.peak_windows[2]]
    assert order[2:] == pol.top(6, {pol.peak_windows[0], pol.peak_windows[1], pol.peak_windows[2]})


class _ScriptedViews:
    """The random model's forward passes, but the whole image reads as ``base_p`` and every view as ``view_p``."""

    def __init__(self, inner, base_p, view_p):
        self.inner, self.base_p, self.view_p, self.calls = inner, base_p, view_p, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def choice_logprobs(self, views_batch, question, choices):
        self.inner.choice_logprobs(views_batch, question, choices)
        p = torch.tensor(self.base_p if self.calls == 0 else self.view_p)
        self.calls += 1
        return (p / p.sum()).log().expand(len(views_batch), -1).clone()


@pytest.mark.parametrize("view_top, settle_p, settles", [(0, 0.7, True), (1, 0.7, False), (1, 0.8, True)])
def test_settle_stops_only_when_no_view_gave_another_answer_conviction(random_adapter, view_top, settle_p, settles):
    lean = [0.3] + [0.7 / 9] * 9  # the whole image leans to "0", far from clear
    view = [0.25 / 9] * 10
    view[view_top] = 0.75  # unclear too (H = 1.11 nats > tau = 0.92), for "0" or for "1"
    cfg = PolicyConfig(settle_after=24, settle_p=settle_p, plateau_patience=99)
    res = spote(_ScriptedViews(random_adapter, lean, view), _image(), Q, CHOICES, cfg)
    if settles:
        assert 24 <= res.forward_passes < 24 + cfg.read_chunk
    else:
        assert res.forward_passes > 90  # searched to the budget
    off = spote(_ScriptedViews(random_adapter, lean, view), _image(), Q, CHOICES, replace(cfg, settle_after=0))
    assert off.forward_passes > 90


def test_a_view_giving_the_anchored_choice_probability_zero_keeps_the_search_going(random_adapter):
    """log p = -inf is a sound answer (a masked choice); its reward must stay finite, else every advantage of
    the group is NaN, the policy's logits turn NaN and the search ends after one group."""
    sure = [0.95] + [0.05 / 9] * 9               # the whole image is almost sure of "0": an anchor
    view = [0.0] + [0.5] + [0.5 / 8] * 8          # every view: "0" impossible, "1" at 0.5 (unclear)
    cfg = PolicyConfig(exit_entropy_per_ln_k=0.01, settle_after=0, plateau_patience=99)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)   # no invalid value met in the advantages
        res = spote(_ScriptedViews(random_adapter, sure, view), _image(), Q, CHOICES, cfg)
    assert all(math.isfinite(r) for r in res.box_rewards) and min(res.box_rewards) < -10
    assert len(res.boxes) > cfg.group_size   # more than one group was read
    assert res.answer == CHOICES[0]          # no view beat the whole image: its anchored answer stands


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "F"])
def test_spote_reads_any_pillow_mode_as_spote_answer_does(random_adapter, mode):
    """spote() is public: a grey scan, a palette image or a 16-bit scan is searched as spote.answer reads it
    (``to_rgb``: an "L" image failed deep in the saliency map; a 16-bit one converted by Pillow is all white)."""
    from spote.images import to_rgb

    grey = np.asarray(_image().convert("L"), np.float64)
    img = {"I;16": Image.fromarray((grey * 257).astype(np.uint16)), "F": Image.fromarray((grey / 255).astype(np.float32))
           }.get(mode) or _image().convert(mode)
    cfg = PolicyConfig(budget=12, exit_entropy_per_ln_k=0.0)
    res, same = spote(random_adapter, img, Q, CHOICES, cfg), spote(random_adapter, to_rgb(img), Q, CHOICES, cfg)
    assert (res.answer, res.boxes, res.forward_passes) == (same.answer, same.boxes, same.forward_passes)
    assert res.forward_passes > 1   # it searched
    assert np.asarray(to_rgb(img)).std() > 10   # what it read is the picture, not a blank page
