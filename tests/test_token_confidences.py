"""An open answer's per-token confidences are those of the generation that gave the answer."""

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from spote.adapters.base import MAX_NEW_TOKENS
from spote.baselines import held_to_budget, run_method
from spote.core import PolicyConfig, spote
from spote.spotlight import Box, ViewRenderer

Q = "what is the reference code ?"


def _form() -> Image.Image:
    im = Image.new("RGB", (512, 512), "white")
    d = ImageDraw.Draw(im)
    d.text((40, 60), "Date: 2026-11-24", fill="black")
    d.text((300, 380), "Ref: K7-3A9Q", fill="black")
    return im


def test_whole_image_answer_has_the_generations_token_confidences(random_adapter):
    im = _form()
    res = spote(random_adapter, im, Q, None, PolicyConfig(budget=1))
    gen = random_adapter.generate([ViewRenderer(im, random_adapter.input_size).global_view], Q)
    assert res.evidence_box is None and res.answer == gen.text and len(gen.token_ids) > 0
    assert len(res.token_confidences) == len(gen.token_ids)
    assert np.allclose(res.token_confidences, np.exp(gen.logprobs), rtol=1e-5)
    assert all(0 < p <= 1 for p in res.token_confidences)
    assert math.isclose(min(res.token_confidences), res.confidence, rel_tol=1e-5)  # its least sure token


def test_spotlight_answer_has_the_token_confidences_of_its_own_generation(random_adapter):
    """The answer is generated again on the best spotlight: its confidences are that generation's. The
    answer is read on the best window alone (``answer_top`` 1), centred on the salient pixels near it, in
    one generation (a budget of 12 leaves no room for a joint one); ``answer_readings`` keeps that window
    unrounded (the evidence box is rounded to whole pixels), so it renders the same view."""
    im = _form()
    cfg = PolicyConfig(budget=12, group_size=4, steps=2, jitter=0.0, glance_side=0.0, probe_side=0.0,
                       saliency_peaks=0, exit_entropy=0.0, scale_step=2.0, answer_top=1, standout_z=0.0)
    res = spote(random_adapter, im, Q, None, cfg)
    assert res.evidence_box is not None and len(res.answer_readings) == 1
    window = Box(*res.answer_readings[0][0])
    assert np.allclose(window.as_list(), res.evidence_box, atol=1)
    view = ViewRenderer(im, random_adapter.input_size).render(window, res.mode)
    gen = random_adapter.generate(view, Q)
    assert res.answer == gen.text and len(res.token_confidences) == len(gen.token_ids) > 0
    assert np.allclose(res.token_confidences, np.exp(gen.logprobs), rtol=1e-5)
    assert math.isclose(min(res.token_confidences), res.confidence, rel_tol=1e-5)  # its least sure token


def test_closed_set_answer_has_no_token_confidences(random_adapter):
    res = spote(random_adapter, _form(), "is the form signed ?", ("yes", "no"), PolicyConfig(budget=4, group_size=2))
    assert res.answer in ("yes", "no") and res.token_confidences is None and res.answer_cut_off is None


def _noise(w=640, h=480, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("method", ["spote", "baseline", "grid"])
def test_an_unsure_open_answer_has_a_confidence_above_zero(random_adapter, method):
    """The random model writes 32 tokens it is unsure of: their product is far below 1e-6, which rounded to 6
    significant digits stays above 0, the confidence of an empty answer only. The confidence is the least sure
    token's p."""
    res = run_method(method, random_adapter, _noise(), Q, None, PolicyConfig(budget=4), **held_to_budget(4))
    product = math.prod(res.token_confidences)
    assert res.answer and 0 < product < 1e-7
    assert res.confidence > product and res.confidence == pytest.approx(min(res.token_confidences), rel=1e-5)


def test_an_answer_the_token_cap_ended_is_marked_cut_off(random_adapter):
    view = [ViewRenderer(_noise(), random_adapter.input_size).global_view]
    gen = random_adapter.generate(view, Q)
    assert len(gen.token_ids) == MAX_NEW_TOKENS and gen.cut_off is True and gen.end_entropy is None
    short = random_adapter.generate(view, Q, max_new_tokens=3)
    assert len(short.token_ids) == 3 and short.cut_off is True
    for method in ("spote", "baseline", "vicrop"):
        res = run_method(method, random_adapter, _noise(), Q, None, PolicyConfig(budget=1))
        assert len(res.answer_token_ids) == MAX_NEW_TOKENS and res.answer_cut_off is True, method


def test_an_answer_the_model_ended_is_not_cut_off(shipped_adapter):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (67, 67, 3), dtype=np.uint8))
    gen = shipped_adapter.generate([ViewRenderer(img, shipped_adapter.input_size).global_view], "what is written ?")
    assert 0 < len(gen.token_ids) < MAX_NEW_TOKENS and gen.end_entropy is not None and gen.cut_off is False
    res = run_method("baseline", shipped_adapter, img, "what is written ?", None, PolicyConfig())
    assert res.answer == gen.text and res.answer_cut_off is False
