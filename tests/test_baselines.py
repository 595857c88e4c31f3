"""The peers in the harness: each one's search follows its definition and respects a forward-pass budget."""

import numpy as np
import pytest
from PIL import Image

from spote.baselines import METHODS, SEARCH_METHODS, quadrants, run_grid, run_method, run_zoomeye, scaffold_config
from spote.core import PolicyConfig, Reader, window_grid
from spote.spotlight import Box

Q, CHOICES = "what digit is in the red box ?", tuple("0123456789")


def _image(w=640, h=480, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_quadrants_tile_the_node_exactly():
    node = Box(10, 20, 110, 80)
    kids = quadrants(node)
    assert len(kids) == 4 and sum(k.area for k in kids) == pytest.approx(node.area)
    assert all(node.contains_frac(k) == pytest.approx(1.0) for k in kids)
    assert sum(a.intersection(b) for i, a in enumerate(kids) for b in kids[i + 1:]) == 0


@pytest.mark.parametrize("method", SEARCH_METHODS)
@pytest.mark.parametrize("budget", [2, 3, 9, 10])
@pytest.mark.parametrize("question,choices", [(Q, CHOICES), ("what is the code in the reference field ?", None),
                                              ("what is in the red box ?", ("red box", "blue box", "white box"))],
                         ids=["closed", "open", "multi-token choices"])
def test_every_search_method_respects_a_matched_budget(random_adapter, method, budget, question, choices):
    """An open answer's generation on the found view is a pass too, and counts against the budget. Choices of
    several tokens cost a pass each per view: grid, random and zoomeye counted views, 30 passes for 10."""
    cfg = PolicyConfig(budget=budget, exit_entropy=0.0, exit_entropy_per_ln_k=0.0)
    kw = {"max_passes": budget, "n_windows": budget}
    res = run_method(method, random_adapter, _image(), question, choices, cfg, **kw)
    whole = Reader(random_adapter, question, choices).cost_per_view()   # the whole image is read whatever it costs
    assert whole == (3 if choices and len(choices) == 3 else 1)
    assert 1 <= res.forward_passes <= max(budget, whole)


def test_grid_under_a_budget_reads_coarse_windows_first(random_adapter):
    img = _image()
    windows, scale = window_grid(*img.size, random_adapter.input_size, PolicyConfig().min_window)
    res = run_grid(random_adapter, img, Q, CHOICES, PolicyConfig(), max_passes=6)
    coarsest = {tuple(w.as_list()) for w, s in zip(windows, scale) if s == scale.min()}
    assert res.forward_passes == 6
    assert {tuple(b) for b in res.boxes} <= coarsest  # 5 windows, all of the coarsest scale


def test_zoomeye_descends_into_the_clearest_node(random_adapter):
    img = _image(800, 800, seed=3)
    res = run_zoomeye(random_adapter, img, Q, CHOICES, PolicyConfig(exit_entropy_per_ln_k=0.0), max_passes=12)
    boxes = [Box(*b) for b in res.boxes]
    first = boxes[:4]  # the root's quadrants
    assert sum(b.area for b in first) == pytest.approx(800 * 800, rel=0.01)
    # every later node lies inside one of the first level's quadrants: the search goes down the tree
    assert all(any(q.contains_frac(b) > 0.99 for q in first) for b in boxes[4:])
    assert res.forward_passes <= 12 and res.method == "zoomeye"
    assert res.entropy_trace == sorted(res.entropy_trace, reverse=True)  # the best entropy only falls


def test_zoomeye_at_its_defaults_is_not_held_to_spotes_budget(random_adapter):
    img = _image(800, 800, seed=3)
    res = run_zoomeye(random_adapter, img, Q, CHOICES, PolicyConfig(budget=5, exit_entropy_per_ln_k=0.0))
    assert res.forward_passes > 5  # its own pass limit (a clear node or an empty queue ends it first)


def test_scaffold_is_the_papers_loop():
    cfg = scaffold_config(PolicyConfig())
    assert (cfg.group_size, cfg.steps, cfg.mode) == (4, 2, "highlight")
    assert cfg.budget == 9 and cfg.glance_side == 0 and cfg.probe_side == 0 and not cfg.use_relevance
    assert scaffold_config(PolicyConfig(), budget=32).steps == 7
    # an open answer: one generation on the best candidate, where it is
    assert (cfg.answer_top, cfg.answer_centring, cfg.answer_grid, cfg.answer_step) == (1, 0, 1, 0)


def test_scaffold_never_exits_early(random_adapter):
    res = run_method("scaffold", random_adapter, _image(), Q, CHOICES, PolicyConfig())
    assert res.forward_passes == 9 and res.mode == "highlight"
    assert res.box_steps == [0] * 4 + [1] * 4  # two sampled groups of 4, whatever spote's group settings
    # an open question reads the same two groups of 4, then generates its answer (one pass more)
    res = run_method("scaffold", random_adapter, _image(), "what is the code in the reference field ?", None, PolicyConfig())
    assert res.box_steps == [0] * 4 + [1] * 4 and res.forward_passes <= 10   # 9 where no view beat the whole image
    assert scaffold_config(PolicyConfig(), budget=32, open_ended=True).steps == 7
    assert scaffold_config(PolicyConfig(), budget=33, open_ended=True).budget == 30


@pytest.mark.parametrize("method", ["baseline", "api", "vicrop", "grid", "naive_entropy", "random", "zoomeye",
                                    "scaffold", "oracle", "spote"])
def test_open_answers_carry_their_token_ids(random_adapter, method):
    """Every method returns the token ids of its open-ended answer (what the benchmark's anchor check
    compares), and none for a closed-set answer."""
    img = _image(320, 240, seed=4)
    kw = {"evidence": (100, 100, 160, 124), "max_passes": 6, "n_windows": 6}
    res = run_method(method, random_adapter, img, "what is the code in the reference field ?", None,
                     PolicyConfig(budget=6), **kw)
    assert res.answer_token_ids is not None
    assert random_adapter.tokenizer.decode(res.answer_token_ids, skip_special_tokens=True).strip() == res.answer
    assert len(res.token_confidences) == len(res.answer_token_ids)
    assert run_method(method, random_adapter, img, Q, CHOICES, PolicyConfig(budget=6), **kw).answer_token_ids is None


@pytest.mark.parametrize("method", ["baseline", "api", "vicrop", "grid", "naive_entropy", "random", "zoomeye",
                                    "scaffold", "oracle", "spote"])
def test_every_method_reads_one_image_views_on_a_model_that_takes_one_image(random_adapter, method, monkeypatch):
    """A model that takes one image per prompt (an endpoint's ``max_images: 1``) gets ``zoom`` where the
    policy asks ``zoom+context``: grid, random and the oracle rendered two images, which the adapter refused."""
    monkeypatch.setattr(random_adapter, "max_images", 1)
    kw = {"evidence": (100, 100, 160, 124), "max_passes": 6, "n_windows": 6}
    res = run_method(method, random_adapter, _image(320, 240, seed=4), Q, CHOICES, PolicyConfig(budget=6), **kw)
    assert res.mode != "zoom+context" and res.forward_passes >= 1


def test_oracle_frames_an_open_field_tightly_and_a_closed_glyph_with_room(random_adapter):
    """Closed evidence (a glyph) is read at twice its side; an open field of several glyphs at 1.05 x its
    long side, at least one model input, so small glyphs stay legible."""
    img = _image(640, 480, seed=5)
    field = (100, 100, 190, 124)  # 90 px wide
    closed = run_method("oracle", random_adapter, img, Q, CHOICES, PolicyConfig(), evidence=field)
    opened = run_method("oracle", random_adapter, img, "what is the code in the reference field ?", None,
                        PolicyConfig(), evidence=field)
    side = lambda r: r.evidence_box[2] - r.evidence_box[0]  # noqa: E731
    assert side(closed) == pytest.approx(180, abs=1) and side(opened) == pytest.approx(94.5, abs=1)
    narrow = run_method("oracle", random_adapter, img, "what is the code in the reference field ?", None,
                        PolicyConfig(), evidence=(100, 100, 130, 120))
    assert side(narrow) == pytest.approx(random_adapter.input_size, abs=1)  # at least one model input


class _AnswerOnFoundViews:
    """The random tiny model, except that every generation after the first (the whole image's) gives
    ``answer``: the answer a method reads on the view its search found."""

    def __init__(self, inner, answer):
        self.inner, self.answer, self.calls = inner, answer, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, views, question, max_new_tokens=32):
        self.calls += 1
        return self.inner.generate(views, question, max_new_tokens) if self.calls == 1 else self.answer

    def generate_agreed(self, views_batch, question, max_new_tokens=32):  # spote's answer on shifted copies
        return self.generate(views_batch[0], question, max_new_tokens)


