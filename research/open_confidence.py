"""Which confidence ranks SPOT-E's open answers best? (docs/experiments/open-confidence.md)

    spote bench --split val --n 0 --open-items 100 --seed 0 --methods spote --no-plot --out results/open-confidence/val-seed0.json
    python -m research.open_confidence results/open-confidence/val-seed0.items.jsonl

Candidates for an open answer's ``confidence``, from what one search gives: its tokens' p on the view
it was read from (``token_confidences``: their product, the whole answer's p; their geometric mean;
their least), how many of the places read after the search give the same text (``answer_step`` reads
the agreed window's neighbours too; ``spote bench`` keeps every place's reading in the per-item rows,
``readings``), and the best reward's standout. This tables, per candidate, the AUROC for exact match over
the open rows of ``spote``: how well each ranks right answers above wrong ones, which is what a review
queue sorted by confidence needs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from spote.bench.run import auroc, normalise_code
from spote.core import mean_token_logp

app = typer.Typer(add_completion=False)


def agreement(row: dict) -> float:
    """Share of the places read after the search whose reading is the answer (0 where the whole image
    answered: no place was read)."""
    readings = row.get("readings") or []
    if not readings:
        return 0.0
    answer = normalise_code(row["answer"])
    return sum(normalise_code(text) == answer for text, _ in readings) / len(readings)


def _logps(row: dict) -> list[float]:
    return [math.log(max(p, 1e-300)) for p in row.get("token_confidences") or []]


def _geometric_mean(row: dict) -> float:
    """exp of the mean log p of the answer's tokens (0 for an empty answer)."""
    return math.exp(mean_token_logp(_logps(row)))


def _least(row: dict) -> float:
    return min(row.get("token_confidences") or [0.0])


def _product(row: dict) -> float:
    """p of the whole answer: the product of its tokens' p (0 for an empty answer)."""
    tokens = row.get("token_confidences") or []
    return math.prod(tokens) if tokens else 0.0


SCORES = {
    "product": _product,
    "geometric mean": _geometric_mean,
    "least token p": _least,
    "agreement": agreement,
    "agreement x product": lambda r: agreement(r) * _product(r),
    "agreement x geometric mean": lambda r: agreement(r) * _geometric_mean(r),
    "least token p, the whole image's after a search 0": lambda r: _least(r) if r.get("readings") else 0.0,
    "standout z": lambda r: min(r.get("standout") or 0.0, 1e3),
}


def confidence_table(rows: list[dict]) -> dict:
    """{score: AUROC for exact match} over open rows of method ``spote``, plus n and exact match."""
    rows = [r for r in rows if r.get("open") and r.get("method", "spote") == "spote"]
    correct = [bool(r["correct"]) for r in rows]
    table = {name: auroc([f(r) for r in rows], correct) for name, f in SCORES.items()}
    return {"n": len(rows), "exact_match": sum(correct) / len(rows) if rows else None,
            "places_read": sum(bool(r.get("readings")) for r in rows), "auroc": table}


@app.command()
def main(items: list[Path], out: Path = typer.Option(None, help="also write the table here (JSON)")):
    table = {}
    for path in items:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        table[path.name] = confidence_table(rows)
    text = json.dumps(table, indent=1)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    app()
