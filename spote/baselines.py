"""Peers of SPOT-E in one harness: the same adapter, the same image, the same result record.

- ``baseline``       one pass on the whole image;
- ``api``            the image re-weighted by the relevance map (attention prompting), one pass;
- ``vicrop``         one crop around the relative-attention peak, answered with global view + crop;
- ``grid``           every multi-scale window of the policy's grid, lowest entropy wins;
- ``naive_entropy``  SPOT-E's loop with the clarity reward only (the paper's ablation);
- ``random``         random windows on SPOT-E's budget, lowest entropy wins;
- ``zoomeye``        a confidence-guided tree search over zoomed quadrants (ZoomEye, arXiv 2411.16044);
- ``scaffold``       the SPOT-E authors' reference loop: 2 GRPO steps x 4 highlight spotlights, no early exit;
- ``oracle``         a zoom on the ground-truth evidence box (benchmarks only);
- ``spote``          the method.

Every search method takes a forward-pass budget, so that methods can be compared at matched cost
(``spote bench --budget B``): spote, naive_entropy and zoomeye stop when they reach it; grid reads
its windows coarse to fine and random draws windows until it is spent; scaffold runs
``(B - 1) // 4`` steps of 4. ``held_to_budget`` gives the keyword arguments of ``run_method`` that
hold a method to ``B``; spote and naive_entropy read it from ``PolicyConfig.budget``.
"""

from __future__ import annotations

import heapq
import threading
import time
import weakref
from dataclasses import replace

import numpy as np
from PIL import Image

from .core import (PolicyConfig, Reader, SpotResult, _distribution, answer_confidence, checked_relevance, exit_threshold,
                   naive_entropy_config, ran_with, significant, spote, view_mode, window_grid)
from .images import to_rgb
from .spotlight import Box, ViewRenderer

METHODS = ("baseline", "api", "vicrop", "grid", "naive_entropy", "random", "zoomeye", "scaffold", "oracle", "spote")
# what `spote ask` and `spote.answer` run: every method but the oracle, which reads a ground-truth box (benchmarks only)
ANSWER_METHODS = tuple(m for m in METHODS if m != "oracle")
# methods whose cost a forward-pass budget bounds (the budget sweep runs these)
SEARCH_METHODS = ("spote", "naive_entropy", "random", "grid", "zoomeye", "scaffold")


def held_to_budget(budget: int | None) -> dict:
    """The keyword arguments of ``run_method`` that hold every search method to ``budget`` forward passes,
    as ``spote bench --budget`` does (grid, zoomeye and random stop there, scaffold runs ``(budget - 1) // 4``
    steps of 4; spote and naive_entropy take theirs from ``PolicyConfig.budget``, which should be the same
    number; api and vicrop cost 1-3 whatever it is); ``{}`` for None: each method at its own
    defaults (grid's every window, zoomeye's ``ZOOMEYE_MAX_PASSES``, scaffold's two steps). The whole image
    is read whatever it costs: one pass, or one per choice where choices span several tokens."""
    return {} if budget is None else {"max_passes": budget, "n_windows": budget}


def _result(method, adapter, passes0, t0, cfg, reading, choices, answer_text, trace, boxes, evidence_box, mode,
            token_ids=None, token_logp=None, cut_off=None, read_attention=False):
    """A method's SpotResult. Closed set: the answer and confidence are ``reading``'s top choice. Open
    ended: ``answer_text`` with ``token_logp`` (log p of each of its tokens as generated; default: the
    span ``reading`` generated); its confidence is the least of their p, as spote's, and 0 for an empty answer
    (no token was read); ``cut_off``: whether its generation stopped at the token cap."""
    token_confidences = None
    if choices is not None:
        answer = choices[int(reading.logp.argmax())]
        confidence = float(reading.logp.exp().max())
        dist = _distribution(choices, reading.logp)
        cut_off = None
    else:
        if token_logp is None:  # the reading's span, unless the answer is empty (its span is the end token)
            token_logp = [] if token_ids is not None and not token_ids else reading.span_logp.tolist()
        token_logp = list(token_logp)
        answer, dist = answer_text, None
        confidence = answer_confidence(token_logp)
        token_confidences = [float(np.exp(lp)) for lp in token_logp]
        if not answer:  # an empty answer read nothing: no box holds its evidence
            evidence_box = None
    return SpotResult(
        answer=answer, confidence=significant(confidence), distribution=dist,
        entropy_trace=[round(float(h), 5) for h in trace], reward_trace=[],  # nats, rounded as spote's
        anchors=[], boxes=boxes, chosen_boxes=[evidence_box] if evidence_box else [],
        forward_passes=adapter.forward_passes - passes0, seconds=round(time.perf_counter() - t0, 4), mode=mode,
        policy=ran_with(cfg, read_attention), method=method, evidence_box=evidence_box, answer_token_ids=token_ids,
        token_confidences=token_confidences, answer_cut_off=cut_off,
    )


