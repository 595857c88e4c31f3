"""Where to centre an open answer's window: the agreed window moved onto the salient pixels near it
(docs/experiments/agreed-answers.md#centring)

    python -m research.answer_centring iou results/agreed-answers/choice-val-seed0.json \
        results/agreed-answers/choice-val-seed1.json --out results/agreed-answers/centring-iou-val.json

SPOT-E reads an open answer where its best windows agree (``core.answer_window``). That window has
about the field's side but sits about a fifth of it off the oracle's close-up (``research.answer_reading
places``). ``iou`` takes the agreed windows recorded by ``research.answer_choice run`` (searches made
before centring existed: their first reading's window is the agreed window) and moves each with
``core.answer_centred`` for every ``reach`` (the square searched, in window sides) and ``top`` (the
share of its most salient pixels that places the window), then gives the IoU with the oracle's close-up
(``research.open_reading.oracle_box``): its median and mean, and the share of windows above 0.8, per
variant and over the variants whose agreed window lies on the field (small, split, neighbour). No
model runs: the saliency map and the boxes are all it takes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import typer

from research.answer_choice import searched_agreed_windows
from research.open_reading import oracle_box
from spote.core import answer_centred
from spote.saliency import saliency_map
from spote.spotlight import Box

app = typer.Typer(add_completion=False)

REACHES = (1.0, 1.25, 1.5, 2.0)
TOPS = (0.03, 0.1, 0.2)
ON_FIELD = ("small", "split", "neighbour")  # large: the agreed window is a ninth of the field; mixed: elsewhere


def centring_ious(item, agreed: Box, input_size: int = 64) -> dict[str, float]:
    """IoU with the oracle's close-up of ``agreed`` (key "agreed") and of it centred at every reach and top
    (key "reach/top")."""
    oracle, sal = oracle_box(item, input_size), saliency_map(item.image)
    out = {"agreed": agreed.iou(oracle)}
    for reach in REACHES:
        for top in TOPS:
            out[f"{reach:g}/{top:g}"] = answer_centred(agreed, sal, reach, *item.image.size, top=top).iou(oracle)
    return out


def summary(ious: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per key: n, median and mean IoU, and the share above 0.8."""
    keys = ious[0].keys() if ious else []
    return {k: {"n": len(ious), "median": float(np.median([x[k] for x in ious])),
                "mean": float(np.mean([x[k] for x in ious])),
                "above_0.8": float(np.mean([x[k] > 0.8 for x in ious]))} for k in keys}


@app.callback()
def main():
    """Centring an open answer's window (a command per study, so that more can join)."""


@app.command()
def iou(paths: list[Path], out: Path = typer.Option(None, help="where to write the table as JSON")):
    """The IoU table over the searched items of ``research.answer_choice run`` files."""
    by = defaultdict(list)
    for item, variant, agreed in searched_agreed_windows(paths):
        got = centring_ious(item, agreed)
        by[variant].append(got)
        if variant in ON_FIELD:
            by["on field"].append(got)
    table = {v: summary(x) for v, x in sorted(by.items())}
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"files": [str(p) for p in paths], "table": table}, indent=1))
    print("| reach / top | " + " | ".join(f"{v} ({len(by[v])})" for v in table) + " |")
    print("|---|" + "---|" * len(table))
    for k in next(iter(table.values())):
        print(f"| {k} | " + " | ".join(f"{table[v][k]['median']:.2f} ({table[v][k]['above_0.8']:.2f})" for v in table) + " |")


if __name__ == "__main__":
    app()
