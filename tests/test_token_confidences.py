"""An open answer's per-token confidences are those of the generation that gave the answer."""

import math

import numpy as np
from PIL import Image, ImageDraw

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
    assert math.isclose(math.prod(res.token_confidences), res.confidence, abs_tol=1e-6)


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
    assert math.isclose(math.prod(res.token_confidences), res.confidence, abs_tol=1e-6)


def test_closed_set_answer_has_no_token_confidences(random_adapter):
    res = spote(random_adapter, _form(), "is the form signed ?", ("yes", "no"), PolicyConfig(budget=4, group_size=2))
    assert res.answer in ("yes", "no") and res.token_confidences is None
