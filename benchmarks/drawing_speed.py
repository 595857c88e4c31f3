"""What drawing SpotBench scenes and training batches costs, and the plain way against the fast one.

    python -m benchmarks.drawing_speed --pages 100 --batches 20 --out results/drawing-speed.json

``training.train`` draws its scenes in one DataLoader worker beside the two compute threads, so on
two cores every second of drawing is taken from the compute. A document scene's text bars were drawn
one ``ImageDraw.rectangle`` and one scalar ``rng.integers`` at a time, and a noise texture's channels
were summed by broadcasting; ``spote.bench.scenes`` now draws both faster, with the same pixels and
the same random stream (``ScalarDraws``). This benchmark times the plain way (kept here:
``page_plain``, ``noise_texture_plain``; tests/bench/test_scenes.py checks the fast one against
them) against the fast one on the same sizes in one run, checks that every output is the same to
the bit, and times the batches of ``make train-open``'s two stages on one thread, as its data worker
draws them (the first batch, which draws the scene pool, left out).
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
    """``spote.bench.scenes._noise_texture`` summed the plain way: (h, w, 1) broadcast against (3,)."""
    lw, lh = max(2, w // grain), max(2, h // grain)
    low = rng.normal(0, 1, (lh, lw, 1)).astype(np.float32)
    low_img = Image.fromarray(((low[..., 0] * 40) + 128).clip(0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    tex = (np.asarray(low_img, np.float32)[..., None] - 128) / 40 * amp
    fine = rng.normal(0, amp * 0.35, (h, w, 1)).astype(np.float32)
    return (np.asarray(base, np.float32)[None, None, :] + tex + fine).clip(0, 255)


def scene_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` (width, height) pairs in pixels, drawn as SpotBench draws a scene's (480-1279 each)."""
    rng = np.random.default_rng(seed)
    return [(int(w), int(h)) for w, h in rng.integers(480, 1280, (n, 2))]


def compare(plain, fast, sizes: list[tuple[int, int]], same) -> dict:
    """Milliseconds per call of ``plain(rng, w, h)`` and ``fast(rng, w, h)`` over ``sizes``, each from
    a generator seeded alike, alternating which goes first; ``identical``: ``same(a, b)`` held for every
    pair of outputs and both generators were left in the same state."""
    spent = {"plain": 0.0, "fast": 0.0}
    identical = True
    for i, (w, h) in enumerate(sizes):
        out = {}
        rngs = {name: np.random.default_rng([i, w, h]) for name in spent}
        for name in (("plain", "fast") if i % 2 == 0 else ("fast", "plain")):
            t = time.perf_counter()
            out[name] = (plain if name == "plain" else fast)(rngs[name], w, h)
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
    """Time drawing the plain way against the fast one, and make train-open's batches."""
    if pages < 1 or batches < 1:
        raise typer.BadParameter(f"--pages and --batches must be >= 1, got {pages} and {batches}")
    import torch

    from spote.bench.run import environment
    from spote.bench.scenes import _noise_texture, _page
    from training.train import FINETUNE_START, CloseViewStream, ViewStream

    torch.set_num_threads(1)  # as the data worker draws
    sizes = scene_sizes(pages)
    page = compare(page_plain, lambda rng, w, h: _page(rng, w, h)[0], sizes, lambda a, b: a.tobytes() == b.tobytes())
    print(f"page: plain {page['plain_ms']:.1f} ms, fast {page['fast_ms']:.1f} ms, identical {page['identical']}", flush=True)
    fields = (95, 130, 70), 22, 48  # the aerial scenes' texture
    noise = compare(lambda rng, w, h: noise_texture_plain(rng, w, h, *fields),
                    lambda rng, w, h: _noise_texture(rng, w, h, *fields), sizes,
                    lambda a, b: a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32)))
    print(f"noise texture: plain {noise['plain_ms']:.1f} ms, fast {noise['fast_ms']:.1f} ms, "
          f"identical {noise['identical']}", flush=True)
    streams = {"stage1": seconds_per_batch(CloseViewStream(0, **STAGE1), batches),
               "stage2": seconds_per_batch(ViewStream(0, start=FINETUNE_START, **STAGE2), batches)}
    print(f"train-open batches on one thread: stage 1 {streams['stage1']:.3f} s, stage 2 {streams['stage2']:.3f} s")
    report = {"page": page, "noise_texture": noise, "seconds_per_batch": streams, "batches": batches,
              "stages": {"stage1": {**STAGE1, "glyph_px": list(STAGE1["glyph_px"])},
                         "stage2": {**STAGE2, "start": FINETUNE_START}},
              "environment": environment(), "usable_cpus": len(os.sched_getaffinity(0))}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