@pytest.mark.parametrize("method", ["spote", "grid", "random", "zoomeye"])
@pytest.mark.parametrize("answer", ["empty", "one token at p 0.5"])
def test_an_open_answer_read_on_a_found_view_carries_its_own_confidence(random_adapter, method, answer):
    """Confidence is the given answer's: the least of its tokens' p as generated, 0 for an empty answer
    (no token read), never the whole image's answer's probability on the found view. The evidence box is the
    view the answer was read on; an empty answer read nothing there and has none."""
    from spote.adapters.base import Generation

    tok = random_adapter.tokenizer.convert_tokens_to_ids("7")
    gen = Generation("", [], [], []) if answer == "empty" else Generation("7", [tok], [0.7], [float(np.log(0.5))])
    adapter = _AnswerOnFoundViews(random_adapter, gen)
    res = run_method(method, adapter, _image(320, 240, seed=4), "what is the code in the reference field ?", None,
                     PolicyConfig(budget=40, exit_entropy=0.0), max_passes=40, n_windows=40)
    # a view was found and the answer read on it (spote: once, jointly, on the centred agreed window)
    assert adapter.calls == 2
    assert (res.evidence_box is not None) == (answer != "empty")
    assert res.answer == gen.text and res.answer_token_ids == gen.token_ids
    assert res.confidence == (0.0 if answer == "empty" else 0.5)
    assert res.token_confidences == ([] if answer == "empty" else [pytest.approx(0.5)])


