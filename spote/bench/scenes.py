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
    choices: tuple[str, ...]
    answer: str
    evidence: tuple[int, int, int, int] | None
    easy: bool = False
    meta: dict = field(default_factory=dict)  # scene geometry the generator knows, e.g. aerial "bridge" (x, y)

    @property
    def evidence_frac(self) -> float:
        if self.evidence is None:
            return 0.0
        x0, y0, x1, y1 = self.evidence
        return (x1 - x0) * (y1 - y0) / (self.image.width * self.image.height)

    @property
    def collapse_tempting(self) -> bool:
        return self.kind in PRESENCE_KINDS and self.answer == "yes"

    @property
    def size_bucket(self) -> str:
        f = self.evidence_frac
        if self.evidence is None:
            return "absent"
        return "tiny(<0.1%)" if f < 1e-3 else "small(0.1-1%)" if f < 1e-2 else "large(>=1%)"


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _noise_texture(rng, w, h, base, amp, grain) -> np.ndarray:
    """Smooth random texture: low-res noise upsampled, plus fine grain."""
    lw, lh = max(2, w // grain), max(2, h // grain)
    low = rng.normal(0, 1, (lh, lw, 1)).astype(np.float32)
    low_img = Image.fromarray(((low[..., 0] * 40) + 128).clip(0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    tex = (np.asarray(low_img, np.float32)[..., None] - 128) / 40 * amp
    fine = rng.normal(0, amp * 0.35, (h, w, 1)).astype(np.float32)
    return (np.asarray(base, np.float32)[None, None, :] + tex + fine).clip(0, 255)


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
def _document(rng, kind, easy, w, h):
    page = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(236, 252, 3)))
    d = ImageDraw.Draw(page)
    # text lines: short dark-gray bars with word gaps
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


def spotbench(split: str = "test", n: int = 600, seed: int = 0, easy_rate: float = EASY_RATE):
    """Yield ``n`` items of a split; ``seed`` selects a fresh set of scenes."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    for i in range(n):
        yield make_item(seed, split, i, easy_rate)


def item_digest(item: Item) -> str:
    """Content hash of an item's pixels and question, for determinism checks."""
    h = hashlib.sha256(item.image.tobytes())
    h.update(f"{item.question}|{item.answer}|{item.evidence}".encode())
    return h.hexdigest()[:16]
