"""Could the loop stop an unsure item early because two views agree? Measured, not assumed.

    python -m research.agreement_exit --split val --n 600 --against results/glance-val600.items.jsonl \
        --show test-3-00463

An easy item the model is unsure of on the whole image and the glance (test-3-00463, a 427 px F read
as F at 0.44 and 0.57) costs its seed ~70 passes of search. A tempting rule: stop after the glance
when the whole image and the glance give the same answer with top probability >= q. This reads both
views of every item as SPOT-E's loop does (the glance on the saliency centroid) and, for the items
that are unsure on both (the ones the rule would act on), counts what each q would stop, how many of
those answers are wrong, and, against a ``spote bench`` run of the same items (``--against``), how
many the search had right. A product-of-views rule (``p_whole * p_glance`` renormalised, clear when
its entropy is <= tau) is counted too: it treats the two views as independent evidence, which they
are not when neither shows the evidence.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import typer

from spote.bench.scenes import make_item, spotbench
from spote.core import PolicyConfig, Reader, answer_entropy, exit_threshold, glance_window, view_mode
from spote.saliency import saliency_map
from spote.spotlight import ViewRenderer

QS = (0.5, 0.6, 0.7)


def two_views(adapter, item, cfg: PolicyConfig) -> dict:
    """The whole image and the glance, read as the loop reads them: probabilities over the choices."""
    renderer = ViewRenderer(item.image, adapter.input_size)
    reader = Reader(adapter, item.question, item.choices)
    whole = reader.read([[renderer.global_view]])[0]
    look = glance_window(item.image, cfg.glance_side, saliency_map(item.image))
    glance = reader.read([renderer.render(look, view_mode(cfg, adapter))])[0]
    return {"id": item.id, "kind": item.kind, "easy": item.easy, "answer": item.answer, "choices": list(item.choices),
            "tau": exit_threshold(cfg, len(item.choices)), "h_whole": whole.entropy, "h_glance": glance.entropy,
            "p_whole": [float(p) for p in whole.logp.exp()], "p_glance": [float(p) for p in glance.logp.exp()]}


def agree_exit(row: dict, q: float) -> bool:
    """Same answer on both views, each with top probability >= q."""
    return (int(np.argmax(row["p_whole"])) == int(np.argmax(row["p_glance"]))
            and min(max(row["p_whole"]), max(row["p_glance"])) >= q)


def product_exit(row: dict) -> bool:
    """The renormalised product of the two views' distributions is clear (H <= tau)."""
    prod = torch.tensor(row["p_whole"], dtype=torch.float64) * torch.tensor(row["p_glance"], dtype=torch.float64)
    return float(answer_entropy(torch.log(prod / prod.sum()).clamp_min(-1e4))) <= row["tau"]


def unsure_on_both(row: dict) -> bool:
    """What the rule could act on: neither the whole image nor the glance stops the loop today."""
    return row["h_whole"] > row["tau"] and row["h_glance"] > row["tau"]


def answer_of(row: dict) -> str:
    """The answer a stop after the glance gives: the product's top choice (the shared one when both agree)."""
    return row["choices"][int(np.argmax(np.asarray(row["p_whole"]) * np.asarray(row["p_glance"])))]


def tally(rows: list[dict], rule, searched: dict | None = None) -> dict:
    """Items the rule stops among those unsure on both views; wrong answers; the search's verdict on them."""
    stopped = [r for r in rows if unsure_on_both(r) and rule(r)]
    out = {"stopped": len(stopped), "easy": sum(r["easy"] for r in stopped),
           "wrong": sum(answer_of(r) != r["answer"] for r in stopped)}
    if searched is not None:
        known = [r for r in stopped if r["id"] in searched]
        out["search_right_rule_wrong"] = sum(searched[r["id"]]["correct"] and answer_of(r) != r["answer"] for r in known)
        out["rule_right_search_wrong"] = sum(answer_of(r) == r["answer"] and not searched[r["id"]]["correct"] for r in known)
        out["passes_saved"] = sum(searched[r["id"]]["forward_passes"] - 2 for r in known)
    return out


def item_from_id(item_id: str):
    split, seed, index = item_id.split("-")
    return make_item(int(seed), split, int(index))


def main(split: str = "val", n: int = 600, seed: int = 0, model: str = typer.Option(None, help="default: spote-tiny"),
         against: Path = typer.Option(None, help="a `spote bench` items.jsonl of the same items (its spote rows)"),
         show: list[str] = typer.Option([], help="also read these benchmark items, e.g. test-3-00463"),
         out: Path = typer.Option(None, help="write the rows and the table as JSON")):
    from tqdm import tqdm

    from spote.loading import load_adapter

    adapter, cfg = load_adapter(model), PolicyConfig(seed=seed)
    rows = [two_views(adapter, item, cfg) for item in tqdm(spotbench(split, n, seed), total=n, desc=f"{split} items")]
    searched = None
    if against:
        searched = {r["id"]: r for r in map(json.loads, open(against)) if r["method"] == "spote"}
    rules = {f"agree, p >= {q}": (lambda r, q=q: agree_exit(r, q)) for q in QS}
    rules["product of the views clear"] = product_exit
    table = {name: tally(rows, rule, searched) for name, rule in rules.items()}
    print(f"{split} seed {seed}, {n} items: {sum(map(unsure_on_both, rows))} unsure on the whole image and the glance")
    print("| rule | stops | easy | wrong | search right, rule wrong | rule right, search wrong | passes saved per item |")
    print("|---|---|---|---|---|---|---|")
    for name, t in table.items():
        extra = (f"{t['search_right_rule_wrong']} | {t['rule_right_search_wrong']} | {t['passes_saved'] / n:.1f}"
                 if searched is not None else "- | - | -")
        print(f"| {name} | {t['stopped']} | {t['easy']} | {t['wrong']} | {extra} |")
    shown = [two_views(adapter, item_from_id(i), cfg) for i in show]
    for r in shown:
        fmt = lambda p: " ".join(f"{c}:{x:.2f}" for c, x in zip(r["choices"], p))  # noqa: E731
        print(f"{r['id']} (answer {r['answer']}, tau {r['tau']:.2f}): whole {fmt(r['p_whole'])} (H {r['h_whole']:.2f}); "
              f"glance {fmt(r['p_glance'])} (H {r['h_glance']:.2f}); agree-exit at "
              f"{[q for q in QS if agree_exit(r, q)] or 'no q'}; product exit {product_exit(r)}")
    if out:
        Path(out).write_text(json.dumps({"split": split, "n": n, "seed": seed, "table": table, "rows": rows,
                                         "shown": shown}, indent=1))


if __name__ == "__main__":
    typer.run(main)