@pytest.mark.parametrize("method", ["spote", "grid", "random", "zoomeye"])
def test_an_unsure_answer_read_on_a_found_view_keeps_its_confidence_and_cut_off(random_adapter, method):
    """An answer of 8 tokens at p e^-3 each, and one at e^-5, has the least as its confidence, e^-5 (its
    product, e^-26, rounded to 6 significant digits would still be above 0, an empty answer's), and an answer
    the token cap ended says so, whichever view it was read on."""
    from spote.adapters.base import Generation

    tok = random_adapter.tokenizer.convert_tokens_to_ids("7")
    gen = Generation("777777777", [tok] * 9, [2.0] * 9, [-3.0] * 4 + [-5.0] + [-3.0] * 4, cut_off=True)
    adapter = _AnswerOnFoundViews(random_adapter, gen)
    res = run_method(method, adapter, _image(320, 240, seed=4), "what is the code in the reference field ?", None,
                     PolicyConfig(budget=40, exit_entropy=0.0), max_passes=40, n_windows=40)
    assert adapter.calls == 2 and res.evidence_box is not None and res.answer == gen.text
    assert res.confidence == pytest.approx(np.exp(-5.0), rel=1e-5)
    assert res.token_confidences == [pytest.approx(np.exp(-3.0))] * 4 + [pytest.approx(np.exp(-5.0))] + \
        [pytest.approx(np.exp(-3.0))] * 4 and res.answer_cut_off is True


class _AlwaysAnswers(_AnswerOnFoundViews):
    """The random tiny model, except that every generation gives ``answer``."""

    def generate(self, views, question, max_new_tokens=32):
        self.calls += 1
        return self.answer