def _open_answer(adapter, renderer, mode, reader, choices, box, text):
    """(text, token ids, token log-probs, cut off) of the answer: for an open question whose search found a
    better view, generated once on it; otherwise the baseline's (``text``, ``reader.answer_ids``, None: the
    baseline reading's own span log p, which ``_result`` takes, and ``reader.cut_off``); ids None for a
    closed set."""
    if choices is None and box is not None:
        gen = adapter.generate(renderer.render(box, mode), reader.question)
        return gen.text, gen.token_ids, list(gen.logprobs), gen.cut_off
    return text, reader.answer_ids, None, reader.cut_off


def _generation_passes(choices) -> int:
    """Passes an answer costs after the search: an open answer is generated once on the found view."""
    return 1 if choices is None else 0


def _views_within(passes: int, adapter, question: str, choices) -> int:
    """How many views fit in ``passes`` forward passes beside the whole image's read and an open answer's
    generation: each read costs ``Reader.cost_per_view`` passes (one per choice where choices span several
    tokens)."""
    cost = Reader(adapter, question, choices).cost_per_view()
    return max(0, (passes - _generation_passes(choices)) // cost - 1)


def _lowest_entropy(method, adapter, image, question, choices, cfg, windows: list[Box]) -> SpotResult:
    """Evaluate the whole image and every window (batched); answer from the lowest entropy."""
    t0, passes0 = time.perf_counter(), adapter.forward_passes
    renderer = ViewRenderer(image, adapter.input_size)
    reader = Reader(adapter, question, choices)
    mode = view_mode(cfg, adapter)
    base, text = reader.baseline([renderer.global_view])
    best, best_box = base, None
    chunk = max(1, adapter.batch_size)
    for start in range(0, len(windows), chunk):
        part = windows[start:start + chunk]
        for b, rd in zip(part, reader.read([renderer.render(b, mode) for b in part])):
            if rd.entropy < best.entropy:
                best, best_box = rd, b
    text, ids, token_logp, cut_off = _open_answer(adapter, renderer, mode, reader, choices, best_box, text)
    trace = [base.entropy, best.entropy] if windows else [base.entropy]  # the whole image alone is one step
    return _result(method, adapter, passes0, t0, cfg, best, choices, text, trace,
                   [b.as_list() for b in windows], best_box.as_list() if best_box else None, mode, ids, token_logp,
                   cut_off)


def run_baseline(adapter, image, question, choices=None, cfg=PolicyConfig(), **_):
    return _lowest_entropy("baseline", adapter, image, question, choices, cfg, [])


def run_grid(adapter, image, question, choices=None, cfg=PolicyConfig(), max_passes: int | None = None, **_):
    """Every window of the policy's grid, coarse to fine; with ``max_passes`` as many as fit beside the
    whole image's pass (and an open answer's generation on the found view)."""
    windows, scale = window_grid(*image.size, adapter.input_size, cfg.min_window, scale_step=cfg.scale_step)
    order = np.argsort(scale, kind="stable")  # coarse first: a cut-off grid still covers the whole image
    windows = [windows[i] for i in order]
    if max_passes is not None:
        windows = windows[:_views_within(max_passes, adapter, question, choices)]
    return _lowest_entropy("grid", adapter, image, question, choices, cfg, windows)


def run_random(adapter, image, question, choices=None, cfg=PolicyConfig(), n_windows: int | None = None, **_):
    """Windows of the policy's grid drawn at random (``cfg.seed``), as many as fit in ``n_windows`` forward
    passes (default ``cfg.budget``; a pass count, as ``held_to_budget`` gives it) beside the whole image's
    read and an open answer's generation; the lowest entropy answers."""
    windows, _ = window_grid(*image.size, adapter.input_size, cfg.min_window, scale_step=cfg.scale_step)
    rng = np.random.default_rng(cfg.seed)
    n = min(len(windows), _views_within(n_windows if n_windows is not None else cfg.budget, adapter, question, choices))
    pick = [windows[i] for i in rng.choice(len(windows), size=n, replace=False)]
    return _lowest_entropy("random", adapter, image, question, choices, cfg, pick)


# the oracle's view side over the evidence box's long side: closed evidence is a small glyph or object,
# read with room around it; open evidence is a field of several glyphs, which twice its width would
# shrink below legibility (SpotBench's small codes are legible at about 1:1 only)
ORACLE_MARGIN = 2.0
ORACLE_MARGIN_OPEN = 1.05


def run_oracle(adapter, image, question, choices=None, cfg=PolicyConfig(), evidence=None, **_):
    """Zoom on the ground-truth box with a margin (closed set: twice its side; open ended: 1.05 x its
    long side, the whole field and little else), at least the model input."""
    if evidence is None:
        return _lowest_entropy("oracle", adapter, image, question, choices, cfg, [])
    ev = Box(*evidence)
    margin = ORACLE_MARGIN if choices is not None else ORACLE_MARGIN_OPEN
    side = min(min(image.size), max(margin * max(ev.width, ev.height), adapter.input_size))
    box = Box.square(*ev.centre, side).shifted_inside(*image.size)
    t0, passes0 = time.perf_counter(), adapter.forward_passes
    renderer = ViewRenderer(image, adapter.input_size)
    reader = Reader(adapter, question, choices)
    mode = view_mode(cfg, adapter)
    if choices is None:
        base, text = reader.baseline(renderer.render(box, mode))
    else:
        base, text = reader.read([renderer.render(box, mode)])[0], None
    return _result("oracle", adapter, passes0, t0, cfg, base, choices, text, [base.entropy], [box.as_list()],
                   box.as_list(), mode, reader.answer_ids, cut_off=reader.cut_off)


def _relevance_or_uniform(adapter, renderer, question, choices, cfg) -> tuple[np.ndarray, bool]:
    """(the model's relevance map where the policy and the adapter allow it (``cfg.use_relevance``; black
    box: none), else a uniform 8 x 8 one; whether it is the model's)."""
    used = cfg.use_relevance and adapter.supports_relevance
    rel = checked_relevance(adapter.relevance([renderer.global_view], question, choices)) if used else None
    return (rel, True) if rel is not None else (np.ones((8, 8)) / 64, False)


def run_api(adapter, image, question, choices=None, cfg=PolicyConfig(), **_):
    t0, passes0 = time.perf_counter(), adapter.forward_passes
    renderer = ViewRenderer(image, adapter.input_size)
    rel, read = _relevance_or_uniform(adapter, renderer, question, choices, cfg)
    reader = Reader(adapter, question, choices)
    reading, text = reader.baseline(renderer.render_map(rel))
    return _result("api", adapter, passes0, t0, cfg, reading, choices, text, [reading.entropy], [], None, "highlight",
                   reader.answer_ids, cut_off=reader.cut_off, read_attention=read)


def run_vicrop(adapter, image, question, choices=None, cfg=PolicyConfig(), crop_fraction: float = 0.25, **_):
    t0, passes0 = time.perf_counter(), adapter.forward_passes
    renderer = ViewRenderer(image, adapter.input_size)
    rel, read = _relevance_or_uniform(adapter, renderer, question, choices, cfg)
    r, c = np.unravel_index(int(np.argmax(rel)), rel.shape)
    cell = renderer.grid_to_source(*rel.shape)[r * rel.shape[1] + c]
    w, h = image.size
    side = min(min(w, h), max(adapter.input_size, crop_fraction * min(w, h)))
    box = Box.square(*cell.centre, side).shifted_inside(w, h)
    mode = view_mode(replace(cfg, mode="zoom+context"), adapter)  # ViCrop's view: the whole image beside the crop
    reader = Reader(adapter, question, choices)
    reading, text = reader.baseline(renderer.render(box, mode))
    return _result("vicrop", adapter, passes0, t0, cfg, reading, choices, text, [reading.entropy], [box.as_list()],
                   box.as_list(), mode, reader.answer_ids, cut_off=reader.cut_off, read_attention=read)


def run_spote(adapter, image, question, choices=None, cfg=PolicyConfig(), **_):
    return spote(adapter, image, question, choices, cfg)


def run_naive_entropy(adapter, image, question, choices=None, cfg=PolicyConfig(), **_):
    return spote(adapter, image, question, choices, naive_entropy_config(cfg), method="naive_entropy")


def quadrants(box: Box) -> list[Box]:
    """The four quarters of ``box`` (2 x 2), ZoomEye's children of a node."""
    xm, ym = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    return [Box(box.x0, box.y0, xm, ym), Box(xm, box.y0, box.x1, ym),
            Box(box.x0, ym, xm, box.y1), Box(xm, ym, box.x1, box.y1)]


ZOOMEYE_MAX_PASSES = 256  # the tree search's own pass limit at its defaults (spote's budget is not its)


def run_zoomeye(adapter, image, question, choices=None, cfg=PolicyConfig(), max_passes: int | None = None, **_):
    """ZoomEye-style tree search (Shen et al., arXiv 2411.16044), on SPOT-E's model and views.

    The image is a tree: the root is the whole image, a node's children its four quadrants, down
    to ``cfg.min_window`` model input sizes. A priority queue holds the nodes scored so far, best
    first; the search pops the best node, scores its children in one batch, and stops when
    a node's answer is clear (entropy <= the same exit threshold tau as spote's), the queue is
    empty, or ``max_passes`` forward passes are spent (``ZOOMEYE_MAX_PASSES`` when not given). The
    answer comes from the clearest node.

    Where it differs from the paper: a node's priority is the answer's own entropy on it (lower is
    better), not ZoomEye's existence and latent-confidence prompts ("is <target> in this view?",
    "could zooming in help?"), which need a model that answers arbitrary yes/no prompts; nodes are
    rendered like spote's views (global view beside the zoom where the model takes two images).
    """
    t0, passes0 = time.perf_counter(), adapter.forward_passes
    renderer = ViewRenderer(image, adapter.input_size)
    reader = Reader(adapter, question, choices)
    mode = view_mode(cfg, adapter)
    base, text = reader.baseline([renderer.global_view])
    tau = exit_threshold(cfg, len(choices) if choices is not None else None)
    smallest = cfg.min_window * adapter.input_size
    best, best_box, trace, seen = base, None, [base.entropy], []
    limit = (ZOOMEYE_MAX_PASSES if max_passes is None else max_passes) - _generation_passes(choices)
    cost = reader.cost_per_view()  # passes a node's read costs
    queue = [(base.entropy, 0, Box.full(*image.size))]  # (entropy, tie-break, node)
    pushed = 1
    while queue and best.entropy > tau:
        room = limit - (adapter.forward_passes - passes0)
        _, _, node = heapq.heappop(queue)
        kids = [k for k in quadrants(node) if min(k.width, k.height) >= smallest][:max(0, room // cost)]
        if not kids:
            if room < cost:
                break
            continue
        for k, rd in zip(kids, reader.read([renderer.render(k, mode) for k in kids])):  # one batch
            seen.append(k.as_list())
            heapq.heappush(queue, (rd.entropy, pushed, k))
            pushed += 1
            if rd.entropy < best.entropy:
                best, best_box = rd, k
        trace.append(best.entropy)
    text, ids, token_logp, cut_off = _open_answer(adapter, renderer, mode, reader, choices, best_box, text)
    return _result("zoomeye", adapter, passes0, t0, cfg, best, choices, text, trace, seen,
                   best_box.as_list() if best_box else None, mode, ids, token_logp, cut_off)


def scaffold_config(cfg: PolicyConfig, budget: int | None = None, open_ended: bool = False) -> PolicyConfig:
    """The SPOT-E authors' reference loop (arXiv 2606.20244, their early scaffold): G = 4 highlight
    spotlights per step, 2 GRPO steps (or as many as ``budget`` allows), every group sampled and read
    in one batch, no early exit, no glance or probe, a 14 x 14 map with no image prior (no attention,
    no saliency; the windows' scale prior ``fine_scale_bias`` stays, as in every policy) with Gaussian
    exploration (std 0.15), learning rate 0.05, best of all candidates (an open answer: one generation
    on the best one, whether or not it stands out). Passes: 1 + 4 x 2 = 9, and an open answer's
    generation one more (``open_ended``), so that both read their two groups of 4."""
    answer = 1 if open_ended else 0  # the generation spote() keeps aside before it searches
    steps = 2 if budget is None else max(1, (budget - 1 - answer) // 4)
    passes = 1 + answer + 4 * steps if budget is None else min(1 + answer + 4 * steps, budget)
    return replace(cfg, group_size=4, first_group=0, read_chunk=0, greedy_steps=0, steps=steps, budget=passes,
                   mode="highlight", exit_entropy_per_ln_k=0.0,
                   exit_entropy=0.0, glance_side=0.0, probe_side=0.0, plateau_patience=10**6, settle_after=0, use_relevance=False,
                   saliency_weight=0.0, saliency_peaks=0, grid=14, jitter=0.15, learning_rate=0.05,
                   answer_top=1, answer_centring=0.0, answer_grid=1, answer_step=0.0, standout_z=0.0)


def run_scaffold(adapter, image, question, choices=None, cfg=PolicyConfig(), max_passes: int | None = None, **_):
    return spote(adapter, image, question, choices, scaffold_config(cfg, max_passes, choices is None), method="scaffold")


RUNNERS = {
    "baseline": run_baseline, "api": run_api, "vicrop": run_vicrop, "grid": run_grid,
    "naive_entropy": run_naive_entropy, "random": run_random, "zoomeye": run_zoomeye, "scaffold": run_scaffold,
    "oracle": run_oracle, "spote": run_spote,
}


_LOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOCKS_BY_ID: dict[int, threading.RLock] = {}  # adapters that cannot be weakly referenced (a dataclass, __slots__)
_LOCKS_GUARD = threading.Lock()


def adapter_lock(adapter) -> threading.RLock:
    """The lock a search holds on ``adapter`` while it runs: a search counts its budget on the adapter's pass
    counter and may switch the model's attention implementation for a relevance pass, so two searches
    sharing one adapter at once would spend each other's passes and break each other's passes."""
    with _LOCKS_GUARD:
        try:
            return _LOCKS.setdefault(adapter, threading.RLock())
        except TypeError:  # unhashable or no weak reference: kept by id (a lock per adapter ever seen, a few bytes)
            return _LOCKS_BY_ID.setdefault(id(adapter), threading.RLock())


def run_method(name: str, adapter, image, question, choices=None, cfg=PolicyConfig(), **kw) -> SpotResult:
    """Run search method ``name`` (``METHODS``) on ``image`` (any size in pixels, any PIL mode: read as
    ``spote.images.to_rgb`` makes it 8-bit RGB, a 16-bit scan stretched, as ``spote.answer`` reads it); calls
    that share ``adapter`` from several threads run one at a time (``adapter_lock``). Raises ValueError for
    an unknown method, TypeError for an image that is no PIL image."""
    if name not in RUNNERS:
        raise ValueError(f"unknown method {name!r}; expected one of {METHODS}")
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image, got {type(image).__name__}: spote.answer reads paths, URIs, "
                        "bytes and arrays (spote.images.load_image and array_to_image make a PIL image of them)")
    image = to_rgb(image)  # every method crops and resizes 8-bit RGB (Pillow cannot reduce a 16-bit page)
    with adapter_lock(adapter):
        return RUNNERS[name](adapter, image, question, choices, cfg, **kw)
