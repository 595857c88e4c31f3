"""spote ask --trace: the spotlights, what the model saw (rendered views), and the entropy per step."""

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
    assert len(views) == 1 and "the whole image answered" in views[0].get_xlabel()
    # a closed search that stopped on the whole image: the standout rule is not why, whatever its bar
    sure = PolicyConfig(exit_entropy_per_ln_k=10.0, standout_z=1e9)
    res = run_method("spote", random_adapter, img, "what letter is in the red box ?", list("ABCDEF"), sure)
    assert res.evidence_box is None and res.reward_standout is None
    label = next(ax for ax in trace_figure(img, res, input_size=random_adapter.input_size).axes
                 if ax.get_title().startswith("model input")).get_xlabel()
    assert "no spotlight beat it" in label and "stand out" not in label


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
    res = run_method("spote", random_adapter, img, question, ["$\\alpha$", "b"], PolicyConfig(**SEARCH))
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