@pytest.mark.parametrize("end_entropy", [None, 2.0])  # the end step's entropy unknown (an endpoint) or known
@pytest.mark.parametrize("method", ["baseline", "oracle", "spote", "vicrop", "zoomeye"])
def test_an_empty_open_answer_has_confidence_zero(random_adapter, method, end_entropy):
    """An empty answer (the model's first token ends it) read no token, so no method may report it as
    sure: confidence 0, not the empty product 1 nor the end token's p."""
    from spote.bench.scenes import make_open_item
    from spote.adapters.base import Generation

    item = make_open_item(0, "val", 0)
    gen = Generation("", [], [], [], end_entropy, None if end_entropy is None else -0.7)
    adapter = _AlwaysAnswers(random_adapter, gen)
    res = run_method(method, adapter, item.image, item.question, None, PolicyConfig(budget=6),
                     evidence=item.evidence, max_passes=6)
    assert adapter.calls >= 1 and res.answer == ""
    assert res.answer_token_ids == [] and res.token_confidences == [] and res.confidence == 0.0


def test_an_unsure_empty_open_answer_is_searched_not_taken_as_clear(random_adapter):
    """The end step's entropy is an empty answer's span entropy: 2 nats is far above the exit threshold,
    so SPOT-E searches (an empty span would read 0 nats and stop at once), and views are scored on that
    step by teacher forcing the end token."""
    from spote.bench.scenes import make_open_item
    from spote.adapters.base import Generation

    item = make_open_item(0, "val", 0)
    for end_entropy, searched in ((2.0, True), (None, False)):
        adapter = _AlwaysAnswers(random_adapter, Generation("", [], [], [], end_entropy,
                                                            None if end_entropy is None else -0.7))
        res = run_method("spote", adapter, item.image, item.question, None, PolicyConfig(budget=12))
        assert res.entropy_trace[0] == pytest.approx(end_entropy or 0.0)
        assert (res.forward_passes > 1) == searched
        if searched:  # the views' readings of the end step: finite entropies, below ln(vocabulary)
            assert all(0 <= h <= np.log(len(random_adapter.tokenizer)) + 1e-6 for h in res.entropy_trace[1:])


@pytest.mark.parametrize("choices", [["A", "B", "C"], None], ids=["closed", "open"])
def test_the_baseline_trace_is_its_one_pass_rounded_as_spotes(random_adapter, choices):
    """The baseline's entropy trace held the whole image twice, unrounded (``1.7855300903320312``), and its
    trace picture showed a step 1 that never happened."""
    img = Image.fromarray(np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    res = run_method("baseline", random_adapter, img, "what letter ?", choices, PolicyConfig())
    assert len(res.entropy_trace) == 1 and res.entropy_trace[0] == round(res.entropy_trace[0], 5)
    grid = run_method("grid", random_adapter, img, "what letter ?", choices, PolicyConfig(), budget=4)
    assert len(grid.entropy_trace) == 2 and grid.entropy_trace[0] == res.entropy_trace[0]


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_reads_any_pillow_mode_as_spote_answer_does(random_adapter, method, mode):
    """run_method is public: a grey, transparent or 16-bit scan is read as spote.answer reads it (``to_rgb``),
    not as a crop or a resize of the raw mode gives it (a 16-bit page converted by Pillow is all white)."""
    from spote.images import to_rgb

    grey = np.asarray(_image().convert("L"), np.float64)
    img = Image.fromarray((grey * 257).astype(np.uint16)) if mode == "I;16" else _image().convert(mode)
    if mode == "RGBA":   # a cut-out on a transparent ground: read on white
        img.putalpha(Image.fromarray(np.where(grey > 128, 255, 0).astype(np.uint8)))
    cfg = PolicyConfig(budget=6, exit_entropy=0.0, exit_entropy_per_ln_k=0.0)
    kw = {"max_passes": 6, "n_windows": 6, "evidence": (100, 100, 200, 180)}
    res, same = (run_method(method, random_adapter, im, Q, CHOICES, cfg, **kw) for im in (img, to_rgb(img)))
    assert (res.answer, res.boxes, res.forward_passes, res.confidence) == (
        same.answer, same.boxes, same.forward_passes, same.confidence)


def test_run_method_names_an_image_that_is_no_pil_image(random_adapter):
    """An array or a path failed deep in a method ("Value after * must be an iterable, not int")."""
    for image in (np.zeros((32, 32, 3), np.uint8), "photo.png"):
        with pytest.raises(TypeError, match=r"^image must be a PIL image, got (ndarray|str): spote.answer reads"):
            run_method("baseline", random_adapter, image, Q, CHOICES)
