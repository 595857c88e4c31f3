"""Is the saliency map's strongest peak on the evidence? Per kind, at two working sizes.

    python -m research.saliency_peaks --split val --n 600 --seeds 0,1 --sizes 256,512

For every SpotBench item with evidence that is not easy (large evidence stops on the whole image),
the rank of the first of the 32 strongest peaks of ``spote.saliency.saliency_map`` that falls inside
the evidence box (4 px margin), and the share of items whose evidence holds the strongest peak, one of
the 4 strongest, one of the 8 (``PolicyConfig.saliency_peaks``). Model-free: no forward pass.
"""

from __future__ import annotations

import time

import numpy as np
import typer

from spote.bench.scenes import spotbench
from spote.saliency import saliency_map, saliency_peaks


def peak_rank(item, size: int, k: int = 32, margin: int = 4) -> int:
    """Index of the strongest peak inside the evidence box, or ``k`` when none of the ``k`` strongest is."""
    x0, y0, x1, y1 = item.evidence
    peaks = saliency_peaks(saliency_map(item.image, size), item.image.size, k)
    return next((i for i, (px, py) in enumerate(peaks)
                 if x0 - margin <= px <= x1 + margin and y0 - margin <= py <= y1 + margin), k)


def main(split: str = "val", n: int = 600, seeds: str = "0,1", sizes: str = "256,512"):
    sizes_ = [int(s) for s in sizes.split(",")]
    ranks: dict[int, dict[str, list[int]]] = {s: {} for s in sizes_}
    seconds = dict.fromkeys(sizes_, 0.0)
    for seed in (int(s) for s in seeds.split(",")):
        for item in spotbench(split, n, seed):
            if item.evidence is None or item.easy:
                continue
            for s in sizes_:
                t0 = time.perf_counter()
                ranks[s].setdefault(item.kind, []).append(peak_rank(item, s))
                seconds[s] += time.perf_counter() - t0
    kinds = sorted(ranks[sizes_[0]])
    print(f"{split} seeds {seeds}, n={n} each; share of items whose evidence holds the strongest peak / one of 4 / one of 8\n")
    print("| size (px) | ms/item | " + " | ".join(f"{k} (n={len(ranks[sizes_[0]][k])})" for k in kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for s in sizes_:
        cells = []
        for k in kinds:
            r = np.array(ranks[s][k])
            cells.append(f"{np.mean(r < 1):.2f} / {np.mean(r < 4):.2f} / {np.mean(r < 8):.2f}")
        n_items = sum(len(v) for v in ranks[s].values())
        print(f"| {s} | {1000 * seconds[s] / n_items:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    typer.run(main)
