"""Train ``spote-tiny`` on SpotBench's train split, on CPU, seeded.

Each scene yields several views at many zoom levels (the whole image, close-ups around
the evidence, random windows, global+zoom pairs, highlighted images), so that the model is
*calibrated*: confident when the evidence is legible in the view, uncertain when it is not.
Presence questions are labelled by what the view shows (a close-up of empty water says
"no"), as real VLMs do; that is what makes shortcut collapse possible at test time.

    python -m training.train --out out/spote-tiny        # the shipped recipe (STEPS, VISION_STEPS)

On few cores run it with ``GOMP_SPINCOUNT=0`` in the environment, as ``make train`` and ``make
train-open`` do: the compute's OpenMP threads then sleep as soon as they wait, instead of spinning on
a core that the scene-drawing DataLoader worker needs. ``make train-open`` then wrote the same
weights to the bit in 16% less wall time on 2 cores (82.7 -> 69.6 min; ``make bench-train-speed``
compares the two on short runs). libgomp reads it when torch is imported, so it is set in the
environment, not by this script.

Open items (``open_share`` > 0; SpotBench's codes in document fields): the tokenizer spells codes
one character per token (``build_processor(open_items=True)``); stage 1 reads single code glyphs
in close views, stage 2 reads whole and partial fields at every zoom level. A view's target is
what it shows: each glyph it shows legibly is its character, each one it shows too small to read
is *unsure* (the target is uniform over the code characters, so the model learns high entropy
there), and a close-up alone that cuts the field reads the glyphs it holds and no more, as a real
VLM does (that is what makes SpotBench's collapse-tempting open items tempting). Beside the whole
image (``zoom+context``) the target is the whole code, unsure where neither view is legible.
With ``open_share`` 0 every stream draws exactly what it drew before open items existed.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import typer
from PIL import Image, ImageFilter

from spote.bench.scenes import (BOAT_SIDE, CODE_ALPHABET, EASY_RATE, LEGIBLE_CAP_PX, PRESENCE_KINDS, Item, make_item,
                                make_open_item)
from spote.prompt import format_question
from spote.spotlight import Box, ViewRenderer, apply_highlight, letterbox, letterbox_transform, soft_mask
from training.build import IMAGE_SIZE, PATCH_SIZE, TOWER_LAYERS, build_model, build_processor, code_token_ids


def _loguniform(rng, lo, hi):
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _random_box(rng, w, h, side):
    side = min(side, w, h)
    x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
    return Box(x0, y0, x0 + side, y0 + side)


def _evidence_box(rng, item: Item):
    w, h = item.image.size
    if item.evidence is None:
        return _random_box(rng, w, h, min(w, h) * _loguniform(rng, 0.03, 0.5))
    ev = Box(*item.evidence)
    side = min(min(w, h), max(ev.width, ev.height) * _loguniform(rng, 1.2, 12.0))
    def start(lo, hi, size):
        lo, hi = max(0.0, lo), min(hi, size - side)
        return rng.uniform(lo, hi) if hi > lo else max(0.0, min(size - side, (lo + hi) / 2))

    x0, y0 = start(ev.x1 - side, ev.x0, w), start(ev.y1 - side, ev.y0, h)
    return Box(x0, y0, x0 + side, y0 + side)


# Bridge windows show a boat-sized object (BOAT_SIDE, 14-24 px of the scene) at 12-48 px of the
# input, the scales a search tries, framed up to 0.45 window sides off the crossing (where
# an earlier model said a confident "yes" in empty scenes: research/decoys.py measures it).
BRIDGE_INPUT_PX, BRIDGE_SHIFT = (12, 48), 0.45


def _bridge_box(rng, item: Item) -> Box:
    """A window on the road's crossing of the water, at boat scale and a random horizontal framing."""
    (bx, _), (top, bottom) = item.meta["bridge"], item.meta["water_rows"]
    w, h = item.image.size
    side = min(w, h, rng.uniform(*BOAT_SIDE) * IMAGE_SIZE / rng.uniform(*BRIDGE_INPUT_PX))
    cx = bx + rng.uniform(-BRIDGE_SHIFT, BRIDGE_SHIFT) * side
    cy = rng.uniform(top, bottom)
    return Box.square(cx, cy, side)


def _is_boat(item: Item) -> bool:
    return item.kind == "boat" and "bridge" in item.meta


