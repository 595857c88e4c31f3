"""spote ask --trace: the spotlights, what the model saw (rendered views), and the entropy per step."""

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from spote.baselines import run_method
from spote.core import PolicyConfig
from spote.spotlight import Box, ViewRenderer
from spote.trace import plot_trace, trace_figure

SAMPLE = Path(__file__).parents[1] / "pipelines" / "samples" / "vqa" / "test-7-00000.png"
SEARCH = {"exit_entropy_per_ln_k": 0.0, "exit_entropy": 0.0, "glance_side": 0.0, "probe_side": 0.0, "budget": 12,
          "group_size": 4, "first_group": 4, "steps": 3}


def _run(adapter, mode: str):
    img = Image.open(SAMPLE).convert("RGB")
    res = run_method("spote", adapter, img, "what letter is in the red box ?", list("ABCDEF"),
                     PolicyConfig(mode=mode, **SEARCH))
    return img, res


def test_trace_shows_the_views_the_model_saw_and_integer_steps(random_adapter, tmp_path):
    for mode in ("zoom+context", "zoom", "highlight"):
        img, res = _run(random_adapter, mode)
        assert res.evidence_box is not None, "a run that never exits must answer from a spotlight"
        fig = trace_figure(img, res, "what letter ?", input_size=random_adapter.input_size)
        views = [ax for ax in fig.axes if ax.get_title().startswith("model input")]
        assert len(views) == 2                                        # the whole view, then the answer's view
        rendered = ViewRenderer(img, random_adapter.input_size)
        want = [rendered.global_view, rendered.render(Box(*res.evidence_box), res.mode)[-1]]
        for ax, view in zip(views, want):
            shown = ax.get_images()[0].get_array()
            assert shown.shape[:2] == (random_adapter.input_size,) * 2 and np.array_equal(np.asarray(shown), np.asarray(view))
        curve = next(ax for ax in fig.axes if ax.get_xlabel().startswith("step"))
        fig.canvas.draw()
        ticks = [t for t in curve.get_xticks() if curve.get_xlim()[0] <= t <= curve.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert max(ticks) <= len(res.entropy_trace) - 1
    png = plot_trace(img, res, tmp_path / "t" / "trace.png", "what letter ?", input_size=random_adapter.input_size)
    assert Image.open(png).size == (1760, 616)


def test_trace_of_a_whole_image_answer_says_so(random_adapter):
    img = Image.open(SAMPLE).convert("RGB")
    res = run_method("baseline", random_adapter, img, "what letter is in the red box ?", list("ABCDEF"), PolicyConfig())
    fig = trace_figure(img, res, input_size=random_adapter.input_size)
    views = [ax for ax in fig.axes if ax.get_title().startswith("model input")]
    label = views[0].get_xlabel()
    assert len(views) == 1 and "the whole image answered" in label and "no spotlight tried" in label
    assert "beat" not in label  # the baseline reads no spotlight: none could beat the whole image
    # a closed search that stopped on the whole image at once: nothing was tried, so nothing lost to it; the
    # standout rule is not why either, whatever its bar
    sure = PolicyConfig(exit_entropy_per_ln_k=10.0, standout_z=1e9)
    res = run_method("spote", random_adapter, img, "what letter is in the red box ?", list("ABCDEF"), sure)
    assert res.evidence_box is None and res.reward_standout is None and len(res.entropy_trace) == 1
    label = _view_label(trace_figure(img, res, input_size=random_adapter.input_size))
    assert "the whole image answered confidently" in label and "no spotlight tried" in label
    assert "beat" not in label and "stand out" not in label


def _view_label(fig) -> str:
    return next(ax for ax in fig.axes if ax.get_title().startswith("model input")).get_xlabel()


def test_trace_of_a_search_whose_spotlights_lost_says_none_beat_the_whole_image(random_adapter):
    """Spotlights were read and none answered: "no spotlight beat it", not "no spotlight tried"."""
    img, res = _run(random_adapter, "zoom")
    assert res.boxes
    lost = replace(res, evidence_box=None, reward_standout=None)
    label = _view_label(trace_figure(img, lost, input_size=random_adapter.input_size))
    assert "the whole image answered" in label and "no spotlight beat it" in label and "tried" not in label


def test_trace_of_an_open_search_that_kept_the_whole_image_says_why(random_adapter):
    """An open search whose best reward did not stand out answers on the whole image: the picture says so,
    with the best's robust z, instead of claiming that no spotlight beat the whole image."""
    img = Image.open(SAMPLE).convert("RGB")
    cfg = PolicyConfig(exit_entropy=0.0, glance_side=0.0, budget=40, standout_z=1e9)
    res = run_method("spote", random_adapter, img, "what letter is in the red box ?", None, cfg)
    assert res.evidence_box is None and res.reward_standout is not None
    fig = trace_figure(img, res, input_size=random_adapter.input_size)
    label = next(ax for ax in fig.axes if ax.get_title().startswith("model input")).get_xlabel()
    assert "did not stand out" in label and f"{res.reward_standout:.2f} < standout_z 1e+09" in label


def test_trace_draws_text_as_written_and_boxes_on_pixel_edges(random_adapter, tmp_path):
    """A question with "$" was parsed as TeX: "$\\foo{$" failed the picture (reported as a write error) and
    "$5 and $x" was drawn as italic math. Boxes are pixel edges: on an 8 x 8 image the box [0, 0, 8, 8]
    was half a pixel off and clipped on the right."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    question = "is it $\\foo{$ or $5 and $x^{ ?"
    res = run_method("spote", random_adapter, img, question, ["A", "B"], PolicyConfig(**SEARCH))
    out = plot_trace(img, res, tmp_path / "t.png", question)
    assert Image.open(out).size[0] > 100
    fig = trace_figure(img, res, question)
    spot = fig.axes[0]
    assert spot.get_title().startswith(question)
    fig.canvas.draw()  # mathtext would raise here
    (x0, x1), (y1, y0) = spot.get_xlim(), spot.get_ylim()
    assert (x0, y0, x1, y1) == (0, 0, 8, 8)
    for box in [*res.boxes, res.evidence_box or [0, 0, 8, 8]]:
        assert x0 <= box[0] < box[2] <= x1 and y0 <= box[1] < box[3] <= y1, box


def test_a_long_strip_is_drawn_wide_enough_to_see(random_adapter):
    img = Image.fromarray(np.full((1000, 2, 3), 200, dtype=np.uint8))
    res = run_method("baseline", random_adapter, img, "is there a boat ?", ["yes", "no"], PolicyConfig())
    fig = trace_figure(img, res, "is there a boat ?")
    fig.canvas.draw()
    bbox = fig.axes[0].get_images()[0].get_window_extent()
    assert bbox.width > 20 and "1000" in fig.axes[0].get_title()


def _title_extent(fig, ax):
    return ax.title.get_window_extent(fig.canvas.get_renderer())


def test_a_long_question_is_wrapped_to_its_panel(random_adapter):
    """Nine times a question on one line ran off the figure's left edge and over the middle panel's titles."""
    img, res = _run(random_adapter, "zoom")
    question = " ".join(["what is the code in the account field ?"] * 9)
    fig = trace_figure(img, res, question, input_size=random_adapter.input_size)
    fig.canvas.draw()
    spot = fig.axes[0]
    title = _title_extent(fig, spot)
    assert 0 <= title.x0 and title.x1 <= fig.bbox.width and title.y1 <= fig.bbox.height
    for ax in fig.axes[1:]:  # every other panel's title lies wholly to the right of this one
        if ax.get_title():
            assert title.x1 < _title_extent(fig, ax).x0, ax.get_title()
    lines = spot.get_title().splitlines()
    assert len(lines) > 3 and " ".join(lines[:-1]) == question  # wrapped between words, nothing lost
    # a question with no spaces (as Chinese is written) is broken inside its one word
    fig = trace_figure(img, res, "x" * 400, input_size=random_adapter.input_size)
    fig.canvas.draw()
    assert "".join(fig.axes[0].get_title().splitlines()[:-1]) == "x" * 400
    assert _title_extent(fig, fig.axes[0]).x1 < _title_extent(fig, fig.axes[1]).x0


def test_view_captions_keep_clear_of_the_entropy_chart(random_adapter):
    """With a long question the middle column narrows: its captions ("model input the answer came from: zoom
    (given beside the whole image)") ran into the entropy chart's axis label."""
    img, res = _run(random_adapter, "zoom+context")
    assert res.evidence_box, "the run must show a view the answer came from"
    question = " ".join(["what is the code in the account field ?"] * 9)
    fig = trace_figure(img, res, question, input_size=random_adapter.input_size)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    curve = fig.axes[1]
    label = curve.yaxis.label.get_window_extent(renderer)
    captions = [ax for ax in fig.axes[2:] if ax.get_title()]
    said = [" ".join(ax.get_title().split()) for ax in captions]
    assert "model input the answer came from: zoom (given beside the whole image)" in said, said  # wrapped, whole
    for ax in captions:
        extent = _title_extent(fig, ax)
        assert extent.x1 < min(label.x0, curve.get_window_extent(renderer).x0), ax.get_title()


def test_characters_no_font_has_are_drawn_without_warnings(random_adapter, tmp_path):
    """A Japanese question printed a UserWarning (with its source line) for each glyph DejaVu Sans lacks."""
    img, res = _run(random_adapter, "zoom")
    question = "日本語の質問は何ですか？"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_trace(img, res, tmp_path / "t.png", question, input_size=random_adapter.input_size)
    assert not [w for w in caught if "missing from font" in str(w.message)], [str(w.message) for w in caught]
    assert Image.open(tmp_path / "t.png").size == (1760, 616)


def test_fallback_fonts_are_the_installed_ones(monkeypatch):
    from matplotlib import font_manager

    from spote import trace

    installed = font_manager.fontManager.ttflist[0].name
    monkeypatch.setattr(trace, "FALLBACK_FONTS", ("No Such Font At All", installed))
    trace._installed_fallbacks.cache_clear()
    try:
        assert trace.font_families()[-1] == installed and "No Such Font At All" not in trace.font_families()
    finally:
        trace._installed_fallbacks.cache_clear()


def test_an_empty_answer_is_nothing_read_and_one_pass_is_singular(random_adapter):
    """The CLI prints an empty open answer as "(nothing read)": the picture says the same, not "answer:   ";
    and "1 pass", not "1 passes"."""
    img = Image.open(SAMPLE).convert("RGB")
    res = run_method("baseline", random_adapter, img, "what is the code ?", None, PolicyConfig())
    assert res.forward_passes == 1
    title = trace_figure(img, replace(res, answer="", confidence=0.0), "what is the code ?").axes[0].get_title()
    assert "answer: (nothing read)  (confidence 0.00, 1 pass)" in title
    title = trace_figure(img, replace(res, answer="K7", forward_passes=2), "what is the code ?").axes[0].get_title()
    assert "answer: K7  (confidence" in title and ", 2 passes)" in title
