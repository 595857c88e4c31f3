"""Does the model see a boat where the road crosses the water?

    python -m research.decoys --split val --n 600

Test for a suspected false-positive source (docs/benchmark.md, the misses). For every aerial scene
with the boat question, windows are centred on the bridge (where the road crosses the water band,
as the generator drew it), on open water away from the road, and, when there is one, on the
boat; each window is sized so that a boat-sized object (19 px, the middle of SpotBench's 14-24 px)
spans ``px`` pixels of the model's input, and is shown as the default rendering shows it (global
view beside the zoom), at 7 horizontal framings from -0.45 to +0.45 window sides off centre. Per
scene the highest P("yes") over the framings counts (what a search for confidence would find);
prints its mean and the share of scenes where it reaches 0.9.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import typer

from spote.bench.scenes import BOAT_SIDE, spotbench
from spote.spotlight import Box, ViewRenderer

SIZES = (16, 24, 32, 48)
BOAT_PX = sum(BOAT_SIDE) // 2  # a middle-sized SpotBench boat, in scene pixels (19)
SHIFTS = (-0.45, -0.3, -0.15, 0.0, 0.15, 0.3, 0.45)  # window centre left/right of the target, in window sides


def locate_bridge(item) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """(bridge centre, open-water centre) from the geometry the generator recorded, or None for a
    scene without road and water (spote.bench.scenes._aerial draws both and keeps them in ``meta``)."""
    if "bridge" not in item.meta:
        return None
    (x, y), w = item.meta["bridge"], item.image.width
    far = w * 0.25 if x > w / 2 else w * 0.75  # the far side of the scene from the road
    return (x, y), (far, y)


def decoy_readings(adapter, items, sizes=SIZES, shifts=SHIFTS) -> dict:
    """(where, px) -> per scene, the highest P("yes") over the horizontal framings ``shifts``: the framing
    a confidence-seeking search would keep. where: "boat", "bridge" or "open water"."""
    out = defaultdict(list)
    for item in items:
        if item.kind != "boat":
            continue
        found = locate_bridge(item)
        if found is None:
            continue
        renderer = ViewRenderer(item.image, adapter.input_size)
        centres = {"bridge": found[0], "open water": found[1]}
        if item.evidence is not None:
            centres = {"boat": Box(*item.evidence).centre}  # a present boat: its own windows only
        keys, views = [], []
        for where, (cx, cy) in centres.items():
            for px in sizes:
                side = BOAT_PX * adapter.input_size / px
                for shift in shifts:
                    keys.append((where, px))
                    views.append(renderer.render(Box.square(cx + shift * side, cy, side), "zoom+context"))
        with torch.inference_mode():
            p_yes = adapter.choice_logprobs(views, item.question, item.choices)[:, item.choices.index("yes")].exp()
        best = defaultdict(float)
        for key, p in zip(keys, p_yes.tolist()):
            best[key] = max(best[key], p)
        for key, p in best.items():
            out[key].append(p)
    return dict(out)


def main(split: str = "val", n: int = 600, seed: int = 0, model: str = typer.Option(None, help="default: spote-tiny")):
    from spote.loading import load_adapter

    readings = decoy_readings(load_adapter(model), spotbench(split, n, seed))
    print(f"SpotBench {split}, first {n} items, seed {seed}: boat question, window centred on ..., sized so a "
          f"{BOAT_PX} px boat spans px of the model input; highest P(yes) over {len(SHIFTS)} framings: mean / share of scenes >= 0.9\n")
    print("| window on | scenes | " + " | ".join(f"{px} px" for px in SIZES) + " |")
    print("|---|---|" + "---|" * len(SIZES))
    for where in ("boat", "bridge", "open water"):
        if (where, SIZES[0]) not in readings:
            continue
        cells = [f"{np.mean(readings[where, px]):.2f} / {np.mean(np.array(readings[where, px]) >= 0.9):.2f}" for px in SIZES]
        print(f"| {where} | {len(readings[where, SIZES[0]])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    typer.run(main)
