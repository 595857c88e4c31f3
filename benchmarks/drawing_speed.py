"""What drawing SpotBench scenes and training batches costs, and the plain way against the fast one.

    python -m benchmarks.drawing_speed --pages 100 --batches 20 --out results/drawing-speed.json

``training.train`` draws its scenes in one DataLoader worker beside the two compute threads, so on
two cores the drawing competes with the compute for the cores. ``spote.bench.scenes`` draws a document
page's text bars from bulk random words a line at a time (``ScalarDraws``) and sums a noise
texture per channel. The plain way, one ``ImageDraw.rectangle`` and one scalar ``rng.integers`` at a
time and a broadcast sum, is kept here (``page_plain``, ``noise_texture_plain``) as the reference:
the shipped weights and every documented figure rest on scenes with its pixels, so the fast way must
match it bit for bit (tests/bench/test_scenes.py). This benchmark times the two on the same sizes in
one run, checks that every output and the generator's state after it are the same, and times the
batches of ``make train-open``'s two stages on one thread, as its data worker draws them (the
first batch, which draws the scene pool, left out). If any output differed it times no batch,
writes the report and exits with 1.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import typer
from PIL import Image, ImageDraw

# make train-open's streams (Makefile: --stage1-open-share 0.7 --glyph-px 11 24 --stage1-start 100000000
# for stage 1, batch 2 x 64 and pool 256 as pretrain_vision builds it; --open-share 0.5 and --lm-from for stage 2)
STAGE1 = {"batch_size": 128, "pool": 256, "start": 100_000_000, "open_share": 0.7, "glyph_px": (11, 24)}
STAGE2 = {"batch_size": 64, "open_share": 0.5, "open_vocab": True}


def page_plain(rng, w, h) -> Image.Image:
    """``spote.bench.scenes._page`` drawn the plain way: a bar and a scalar draw at a time."""
    page = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(236, 252, 3)))
    d = ImageDraw.Draw(page)
    y = int(rng.integers(10, 30))
    while y < h - 10:
        x = int(rng.integers(10, 40))
        lh = int(rng.integers(3, 6))
        end = int(w - rng.integers(10, 120))
        while x < end:
            ww = int(rng.integers(8, 40))
            g = int(rng.integers(60, 140))
            d.rectangle([x, y, min(end, x + ww), y + lh], fill=(g, g, g))
            x += ww + int(rng.integers(4, 9))
        y += lh + int(rng.integers(6, 14))
    return page


def noise_texture_plain(rng, w, h, base, amp, grain) -> np.ndarray:
    """``spote.bench.scenes._noise_texture`` summed the plain way: (h, w, 1) broadcast against (3,)
    (its layers, ``_texture_layers``, are the same either way)."""
    from spote.bench.scenes import _texture_layers

    tex, fine = _texture_layers(rng, w, h, amp, grain)
    return (np.asarray(base, np.float32)[None, None, :] + tex + fine).clip(0, 255)


def scene_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` (width, height) pairs in pixels, drawn as SpotBench draws a scene's (480-1279 each)."""
    rng = np.random.default_rng(seed)
    return [(int(w), int(h)) for w, h in rng.integers(480, 1280, (n, 2))]


def compare(plain, fast, sizes: list[tuple[int, int]], same) -> dict:
    """Milliseconds per call of ``plain(rng, w, h)`` and ``fast(rng, w, h)`` over ``sizes``, each from
    a generator seeded alike, alternating which goes first; ``identical``: ``same(a, b)`` held for every
    pair of outputs and both generators were left in the same state."""
    ways = {"plain": plain, "fast": fast}
    spent = {name: 0.0 for name in ways}
    identical = True
    for i, (w, h) in enumerate(sizes):
        out = {}
        rngs = {name: np.random.default_rng([i, w, h]) for name in ways}
        for name in (("plain", "fast") if i % 2 == 0 else ("fast", "plain")):
            t = time.perf_counter()
            out[name] = ways[name](rngs[name], w, h)
            spent[name] += time.perf_counter() - t
        identical = identical and same(out["plain"], out["fast"]) and \
            rngs["plain"].bit_generator.state == rngs["fast"].bit_generator.state
    ms = {name: 1000 * s / len(sizes) for name, s in spent.items()}
    return {"n": len(sizes), "plain_ms": ms["plain"], "fast_ms": ms["fast"], "speedup": ms["plain"] / ms["fast"],
            "identical": identical}


