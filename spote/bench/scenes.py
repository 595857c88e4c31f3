"""SpotBench: a seeded generator of evidence-intensive visual questions.

Every item hides its decisive evidence in a small box (mostly < 1% of the image
area), so a model that sees the whole image at a low fixed resolution cannot
read it, while a close enough view can. Three domains mirror our users:

- ``documents``  pages of small text with one red-outlined field (digit, letter,
  ticked box);
- ``aerial``     textured scenes (fields, road, water) with a small vehicle or boat;
- ``inspection`` brushed-metal surfaces with one tiny defect or none.

Presence questions whose answer is "yes" are *collapse-tempting*: a clean
close-up of any empty region answers a confident, wrong "no".

*Open items* (``open_items``, or ``spotbench(..., n_open=N)`` after the closed ones) ask for a
short code printed in a named document field ("what is the code in the reference field ?"),
answered open-ended (``choices`` None); see ``make_open_item``. They draw from their own random
stream, so adding them leaves every closed item of a (split, seed) byte for byte as it was.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SPLITS = {"train": 0, "val": 1, "test": 2}
DIGITS = tuple("0123456789")
LETTERS = tuple("ABCDEF")
COLOURS = {"red": (220, 30, 30), "yellow": (240, 210, 20), "blue": (30, 70, 230), "white": (245, 245, 245)}
DEFECTS = ("crack", "scratch", "dent")
YES_NO = ("yes", "no")
BOAT_SIDE = (14, 24)  # a boat's length in scene pixels (not easy): training and decoy views are sized from it

# (domain, kind, question, choices)
TASKS = (
    ("documents", "digit", "what digit is in the red box ?", DIGITS),
    ("documents", "letter", "what letter is in the red box ?", LETTERS),
    ("documents", "ticked", "is the red box ticked ?", YES_NO),
    ("aerial", "colour", "what colour is the vehicle ?", tuple(COLOURS)),
    ("aerial", "boat", "is there a boat ?", YES_NO),
    ("inspection", "defect", "is there a defect ?", YES_NO),
    ("inspection", "kind", "what kind of defect is it ?", DEFECTS),
)
PRESENCE_KINDS = {"boat", "defect"}


@dataclass
class Item:
    """One benchmark question; ``evidence`` is a source-pixel box or None (absent)."""

    id: str
    domain: str
    kind: str
    image: Image.Image
    question: str
    choices: tuple[str, ...] | None  # None: open-ended
    answer: str
    evidence: tuple[int, int, int, int] | None
    easy: bool = False
    meta: dict = field(default_factory=dict)  # scene geometry the generator knows, e.g. aerial "bridge" (x, y)

    @property
    def open(self) -> bool:
        """An open-ended question: no choices, the answer is generated text."""
        return self.choices is None

    @property
    def evidence_frac(self) -> float:
        if self.evidence is None:
            return 0.0
        x0, y0, x1, y1 = self.evidence
        return (x1 - x0) * (y1 - y0) / (self.image.width * self.image.height)

    @property
    def collapse_tempting(self) -> bool:
        """Presence "yes" items, and open items whose legible close-ups cut the field (COLLAPSE_VARIANTS)."""
        return (self.kind in PRESENCE_KINDS and self.answer == "yes") or self.meta.get("variant") in COLLAPSE_VARIANTS

    @property
    def size_bucket(self) -> str:
        f = self.evidence_frac
        if self.evidence is None:
            return "absent"
        return "tiny(<0.1%)" if f < 1e-3 else "small(0.1-1%)" if f < 1e-2 else "large(>=1%)"


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _texture_layers(rng, w, h, amp, grain) -> tuple[np.ndarray, np.ndarray]:
    """A noise texture's two (h, w, 1) float32 layers: low-res noise upsampled (``grain`` px cells) and
    fine grain, both scaled by ``amp`` (grey levels)."""
    lw, lh = max(2, w // grain), max(2, h // grain)
    low = rng.normal(0, 1, (lh, lw, 1)).astype(np.float32)
    low_img = Image.fromarray(((low[..., 0] * 40) + 128).clip(0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    tex = (np.asarray(low_img, np.float32)[..., None] - 128) / 40 * amp
    fine = rng.normal(0, amp * 0.35, (h, w, 1)).astype(np.float32)
    return tex, fine


def _noise_texture(rng, w, h, base, amp, grain) -> np.ndarray:
    """Smooth random texture: low-res noise upsampled, plus fine grain, about ``base`` (RGB)."""
    tex, fine = _texture_layers(rng, w, h, amp, grain)
    # (base + tex) + fine, per channel: the same float32 sums as broadcasting (h, w, 1) against (3,),
    # at half the cost (numpy's broadcast loop runs 3 elements at a time)
    out = np.stack([(c + tex[..., 0]) + fine[..., 0] for c in np.asarray(base, np.float32)], axis=-1)
    return out.clip(0, 255, out=out)


def _place(rng, w, h, bw, bh, margin=4):
    x0 = int(rng.integers(margin, max(margin + 1, w - bw - margin)))
    y0 = int(rng.integers(margin, max(margin + 1, h - bh - margin)))
    return x0, y0, x0 + bw, y0 + bh


# An easy item's evidence spans this share of the scene's long side: letterboxed into a 64 px input
# it is then 29-42 px across, as large as the close-ups that make it legible (research/reading_scale.py).
EASY_SHARE = (0.45, 0.65)


EASY_RATE = 0.15  # share of items with large evidence (the early-exit ones)


def _size(rng, easy: bool, w: int, h: int, lo: int, hi: int) -> int:
    """Evidence side in pixels: tiny for most items, about half the scene when easy."""
    if easy:
        return int(max(w, h) * rng.uniform(*EASY_SHARE))
    return int(rng.integers(lo, hi + 1))


# ----------------------------------------------------------------------------- documents
class ScalarDraws:
    """``rng.integers(lo, hi)`` one value at a time, the same values as numpy's scalar calls and the
    generator left where they leave it, at a fifth of their cost.

    A scalar ``Generator.integers`` call costs ~3.5 us, and a page of text makes thousands of them.
    For ``hi - lo`` up to 2**32 numpy maps one 32-bit word of the bit generator's stream to the range
    by Lemire's multiply-and-reject method (numpy/random/src/distributions/distributions.c,
    ``buffered_bounded_lemire_uint32``; Lemire 2019, "Fast random integer generation in an
    interval"); here the words are drawn in bulk and mapped the same way. ``close()`` rewinds the
    generator and draws exactly the words used, so what is drawn after it is what the scalar calls
    would have left. ``rng`` must not be drawn from between the first ``integers`` and ``close()``
    (``close()`` raises RuntimeError if it was: those draws would be lost). tests/bench/test_scenes.py
    checks values and state against scalar calls."""

    CHUNK = 8192  # words drawn at a time; a page takes 3 per text bar (1,000-12,000), more are drawn when needed

    def __init__(self, rng: np.random.Generator):
        self.rng, self.start = rng, rng.bit_generator.state
        self.after_bulk = self.start  # the state after the last bulk draw: close() checks nothing else drew
        self.words: list[int] = []
        self.used = 0

    def integers(self, lo: int, hi: int) -> int:
        """One integer in [lo, hi), as ``int(rng.integers(lo, hi))``. Raises ValueError unless
        1 <= hi - lo <= 2**32 (numpy raises for an empty range and draws 64-bit words beyond)."""
        n, i = hi - lo, self.used
        if i < len(self.words) and n > 1:
            m = self.words[i] * n  # the high 32 bits of word * n are the value ...
            if m & 0xFFFFFFFF >= n:  # ... unless the low 32 bits fall in the sliver that may be biased
                self.used = i + 1
                return lo + (m >> 32)
        return self._bounded(lo, n)

    def _bounded(self, lo: int, n: int) -> int:
        """``integers`` in full: a range of one value draws nothing; a low part under the threshold redraws."""
        if not 1 <= n <= 2**32:
            raise ValueError(f"ScalarDraws.integers needs 1 <= hi - lo <= 2**32, got {n}")
        if n == 1:
            return lo
        m = self._word() * n
        if m & 0xFFFFFFFF < n:
            threshold = (2**32 - n) % n
            while m & 0xFFFFFFFF < threshold:
                m = self._word() * n
        return lo + (m >> 32)

    def _word(self) -> int:
        if self.used == len(self.words):
            self.words += self.rng.integers(0, 2**32, size=self.CHUNK, dtype=np.uint32).tolist()
            self.after_bulk = self.rng.bit_generator.state
        self.used += 1
        return self.words[self.used - 1]

    def close(self) -> None:
        """Leave the generator as the scalar calls would: rewound, then exactly the words used drawn.
        Raises RuntimeError if something else drew from it meanwhile (its draws would be undone)."""
        if self.rng.bit_generator.state != self.after_bulk:
            raise RuntimeError("the generator was drawn from while ScalarDraws held it; those draws would be lost")
        self.rng.bit_generator.state = self.start
        self.rng.integers(0, 2**32, size=self.used, dtype=np.uint32)


_GREYS = [v for g in range(1, 256) for v in (g, g, g)]  # palette entries 1-255 of a page: grey g is (g, g, g)


def _page(rng, w, h) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A page of small text: lines of short dark-gray bars with word gaps.

    The same pixels and random stream as drawing each bar with ``ImageDraw.rectangle`` and one scalar
    ``rng.integers`` per number (tests/bench/test_scenes.py), several times faster, for the bars were
    most of a document scene's cost: the numbers come from ``ScalarDraws`` and a line's bars are
    painted at once (bars never overlap: each starts 4-8 px after the last ends, each line 6-13 px
    below the last one's bottom)."""
    paper = [int(v) for v in rng.integers(236, 252, 3)]
    grey = np.zeros((h, w), np.uint8)  # a bar's grey (60-139), 0 where the paper shows
    draws = ScalarDraws(rng)
    draw = draws.integers
    y = draw(10, 30)
    while y < h - 10:
        x = draw(10, 40)
        lh = draw(3, 6)
        end = w - draw(10, 120)
        starts, stops, greys = [], [], []
        while x < end:
            ww = draw(8, 40)
            starts.append(x)
            stops.append(min(end, x + ww) + 1)  # the bar spans x .. stop - 1, as ImageDraw's rectangle
            greys.append(draw(60, 140))
            x += ww + draw(4, 9)
        if starts:  # each column's grey: +g where a bar starts, -g past its end, summed along the line
            edges = np.zeros(w + 1, np.int32)
            edges[starts] = greys
            edges[stops] = np.negative(greys)
            grey[y:y + lh + 1] = np.cumsum(edges[:w])  # rows y .. y+lh: y < h-10 and lh <= 5 keep them on the page
        y += lh + draw(6, 14)
    draws.close()
    page = Image.frombytes("P", (w, h), grey.tobytes())  # index 0 the paper, index g the grey (g, g, g)
    page.putpalette(paper + _GREYS)
    page = page.convert("RGB")
    return page, ImageDraw.Draw(page)


