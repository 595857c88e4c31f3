"""Which exit threshold lets easy items stop without stopping hard ones? Chosen on val, not test.

    python -m research.exit_threshold --split val --n 600

Answers every item from the whole image once (the first pass of every SPOT-E run) and, for a range
of thresholds, counts the easy items that would stop there and the hard ones that would stop too
(and how many of those wrongly). Two rules, both through ``spote.core.exit_threshold``: the raw
answer entropy in nats (``PolicyConfig.exit_entropy``), and the entropy divided by ln(number of
choices) (``exit_entropy_per_ln_k``, the default), which asks the same certainty of
a ten-way digit as of a yes/no (0.35 nats is 0.50 of a yes/no's maximum but 0.15 of a digit's).
"""

from __future__ import annotations

import numpy as np
import torch
import typer

from spote.bench.scenes import spotbench
from spote.core import PolicyConfig, answer_entropy, exit_threshold
from spote.spotlight import ViewRenderer

RAW = (0.2, 0.35, 0.5, 0.6)
NORMALISED = (0.2, 0.3, 0.4, 0.5)


def whole_image_rows(adapter, items) -> list[tuple[bool, bool, float, int]]:
    """(easy, correct, entropy in nats, number of choices) per item."""
    rows = []
    for item in items:
        view = ViewRenderer(item.image, adapter.input_size).global_view
        with torch.inference_mode():
            logp = adapter.choice_logprobs([[view]], item.question, item.choices)[0]
        rows.append((item.easy, item.choices[int(logp.argmax())] == item.answer, float(answer_entropy(logp)),
                     len(item.choices)))
    return rows


def stops(rows, tau: float, normalised: bool) -> dict:
    easy = np.array([r[0] for r in rows])
    ok = np.array([r[1] for r in rows])
    cfg = PolicyConfig(exit_entropy=tau, exit_entropy_per_ln_k=tau if normalised else None)
    s = np.array([h <= exit_threshold(cfg, k) for _, _, h, k in rows])  # the loop's own stopping rule
    return {"easy_stop_rate": float(s[easy].mean()) if easy.any() else None,
            "hard_stopped": int((s & ~easy).sum()), "hard_stopped_wrong": int((s & ~easy & ~ok).sum())}


def main(split: str = "val", n: int = 600, seed: int = 0, model: str = typer.Option(None, help="default: spote-tiny")):
    from spote.loading import load_adapter

    rows = whole_image_rows(load_adapter(model), spotbench(split, n, seed))
    print(f"SpotBench {split}, first {n} items, seed {seed}: {sum(r[0] for r in rows)} easy\n")
    print("| rule | threshold | easy items stopping | hard items stopping (wrong) |\n|---|---|---|---|")
    for normalised, taus in ((False, RAW), (True, NORMALISED)):
        for tau in taus:
            s = stops(rows, tau, normalised)
            print(f"| {'H / ln K' if normalised else 'H (nats)'} | {tau} | {s['easy_stop_rate']:.2f} | "
                  f"{s['hard_stopped']} ({s['hard_stopped_wrong']}) |")


if __name__ == "__main__":
    typer.run(main)
