"""Train ``spote-tiny`` on SpotBench's train split, on CPU, seeded.

Each scene yields several views at many zoom levels (the whole image, close-ups around
the evidence, random windows, global+zoom pairs, highlighted images), so that the model is
*calibrated*: confident when the evidence is legible in the view, uncertain when it is not.
Presence questions are labelled by what the view shows (a close-up of empty water says
"no"), as real VLMs do; that is what makes shortcut collapse possible at test time.

    python -m training.train --out out/spote-tiny        # the shipped recipe (STEPS, VISION_STEPS)
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import typer
from PIL import Image, ImageFilter

from spote.bench.scenes import BOAT_SIDE, EASY_RATE, PRESENCE_KINDS, Item, make_item
from spote.prompt import format_question
from spote.spotlight import Box, ViewRenderer, soft_mask, apply_highlight
from training.build import IMAGE_SIZE, build_model, build_processor


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


def sample_views(rng, item: Item) -> tuple[list[Image.Image], str]:
    """One training example: the views the model sees and the label they support."""
    renderer = ViewRenderer(item.image, IMAGE_SIZE)
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
# A fine-tune (``init_from``) draws stage 2 scenes from here on, so it never repeats the ones the
# saved model was trained on (stage 2 of the shipped recipe reads scenes 0 to ~8400).
FINETUNE_START = 1_000_000


class ViewStream(torch.utils.data.IterableDataset):
    """Endless stream of encoded batches; scenes never repeat (index grows with the step)."""

    def __init__(self, seed: int, batch_size: int, views_per_scene: int = 10, start: int = 0,
                 easy_rate: float = EASY_RATE):
        self.seed, self.batch_size, self.k, self.start = seed, batch_size, views_per_scene, start
        self.easy_rate = easy_rate  # share of scenes with large evidence (SpotBench's own is 0.15)

    def scenes(self):
        index = self.start
        while True:
            yield make_item(self.seed, "train", index, easy_rate=self.easy_rate)
            index += 1

    def __iter__(self):
        processor = build_processor()
        rng = np.random.default_rng(self.seed + 7)
        scenes = self.scenes()
        while True:
            examples = []
            while len(examples) < self.batch_size:
                item = next(scenes)
                for _ in range(self.k):
                    views, label = sample_views(rng, item)
                    examples.append((views, item.question, item.choices, label))
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
    choice mask). Scenes are costly to draw and views cheap, so a rolling pool of scenes is kept
    and a few are replaced every batch."""

    def __init__(self, seed: int, batch_size: int, pool: int = 256, refresh: int = 6, far_views: float = FAR_VIEWS,
                 far_unsure: bool = True, start: int = STAGE1_START):
        self.seed, self.batch_size, self.pool, self.refresh = seed, batch_size, pool, refresh
        self.start = start
        self.far_views = far_views  # share of far views (FAR_LEGIBLE_PX); 0 draws exactly the shipped stream
        self.far_unsure = far_unsure  # False: an illegible far view is dropped for the usual close view

    def __iter__(self):
        processor = build_processor()
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
        while True:
            for _ in range(self.refresh):
                pool[int(rng.integers(self.pool))] = new_item()
            images, labels = [], []
            mask = torch.full((self.batch_size, vocab), float("-inf"))
            for b in range(self.batch_size):
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
            yield pv, torch.tensor(labels), mask


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


def pretrain_vision(model, steps: int, batch_size: int, lr: float, seed: int, log, far_views: float = FAR_VIEWS,
                    far_unsure: bool = True, start: int = STAGE1_START) -> None:
    """Stage 1: teach the vision tower + projector to carry the answer, read out through the tied
    token embeddings from the mean of the image tokens (what a uniform LM attention would see).
    The softmax runs over the item's own choices, as the question would restrict it: a crack is
    "yes" to "is there a defect ?" and "crack" to "what kind ?", which only the question decides."""
    vision, proj = model.model.vision_tower, model.model.multi_modal_projector
    emb = model.model.language_model.embed_tokens
    params = [*vision.parameters(), *proj.parameters(), *emb.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    stream = CloseViewStream(seed, batch_size, pool=min(256, 2 * batch_size), far_views=far_views, far_unsure=far_unsure,
                             start=start)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=1, prefetch_factor=4)
    t0, ema = time.time(), None
    for step, (pv, y, mask) in enumerate(loader):
        if step >= steps:
            break
        feats = vision(pv, output_hidden_states=True).hidden_states[model.config.vision_feature_layer][:, 1:]
        logits = proj(feats).mean(1) @ emb.weight.T + mask
        loss = stage1_loss(logits, y, mask)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        sure = y != UNSURE
        acc = (logits.argmax(-1) == y)[sure].float().mean().item()
        ema = acc if ema is None else 0.95 * ema + 0.05 * acc
        if step % 25 == 0 or step == steps - 1:
            rec = {"stage": 1, "step": step, "loss": round(loss.item(), 4), "accuracy": round(ema, 4),
                   "seconds": round(time.time() - t0, 1)}
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()


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


