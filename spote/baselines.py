"""Peers of SPOT-E in one harness: the same adapter, the same image, the same result record.

- ``baseline``       one pass on the whole image;
- ``api``            the image re-weighted by the relevance map (attention prompting), one pass;
- ``vicrop``         one crop around the relative-attention peak, answered with global view + crop;
- ``grid``           every multi-scale window of the policy's grid, lowest entropy wins;
- ``naive_entropy``  SPOT-E's loop with the clarity reward only (the paper's ablation);
- ``random``         random windows on SPOT-E's budget, lowest entropy wins;
- ``oracle``         a zoom on the ground-truth evidence box (benchmarks only);
- ``spote``          the method.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from .core import PolicyConfig, Reader, SpotResult, _distribution, naive_entropy_config, spote, window_grid
from .spotlight import Box, ViewRenderer

METHODS = ("baseline", "api", "vicrop", "grid", "naive_entropy", "random", "oracle", "spote")


def _result(method, adapter, passes0, t0, cfg, reading, choices, answer_text, trace, boxes, evidence_box, mode):
    if choices is not None:
        answer = choices[int(reading.logp.argmax())]
        confidence = float(reading.logp.exp().max())
        dist = _distribution(choices, reading.logp)
    else:
        answer, confidence, dist = answer_text, float(np.exp(float(reading.span_logp.sum()))), None
    return SpotResult(
        answer=answer, confidence=round(confidence, 6), distribution=dist, entropy_trace=trace, reward_trace=[],
        anchors=[], boxes=boxes, chosen_boxes=[evidence_box] if evidence_box else [],
        forward_passes=adapter.forward_passes - passes0, seconds=round(time.perf_counter() - t0, 4), mode=mode,
        policy=asdict(cfg), method=method, evidence_box=evidence_box,
    )


def _lowest_entropy(method, adapter, image, question, choices, cfg, windows: list[Box]) -> SpotResult:
    """Evaluate the whole image and every window (batched); answer from the lowest entropy."""
    t0, passes0 = time.perf_counter(), adapter.forward_passes
    renderer = ViewRenderer(image, adapter.input_size)
    reader = Reader(adapter, question, choices)
    base, text = reader.baseline([renderer.global_view])
    best, best_box = base, None
    chunk = max(1, adapter.batch_size)
    for start in range(0, len(windows), chunk):
        part = windows[start:start + chunk]
        for b, rd in zip(part, reader.read([renderer.render(b, cfg.mode) for b in part])):
            if rd.entropy < best.entropy:
                best, best_box = rd, b
    if choices is None and best_box is not None:
        gen = adapter.generate(renderer.render(best_box, cfg.mode), question)
        text = gen.text
    return _result(method, adapter, passes0, t0, cfg, best, choices, text, [base.entropy, best.entropy],
                   [b.as_list() for b in windows], best_box.as_list() if best_box else None, cfg.mode)


def run_baseline(adapter, image, question, choices=None, cfg=PolicyConfig(), **_):
    return _lowest_entropy("baseline", adapter, image, question, choices, cfg, [])


def run_grid(adapter, image, question, choices=None, cfg=PolicyConfig(), **_):
    windows, _ = window_grid(*image.size, adapter.input_size, cfg.min_window)
    return _lowest_entropy("grid", adapter, image, question, choices, cfg, windows)


def run_random(adapter, image, question, choices=None, cfg=PolicyConfig(), n_windows: int | None = None, **_):
    windows, _ = window_grid(*image.size, adapter.input_size, cfg.min_window)
    rng = np.random.default_rng(cfg.seed)
    n = min(len(windows), max(1, (n_windows if n_windows is not None else cfg.budget) - 1))
    pick = [windows[i] for i in rng.choice(len(windows), size=n, replace=False)]
    return _lowest_entropy("random", adapter, image, question, choices, cfg, pick)


def run_oracle(adapter, image, question, choices=None, cfg=PolicyConfig(), evidence=None, **_):
    """Zoom on the ground-truth box with a margin (twice its side, at least the model input)."""
    if evidence is None:
        return _lowest_entropy("oracle", adapter, image, question, choices, cfg, [])
    ev = Box(*evidence)
    side = min(min(image.size), max(2 * max(ev.width, ev.height), adapter.input_size))
    box = Box.square(*ev.centre, side).shifted_inside(*image.size)
    t0, passes0 = time.perf_counter(), adapter.forward_passes
    renderer = ViewRenderer(image, adapter.input_size)
    reader = Reader(adapter, question, choices)
    if choices is None:
        base, text = reader.baseline(renderer.render(box, cfg.mode))
    else:
        base, text = reader.read([renderer.render(box, cfg.mode)])[0], None
    return _result("oracle", adapter, passes0, t0, cfg, base, choices, text, [base.entropy], [box.as_list()],
                   box.as_list(), cfg.mode)


def _relevance_or_uniform(adapter, renderer, question, choices):
    rel = adapter.relevance([renderer.global_view], question, choices) if adapter.supports_relevance else None
    return rel if rel is not None else np.ones((8, 8)) / 64


def run_api(adapter, image, question, choices=None, cfg=PolicyConfig(), **_):
    t0, passes0 = time.perf_counter(), adapter.forward_passes
    renderer = ViewRenderer(image, adapter.input_size)
    rel = _relevance_or_uniform(adapter, renderer, question, choices)
    reader = Reader(adapter, question, choices)
    reading, text = reader.baseline(renderer.render_map(rel))
    return _result("api", adapter, passes0, t0, cfg, reading, choices, text, [reading.entropy], [], None, "highlight")


def run_vicrop(adapter, image, question, choices=None, cfg=PolicyConfig(), crop_fraction: float = 0.25, **_):
    t0, passes0 = time.perf_counter(), adapter.forward_passes
    renderer = ViewRenderer(image, adapter.input_size)
    rel = _relevance_or_uniform(adapter, renderer, question, choices)
    r, c = np.unravel_index(int(np.argmax(rel)), rel.shape)
    cell = renderer.grid_to_source(*rel.shape)[r * rel.shape[1] + c]
    w, h = image.size
    side = min(min(w, h), max(adapter.input_size, crop_fraction * min(w, h)))
    box = Box.square(*cell.centre, side).shifted_inside(w, h)
    mode = "zoom+context" if adapter.max_images >= 2 else "zoom"
    reader = Reader(adapter, question, choices)
    reading, text = reader.baseline(renderer.render(box, mode))
    return _result("vicrop", adapter, passes0, t0, cfg, reading, choices, text, [reading.entropy], [box.as_list()],
                   box.as_list(), mode)


def run_spote(adapter, image, question, choices=None, cfg=PolicyConfig(), **_):
    return spote(adapter, image, question, choices, cfg)


def run_naive_entropy(adapter, image, question, choices=None, cfg=PolicyConfig(), **_):
    return spote(adapter, image, question, choices, naive_entropy_config(cfg), method="naive_entropy")


RUNNERS = {
    "baseline": run_baseline, "api": run_api, "vicrop": run_vicrop, "grid": run_grid,
    "naive_entropy": run_naive_entropy, "random": run_random, "oracle": run_oracle, "spote": run_spote,
}


def run_method(name: str, adapter, image, question, choices=None, cfg=PolicyConfig(), **kw) -> SpotResult:
    if name not in RUNNERS:
        raise ValueError(f"unknown method {name!r}; expected one of {METHODS}")
    return RUNNERS[name](adapter, image, question, choices, cfg, **kw)
