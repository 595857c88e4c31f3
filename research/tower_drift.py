"""How far has a retrained tower moved what closed items are read from? (docs/experiments/open-items-training.md)

    python -m research.tower_drift out/open8/s1 out/open7/s1 --against spote/weights/spote-tiny

For each model: the relative squared distance between its projected image tokens and those of the
``--against`` model (the shipped spote-tiny) on the same closed close views, SpotBench val items with
evidence, each shown as a square twice the evidence's long side around it (64 px input):

    drift = sum_views sum_tokens ||t_model - t_against||^2 / sum_views sum_tokens ||t_against||^2

0 is the same tokens; 1 is a distance as large as the tokens themselves. It is what stage 1's
``distill_weight`` holds down during training (training/train.py, ``pretrain_vision``), measured
here on held-out views. Stage 2 trains the projector, so a finished model's drift includes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from spote.bench.scenes import make_item
from spote.spotlight import Box, ViewRenderer

app = typer.Typer(add_completion=False)


def closed_close_views(n_items: int, seed: int, size: int = 64) -> list:
    """Close views (PIL, ``size`` px) of the val items among the first ``n_items`` that have evidence."""
    views = []
    for i in range(n_items):
        item = make_item(seed, "val", i)
        if item.evidence is None:
            continue
        ev = Box(*item.evidence)
        views.append(ViewRenderer(item.image, size).render(Box.square(*ev.centre, 2 * max(ev.width, ev.height)), "zoom")[0])
    return views


def image_tokens(model_dir: Path, pixel_values):
    """[views, tokens, hidden] projected image tokens of a saved LLaVA (the layer the model reads)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, use_safetensors=True).eval()
    with torch.inference_mode():  # transformers' own: the configured layer, CLS dropped, projected
        return torch.stack(model.model.get_image_features(pixel_values).pooler_output)


def drift(tokens, against) -> float:
    """Relative squared distance (module docstring); both [views, tokens, hidden]."""
    return float(((tokens - against) ** 2).sum() / (against ** 2).sum())


@app.command()
def main(models: list[Path] = typer.Argument(..., help="saved models (folders with model.safetensors)"),
         against: Path = typer.Option(Path("spote/weights/spote-tiny"), help="the reference model"),
         n: int = typer.Option(200, min=1, help="val items drawn (those with evidence are used)"),
         seed: int = typer.Option(0), out: Optional[Path] = typer.Option(None, help="also write the figures as JSON")):
    from transformers import AutoProcessor

    views = closed_close_views(n, seed)
    pv = AutoProcessor.from_pretrained(against).image_processor(views, return_tensors="pt")["pixel_values"]
    reference = image_tokens(against, pv)
    result = {"against": str(against), "views": len(views), "seed": seed,
              "drift": {str(m): round(drift(image_tokens(m, pv), reference), 4) for m in models}}
    for m, d in result["drift"].items():
        typer.echo(f"{m}: drift {d} ({len(views)} closed views)")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    app()
