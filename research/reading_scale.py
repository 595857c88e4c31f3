"""How large must the evidence be in the model's input for the model to read it?

    python -m research.reading_scale --split val --n 400

For every SpotBench item with evidence, a square window is centred on the evidence box and sized so
that the box spans ``px`` pixels of the model's input; the model answers from that one view. Prints
accuracy and mean answer entropy per question kind and evidence size. This is the curve behind
early exit: an easy item stops after one pass only if its evidence, seen in the whole image, is
already large enough to be read with confidence (``research.early_exit`` shows how large it is
there). It is also the recipe check for a retrained model.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import typer

from spote.bench.scenes import spotbench
from spote.core import answer_entropy
from spote.spotlight import Box, ViewRenderer

SIZES = (8, 12, 16, 24, 32, 48)


def evidence_view(renderer: ViewRenderer, evidence, px: int):
    """One view in which the evidence box's longer side spans ``px`` of the model's input pixels."""
    ev = Box(*evidence)
    side = max(ev.width, ev.height) * renderer.size / px
    return renderer.render(Box.square(*ev.centre, side), "zoom")


def reading_curve(adapter, items, sizes=SIZES) -> dict:
    """(kind, px) -> (n, accuracy, mean entropy in nats)."""
    acc, ent = defaultdict(list), defaultdict(list)
    size = adapter.input_size
    for item in items:
        if item.evidence is None:
            continue
        renderer = ViewRenderer(item.image, size)
        views = [evidence_view(renderer, item.evidence, px) for px in sizes]
        with torch.inference_mode():
            logp = adapter.choice_logprobs(views, item.question, item.choices)
        for px, row in zip(sizes, logp):
            acc[item.kind, px].append(item.choices[int(row.argmax())] == item.answer)
            ent[item.kind, px].append(float(answer_entropy(row)))
    return {k: (len(v), float(np.mean(v)), float(np.mean(ent[k]))) for k, v in acc.items()}


def main(split: str = "val", n: int = 400, seed: int = 0, model: str = typer.Option(None, help="default: spote-tiny")):
    from spote.loading import load_adapter

    adapter = load_adapter(model)
    curve = reading_curve(adapter, spotbench(split, n, seed))
    kinds = sorted({k for k, _ in curve})
    print(f"SpotBench {split}, first {n} items, seed {seed}: accuracy / entropy (nats) from one view in which "
          "the evidence spans px pixels of the model's input\n")
    print("| kind | n | " + " | ".join(f"{px} px" for px in SIZES) + " |")
    print("|---|---|" + "---|" * len(SIZES))
    for kind in kinds:
        cells = [curve[kind, px] for px in SIZES]
        print(f"| {kind} | {cells[0][0]} | " + " | ".join(f"{a:.2f} / {h:.2f}" for _, a, h in cells) + " |")


if __name__ == "__main__":
    typer.run(main)