def _corrupt_view(rng, view: Image.Image) -> Image.Image:
    kind = rng.integers(3)
    if kind == 0:
        x = np.asarray(view, np.float32) + rng.normal(0, 10, (view.height, view.width, 3))
        return Image.fromarray(x.clip(0, 255).astype(np.uint8))
    if kind == 1:
        return view.filter(ImageFilter.GaussianBlur(0.7))
    import io

    buf = io.BytesIO()
    view.save(buf, "JPEG", quality=int(rng.integers(25, 60)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def sample_views(rng, item: Item, renderer: ViewRenderer | None = None) -> tuple[list[Image.Image], str]:
    """One training example: the views the model sees and the label they support. ``renderer``: the
    item's own, to reuse its global view across the examples drawn from one scene."""
    renderer = renderer if renderer is not None else ViewRenderer(item.image, IMAGE_SIZE)
    w, h = item.image.size
    u = rng.random()
    if u < 0.2:
        shown, views = Box.full(w, h), [renderer.global_view]
    elif u < 0.45:
        shown = _evidence_box(rng, item)
        views = renderer.render(shown, "zoom")
    elif u < 0.6:
        if _is_boat(item) and rng.random() < 0.3:  # the bridge is not a boat
            shown = _bridge_box(rng, item)
        else:
            shown = _random_box(rng, w, h, min(w, h) * _loguniform(rng, 0.03, 1.0))
        views = renderer.render(shown, "zoom")
    elif u < 0.9:  # global + close-up: the label is the scene's, so an empty close-up leaves doubt
        v = rng.random()
        if _is_boat(item) and v < 0.25:
            box = _bridge_box(rng, item)
        elif v < 0.6:
            box = _evidence_box(rng, item)
        else:
            box = _random_box(rng, w, h, min(w, h) * _loguniform(rng, 0.03, 0.6))
        shown, views = Box.full(w, h), renderer.render(box, "zoom+context")
    else:
        shown = Box.full(w, h)
        box = _evidence_box(rng, item)
        views = [apply_highlight(renderer.global_view, soft_mask(w, h, IMAGE_SIZE, box), float(rng.uniform(0.5, 1.0)))]
    if rng.random() < 0.2:
        views = [_corrupt_view(rng, v) for v in views]
    label = item.answer
    if item.kind in PRESENCE_KINDS and item.evidence is not None:
        label = "yes" if shown.contains_frac(Box(*item.evidence)) >= 0.5 else "no"
    return views, label


# ----------------------------------------------------------------------------- open items
VISIBLE_FRAC = 0.75  # a glyph is shown by a view holding at least this share of its box
OPEN_STAGE1_CAP_PX = (14, 40)  # stage 1 glyph views: the glyph's height in input pixels
MAX_CODE_GLYPHS = 5  # SpotBench's codes have 2-5 characters
OPEN_STAGE1_JITTER = 0.3  # ... up to this share of the view's side off centre: a glyph is read at every position


class OpenLabel(tuple):
    """The target of one open example: ``text`` (the characters read, in order) and ``unsure`` (per
    character: True where the view shows it too small to read, or not at all)."""

    def __new__(cls, text: str, unsure):
        return super().__new__(cls, (text, tuple(bool(u) for u in unsure)))

    @property
    def text(self) -> str:
        return self[0]

    @property
    def unsure(self) -> tuple[bool, ...]:
        return self[1]


def glyph_states(item: Item, view: Box) -> list[str]:
    """Per glyph of an open item, in a view of ``view`` letterboxed to IMAGE_SIZE: "legible", "small"
    (shown, under LEGIBLE_CAP_PX high) or "out" (less than VISIBLE_FRAC of it in the view)."""
    v, scale, _, _ = letterbox_transform(*item.image.size, IMAGE_SIZE, view)
    states = []
    for b in item.meta["chars"]:
        g = Box(*b)
        states.append("out" if v.contains_frac(g) < VISIBLE_FRAC else
                      "legible" if g.height * scale >= LEGIBLE_CAP_PX else "small")
    return states


def read_alone(item: Item, view: Box) -> OpenLabel:
    """What a view alone reads: the glyphs it shows, unsure where too small; a view showing none of
    them cannot tell the code, so the target is the whole code, unsure everywhere."""
    states = glyph_states(item, view)
    shown = [i for i, s in enumerate(states) if s != "out"]
    if not shown:
        return OpenLabel(item.answer, [True] * len(item.answer))
    return OpenLabel("".join(item.answer[i] for i in shown), [states[i] != "legible" for i in shown])


def read_with_context(item: Item, view: Box) -> OpenLabel:
    """The whole image beside a close-up of ``view``: the whole code, sure where either view reads it."""
    w, h = item.image.size
    whole, close = glyph_states(item, Box.full(w, h)), glyph_states(item, view)
    return OpenLabel(item.answer, [a != "legible" and b != "legible" for a, b in zip(whole, close)])


def _glyph_run_box(rng, item: Item) -> Box:
    """A close-up around the whole code (half the time) or a random run of its glyphs, 1.02-2x the run's
    long side, jittered: whole readings, partial ones and too-far ones."""
    chars = item.meta["chars"]
    i, j = (0, len(chars)) if rng.random() < 0.5 else sorted(int(v) for v in rng.choice(len(chars) + 1, 2, replace=False))
    run = [Box(*b) for b in chars[i:max(j, i + 1)]]
    x0, y0 = min(b.x0 for b in run), min(b.y0 for b in run)
    x1, y1 = max(b.x1 for b in run), max(b.y1 for b in run)
    side = min(min(item.image.size), max(x1 - x0, y1 - y0) * _loguniform(rng, 1.02, 2.0))
    jx, jy = rng.uniform(-0.15, 0.15, 2) * side
    return Box.square((x0 + x1) / 2 + jx, (y0 + y1) / 2 + jy, side)


def sample_open_views(rng, item: Item, renderer: ViewRenderer | None = None) -> tuple[list[Image.Image], OpenLabel]:
    """One open training example: the views and their target (``read_alone`` / ``read_with_context``);
    ``renderer`` as in ``sample_views``."""
    renderer = renderer if renderer is not None else ViewRenderer(item.image, IMAGE_SIZE)
    w, h = item.image.size
    u = rng.random()
    if u < 0.2:
        views, label = [renderer.global_view], read_alone(item, Box.full(w, h))
    elif u < 0.55:
        box = _glyph_run_box(rng, item)
        views, label = renderer.render(box, "zoom"), read_alone(item, box)
    elif u < 0.65:
        box = _random_box(rng, w, h, min(w, h) * _loguniform(rng, 0.05, 0.6))
        views, label = renderer.render(box, "zoom"), read_alone(item, box)
    else:
        box = _glyph_run_box(rng, item) if rng.random() < 0.75 else _random_box(rng, w, h, min(w, h) * _loguniform(rng, 0.05, 0.6))
        views, label = renderer.render(box, "zoom+context"), read_with_context(item, box)
    if rng.random() < 0.2:
        views = [_corrupt_view(rng, v) for v in views]
    return views, label


def glyph_view(rng, item: Item, cap_px: tuple[float, float] = OPEN_STAGE1_CAP_PX) -> tuple[Box, int]:
    """Stage 1: a close view of one glyph ``k`` of an open item (``cap_px`` high in input pixels, log-uniform), placed anywhere
    in the view (up to OPEN_STAGE1_JITTER of the side off centre, at least VISIBLE_FRAC of it inside), so
    its neighbours share the view; the readout is taken where glyph ``k`` lies (``glyph_region``)."""
    k = int(rng.integers(len(item.answer)))
    g = Box(*item.meta["chars"][k])
    side = g.height * IMAGE_SIZE / _loguniform(rng, *cap_px)
    for _ in range(8):
        jx, jy = rng.uniform(-OPEN_STAGE1_JITTER, OPEN_STAGE1_JITTER, 2) * side
        box = Box.square(g.centre[0] + jx, g.centre[1] + jy, side)
        if box.contains_frac(g) >= VISIBLE_FRAC:
            return box, k
    return Box.square(*g.centre, side), k


def glyph_region(item: Item, view: Box, k: int, size: int = IMAGE_SIZE, patch: int = PATCH_SIZE) -> np.ndarray:
    """Weights over the view's (size/patch)^2 image tokens, row-major: the share of each patch that
    glyph ``k`` covers once ``view`` is letterboxed (as ``letterbox``). Stage 1 reads a glyph out from
    the tokens it lies on, so the tower learns *where* each glyph is, not only which glyphs a view holds:
    what a language model needs to spell a code in order. Sums to > 0 for a glyph inside the view."""
    v, s, ox, oy = letterbox_transform(*item.image.size, size, view)
    g = Box(*item.meta["chars"][k])
    gx0, gx1 = (g.x0 - v.x0) * s + ox, (g.x1 - v.x0) * s + ox
    gy0, gy1 = (g.y0 - v.y0) * s + oy, (g.y1 - v.y0) * s + oy
    edges = np.arange(size // patch + 1) * patch
    cover_x = np.clip(np.minimum(edges[1:], gx1) - np.maximum(edges[:-1], gx0), 0, None) / patch
    cover_y = np.clip(np.minimum(edges[1:], gy1) - np.maximum(edges[:-1], gy0), 0, None) / patch
    return np.outer(cover_y, cover_x).ravel().astype(np.float32)


def glyph_order(item: Item, view: Box, k: int) -> tuple[int, int]:
    """Stage 1 targets of where glyph ``k`` stands in its code, as far as ``view`` shows it: ``k`` when
    the code's first glyph is in the view (else -100: unknowable), and 1/0 for "it is the last glyph"
    when the code's last glyph is in the view (else -100). With them the tower marks each glyph with
    its place, so that the language model can look the k-th character up instead of ordering glyphs
    by position itself (which a 3-layer model trained for minutes does not learn: it read codes'
    glyphs in the wrong order, docs/experiments/open-items-training.md)."""
    chars = [Box(*b) for b in item.meta["chars"]]
    shows = lambda g: view.contains_frac(g) >= VISIBLE_FRAC  # noqa: E731
    return (k if shows(chars[0]) else -100, int(k == len(chars) - 1) if shows(chars[-1]) else -100)


def encode_open(processor, examples, first_ids: list[int], rest_ids: list[int]) -> dict:
    """Tokenise a batch mixing closed examples (label a choice) and open ones (an OpenLabel): left-padded,
    the answer's tokens and eos supervised. ``labels`` holds the sure targets (-100 elsewhere); ``unsure``
    marks targets uniform over the code characters: 1 as a code's first token, 2 as a continuation."""
    texts, images, answers = [], [], []
    for views, question, choices, label in examples:
        answer = label.text if isinstance(label, OpenLabel) else label
        content = [{"type": "image"} for _ in views] + [{"type": "text", "text": format_question(question, choices)}]
        msgs = [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
        texts.append(processor.apply_chat_template(msgs, tokenize=False))
        images.extend(views)
        answers.append(answer)
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
    ids = batch["input_ids"]
    labels = torch.full_like(ids, -100)
    unsure = torch.zeros_like(ids, dtype=torch.int8)
    tok = processor.tokenizer
    for b, ((_, _, _, label), answer) in enumerate(zip(examples, answers)):
        n = len(tok(answer, add_special_tokens=False).input_ids)
        labels[b, -n - 1:] = ids[b, -n - 1:]  # the answer and eos
        # a code the tokenizer does not spell per character (one starting with a vocabulary word, "USER...",
        # about 1 in 10^6) keeps sure targets on all its tokens: unsure ones would sit on the wrong positions
        if isinstance(label, OpenLabel) and n == len(label.text):
            for k, doubt in enumerate(label.unsure):
                if doubt:
                    labels[b, -n - 1 + k] = -100
                    unsure[b, -n - 1 + k] = 1 if k == 0 else 2
    batch["labels"], batch["unsure"] = labels, unsure
    return batch


def open_loss(logits: torch.Tensor, labels: torch.Tensor, unsure: torch.Tensor, first_ids, rest_ids) -> torch.Tensor:
    """Mean over supervised positions of the next-token loss: cross-entropy on sure targets, and
    -(1/K) sum_k log p_k over the K code characters (first or continuation form) on unsure ones,
    smallest when the model spreads its guess evenly (entropy up to ln K = 3.53 nats for K = 34)."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    target, doubt = labels[:, 1:], unsure[:, 1:]
    sure = target != -100
    terms = [-logp[sure].gather(-1, target[sure][:, None])[:, 0]]
    for code, ids in ((1, first_ids), (2, rest_ids)):
        at = doubt == code
        if at.any():
            terms.append(-logp[at][:, ids].mean(-1))
    return torch.cat(terms).mean()


def encode(processor, examples, question_of):
    """Tokenise a batch of (views, question, choices, label): left-padded, label + eos supervised."""
    texts, images = [], []
    for views, question, choices, label in examples:
        content = [{"type": "image"} for _ in views] + [{"type": "text", "text": format_question(question, choices)}]
        msgs = [{"role": "user", "content": content}, {"role": "assistant", "content": label}]
        texts.append(processor.apply_chat_template(msgs, tokenize=False))
        images.extend(views)
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, -2:] = batch["input_ids"][:, -2:]
    batch["labels"] = labels
    return batch


STAGE1_START = 10_000_000  # stage 1's first scene index: disjoint from stage 2's
TOWER_CONTINUE_START = 20_000_000  # a continued stage 1 (``tower_from``) draws scenes the recipe's never did
# A fine-tune (``init_from``) or a continued language model (``lm_from``) draws stage 2 scenes from here on,
# so it never repeats the ones the saved model was trained on (stage 2 of the recipe reads scenes 0 to
# ~8400); a model that was itself continued drew these, and check_settings asks its fine-tune for another seed.
FINETUNE_START = 1_000_000
RUN_FILES = ("model.safetensors", "train_log.jsonl", "training_report.json")  # what tells a folder holds a run
CHECKPOINT_EVERY = 500  # stage 2 steps between saved checkpoints (OUT/checkpoint-N, as transformers' Trainer names them)


# Other words for SpotBench's open question, every word already in the open tokenizer (the documents job's
# default "what is the reference code ?" is the first), so that a field asked another way is read, not
# answered with a sure nothing (docs/experiments/open-items-training.md)
OPEN_PHRASINGS = ("what is the {} code ?", "what code is in the {} field ?", "what is in the {} field ?")


def open_question(rng, item: Item, share: float) -> str:
    """The question an open training example is asked: with probability ``share`` one of OPEN_PHRASINGS for
    the item's field, else its own SpotBench question. ``share`` 0 draws nothing from ``rng``."""
    if share <= 0 or rng.random() >= share:
        return item.question
    return OPEN_PHRASINGS[int(rng.integers(len(OPEN_PHRASINGS)))].format(item.meta["field_name"])


class ViewStream(torch.utils.data.IterableDataset):
    """Endless stream of encoded batches; scenes never repeat (index grows with the step)."""

    def __init__(self, seed: int, batch_size: int, views_per_scene: int = 10, start: int = 0,
                 easy_rate: float = EASY_RATE, open_share: float = 0.0, open_vocab: bool | None = None,
                 open_phrasing: float = 0.0):
        self.seed, self.batch_size, self.k, self.start = seed, batch_size, views_per_scene, start
        self.easy_rate = easy_rate  # share of scenes with large evidence (SpotBench's own is 0.15)
        self.open_share = open_share  # share of scenes that are open items (their own stream, same indices)
        self.open_vocab = open_share > 0 if open_vocab is None else open_vocab
        self.open_phrasing = open_phrasing  # share of open examples asked in OPEN_PHRASINGS' words (open_question)

    def scenes(self):
        """Closed scenes, and with ``open_share`` open ones in between (drawn by their own generator)."""
        index, open_index = self.start, self.start
        pick = np.random.default_rng(self.seed + 17)
        while True:
            if self.open_share and pick.random() < self.open_share:
                yield make_open_item(self.seed, "train", open_index)
                open_index += 1
                continue
            yield make_item(self.seed, "train", index, easy_rate=self.easy_rate)
            index += 1

    def __iter__(self):
        processor = build_processor(open_items=self.open_vocab)
        code_ids = code_token_ids(processor.tokenizer) if self.open_vocab else None
        rng = np.random.default_rng(self.seed + 7)
        words = np.random.default_rng(self.seed + 19)  # its own stream: the views are those of open_phrasing 0
        scenes = self.scenes()
        while True:
            examples = []
            while len(examples) < self.batch_size:
                item = next(scenes)
                renderer = ViewRenderer(item.image, IMAGE_SIZE)  # its global view drawn once for the k examples
                for _ in range(self.k):
                    views, label = (sample_open_views if item.open else sample_views)(rng, item, renderer)
                    question = open_question(words, item, self.open_phrasing) if item.open else item.question
                    examples.append((views, question, item.choices, label))
            if self.open_share:
                yield encode_open(processor, examples[: self.batch_size], *code_ids)
            else:
                yield encode(processor, examples[: self.batch_size], None)


# Stage 1 draws glyph tasks more often: a ViT from scratch learns digit and letter shapes far more
# slowly than colours or presence, and those are what the close views must make legible.
STAGE1_KIND_WEIGHTS = {"digit": 0.40, "letter": 0.20, "ticked": 0.06, "colour": 0.085, "boat": 0.085,
                       "defect": 0.085, "kind": 0.085}
# Stage 1 close views show the evidence across 64/4.0 = 16 to 64/1.15 = 56 px of the input: down to
# the size an easy item's evidence has in the whole view (29-42 px) and below.
STAGE1_ZOOM = (1.15, 4.0)
# The shipped model's recipe length (the one place for it: `make train` and `main` use these).
# Stage 1 still gains at 3000 steps (glyphs); stage 2 is flat after ~800 steps (model card's training log).
STEPS, VISION_STEPS = 1300, 4200
# Far views in stage 1: the whole image or a square of half the short side or more, the views the
# loop reads first. The evidence is legible in one when it spans at least this many input pixels
# (an easy item's: 29-42 px in the whole view; a small item's: under 8 px): then the answer is the
# label, else the target is uniform over the choices, so the tower learns to say "I cannot see"
# where it would guess (``far_unsure=False``: such a draw becomes the usual close view instead).
# The shipped recipe uses none (FAR_VIEWS = 0): 0.2 lowered AUROC and 0.1 legible-only left easy
# ticked boxes and colours unsettled on the whole image (docs/experiments/).
FAR_LEGIBLE_PX = 16
FAR_VIEWS = 0.0  # share of stage 1 examples that are far views
UNSURE = -100  # stage 1 label of a far view whose evidence is not legible: uniform over the choices


class CloseViewStream(torch.utils.data.IterableDataset):
    """Stage 1 data: close views (evidence legible) and empty windows, as (pixel_values, answer ids,
    choice mask, readout weights over the image tokens: all ones, the mean, except on glyph views, and
    ``glyph_order`` targets: -100 except on glyph views). Scenes are costly to draw and views cheap,
    so a rolling pool of scenes is kept and a few are replaced every batch."""

    def __init__(self, seed: int, batch_size: int, pool: int = 256, refresh: int = 6, far_views: float = FAR_VIEWS,
                 far_unsure: bool = True, start: int = STAGE1_START, open_share: float = 0.0,
                 glyph_px: tuple[float, float] = OPEN_STAGE1_CAP_PX):
        self.seed, self.batch_size, self.pool, self.refresh = seed, batch_size, pool, refresh
        self.glyph_px = glyph_px  # glyph views: the glyph's height in input pixels (log-uniform)
        self.start = start
        self.far_views = far_views  # share of far views (FAR_LEGIBLE_PX); 0 draws exactly the shipped stream
        self.far_unsure = far_unsure  # False: an illegible far view is dropped for the usual close view
        self.open_share = open_share  # share of glyph views of open items (``glyph_view``); 0: none

    def __iter__(self):
        processor = build_processor(open_items=self.open_share > 0)
        tok = processor.tokenizer
        vocab = len(tok)
        rng = np.random.default_rng(self.seed + 11)
        kinds, weights = zip(*STAGE1_KIND_WEIGHTS.items())
        index = self.start

        def new_item():
            nonlocal index
            index += 1
            return make_item(self.seed, "train", index, kind=str(rng.choice(kinds, p=weights)))

        pool = [new_item() for _ in range(self.pool)]
        if self.open_share:  # open items from their own generator and random stream: the closed draws above stay
            open_rng = np.random.default_rng(self.seed + 13)
            code_ids = code_token_ids(tok)
            open_index = self.start
            open_pool = [make_open_item(self.seed, "train", open_index + i) for i in range(self.pool)]
            open_index += self.pool
        while True:
            for _ in range(self.refresh):
                pool[int(rng.integers(self.pool))] = new_item()
            if self.open_share:
                for _ in range(max(1, round(self.refresh * self.open_share))):
                    open_pool[int(open_rng.integers(self.pool))] = make_open_item(self.seed, "train", open_index)
                    open_index += 1
            images, labels = [], []
            mask = torch.full((self.batch_size, vocab), float("-inf"))
            region = torch.ones(self.batch_size, (IMAGE_SIZE // PATCH_SIZE) ** 2)
            order = torch.full((self.batch_size, 2), -100)  # glyph views: (k, is the last glyph) where the view shows it
            for b in range(self.batch_size):
                if self.open_share and open_rng.random() < self.open_share:  # one glyph of a code
                    item = open_pool[int(open_rng.integers(self.pool))]
                    box, k = glyph_view(open_rng, item, self.glyph_px)
                    view = letterbox(item.image, IMAGE_SIZE, box)
                    if open_rng.random() < 0.15:
                        view = _corrupt_view(open_rng, view)
                    ids = code_ids[0] if k == 0 else code_ids[1]
                    images.append(view)
                    labels.append(ids[CODE_ALPHABET.index(item.answer[k])])
                    mask[b, ids] = 0.0
                    region[b] = torch.from_numpy(glyph_region(item, box, k))
                    order[b] = torch.tensor(glyph_order(item, box, k))
                    continue
                item = pool[int(rng.integers(self.pool))]
                renderer = ViewRenderer(item.image, IMAGE_SIZE)
                label = item.answer
                far = _far_view(rng, item) if self.far_views and rng.random() < self.far_views else None
                if far is not None and (far[1] is not None or self.far_unsure):
                    box, label = far
                elif item.kind in PRESENCE_KINDS and (item.evidence is None or rng.random() < 0.3):
                    if _is_boat(item) and rng.random() < 0.5:  # the bridge is not a boat
                        box = _bridge_box(rng, item)
                    elif item.evidence is None:
                        box = _evidence_box(rng, item)
                    else:
                        box = _random_box(rng, *item.image.size, min(item.image.size) * _loguniform(rng, 0.03, 0.3))
                    if item.evidence is None or box.contains_frac(Box(*item.evidence)) < 0.5:
                        label = "no"
                else:  # a close view around the evidence, at a random zoom and offset
                    ev = Box(*item.evidence)
                    side = min(min(item.image.size), max(ev.width, ev.height) * _loguniform(rng, *STAGE1_ZOOM))
                    cx, cy = ev.centre
                    jx, jy = rng.uniform(-0.2, 0.2, 2) * side
                    box = Box.square(cx + jx, cy + jy, side)
                view = renderer.render(box, "zoom")[0]
                if rng.random() < 0.15:
                    view = _corrupt_view(rng, view)
                images.append(view)
                labels.append(UNSURE if label is None else tok.convert_tokens_to_ids(label))
                mask[b, tok.convert_tokens_to_ids(list(item.choices))] = 0.0
            pv = processor.image_processor(images, return_tensors="pt")["pixel_values"]
            yield pv, torch.tensor(labels), mask, region, order


def _far_view(rng, item: Item) -> tuple[Box, str | None]:
    """A far view (FAR_LEGIBLE_PX) and its label: the answer if the evidence is legible in it, else None."""
    w, h = item.image.size
    box = Box.full(w, h) if rng.random() < 0.4 else _random_box(rng, w, h, min(w, h) * rng.uniform(0.5, 1.0))
    if item.evidence is None:
        return box, None
    ev = Box(*item.evidence)
    px = max(ev.width, ev.height) * IMAGE_SIZE / max(box.width, box.height)
    return box, (item.answer if px >= FAR_LEGIBLE_PX and box.contains_frac(ev) >= 0.5 else None)


def stage1_loss(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the item's choices; an UNSURE row's target is uniform over them:
    -(1/K) sum_k log p_k, smallest when the tower spreads its readout evenly."""
    if not (y == UNSURE).any():  # the shipped recipe's loss, bit for bit
        return torch.nn.functional.cross_entropy(logits, y)
    choice = torch.isfinite(mask)
    logp = torch.log_softmax(logits, -1).masked_fill(~choice, 0.0)
    sure = y != UNSURE
    nll = torch.zeros(len(y))
    nll[sure] = -logp[sure].gather(1, y[sure, None])[:, 0]
    nll[~sure] = -logp[~sure].sum(-1) / choice[~sure].sum(-1)
    return nll.mean()


def _image_tokens(vision, proj, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
    """[views, tokens, hidden] projected image tokens, as the LLaVA reads them (``layer``, CLS dropped); the
    tower and projector are passed apart so that stage 1's frozen copies go the same way."""
    return proj(vision(pixel_values, output_hidden_states=True).hidden_states[layer][:, 1:])


def pretrain_vision(model, steps: int, batch_size: int, lr: float, seed: int, log, far_views: float = FAR_VIEWS,
                    far_unsure: bool = True, start: int = STAGE1_START, open_share: float = 0.0,
                    order_weight: float = 0.0, glyph_px: tuple[float, float] = OPEN_STAGE1_CAP_PX,
                    distill_weight: float = 0.0, frozen_layers: int = 0) -> None:
    """Stage 1: teach the vision tower + projector to carry the answer, read out through the tied
    token embeddings from the mean of the image tokens (what a uniform LM attention would see); a
    code glyph is read from the tokens it covers instead (``glyph_region``), so position is kept.
    ``order_weight`` > 0 adds a linear head on the same readout that predicts the glyph's place in its
    code and whether it is the last (``glyph_order``; the head is dropped after stage 1).
    ``distill_weight`` > 0 adds feature distillation on the closed views: their projected image tokens
    are held to those of a frozen copy of the tower and projector as they were when stage 1 started
    (a continued tower's, ``tower_from``), so that glyph training does not move what the closed
    answers are read from. ``frozen_layers`` > 0 keeps the tower's patch and position embeddings and
    its first ``frozen_layers`` encoder layers as they are (e.g. a deepened tower's saved layers, so
    that only the new ones learn, and the backward pass stops at them).
    The softmax runs over the item's own choices, as the question would restrict it: a crack is
    "yes" to "is there a defect ?" and "crack" to "what kind ?", which only the question decides."""
    vision, proj = model.model.vision_tower, model.model.multi_modal_projector
    emb = model.model.language_model.embed_tokens
    frozen = [*vision.embeddings.parameters(), *vision.pre_layrnorm.parameters(),
              *(p for layer in vision.encoder.layers[:frozen_layers] for p in layer.parameters())] if frozen_layers else []
    for p in frozen:
        p.requires_grad_(False)
    held = {id(p) for p in frozen}
    params = [p for p in (*vision.parameters(), *proj.parameters(), *emb.parameters()) if id(p) not in held]
    order_head = None
    if order_weight:
        order_head = torch.nn.Linear(emb.weight.shape[1], MAX_CODE_GLYPHS + 2)  # place 0..4, then last no/yes
        params += list(order_head.parameters())
    teacher = None
    if distill_weight:
        teacher = (copy.deepcopy(vision).eval(), copy.deepcopy(proj).eval())
        for p in (*teacher[0].parameters(), *teacher[1].parameters()):
            p.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    stream = CloseViewStream(seed, batch_size, pool=min(256, 2 * batch_size), far_views=far_views, far_unsure=far_unsure,
                             start=start, open_share=open_share, glyph_px=glyph_px)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=1, prefetch_factor=4)
    t0, ema, ema_glyph = time.time(), None, None
    for step, (pv, y, mask, region, order) in enumerate(loader):
        if step >= steps:
            break
        glyph = (region != 1).any(1)
        tokens = _image_tokens(vision, proj, pv, model.config.vision_feature_layer)
        # r = sum_j w_j t_j / sum_j w_j over the image tokens t_j; w = 1 (the plain mean) on closed views
        pooled = (tokens * region[..., None]).sum(1) / region.sum(1, keepdim=True) if glyph.any() else tokens.mean(1)
        logits = pooled @ emb.weight.T + mask
        loss = stage1_loss(logits, y, mask)
        distill = None
        if teacher is not None and (~glyph).any():
            with torch.no_grad():
                target = _image_tokens(*teacher, pv[~glyph], model.config.vision_feature_layer)
            # relative squared error: sum ||t_new - t_old||^2 / sum ||t_old||^2 over the closed views' image tokens
            distill = ((tokens[~glyph] - target) ** 2).sum() / (target ** 2).sum()
            loss = loss + distill_weight * distill
        if order_head is not None and (order != -100).any():
            o = order_head(pooled)
            place, last = order[:, 0], order[:, 1]
            terms = []  # each only where some view shows it: an empty cross-entropy is NaN
            if (place != -100).any():
                terms.append(torch.nn.functional.cross_entropy(o[:, :MAX_CODE_GLYPHS][place != -100], place[place != -100]))
            if (last != -100).any():
                terms.append(torch.nn.functional.cross_entropy(o[:, MAX_CODE_GLYPHS:][last != -100], last[last != -100]))
            loss = loss + order_weight * sum(terms)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        sure = y != UNSURE
        hit = logits.argmax(-1) == y
        if (sure & ~glyph).any():
            acc = hit[sure & ~glyph].float().mean().item()
            ema = acc if ema is None else 0.95 * ema + 0.05 * acc
        if glyph.any():  # logged apart: the closed views' accuracy alone, and the code glyphs'
            acc_glyph = hit[glyph].float().mean().item()
            ema_glyph = acc_glyph if ema_glyph is None else 0.95 * ema_glyph + 0.05 * acc_glyph
        if step % 25 == 0 or step == steps - 1:
            rec = {"stage": 1, "step": step, "loss": round(loss.item(), 4), "accuracy": round(ema or 0.0, 4),
                   **({} if ema_glyph is None else {"glyph_accuracy": round(ema_glyph, 4)}),
                   **({} if distill is None else {"distill": round(distill.item(), 5)}),
                   "seconds": round(time.time() - t0, 1)}
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
    for p in frozen:
        p.requires_grad_(True)


def evaluate(model, processor, n: int = 240, seed: int = 0) -> dict:
    """Accuracy and entropy on val scenes: close views vs the whole image."""
    from spote.adapters.llava import LlavaAdapter

    adapter = LlavaAdapter(model, processor)
    rng = np.random.default_rng(123)
    close_ok, whole_ok, close_h, whole_h = [], [], [], []
    for i in range(n):
        item = make_item(seed, "val", i)
        r = ViewRenderer(item.image, IMAGE_SIZE)
        w, h = item.image.size
        if item.evidence is not None:
            ev = Box(*item.evidence)
            side = min(min(w, h), max(ev.width, ev.height) * 2.5)
            cx, cy = ev.centre
            close = Box.square(cx, cy, side)
        else:
            close = _random_box(rng, w, h, min(w, h) * 0.1)
        logp = adapter.choice_logprobs([r.render(close, "zoom"), [r.global_view]], item.question, item.choices)
        p = logp.exp()
        ent = -(p * logp).sum(-1)
        gold = item.choices.index(item.answer if item.kind not in PRESENCE_KINDS or item.evidence else "no")
        close_ok.append(int(p[0].argmax()) == gold)
        whole_ok.append(int(p[1].argmax()) == item.choices.index(item.answer))
        close_h.append(float(ent[0]))
        whole_h.append(float(ent[1]))
    return {"val_close_accuracy": float(np.mean(close_ok)), "val_whole_accuracy": float(np.mean(whole_ok)),
            "val_close_entropy": float(np.mean(close_h)), "val_whole_entropy": float(np.mean(whole_h))}


def evaluate_open(model, processor, n: int = 60, seed: int = 0) -> dict:
    """Open val items: exact match and mean token entropy (nats) of the greedy reading, on the whole
    image and on a close-up of the evidence (1.05 x its long side, at least one input) beside it."""
    from spote.adapters.llava import LlavaAdapter
    from spote.bench.run import char_accuracy, exact_match

    adapter = LlavaAdapter(model, processor)
    out = {"whole": [], "close": []}
    for i in range(n):
        item = make_open_item(seed, "val", i)
        r = ViewRenderer(item.image, IMAGE_SIZE)
        ev = Box(*item.evidence)
        close = Box.square(*ev.centre, max(1.05 * max(ev.width, ev.height), IMAGE_SIZE)).shifted_inside(*item.image.size)
        for name, views in (("whole", [r.global_view]), ("close", r.render(close, "zoom+context"))):
            gen = adapter.generate(views, item.question, max_new_tokens=8)
            out[name].append((exact_match(gen.text, item.answer), char_accuracy(gen.text, item.answer),
                              float(np.mean(gen.entropies)) if gen.entropies else 0.0))
    report = {}
    for name, rows in out.items():
        em, ca, h = (float(np.mean(col)) for col in zip(*rows))
        report.update({f"val_open_{name}_exact_match": em, f"val_open_{name}_char_accuracy": ca,
                       f"val_open_{name}_entropy": h})
    return report


def saved_tower_layers(path: Path) -> int:
    """The encoder layers of the vision tower saved at ``path`` (a spote-tiny folder)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path).vision_config.num_hidden_layers


def deepen_tower(tower, saved) -> int:
    """Load ``saved`` (a CLIP vision model) into ``tower``, which may have more encoder layers; each layer
    beyond ``saved``'s starts as the identity: its attention output and second MLP layer are zero, so
    x + attn(ln1(x)) = x and x + mlp(ln2(x)) = x, and the deeper tower's image tokens equal ``saved``'s
    until stage 1 trains them. Returns the number of layers added. Raises ValueError if ``tower`` is
    shallower than ``saved``."""
    old = saved.config.num_hidden_layers
    new_layers = tower.encoder.layers[old:]
    if len(tower.encoder.layers) < old:
        raise ValueError(f"the tower has {len(tower.encoder.layers)} layers, the saved one {old}")
    missing, unexpected = tower.load_state_dict(saved.state_dict(), strict=False)
    prefixes = tuple(f"encoder.layers.{i}." for i in range(old, old + len(new_layers)))
    if unexpected or any(not k.startswith(prefixes) for k in missing):
        raise ValueError(f"the saved tower does not fit: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for layer in new_layers:
            for lin in (layer.self_attn.out_proj, layer.mlp.fc2):
                lin.weight.zero_()
                lin.bias.zero_()
    return len(new_layers)


def _copy_embeddings(dst: torch.nn.Embedding, dst_vocab: dict, src: torch.nn.Embedding, src_vocab: dict) -> None:
    """Token embeddings from a saved model: all of them for the same vocabulary, else row by row for
    the tokens both vocabularies hold (the new ones keep their fresh initialisation)."""
    if dst_vocab == src_vocab:
        dst.load_state_dict(src.state_dict())
        return
    with torch.no_grad():
        for token, j in dst_vocab.items():
            if token in src_vocab:
                dst.weight[j] = src.weight[src_vocab[token]]


def load_language_model(lm_from: Path, model) -> tuple[dict, torch.nn.Embedding, dict]:
    """A saved spote-tiny's language model for ``model``'s stage 2: (its layers' state dict, its token
    embeddings, its vocabulary). Raises ValueError, naming the differing tensors, if the layers' shapes
    are not ``model``'s (checked before any training, so a mismatch costs no stage 1)."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    saved = LlavaForConditionalGeneration.from_pretrained(lm_from, use_safetensors=True).model.language_model
    layers = {k: v for k, v in saved.state_dict().items() if not k.startswith("embed_tokens.")}
    own = {k: v for k, v in model.model.language_model.state_dict().items() if not k.startswith("embed_tokens.")}
    differ = sorted(set(own) ^ set(layers)) + [k for k in own if k in layers and own[k].shape != layers[k].shape]
    if differ:
        raise ValueError(f"lm_from (--lm-from) {str(lm_from)!r} has another language model shape than spote-tiny's "
                         f"({', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''})")
    return layers, saved.embed_tokens, AutoTokenizer.from_pretrained(lm_from).get_vocab()


CHECKPOINT_PREFIX = "checkpoint-"  # + the stage 2 step: what _save writes every checkpoint_every steps
CHECKPOINT_NAME = re.compile(re.escape(CHECKPOINT_PREFIX) + "[0-9]+")


def run_entries(out: Path) -> list[Path]:
    """What a training run writes under ``out`` and a second run would mix with: ``RUN_FILES`` and
    ``checkpoint-N`` entries, whatever they are (a link counts as itself, never as its target)."""
    folder = Path(out)
    if not folder.is_dir():
        return []
    return sorted(e for e in folder.iterdir()
                  if e.name in RUN_FILES or CHECKPOINT_NAME.fullmatch(e.name))


def clear_run(out: Path) -> list[str]:
    """Remove an earlier run's entries under ``out`` (``run_entries``), so an overwritten folder holds one run
    only; other files stay, and a link is removed without touching what it points to. Returns the names."""
    gone = []
    for entry in run_entries(out):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        gone.append(entry.name)
    return gone


def check_settings(out: Path, *, steps: int = STEPS, batch_size: int = 64, lr: float = 1e-3, warmup: int = 150,
                   vision_steps: int = VISION_STEPS, vision_lr: float = 2e-3, far_views: float = FAR_VIEWS,
                   init_from: Path | None = None, easy_rate: float = EASY_RATE, tower_from: Path | None = None,
                   open_share: float = 0.0, stage1_start: int | None = None, order_weight: float = 0.0,
                   stage1_open_share: float | None = None,
                   glyph_px: tuple[float, float] = OPEN_STAGE1_CAP_PX, distill_weight: float = 0.0,
                   lm_from: Path | None = None, overwrite: bool = False, tower_layers: int | None = None,
                   train_new_layers_only: bool = False, open_phrasing: float = 0.0, seed: int = 0,
                   **_unchecked) -> None:
    """Raise ValueError, naming the setting (``train``'s name and the CLI flag), for settings that are out of
    range or do not fit together; ``train`` calls it before any work, so a refused run writes nothing.
    An ``out`` that already holds a run (a model or a training log) is refused unless ``overwrite``.
    A fine-tune (``init_from``) of a model whose own stage 2 continued a saved one is refused with that
    model's seed: it would draw the same scenes from ``FINETUNE_START`` again.
    Takes ``train``'s keyword arguments; the ones it has no rule for (threads, ...) pass unchecked."""
    def bad(name, why):
        return ValueError(f"{name} (--{name.replace('_', '-')}) {why}")

    for name, v, lo in (("steps", steps, 1), ("batch_size", batch_size, 1), ("warmup", warmup, 1),
                        ("vision_steps", vision_steps, 0), ("stage1_start", stage1_start, 0),
                        ("tower_layers", tower_layers, 1)):
        if v is not None and not v >= lo:
            raise bad(name, f"must be at least {lo}, got {v}")
    for name, v in (("lr", lr), ("vision_lr", vision_lr)):
        if not (math.isfinite(v) and v >= 0):  # 0 is allowed: a run that only copies and evaluates
            raise bad(name, f"must be a finite number from 0, got {v}")
    for name, v, hi in (("order_weight", order_weight, math.inf), ("distill_weight", distill_weight, math.inf),
                        ("far_views", far_views, 1),
                        ("easy_rate", easy_rate, 1), ("open_share", open_share, 1)):
        if not (math.isfinite(v) and 0 <= v <= hi):
            raise bad(name, "must be a finite number from 0" + ("" if hi == math.inf else f" to {hi}") + f", got {v}")
    if open_share == 1:
        raise bad("open_share", "must be below 1 (the closed scenes keep the closed-set calibration), got 1")
    if not (math.isfinite(open_phrasing) and 0 <= open_phrasing <= 1) or (open_phrasing and not open_share > 0):
        raise bad("open_phrasing", f"must be a share in [0, 1] of stage 2's open examples, with open items "
                                   f"(open_share > 0); got {open_phrasing} with open_share {open_share}")
    if init_from is not None and tower_from is not None:
        raise ValueError("init_from (a stage 2 fine-tune) and tower_from (a longer stage 1) are two different "
                         "continuations: give one")
    if init_from is not None and lm_from is not None:
        raise bad("lm_from", "starts stage 2 from a saved language model; init_from already continues a whole saved "
                             "model: give one")
    for name, path in (("init_from", init_from), ("tower_from", tower_from), ("lm_from", lm_from)):
        if path is None:
            continue
        if not ((Path(path) / "config.json").is_file() and (Path(path) / "model.safetensors").is_file()):
            raise bad(name, f"{str(path)!r} is not a saved spote-tiny (a folder with config.json and model.safetensors)")
        try:  # the config and the weights' header (a few KB), so a damaged copy is one line, not a traceback
            from safetensors import safe_open
            from transformers import AutoConfig

            AutoConfig.from_pretrained(path)
            with safe_open(str(Path(path) / "model.safetensors"), "pt") as f:
                f.keys()
        except Exception as e:  # noqa: BLE001 (any failure to read it means the same to the user)
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise bad(name, f"{str(path)!r} cannot be read as a saved spote-tiny ({reason})") from None
        source, target = Path(path).resolve(), Path(out).resolve()
        if source == target or target in source.parents:
            raise bad(name, f"{str(path)!r} is the output folder {str(out)!r} or inside it: the run would overwrite "
                            "the model it starts from")
    if lm_from is not None:  # its shape, before any work (train loads it again, after stage 1)
        load_language_model(lm_from, build_model(build_processor(open_items=open_share > 0)))
    from spote.loading import DEFAULT_MODEL

    shipped, target = Path(DEFAULT_MODEL).resolve(), Path(out).resolve()
    if target == shipped or shipped in target.parents:  # even with overwrite: the package's own model
        raise bad("out", f"{str(out)!r} is the shipped model's folder: train into another folder, then copy the "
                         "files there to ship them")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise bad("out", f"{str(out)!r} is a file, not a folder")
    if not folder.exists():
        if folder.is_symlink():
            raise bad("out", f"{str(out)!r} is a symbolic link to nothing")
        above = next((a for a in folder.absolute().parents if a.exists()), None)
        if above is not None and not above.is_dir():
            raise bad("out", f"{str(out)!r} cannot be made: {str(above)!r} is a file, not a folder")
    held = [e.name for e in run_entries(folder)]
    if held and not overwrite:  # a second run's files would mix with the first's (its checkpoints, its report)
        raise bad("out", f"{str(out)!r} already holds a run ({', '.join(held[:4])}{', ...' if len(held) > 4 else ''}): "
                         "choose another folder, or pass overwrite (--overwrite) to write over it")
    if init_from is not None and (stage1_open_share is not None or tuple(glyph_px) != OPEN_STAGE1_CAP_PX):
        raise bad("init_from", "runs no stage 1, so stage1_open_share and glyph_px would do nothing")
    if init_from is not None and open_share:
        from transformers import AutoTokenizer
        if not _spells_codes(AutoTokenizer.from_pretrained(init_from)):
            raise bad("init_from", f"{str(init_from)!r} has no code tokens to fine-tune on open items: retrain it with "
                                   "open_share (or continue its tower with tower_from)")
    if tower_layers is not None and init_from is not None:
        raise bad("tower_layers", "sets the depth of a tower stage 1 builds; init_from continues a saved model as it is")
    if init_from is not None:  # a continued model's own stage 2 already drew FINETUNE_START's scenes with its seed
        saved = _saved_report(init_from)
        if (saved.get("init_from") or saved.get("lm_from")) and saved.get("seed") == seed:
            raise bad("init_from", f"{str(init_from)!r} was itself trained on the scenes a fine-tune draws with seed "
                                   f"{seed} (its stage 2 continued a saved model): pass another seed (--seed) so "
                                   "that the fine-tune sees new scenes")
    new_only = bad("train_new_layers_only", "trains the layers --tower-layers adds to a --tower-from tower: it needs "
                                            "both, more layers than the saved tower's, and vision_steps > 0")
    if train_new_layers_only and (tower_from is None or tower_layers is None or not vision_steps):
        raise new_only
    if tower_from is not None and tower_layers is not None:
        saved_layers = saved_tower_layers(tower_from)
        if tower_layers < saved_layers:
            raise bad("tower_layers", f"must be at least the --tower-from tower's {saved_layers} layers, got {tower_layers}")
        if tower_layers > saved_layers and not vision_steps:
            raise bad("tower_layers", "adds layers that only stage 1 trains: it needs vision_steps > 0")
        if train_new_layers_only and tower_layers == saved_layers:
            raise new_only
    if distill_weight and (tower_from is None or not vision_steps):
        raise bad("distill_weight", "holds a continued stage 1 to the tower it starts from: it needs tower_from "
                                    "and vision_steps > 0")
    if stage1_open_share is not None and not (open_share > 0 and 0 < stage1_open_share < 1):
        raise bad("stage1_open_share", f"must be in (0, 1), with open items (open_share > 0); got {stage1_open_share} "
                                       f"with open_share {open_share}")
    if not (len(glyph_px) == 2 and all(math.isfinite(v) for v in glyph_px)
            and 1 <= glyph_px[0] <= glyph_px[1] <= IMAGE_SIZE):
        raise bad("glyph_px", f"must be (low, high) input pixels with 1 <= low <= high <= {IMAGE_SIZE} (the model "
                              f"input), got {tuple(glyph_px)}")


def train(out: Path, steps: int = STEPS, batch_size: int = 64, lr: float = 1e-3, warmup: int = 150,
          seed: int = 0, threads: int = 2, log_every: int = 25, eval_items: int = 240,
          vision_steps: int = VISION_STEPS, vision_lr: float = 2e-3, stage2_vision_lr_scale: float = 0.0,
          far_views: float = FAR_VIEWS, far_unsure: bool = True, init_from: Path | None = None,
          easy_rate: float = EASY_RATE, tower_from: Path | None = None, open_share: float = 0.0,
          stage1_start: int | None = None, open_eval_items: int = 60, order_weight: float = 0.0,
          checkpoint_every: int = CHECKPOINT_EVERY, stage1_open_share: float | None = None,
          glyph_px: tuple[float, float] = OPEN_STAGE1_CAP_PX, distill_weight: float = 0.0,
          lm_from: Path | None = None, overwrite: bool = False, tower_layers: int | None = None,
          train_new_layers_only: bool = False, open_phrasing: float = 0.0) -> dict:
    """Stage 1 (vision tower on close views), then stage 2 (the LLaVA on every kind of view).

    ``init_from`` continues from a saved spote-tiny instead: no stage 1, and stage 2 (``steps`` at
    ``lr``) on fresh scenes, e.g. a short, gentle fine-tune with more easy scenes (``easy_rate``),
    which costs minutes where the recipe from scratch costs hours.

    ``tower_from`` continues *stage 1* instead: the vision tower, projector and token embeddings
    start from a saved spote-tiny (the rest of the language model fresh, as in the recipe), stage 1
    runs ``vision_steps`` more on scenes the recipe's stage 1 never drew, then stage 2 as usual:
    a longer stage 1 without paying again for the first one. ``tower_layers`` (default: the saved
    tower's depth, else ``TOWER_LAYERS``) deepens it: the layers beyond the saved ones start as the
    identity (``deepen_tower``) and stage 1 trains them; with ``train_new_layers_only`` it trains them
    alone (and the projector and token embeddings), the saved layers frozen.

    ``stage2_vision_lr_scale`` scales the vision tower's learning rate in stage 2. The default 0
    freezes it: stage 2's mostly illegible views wore off the glyph reading stage 1 taught (with
    1.0, close-view digits 0.64 at 32 px vs 0.90 frozen; research/reading_scale.py).

    ``open_share`` > 0 adds SpotBench's open items (module docstring): that share of stage 1's views
    are single code glyphs and that share of stage 2's scenes are open items, and the tokenizer spells
    codes (``build_processor(open_items=True)``); ``tower_from`` a model without it copies the
    embeddings of the tokens both vocabularies hold. ``stage1_start`` overrides the first stage 1
    scene index (a second continued stage 1 must not redraw the first one's scenes).
    ``stage1_open_share`` sets stage 1's share of glyph views apart from stage 2's scenes (default: the
    same ``open_share``); ``glyph_px`` is the glyph views' glyph height in input pixels (log-uniform);
    ``distill_weight`` holds the closed views' image tokens to the starting tower's (``pretrain_vision``).
    ``lm_from`` starts stage 2 from a saved spote-tiny's language model instead of a fresh one: its layers,
    and the embeddings (tied to the output head) of the tokens both vocabularies hold, copied after stage 1,
    so the code tokens keep what stage 1 taught them; stage 2 then draws scenes from ``FINETUNE_START``,
    which the saved model's own stage 2 never drew. With ``tower_from`` the same model, that extends a
    saved spote-tiny to open items rather than retraining its language model.
    ``open_phrasing`` asks that share of stage 2's open examples in other words (``OPEN_PHRASINGS``).
    ``open_eval_items`` open val items are evaluated at the end (``evaluate_open``). Every
    ``checkpoint_every`` stage 2 steps the model is saved to ``out/checkpoint-{step}``. An ``out`` that
    already holds a run is refused (ValueError) unless ``overwrite``, which removes that run's files
    (``clear_run``) before the new run writes."""
    check_settings(out, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, vision_steps=vision_steps,
                   vision_lr=vision_lr, far_views=far_views, init_from=init_from, easy_rate=easy_rate,
                   tower_from=tower_from, open_share=open_share, stage1_start=stage1_start, order_weight=order_weight,
                   stage1_open_share=stage1_open_share, glyph_px=glyph_px, distill_weight=distill_weight,
                   lm_from=lm_from, overwrite=overwrite, tower_layers=tower_layers,
                   train_new_layers_only=train_new_layers_only, open_phrasing=open_phrasing, seed=seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    frozen_layers = 0  # stage 1 trains the whole tower unless train_new_layers_only
    if init_from is not None:
        processor = AutoProcessor.from_pretrained(init_from)
        model = LlavaForConditionalGeneration.from_pretrained(init_from, use_safetensors=True)
        vision_steps = 0
        open_vocab = _spells_codes(processor.tokenizer)  # with open_share, check_settings made sure it does
    else:
        open_vocab = open_share > 0
        processor = build_processor(open_items=open_vocab)
        saved_layers = None if tower_from is None else saved_tower_layers(tower_from)
        if tower_layers is None:  # a continued tower keeps its depth; a fresh one has the recipe's
            tower_layers = saved_layers or TOWER_LAYERS
        if train_new_layers_only:  # check_settings made sure there is a saved tower to keep
            frozen_layers = saved_layers
        model = build_model(processor, seed, tower_layers)
        if tower_from is not None:
            saved = LlavaForConditionalGeneration.from_pretrained(tower_from, use_safetensors=True).model
            model.model.multi_modal_projector.load_state_dict(saved.multi_modal_projector.state_dict())
            deepen_tower(model.model.vision_tower, saved.vision_tower)
            _copy_embeddings(model.model.language_model.embed_tokens, processor.tokenizer.get_vocab(),
                             saved.language_model.embed_tokens, AutoProcessor.from_pretrained(tower_from).tokenizer.get_vocab())
    saved_lm = None if lm_from is None else load_language_model(lm_from, model)
    code_ids = code_token_ids(processor.tokenizer) if open_share else None
    model.train()
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:  # without it, check_settings refused a folder holding any of a run's entries
        clear_run(out)
    log = (out / "train_log.jsonl").open("w")
    if vision_steps:
        if stage1_start is None:
            stage1_start = STAGE1_START if tower_from is None else TOWER_CONTINUE_START
        pretrain_vision(model, vision_steps, 2 * batch_size, vision_lr, seed, log, far_views, far_unsure,
                        start=stage1_start, open_share=open_share if stage1_open_share is None else stage1_open_share,
                        order_weight=order_weight, glyph_px=tuple(glyph_px), distill_weight=distill_weight,
                        frozen_layers=frozen_layers)
    if saved_lm is not None:  # after stage 1, so the code tokens keep the embeddings stage 1 gave them
        layers, embed, vocab = saved_lm
        model.model.language_model.load_state_dict(layers, strict=False)
        _copy_embeddings(model.model.language_model.embed_tokens, processor.tokenizer.get_vocab(), embed, vocab)
    params = model.parameters()
    if stage2_vision_lr_scale != 1.0:
        vision = list(model.model.vision_tower.parameters())
        for p in vision:
            p.requires_grad_(stage2_vision_lr_scale > 0)
        ids = {id(p) for p in vision}
        params = [{"params": [p for p in model.parameters() if id(p) not in ids]}]
        if stage2_vision_lr_scale > 0:
            params.append({"params": vision, "lr": lr * stage2_vision_lr_scale})
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    continued = init_from is not None or lm_from is not None  # a saved LM: draw scenes its stage 2 did not
    stream = ViewStream(seed, batch_size, start=FINETUNE_START if continued else 0, easy_rate=easy_rate,
                        open_share=open_share, open_vocab=open_vocab, open_phrasing=open_phrasing)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=1, prefetch_factor=4)
    t0, ema_loss, ema_acc = time.time(), None, None
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        if "unsure" in batch:  # open items: sure and unsure targets (open_loss)
            labels, unsure = batch.pop("labels"), batch.pop("unsure")
            outputs = model(**batch)
            loss = open_loss(outputs.logits, labels, unsure, *code_ids)
        else:
            outputs = model(**batch)
            loss = outputs.loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        acc = (outputs.logits[:, -3].argmax(-1) == batch["input_ids"][:, -2]).float().mean().item()
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        ema_acc = acc if ema_acc is None else 0.95 * ema_acc + 0.05 * acc
        if step % log_every == 0 or step == steps - 1:
            rec = {"stage": 2, "step": step, "loss": round(ema_loss, 4), "accuracy": round(ema_acc, 4),
                   "lr": sched.get_last_lr()[0], "seconds": round(time.time() - t0, 1)}
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if step > 0 and step % checkpoint_every == 0:  # a later run can continue from any of them (init_from)
            _save(model, processor, out / f"{CHECKPOINT_PREFIX}{step}")
    model.eval()
    with torch.inference_mode():
        report = {"steps": steps, "batch_size": batch_size, "seed": seed,
                  "vision_steps": vision_steps, "stage2_vision_lr_scale": stage2_vision_lr_scale, "far_views": far_views,
                  "far_unsure": far_unsure, "init_from": None if init_from is None else str(init_from),
                  "easy_rate": easy_rate, "lr": lr, "warmup": warmup, "open_share": open_share,
                  "stage1_start": stage1_start, "order_weight": order_weight,
                  "stage1_open_share": stage1_open_share, "glyph_px": list(glyph_px), "distill_weight": distill_weight,
                  "tower_from": None if tower_from is None else str(tower_from), "vision_lr": vision_lr,
                  "lm_from": None if lm_from is None else str(lm_from),
                  "tower_layers": model.config.vision_config.num_hidden_layers,
                  "train_new_layers_only": train_new_layers_only, "open_phrasing": open_phrasing,
                  "final_loss_ema": ema_loss,
                  "final_train_accuracy_ema": ema_acc, "seconds": round(time.time() - t0, 1),
                  **evaluate(model, processor, eval_items),
                  **(evaluate_open(model, processor, open_eval_items) if open_vocab and open_eval_items else {})}
    print(json.dumps(report), flush=True)
    _save(model, processor, out)
    (out / "training_report.json").write_text(json.dumps(report, indent=2))
    return report


def _saved_report(folder: Path) -> dict:
    """The saved run's training_report.json, or {} where it has none or it cannot be read."""
    try:
        report = json.loads((Path(folder) / "training_report.json").read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def _spells_codes(tokenizer) -> bool:
    try:
        code_token_ids(tokenizer)
        return True
    except ValueError:
        return False


def _save(model, processor, out: Path):
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def main(out: Path = typer.Option(Path("out/spote-tiny"), help="where the model and its report are written"),
         steps: int = typer.Option(STEPS, help="stage 2 steps"),
         vision_steps: int = typer.Option(VISION_STEPS, help="stage 1 steps"),
         far_views: float = typer.Option(FAR_VIEWS, help="stage 1 share of far views"),
         far_unsure: bool = typer.Option(True, help="train illegible far views toward uniform over the choices; "
                                                    "--no-far-unsure keeps only the legible ones"),
         init_from: Optional[Path] = typer.Option(None, help="continue from this saved spote-tiny: no stage 1, "
                                                             "stage 2 on fresh scenes (a fine-tune)"),
         easy_rate: float = typer.Option(EASY_RATE, help="stage 2 share of easy scenes"),
         tower_from: Optional[Path] = typer.Option(None, help="continue stage 1 from this saved spote-tiny's vision "
                                                              "tower, projector and embeddings (then stage 2 as usual)"),
         vision_lr: float = typer.Option(2e-3, help="stage 1 peak learning rate"),
         lr: float = typer.Option(1e-3, help="stage 2 peak learning rate"),
         warmup: int = typer.Option(150, help="stage 2 warm-up steps"),
         open_share: float = typer.Option(0.0, help="share of stage 1 views that are code glyphs and of stage 2 scenes "
                                                    "that are open items (codes in document fields); 0: the closed "
                                                    "recipe exactly"),
         stage1_start: Optional[int] = typer.Option(None, help="first stage 1 scene index (default: the recipe's, or "
                                                               "the continuation's with --tower-from)"),
         open_eval_items: int = typer.Option(60, help="open val items evaluated at the end (with open items)"),
         order_weight: float = typer.Option(0.0, help="stage 1 weight of the glyph-place targets (glyph_order) on "
                                                      "code glyphs; 0: none"),
         stage1_open_share: Optional[float] = typer.Option(None, help="stage 1 share of code glyph views, apart "
                                                                     "from stage 2's open scenes (default: --open-share)"),
         glyph_px: tuple[float, float] = typer.Option(OPEN_STAGE1_CAP_PX, help="stage 1 glyph views: the glyph's "
                                                      "height in input pixels, low and high (log-uniform)"),
         distill_weight: float = typer.Option(0.0, help="stage 1 weight of feature distillation on closed views "
                                                        "toward the --tower-from tower (keeps its closed features); 0: none"),
         lm_from: Optional[Path] = typer.Option(None, help="start stage 2 from this saved spote-tiny's language model "
                                                           "(layers and shared token embeddings) instead of a fresh one"),
         overwrite: bool = typer.Option(False, help="write over a run already in OUT (its model, log, report and "
                                                "checkpoint-N folders are removed first)"),
         tower_layers: Optional[int] = typer.Option(None, help="the vision tower's encoder layers (default: the --tower-from "
                                                  f"tower's, else {TOWER_LAYERS}); with --tower-from, the layers beyond "
                                                  "its tower's start as the identity and stage 1 trains them"),
         train_new_layers_only: bool = typer.Option(False, help="stage 1 trains only the layers --tower-layers adds "
                                                           "(and the projector and embeddings); the saved layers stay frozen"),
         open_phrasing: float = typer.Option(0.0, help="share of stage 2's open examples asked in other words "
                                                      "(the documents job's among them); 0: SpotBench's question only"),
         batch_size: int = 64, seed: int = 0, threads: int = 2, eval_items: int = 240):
    """Train spote-tiny (CPU, seeded): stage 1 vision steps, then stage 2 LLaVA steps; save safetensors to OUT."""
    settings = dict(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, seed=seed, threads=threads,
                    eval_items=eval_items, vision_steps=vision_steps, vision_lr=vision_lr, far_views=far_views,
                    far_unsure=far_unsure, init_from=init_from, easy_rate=easy_rate, tower_from=tower_from,
                    open_share=open_share, stage1_start=stage1_start, open_eval_items=open_eval_items,
                    order_weight=order_weight, stage1_open_share=stage1_open_share, glyph_px=glyph_px,
                    distill_weight=distill_weight, lm_from=lm_from, overwrite=overwrite, tower_layers=tower_layers,
                    train_new_layers_only=train_new_layers_only, open_phrasing=open_phrasing)
    try:
        check_settings(out, **settings)
    except ValueError as e:  # one line, not a traceback
        typer.echo(f"training.train: error: {e}", err=True)
        raise typer.Exit(2) from None
    train(out, **settings)


if __name__ == "__main__":
    typer.run(main)
