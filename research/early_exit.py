"""Why do easy items not stop after one pass? Read a ``spote bench`` run's per-item rows.

    python -m research.early_exit results/bench-test-seed0.items.jsonl

Prints, for the easy items (large evidence), how sure the whole-image answer is per question kind,
and a what-if: had SPOT-E stopped whenever the whole-image answer's top choice reached confidence
``c``, what accuracy and mean forward passes would the run have had (spote's own rows elsewhere).
No model runs: it only re-reads the rows, so it tells whether a looser stop rule or a better whole-
image reader (a retrained model) is what early exit lacks.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np


def load(path: str) -> tuple[dict, dict]:
    rows = [json.loads(line) for line in open(path)]
    by = defaultdict(dict)
    for r in rows:
        by[r["method"]][r["id"]] = r
    if "baseline" not in by or "spote" not in by:
        raise SystemExit(f"{path}: needs the baseline and spote methods' rows")
    return by["baseline"], by["spote"]


def easy_by_kind(base: dict, spote: dict) -> dict:
    """kind -> (n easy items, mean whole-image confidence, whole-image accuracy, spote items stopped at 1 pass)."""
    out = {}
    for kind in sorted({r["kind"] for r in spote.values() if r["easy"]}):
        ids = [i for i, r in spote.items() if r["easy"] and r["kind"] == kind]
        out[kind] = (len(ids), float(np.mean([base[i]["confidence"] for i in ids])),
                     float(np.mean([base[i]["correct"] for i in ids])), sum(spote[i]["forward_passes"] == 1 for i in ids))
    return out


def exit_what_if(base: dict, spote: dict, c: float) -> tuple[float, float, float]:
    """(accuracy, mean passes, mean passes on easy items) had every item with whole-image confidence >= c stopped."""
    acc, passes, easy = [], [], []
    for i, s in spote.items():
        stop = base[i]["confidence"] >= c or s["forward_passes"] == 1
        acc.append(base[i]["correct"] if stop and s["forward_passes"] != 1 else s["correct"])
        passes.append(1 if stop else s["forward_passes"])
        if s["easy"]:
            easy.append(passes[-1])
    return float(np.mean(acc)), float(np.mean(passes)), float(np.mean(easy)) if easy else float("nan")


def main(paths: list[str]) -> None:
    for path in paths:
        base, spote = load(path)
        print(f"{path}: {len(spote)} items, {sum(r['easy'] for r in spote.values())} easy")
        print("| kind | easy items | whole-image confidence | whole-image accuracy | spote stopped at 1 pass |")
        print("|---|---|---|---|---|")
        for kind, (n, conf, acc, one) in easy_by_kind(base, spote).items():
            print(f"| {kind} | {n} | {conf:.2f} | {acc:.2f} | {one} |")
        print("\n| stop if whole-image confidence >= | accuracy | passes/item | passes (easy) |\n|---|---|---|---|")
        for c in (0.6, 0.7, 0.8, 0.9):
            a, p, e = exit_what_if(base, spote, c)
            print(f"| {c} | {a:.3f} | {p:.1f} | {e:.1f} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:] or ["results/bench-test-seed0.items.jsonl"])
