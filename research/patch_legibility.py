"""Does a larger input with larger patches make SpotBench's small glyphs legible, or does a glyph need
more patches? (docs/experiments/open-items-training.md, "Next")

    python -m research.patch_legibility --steps 1500 --out results/patch-legibility.json

Arms: fresh vision towers of spote-tiny's shape (CLIP, 4 layers, width 128), one per (input px,
patch px) pair of ``--arms``; the default pair is spote-tiny's 64 / 8 and 96 / 12, which keep the
same 8 x 8 token grid. Each step every arm trains on the *same* glyph views: the same open items,
glyph, box and jitter (``training.train.glyph_view``), each rendered at the arm's input size, so a
glyph ``h`` px high in a 64 px view is ``1.5 h`` px high in a 96 px one and covers the same share of
the view. As in stage 1, a linear head reads the glyph's character (CODE_ALPHABET) from the tokens
the glyph covers (``training.train.glyph_region``, at the arm's size and patch). Steps alternate
between the arms, so machine drift hits both alike.

Glyph heights are drawn log-uniform in ``--glyph-px`` (64-px-equivalent input pixels; SpotBench's
oracle view shows small codes at about 12-18). Held-out views (val items) are scored at the end:
accuracy by glyph height, in 64-px-equivalent pixels and in patches of each arm.

The question it answers: with the patch grid fixed, do more pixels per patch read small glyphs
better (96 / 12 beats 64 / 8), or does legibility follow the glyph's height in patches (they tie,
and a larger input would have to bring more patches)?
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from spote.bench.scenes import CODE_ALPHABET, make_open_item
from spote.spotlight import Box, letterbox, letterbox_transform
from training.train import glyph_region, glyph_view

app = typer.Typer(add_completion=False)
HEIGHT_BINS = ((0, 12), (12, 15), (15, 18), (18, 22), (22, 1000))  # 64-px-equivalent glyph heights


class GlyphReader:
    """A CLIP vision tower (input ``size`` px, ``patch`` px patches) and a linear head over the tokens
    a glyph covers -> logits over CODE_ALPHABET. The tower is fresh, or ``tower`` (a trained one, kept
    frozen: only the head learns, a linear probe of what the tower already encodes)."""

    def __init__(self, size: int, patch: int, seed: int, lr: float, tower=None):
        import torch
        from transformers import CLIPVisionConfig, CLIPVisionModel

        torch.manual_seed(seed)
        self.size, self.patch, self.frozen = size, patch, tower is not None
        self.tower = tower if tower is not None else CLIPVisionModel(CLIPVisionConfig(
            hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, image_size=size,
            patch_size=patch))
        self.tower.requires_grad_(not self.frozen)
        self.head = torch.nn.Linear(self.tower.config.hidden_size, len(CODE_ALPHABET))
        trained = [*self.head.parameters()] + ([] if self.frozen else [*self.tower.parameters()])
        self.opt = torch.optim.AdamW(trained, lr=lr, weight_decay=0.01)
        self.seconds = 0.0

    @classmethod
    def frozen_from(cls, model_dir: Path, seed: int, lr: float) -> "GlyphReader":
        """The vision tower of a saved spote-tiny-shaped Llava checkpoint (safetensors), frozen."""
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(model_dir, use_safetensors=True)
        vc = model.config.vision_config
        return cls(vc.image_size, vc.patch_size, seed, lr, tower=model.model.vision_tower.eval())

    def logits(self, images: list, regions: np.ndarray):
        import torch

        x = torch.from_numpy(np.stack([np.asarray(im, np.float32) / 255.0 for im in images])).permute(0, 3, 1, 2)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            tokens = self.tower(pixel_values=(x - 0.5) / 0.25).last_hidden_state[:, 1:]  # drop the class token
        w = torch.from_numpy(regions)
        pooled = (tokens * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-6)
        return self.head(pooled)

    def step(self, images, regions, targets) -> float:
        import torch

        t0 = time.perf_counter()
        self.tower.train(not self.frozen)
        loss = torch.nn.functional.cross_entropy(self.logits(images, regions), torch.as_tensor(targets))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.seconds += time.perf_counter() - t0
        return loss.item()

    def predict(self, images, regions) -> np.ndarray:
        import torch

        self.tower.eval()
        with torch.inference_mode():
            return self.logits(images, regions).argmax(-1).numpy()


def draw_views(rng, items, n: int, glyph_px: tuple[float, float]) -> list[tuple]:
    """``n`` glyph views: (item, box, glyph index, its height in 64-px-equivalent input px, its character's class)."""
    views = []
    for _ in range(n):
        item = items[int(rng.integers(len(items)))]
        box, k = glyph_view(rng, item, glyph_px)
        _, scale, _, _ = letterbox_transform(*item.image.size, 64, box)
        h64 = Box(*item.meta["chars"][k]).height * scale
        views.append((item, box, k, h64, CODE_ALPHABET.index(item.answer[k])))
    return views


def render(views, size: int, patch: int) -> tuple[list, np.ndarray]:
    images = [letterbox(item.image, size, box) for item, box, _, _, _ in views]
    regions = np.stack([glyph_region(item, box, k, size, patch) for item, box, k, _, _ in views])
    return images, regions


def score(arms: dict, views, batch: int) -> dict:
    """Per arm: accuracy overall and by 64-px-equivalent glyph height (HEIGHT_BINS)."""
    heights = np.array([v[3] for v in views])
    gold = np.array([v[4] for v in views])
    out = {}
    for name, arm in arms.items():
        pred = np.concatenate([arm.predict(*render(views[i:i + batch], arm.size, arm.patch))
                               for i in range(0, len(views), batch)])
        hit = pred == gold
        bins = {}
        for lo, hi in HEIGHT_BINS:
            sel = (heights >= lo) & (heights < hi)
            if sel.any():
                bins[f"{lo}-{hi if hi < 1000 else ''}"] = {
                    "n": int(sel.sum()), "accuracy": round(float(hit[sel].mean()), 3),
                    "patches_high": round(float(heights[sel].mean() * arm.size / 64 / arm.patch), 2)}
        out[name] = {"accuracy": round(float(hit.mean()), 3), "by_height": bins,
                     "train_seconds": round(arm.seconds, 1)}
    return out


@app.command()
def main(arms: str = typer.Option("64/8,96/12", help="input px / patch px per arm, comma-separated"),
         steps: int = typer.Option(1500, min=1), batch: int = typer.Option(48, min=1),
         lr: float = typer.Option(1e-3), glyph_px: tuple[float, float] = typer.Option((10.0, 26.0)),
         train_items: int = typer.Option(600, min=1), val_items: int = typer.Option(150, min=1),
         val_views: int = typer.Option(1200, min=1), seed: int = typer.Option(0),
         frozen_tower: list[Path] = typer.Option([], help="also: the frozen vision tower of this saved model with a "
                                                  "fresh linear head (repeatable)"),
         out: Optional[Path] = typer.Option(Path("results/patch-legibility.json"))):
    shapes = {}
    for spec in [a.strip() for a in arms.split(",") if a.strip()]:
        try:
            size, patch = (int(v) for v in spec.split("/"))
        except ValueError:
            raise typer.BadParameter(f"{spec!r}: expected INPUT/PATCH in pixels, e.g. 96/12", param_hint="--arms")
        if patch < 1 or size % patch:
            raise typer.BadParameter(f"{spec}: the input size must be a multiple of the patch size", param_hint="--arms")
        shapes[spec] = (size, patch)
    for d in frozen_tower:
        if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
            raise typer.BadParameter(f"{d}: not a saved model (config.json and model.safetensors)",
                                     param_hint="--frozen-tower")
    readers = {spec: GlyphReader(size, patch, seed, lr) for spec, (size, patch) in shapes.items()}
    readers.update({f"frozen:{d}": GlyphReader.frozen_from(d, seed, lr) for d in frozen_tower})
    rng = np.random.default_rng(seed)
    train = [make_open_item(seed, "train", i) for i in range(train_items)]
    val = [make_open_item(seed, "val", i) for i in range(val_items)]
    held_out = draw_views(np.random.default_rng([seed, 1]), val, val_views, glyph_px)
    log = []
    for step in range(1, steps + 1):
        views = draw_views(rng, train, batch, glyph_px)
        targets = [v[4] for v in views]
        losses = {name: arm.step(*render(views, arm.size, arm.patch), targets) for name, arm in readers.items()}
        if step % 100 == 0 or step == steps:
            log.append({"step": step, **{f"loss_{k}": round(v, 3) for k, v in losses.items()}})
            print(json.dumps(log[-1]), flush=True)
    result = {"arms": list(readers), "steps": steps, "batch": batch, "lr": lr, "glyph_px": list(glyph_px),
              "train_items": train_items, "val_items": val_items, "seed": seed, "chance": round(1 / len(CODE_ALPHABET), 3),
              "held_out": score(readers, held_out, 200), "log": log}
    print(json.dumps(result["held_out"], indent=1))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    if any(math.isnan(v) for r in log for k, v in r.items() if k.startswith("loss")):
        raise SystemExit("a loss went NaN")


if __name__ == "__main__":
    app()
