"""Which of SPOT-E's open readings should answer? (docs/experiments/agreed-answers.md#which-reading)

    python -m research.answer_choice run --n 100 --seed 0 --out results/agreed-answers/choice-val-seed0.json
    python -m research.answer_choice score results/agreed-answers/choice-val-seed0.json ...

After a search on an open item SPOT-E reads the code at the agreed window and at its four neighbours
(``core.answer_neighbours``), each jointly from shifted copies, and answers with the reading surest per
token (``core.surest_reading``). ``run`` runs SPOT-E at ``BEFORE_CENTRING`` on open items and keeps every
reading (``SpotResult.answer_readings``: window, text, per-token log p). ``score`` then picks an
answer from the same readings under each rule of ``RULES`` and reports exact match and character
accuracy per rule and per variant, so that every rule is judged on the same searches:

- ``surest``: the highest mean token log p (the default's rule);
- ``mbr``: minimum Bayes risk over the readings (Kumar and Byrne, 2004): the reading c_i that
  minimises sum_j w_j (1 - s(c_i, c_j)), s the normalised Levenshtein similarity and w_j the reading's
  per-token geometric mean p, exp(mean_t log p_t): the reading most others, weighted by how sure they
  are, nearly agree with;
- ``mbr_uniform``: the same with every w_j = 1;
- ``vote``: the text most readings give, ties to the surest;
- ``agreed``: the agreed window's own reading;
- ``any``: the best any reading reads (exact match where one gives the gold, the highest character
  accuracy among them): what a perfect rule would read; not a rule.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import typer
from rapidfuzz.distance import Levenshtein
from tqdm import tqdm

from spote.bench.run import char_accuracy, exact_match, normalise_code
from spote.bench.scenes import open_items
from spote.core import PolicyConfig, mean_token_logp, spote, surest_reading
from spote.loading import load_adapter
from spote.spotlight import Box

# The open-answer reading the agreed-answers studies ran at: the defaults before the agreed window was centred
# (docs/experiments/agreed-answers.md#centring): not centred, 9 shifted copies, the 4 neighbours read too
BEFORE_CENTRING = {"answer_centring": 0.0, "answer_rescale": 0.0, "answer_step": 0.15, "standout_z": 0.0}

app = typer.Typer(add_completion=False)


def _mbr(readings, weighted: bool) -> int:
    texts = [normalise_code(t) for t, _ in readings]
    w = [float(np.exp(mean_token_logp(lp))) if weighted else 1.0 for _, lp in readings]
    # risk_i = sum_j w_j (1 - s(c_i, c_j)); ties go to the surest reading
    risk = [sum(wj * (1 - Levenshtein.normalized_similarity(ti, tj)) for tj, wj in zip(texts, w)) for ti in texts]
    order = sorted(range(len(readings)), key=lambda i: (round(risk[i], 9), -mean_token_logp(readings[i][1])))
    return order[0]


def _vote(readings) -> int:
    counts = Counter(normalise_code(t) for t, _ in readings)
    top = max(counts.values())
    return max((i for i, (t, _) in enumerate(readings) if counts[normalise_code(t)] == top),
               key=lambda i: mean_token_logp(readings[i][1]))


RULES = {"surest": lambda r: surest_reading([lp for _, lp in r]), "mbr": lambda r: _mbr(r, True), "mbr_uniform": lambda r: _mbr(r, False),
         "vote": _vote, "agreed": lambda r: 0}


def searched_agreed_windows(paths: list[Path]):
    """(item, variant, agreed window) for each item of ``run`` files that a search answered: its first
    reading's window, in source pixels. Files without "searched" read 5 places after a search and one on
    a clear window, so there more than one reading marks a search."""
    for p in paths:
        d = json.loads(p.read_text())
        items = {it.id: it for it in open_items(d["split"], d["n"], d["seed"])}
        for r in d["items"]:
            if r.get("searched", len(r["readings"]) > 1):
                yield items[r["id"]], r["variant"], Box(*r["readings"][0]["window"])


@app.command()
def run(model: str = typer.Option("spote-tiny", help="weights that spell codes (default: the shipped ones)"),
        n: int = 100, seed: int = 0, split: str = "val",
        out: Path = Path("results/agreed-answers/choice-val-seed0.json")):
    adapter = load_adapter(model)
    cfg = replace(PolicyConfig(), seed=seed, **BEFORE_CENTRING)
    rows = []
    for item in tqdm(list(open_items(split, n, seed)), desc="open items"):
        res = spote(adapter, item.image, item.question, None, cfg)
        readings = [{"window": w, "text": t, "logprobs": [round(x, 5) for x in lp]}
                    for w, t, lp in (res.answer_readings or [])]
        rows.append({"id": item.id, "gold": item.answer, "variant": item.meta["variant"], "answer": res.answer,
                     "passes": res.forward_passes, "readings": readings,
                     "searched": res.answer_from_neighbour is not None})  # read where the best windows agree
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "split": split, "seed": seed, "n": n, "items": rows}, indent=1))
    print(json.dumps(score_rows(rows)["all"], indent=1))


def score_rows(rows: list[dict]) -> dict:
    """Per rule (and ``any``), exact match and character accuracy over ``rows``, overall and per variant;
    an item with no readings (answered on the whole image) keeps its answer."""
    got = defaultdict(lambda: defaultdict(list))
    for r in rows:
        readings = [(x["text"], x["logprobs"]) for x in r["readings"]]
        for name, rule in RULES.items():
            answer = readings[rule(readings)][0] if readings else r["answer"]
            for key in ("all", r["variant"]):
                got[key][name].append((exact_match(answer, r["gold"]), char_accuracy(answer, r["gold"])))
        texts = [t for t, _ in readings] or [r["answer"]]
        best = (any(exact_match(t, r["gold"]) for t in texts), max(char_accuracy(t, r["gold"]) for t in texts))
        for key in ("all", r["variant"]):
            got[key]["any"].append(best)
    return summarise(got)


def summarise(got: dict[str, dict[str, list[tuple[bool, float]]]]) -> dict:
    """{group: {column: [(exact match, character accuracy) per item]}} -> {group: {column: {"n",
    "exact_match", "char_accuracy"}}}, the two as means."""
    return {key: {name: {"n": len(v), "exact_match": float(np.mean([e for e, _ in v])),
                         "char_accuracy": float(np.mean([c for _, c in v]))} for name, v in cols.items()}
            for key, cols in got.items()}


@app.command()
def score(paths: list[Path]):
    rows = [r for p in paths for r in json.loads(p.read_text())["items"]]
    table = score_rows(rows)
    names = [*RULES, "any"]
    print("| | n | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for key in ["all", *sorted(k for k in table if k != "all")]:
        n = table[key]["surest"]["n"]
        print(f"| {key} | {n} | " + " | ".join(f"{table[key][m]['exact_match']:.3f}" for m in names) + " |")


if __name__ == "__main__":
    app()