def seconds_per_batch(stream, batches: int) -> float:
    """Seconds per batch of an endless training stream, the first batch (the scene pool) left out."""
    it = iter(stream)
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return (time.perf_counter() - t) / batches


def main(pages: int = typer.Option(100, help="page and texture sizes compared"),
         batches: int = typer.Option(20, help="batches timed per training stage"),
         out: Path = typer.Option(Path("results/drawing-speed.json"), help="the report")):
    """Time drawing the plain way against the fast one, and make train-open's batches. Raises
    typer.BadParameter for a count below 1 or an ``out`` that is a folder, before any work; if the two
    ways' outputs differed, writes the report without batch timings and exits with 1 (typer.Exit)."""
    if pages < 1 or batches < 1:
        raise typer.BadParameter(f"--pages and --batches must be >= 1, got {pages} and {batches}")
    if out.is_dir():
        raise typer.BadParameter(f"--out {out} is a folder; give the report's file name")
    import torch

    from benchmarks.training_speed import checkout_state
    from spote.bench.run import environment

    report = {**compare_drawing(pages), "environment": environment(), "usable_cpus": len(os.sched_getaffinity(0)),
              "checkout": checkout_state()}
    same = report["page"]["identical"] and report["noise_texture"]["identical"]
    if same:  # timing batches drawn wrong would say nothing
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the data worker draws
        try:
            report.update(time_batches(batches))
        finally:
            torch.set_num_threads(threads)  # a caller in the same process (a test) keeps its own
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if not same:
        print(f"the fast drawing differs from the plain one: see page / noise_texture in {out}")
        raise typer.Exit(1)


def compare_drawing(pages: int) -> dict:
    """The plain and the fast way on ``pages`` scene sizes: {"page", "noise_texture": ``compare``'s}."""
    from spote.bench.scenes import _noise_texture, _page

    sizes = scene_sizes(pages)
    page = compare(page_plain, lambda rng, w, h: _page(rng, w, h)[0], sizes, lambda a, b: a.tobytes() == b.tobytes())
    print(f"page: plain {page['plain_ms']:.1f} ms, fast {page['fast_ms']:.1f} ms, identical {page['identical']}", flush=True)
    fields = (95, 130, 70), 22, 48  # the aerial scenes' texture
    noise = compare(lambda rng, w, h: noise_texture_plain(rng, w, h, *fields),
                    lambda rng, w, h: _noise_texture(rng, w, h, *fields), sizes,
                    lambda a, b: a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32)))
    print(f"noise texture: plain {noise['plain_ms']:.1f} ms, fast {noise['fast_ms']:.1f} ms, "
          f"identical {noise['identical']}", flush=True)
    return {"page": page, "noise_texture": noise}


def time_batches(batches: int) -> dict:
    """Seconds per batch of make train-open's two stages (``seconds_per_batch``), on this thread count."""
    from training.train import FINETUNE_START, CloseViewStream, ViewStream

    streams = {"stage1": seconds_per_batch(CloseViewStream(0, **STAGE1), batches),
               "stage2": seconds_per_batch(ViewStream(0, start=FINETUNE_START, **STAGE2), batches)}
    print(f"train-open batches on one thread: stage 1 {streams['stage1']:.3f} s, stage 2 {streams['stage2']:.3f} s")
    return {"seconds_per_batch": streams, "batches": batches,
            "stages": {"stage1": {**STAGE1, "glyph_px": list(STAGE1["glyph_px"])},
                       "stage2": {**STAGE2, "start": FINETUNE_START}}}


if __name__ == "__main__":
    typer.run(main)