def _document(rng, kind, easy, w, h):
    page, d = _page(rng, w, h)
    side = _size(rng, easy, w, h, 18, 34)
    box = _place(rng, w, h, side, side)
    x0, y0, x1, y1 = box
    d.rectangle(box, fill=(255, 255, 255), outline=(215, 25, 25), width=max(2, side // 10))
    if kind == "ticked":
        answer = str(rng.choice(YES_NO))
        if answer == "yes":
            p = side // 4
            lw = max(2, side // 8)
            d.line([x0 + p, y0 + p, x1 - p, y1 - p], fill=(10, 10, 10), width=lw)
            d.line([x0 + p, y1 - p, x1 - p, y0 + p], fill=(10, 10, 10), width=lw)
    else:
        answer = str(rng.choice(DIGITS if kind == "digit" else LETTERS))
        font = _font(int(side * 0.75))
        d.text(((x0 + x1) / 2, (y0 + y1) / 2), answer, fill=(10, 10, 10), font=font, anchor="mm",
               stroke_width=max(1, side // 16), stroke_fill=(10, 10, 10))
    return page, answer, box, {}


# ----------------------------------------------------------------------------- aerial
def _aerial(rng, kind, easy, w, h):
    arr = _noise_texture(rng, w, h, (95, 130, 70), 22, 48)  # fields
    img = Image.fromarray(arr.astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):  # field parcels of other crops
        px, py = int(rng.integers(0, w)), int(rng.integers(0, h))
        pw, ph = int(rng.integers(w // 8, w // 3)), int(rng.integers(h // 8, h // 3))
        c = tuple(int(v) for v in rng.choice([(150, 130, 80), (120, 150, 60), (80, 110, 60)]))
        d.rectangle([px, py, px + pw, py + ph], fill=c)
    water_h = int(h * rng.uniform(0.2, 0.35))
    water_top = int(rng.integers(0, h - water_h))
    d.rectangle([0, water_top, w, water_top + water_h], fill=(40, 80, 140))
    road_w = int(rng.integers(10, 18))
    road_x = int(rng.integers(w // 6, 5 * w // 6))
    d.rectangle([road_x, 0, road_x + road_w, h], fill=(120, 120, 120))
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    d = ImageDraw.Draw(img)
    answer, box = "no", None
    if kind == "colour":
        answer = str(rng.choice(tuple(COLOURS)))
        side = _size(rng, easy, w, h, 10, 18)
        vw, vh = max(4, side // 2), side
        x0 = road_x + road_w // 2 - vw // 2
        y0 = int(rng.integers(4, h - vh - 4))
        if not easy:
            box = (x0, y0, x0 + vw, y0 + vh)
        else:  # a big vehicle parked in a field
            box = _place(rng, w, h, vw, vh)
        d.rectangle(box, fill=COLOURS[answer], outline=(30, 30, 30))
        wx = box[1] + (box[3] - box[1]) // 4
        d.rectangle([box[0] + 1, wx, box[2] - 1, wx + max(1, vh // 6)], fill=(40, 40, 50))  # windscreen
    else:  # boat presence
        answer = str(rng.choice(YES_NO))
        if answer == "yes":
            side = _size(rng, easy, w, h, *BOAT_SIDE)
            bw, bh = side, max(5, side // 2)
            x0 = int(rng.integers(4, w - bw - 4))
            y0 = int(rng.integers(water_top + 2, max(water_top + 3, water_top + water_h - bh - 2)))
            box = (x0, y0, x0 + bw, y0 + bh)
            d.polygon([(x0, y0), (x0 + bw - bh // 2, y0), (x0 + bw, y0 + bh // 2), (x0 + bw - bh // 2, y0 + bh), (x0, y0 + bh)],
                      fill=(250, 250, 250), outline=(90, 40, 20))
            d.rectangle([x0 + bw // 4, y0 + bh // 4, x0 + bw // 2, y0 + 3 * bh // 4], fill=(150, 60, 30))
    # where the road crosses the water: a boat-like decoy at boat scale (research/decoys.py)
    bridge = (road_x + road_w / 2, water_top + water_h / 2)
    return img, answer, box, {"bridge": bridge, "water_rows": (water_top, water_top + water_h)}


# ----------------------------------------------------------------------------- inspection
def _defect(d, rng, kind, box):
    x0, y0, x1, y1 = box
    s = x1 - x0
    if kind == "crack":
        pts = []
        for i in range(7):
            pts.append((x0 + i * s / 6, y0 + s / 2 + rng.uniform(-s / 3, s / 3)))
        d.line(pts, fill=(25, 20, 20), width=max(2, s // 12))
    elif kind == "scratch":
        d.line([x0, y1, x1, y0], fill=(250, 250, 255), width=max(2, s // 12))
    else:  # dent
        d.ellipse([x0 + s // 6, y0 + s // 6, x1 - s // 6, y1 - s // 6], fill=(55, 55, 60), outline=(215, 215, 220), width=max(1, s // 14))


def _inspection(rng, kind, easy, w, h):
    base = rng.integers(130, 170)
    arr = _noise_texture(rng, w, h, (base, base, base + 4), 10, 32)
    streak = rng.normal(0, 6, (1, w, 1)).astype(np.float32)  # brushed look
    img = Image.fromarray((arr + streak).clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    if kind == "defect":
        answer = str(rng.choice(YES_NO))
        defect = str(rng.choice(DEFECTS)) if answer == "yes" else None
    else:
        defect = str(rng.choice(DEFECTS))
        answer = defect
    box = None
    if defect:
        side = _size(rng, easy, w, h, 18, 32)
        box = _place(rng, w, h, side, side)
        _defect(d, rng, defect, box)
    return img, answer, box, {}


_RENDER = {"documents": _document, "aerial": _aerial, "inspection": _inspection}


# ----------------------------------------------------------------------------- open items: codes in fields
CODE_ALPHABET = tuple("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ")  # no I or O: forms leave them out, read as 1 and 0
CODE_LENGTH = (2, 5)  # characters per code, inclusive
FIELD_NAMES = ("reference", "invoice", "order", "account", "serial", "batch")
OPEN_QUESTION = "what is the code in the {} field ?"
OPEN_KIND = "code"
OPEN_STREAM = 1  # appended to an open item's seed: a random stream no closed item draws from
# variant -> share of open items (make_open_item's docstring says what each one is)
OPEN_VARIANTS = {"small": 0.35, "large": 0.15, "mixed": 0.2, "split": 0.15, "neighbour": 0.15}
COLLAPSE_VARIANTS = frozenset({"mixed", "split", "neighbour"})
WHOLE_VIEW_PX = 64  # the shipped model's input side: the whole view letterboxes the scene's long side into it
# A glyph is read when its height spans this many input pixels: the shipped model read digits at 0.83
# in 24 px boxes, whose glyphs are about 13 px high (docs/experiments/reading-scale.md).
LEGIBLE_CAP_PX = 12
SMALL_CAP_PX = (12, 18)  # small glyphs' height in scene pixels: legible only about 1:1, in a 64 px window
CLOSE_FIT_PX = 56  # a small code (with its field's padding) fits one 64 px window at 1:1
LARGE_CAP_SHARE = (0.21, 0.25)  # large glyphs' height over the scene's long side: 13.4-16 px of the whole view
CAP_PER_FONT_SIZE = 0.7  # glyph height of a capital or digit over the font size (Pillow's default font)
INK = (10, 10, 10)
FIELD_RED = (215, 25, 25)
NEIGHBOUR_GREY = (90, 90, 90)


def _code(rng, n: int) -> str:
    return "".join(str(c) for c in rng.choice(CODE_ALPHABET, n))


def _glyphs(d, runs) -> list[tuple[str, ImageFont.FreeTypeFont, int, float, tuple]]:
    """Lay runs of characters out left to right on one baseline at x = 0 (y = 0 the baseline).

    ``runs``: [(text, font, stroke_px, space_after_px)]. Returns [(char, font, stroke, x, bbox)], the
    bbox in pixels relative to that origin (y negative above the baseline)."""
    out, x = [], 0.0
    for text, font, sw, space_after in runs:
        for c in text:
            b = d.textbbox((x, 0), c, font=font, anchor="ls", stroke_width=sw)
            out.append((c, font, sw, x, b))
            x = b[2] + 0.05 * font.size
        x += space_after
    return out


def _extent(glyphs) -> tuple[float, float, float, float]:
    boxes = [g[4] for g in glyphs]
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def _small_run(d, rng, n: int, gap_after: float = 0.0, fit: float = CLOSE_FIT_PX):
    """A code of ``n`` small glyphs: a random height in SMALL_CAP_PX, lowered until the run fits ``fit``
    pixels, so that one close-up of a model input at 1:1 holds all of it legibly. A code of wide glyphs
    that does not fit even at the floor of SMALL_CAP_PX loses its last character (down to 2)."""
    text = _code(rng, n)
    cap = float(rng.uniform(*SMALL_CAP_PX))
    while True:
        fs = max(8, round(cap / CAP_PER_FONT_SIZE))
        font, sw = _font(fs), max(1, round(fs / 16))
        x0, _, x1, _ = _extent(_glyphs(d, [(text, font, sw, 0.0)]))
        if x1 - x0 <= fit or (cap <= SMALL_CAP_PX[0] and len(text) <= CODE_LENGTH[0]):
            return text, font, sw, gap_after
        if cap <= SMALL_CAP_PX[0]:
            text = text[:-1]
        cap = max(SMALL_CAP_PX[0], cap - 1)


def _draw_field(d, glyphs, ox: float, oy: float, pad: int, outline, width: int, label: str | None):
    """Draw glyphs at origin (ox, oy = baseline) inside a white field outlined in ``outline``, with a
    small grey label above; returns (field box, [glyph boxes]) in page pixels."""
    x0, y0, x1, y1 = _extent(glyphs)
    field_box = (int(ox + x0 - pad), int(oy + y0 - pad), int(ox + x1 + pad), int(oy + y1 + pad))
    d.rectangle(field_box, fill=(255, 255, 255), outline=outline, width=width)
    boxes = []
    for c, font, sw, x, b in glyphs:
        d.text((ox + x, oy), c, fill=INK, font=font, anchor="ls", stroke_width=sw, stroke_fill=INK)
        boxes.append((int(ox + b[0]), int(oy + b[1]), int(ox + b[2]) + 1, int(oy + b[3]) + 1))
    if label:
        d.text((field_box[0], field_box[1] - 2), label.upper(), fill=(110, 110, 110),
               font=_font(max(6, round(0.55 * (y1 - y0) / CAP_PER_FONT_SIZE))), anchor="ld")
    return field_box, boxes


def _code_field(rng, d, variant: str, w: int, h: int, field_name: str):
    """Draw the asked field (and a neighbour) on the page ``d``; (answer, evidence box, meta)."""
    long_side = max(w, h)
    lo, hi = CODE_LENGTH
    split_at, neighbour = None, None
    if variant == "large":
        text = _code(rng, int(rng.integers(lo, 4)))
        cap = float(rng.uniform(*LARGE_CAP_SHARE)) * long_side
        fs = round(cap / CAP_PER_FONT_SIZE)
        runs = [(text, _font(fs), max(1, round(fs / 16)), 0.0)]
        while _extent(_glyphs(d, runs))[2] - _extent(_glyphs(d, runs))[0] > 0.8 * w and fs > 8:  # keep it on the page
            fs -= 2
            runs = [(text, _font(fs), max(1, round(fs / 16)), 0.0)]
    elif variant == "mixed":
        k = int(rng.integers(1, 3))  # large prefix characters
        prefix = _code(rng, k)
        cap = float(rng.uniform(*LARGE_CAP_SHARE)) * long_side
        fs = round(cap / CAP_PER_FONT_SIZE)
        large = (prefix, _font(fs), max(1, round(fs / 16)), 0.0)
        small = _small_run(d, rng, int(rng.integers(max(1, lo - k), hi - k + 1)))
        runs = [large, small]
    elif variant == "split":
        text, font, sw, _ = _small_run(d, rng, int(rng.integers(3, 5)), fit=CLOSE_FIT_PX - 10)
        split_at = int(rng.integers(1, len(text)))
        gap = 0.7 * font.size * CAP_PER_FONT_SIZE
        runs = [(text[:split_at], font, sw, gap), (text[split_at:], font, sw, 0.0)]
    else:  # small, neighbour
        runs = [_small_run(d, rng, int(rng.integers(lo, hi + 1)))]
    glyphs = _glyphs(d, runs)
    answer = "".join(g[0] for g in glyphs)
    small_fs = runs[-1][1].size
    pad = max(2, round(0.35 * small_fs * CAP_PER_FONT_SIZE))
    width = max(2, round(small_fs * CAP_PER_FONT_SIZE / 6))
    gx0, gy0, gx1, gy1 = _extent(glyphs)
    fw, fh = gx1 - gx0 + 2 * pad, gy1 - gy0 + 2 * pad
    label_h = int(0.6 * fh) + 4
    if variant == "neighbour":
        other = answer
        while other == answer:
            other = _code(rng, int(rng.integers(lo, hi + 1)))
        n_glyphs = _glyphs(d, [(other, runs[0][1], runs[0][2], 0.0)])
        nx0, _, nx1, _ = _extent(n_glyphs)
        nw = nx1 - nx0 + 2 * pad
        left = bool(rng.random() < 0.5)  # the neighbour on the asked field's left or right, sharing its border
        bx0, by0, _, _ = _place(rng, w, h, int(fw + nw) + 2, int(fh) + label_h, margin=8)
        ax = bx0 + (nw if left else 0)
        nbx = bx0 if left else bx0 + fw
        base_y = by0 + label_h + pad - gy0
        neighbour_name = str(rng.choice([f for f in FIELD_NAMES if f != field_name]))
        neighbour, _ = _draw_field(d, n_glyphs, nbx + pad - nx0, base_y, pad, NEIGHBOUR_GREY, width, neighbour_name)
    else:
        bx0, by0, _, _ = _place(rng, w, h, int(fw) + 2, int(fh) + label_h, margin=8)
        ax, base_y = bx0, by0 + label_h + pad - gy0
    field_box, boxes = _draw_field(d, glyphs, ax + pad - gx0, base_y, pad, FIELD_RED, width, field_name)
    if split_at is not None:  # a rule between the two groups, as forms print "AB | 12"
        xm = (boxes[split_at - 1][2] + boxes[split_at][0]) / 2
        d.line([xm, field_box[1] + width, xm, field_box[3] - width], fill=NEIGHBOUR_GREY, width=max(1, width // 2))
    scale = WHOLE_VIEW_PX / long_side
    legible = [(b[3] - b[1]) * scale >= LEGIBLE_CAP_PX for b in boxes]
    evidence = field_box
    if variant == "mixed":  # what needs a close-up: the small characters (the whole view shows the large ones)
        small = boxes[len(runs[0][0]):]
        evidence = (min(b[0] for b in small) - pad, min(b[1] for b in small) - pad,
                    min(field_box[2], max(b[2] for b in small) + pad), min(field_box[3], max(b[3] for b in small) + pad))
    meta = {"variant": variant, "field_name": field_name, "field": field_box, "chars": boxes,
            "legible_whole": legible, "neighbour": neighbour}
    return answer, evidence, meta


def make_open_item(seed: int, split: str, index: int, variant: str | None = None) -> Item:
    """Deterministic open item ``index`` of ``split`` for ``seed``: a page of small text with a red-outlined
    field, named by a small grey label, holding a code of 2-5 characters from CODE_ALPHABET; the
    question names the field ("what is the code in the reference field ?"), ``choices`` is None and
    ``answer`` the code. A 64 px model reads a glyph whose height spans LEGIBLE_CAP_PX of its input.

    Variants (OPEN_VARIANTS gives their shares; ``variant`` forces one, the rest of the item unchanged):

    - ``small``: every glyph 12-18 px high in the scene, illegible in the whole view, legible in a
      close-up of one model input (64 px) at 1:1, which holds the whole field.
    - ``large``: 2-3 glyphs 21-25% of the scene's long side high, legible in the whole view (the
      open ``easy`` items; the scene is near square).
    - ``mixed``: 1-2 large glyphs, then small ones: the whole view reads the prefix, only a close-up
      the rest, and a close-up legible enough for the small glyphs cannot hold the large ones.
    - ``split``: 3-4 small glyphs in two groups divided by a grey rule ("3A | 9Q"), as forms print
      a prefix and a serial; a close-up of one group shows a clean, complete-looking code.
    - ``neighbour``: a small code whose field shares its border with a neighbouring field (grey
      outline, its own label and code of the same size), on its left or right; a close-up across the
      border frames half of each as if it were one code.

    ``mixed``, ``split`` and ``neighbour`` are *collapse-tempting*: a close-up that cuts the field reads
    a confident partial or wrong code (the view is clear, the reading incomplete), so a search that
    only rewards clarity can settle on it; an anchor on what the whole view read (mixed) or the field's
    outline is what keeps the rest.

    ``evidence`` is the asked field's box; for ``mixed`` the part holding the small glyphs (the close-up
    the answer needs; the whole view shows the large ones). ``meta``: ``variant``, ``field_name``,
    ``field`` (the whole field's box), ``chars`` (one box per glyph, in reading order),
    ``legible_whole`` (per glyph: legible in the whole view), ``neighbour`` (its box or None).
    ``easy``: every glyph legible in the whole view.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if variant is not None and variant not in OPEN_VARIANTS:
        raise ValueError(f"unknown open variant {variant!r}; expected one of {sorted(OPEN_VARIANTS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index, OPEN_STREAM])
    names, shares = zip(*OPEN_VARIANTS.items())
    drawn = str(rng.choice(names, p=shares))
    variant = variant or drawn
    w, h = (int(v) for v in rng.integers(480, 1280, 2))
    if rng.random() < 0.25:
        h = w
    if variant in ("large", "mixed"):  # near square, so large glyphs fit across the page
        h = int(w * rng.uniform(0.8, 1.0))
    field_name = str(rng.choice(FIELD_NAMES))
    page, d = _page(rng, w, h)
    answer, evidence, meta = _code_field(rng, d, variant, w, h, field_name)
    return Item(f"{split}-{seed}-open-{index:05d}", "documents", OPEN_KIND, page, OPEN_QUESTION.format(field_name),
                None, answer, evidence, all(meta["legible_whole"]), meta)


def open_items(split: str = "test", n: int = 100, seed: int = 0):
    """Yield ``n`` open items of a split (``make_open_item``); ``seed`` selects a fresh set."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    for i in range(n):
        yield make_open_item(seed, split, i)


def make_item(seed: int, split: str, index: int, easy_rate: float = EASY_RATE, kind: str | None = None) -> Item:
    """Deterministic item ``index`` of ``split`` for ``seed``."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    tasks = [t for t in TASKS if kind is None or t[1] == kind]
    domain, kind, question, choices = tasks[int(rng.integers(len(tasks)))]
    easy = bool(rng.random() < easy_rate)
    w, h = (int(v) for v in rng.integers(480, 1280, 2))
    if rng.random() < 0.25:  # a minority of square scenes
        h = w
    if easy:  # a close-up shot, near square, so the evidence can fill half of it along the long side
        h = int(w * rng.uniform(0.8, 1.0))
    image, answer, box, meta = _RENDER[domain](rng, kind, easy, w, h)
    # "easy" means large evidence: an absent boat or defect has none, however the dice fell
    easy = easy and box is not None
    return Item(f"{split}-{seed}-{index:05d}", domain, kind, image, question, choices, answer, box, easy, meta)


def spotbench(split: str = "test", n: int = 600, seed: int = 0, easy_rate: float = EASY_RATE, n_open: int = 0):
    """Yield ``n`` closed items of a split, then ``n_open`` open items; ``seed`` selects a fresh set of scenes.
    The closed items are the same whatever ``n_open`` is."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    for i in range(n):
        yield make_item(seed, split, i, easy_rate)
    yield from open_items(split, n_open, seed)


def item_digest(item: Item) -> str:
    """Content hash of an item's pixels and question, for determinism checks."""
    h = hashlib.sha256(item.image.tobytes())
    h.update(f"{item.question}|{item.answer}|{item.evidence}".encode())
    return h.hexdigest()[:16]