def train(out: Path, steps: int = STEPS, batch_size: int = 64, lr: float = 1e-3, warmup: int = 150,
          seed: int = 0, threads: int = 2, log_every: int = 25, eval_items: int = 240,
          vision_steps: int = VISION_STEPS, vision_lr: float = 2e-3, stage2_vision_lr_scale: float = 0.0,
          far_views: float = FAR_VIEWS, far_unsure: bool = True, init_from: Path | None = None,
          easy_rate: float = EASY_RATE, tower_from: Path | None = None) -> dict:
    """Stage 1 (vision tower on close views), then stage 2 (the LLaVA on every kind of view).

    ``init_from`` continues from a saved spote-tiny instead: no stage 1, and stage 2 (``steps`` at
    ``lr``) on fresh scenes, e.g. a short, gentle fine-tune with more easy scenes (``easy_rate``),
    which costs minutes where the recipe from scratch costs hours.

    ``tower_from`` continues *stage 1* instead: the vision tower, projector and token embeddings
    start from a saved spote-tiny (the rest of the language model fresh, as in the recipe), stage 1
    runs ``vision_steps`` more on scenes the recipe's stage 1 never drew, then stage 2 as usual:
    a longer stage 1 without paying again for the first one.

    ``stage2_vision_lr_scale`` scales the vision tower's learning rate in stage 2. The default 0
    freezes it: stage 2's mostly illegible views wore off the glyph reading stage 1 taught (with
    1.0, close-view digits 0.64 at 32 px vs 0.90 frozen; research/reading_scale.py)."""
    if init_from is not None and tower_from is not None:
        raise ValueError("init_from (a stage 2 fine-tune) and tower_from (a longer stage 1) are two different "
                         "continuations: give one")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    if init_from is not None:
        processor = AutoProcessor.from_pretrained(init_from)
        model = LlavaForConditionalGeneration.from_pretrained(init_from, use_safetensors=True)
        vision_steps = 0
    else:
        processor = build_processor()
        model = build_model(processor, seed)
        if tower_from is not None:
            saved = LlavaForConditionalGeneration.from_pretrained(tower_from, use_safetensors=True).model
            for part in ("vision_tower", "multi_modal_projector"):
                getattr(model.model, part).load_state_dict(getattr(saved, part).state_dict())
            model.model.language_model.embed_tokens.load_state_dict(saved.language_model.embed_tokens.state_dict())
    model.train()
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "train_log.jsonl").open("w")
    if vision_steps:
        pretrain_vision(model, vision_steps, 2 * batch_size, vision_lr, seed, log, far_views, far_unsure,
                        start=STAGE1_START if tower_from is None else TOWER_CONTINUE_START)
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
    stream = ViewStream(seed, batch_size, start=FINETUNE_START if init_from is not None else 0, easy_rate=easy_rate)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=1, prefetch_factor=4)
    t0, ema_loss, ema_acc = time.time(), None, None
    for step, batch in enumerate(loader):
        if step >= steps:
            break
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
        if step > 0 and step % 500 == 0:
            _save(model, processor, out)
    model.eval()
    with torch.inference_mode():
        report = {"steps": steps, "batch_size": batch_size, "seed": seed,
                  "vision_steps": vision_steps, "stage2_vision_lr_scale": stage2_vision_lr_scale, "far_views": far_views,
                  "far_unsure": far_unsure, "init_from": None if init_from is None else str(init_from),
                  "easy_rate": easy_rate, "lr": lr, "warmup": warmup,
                  "tower_from": None if tower_from is None else str(tower_from), "vision_lr": vision_lr,
                  "final_loss_ema": ema_loss,
                  "final_train_accuracy_ema": ema_acc, "seconds": round(time.time() - t0, 1),
                  **evaluate(model, processor, eval_items)}
    print(json.dumps(report), flush=True)
    _save(model, processor, out)
    (out / "training_report.json").write_text(json.dumps(report, indent=2))
    return report


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
         batch_size: int = 64, seed: int = 0, threads: int = 2, eval_items: int = 240):
    """Train spote-tiny (CPU, seeded): stage 1 vision steps, then stage 2 LLaVA steps; save safetensors to OUT."""
    train(out, steps, batch_size, lr, warmup=warmup, seed=seed, threads=threads, eval_items=eval_items,
          vision_steps=vision_steps, vision_lr=vision_lr, far_views=far_views, far_unsure=far_unsure,
          init_from=init_from, easy_rate=easy_rate, tower_from=tower_from)


if __name__ == "__main__":
    typer.run(main)
