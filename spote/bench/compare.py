"""Where does one method beat another? Read a ``spote bench`` run's per-item rows.

    python -m spote.bench.compare results/bench-test-seed0.items.jsonl grid spote
    python -m spote.bench.compare BEFORE.items.jsonl AFTER.items.jsonl spote   # one method, two runs
    python -m spote.bench.compare results/bench-policy-test-seed0.items.jsonl results/gpu/bench-test-seed0-gpu.items.jsonl spote
    python -m spote.bench.compare results/bench-test-seed0.items.jsonl baseline spote --collapse

``--collapse`` keeps the collapse-tempting items only. ``baseline spote --collapse`` asks what an
anchor could save there: it can only keep the whole image's answer, so it can only help where the
baseline was right and spote lost it.

Prints, per question kind, the items only ``a`` got right and those only ``b`` got right, then
every item ``b`` lost, with ``b``'s answer, confidence and forward passes beside ``a``'s. A lost
item with many passes is a search that never found a clear view; one with few passes and high
confidence is a view that convinced the model of the wrong answer.

Only the items both sides answered are compared (a GPU run of the first 300 items against the
CPU run of 600, say); the first line says how many, each side's accuracy on them and how many
answers are the same.
"""

from __future__ import annotations

import json
import sys
from collections import Counter


def disagreements(rows: list[dict], a: str, b: str) -> tuple[Counter, Counter, list[tuple[dict, dict]]]:
    """(kind -> items only a got right, kind -> items only b got right, [(a's row, b's row) b lost])."""
    by = rows_by_method(rows, a, b)
    if not by[a] or not by[b]:
        raise SystemExit(f"rows need both methods {a!r} and {b!r}")
    only_a, only_b, lost = Counter(), Counter(), []
    for i in shared_ids(by[a], by[b]):
        ra, rb = by[a][i], by[b][i]
        if ra["correct"] and not rb["correct"]:
            only_a[ra["kind"]] += 1
            lost.append((ra, rb))
        elif rb["correct"] and not ra["correct"]:
            only_b[ra["kind"]] += 1
    return only_a, only_b, lost


def rows_by_method(rows: list[dict], *methods: str) -> dict:
    """method -> item id -> row."""
    return {m: {r["id"]: r for r in rows if r["method"] == m} for m in methods}


def shared_ids(a: dict, b: dict) -> list[str]:
    """The items both sides answered, in a's order."""
    return [i for i in a if i in b]


def agreement(rows: list[dict], a: str, b: str) -> dict:
    """On the shared items: how many, each side's accuracy, and how many answers are the same."""
    by = rows_by_method(rows, a, b)
    ids = shared_ids(by[a], by[b])
    n = max(len(ids), 1)
    return {"n": len(ids),
            a: sum(by[a][i]["correct"] for i in ids) / n,
            b: sum(by[b][i]["correct"] for i in ids) / n,
            "same_answer": sum(by[a][i]["answer"] == by[b][i]["answer"] for i in ids)}


def two_runs(before: list[dict], after: list[dict], method: str) -> list[dict]:
    """One method's rows from two runs, relabelled ``before`` and ``after`` (a change, or another machine)."""
    return ([{**r, "method": "before"} for r in before if r["method"] == method]
            + [{**r, "method": "after"} for r in after if r["method"] == method])


def collapse_items(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("collapse")]


def main(path: str, a: str, b: str, *flags: str) -> None:
    if set(flags) - {"--collapse"}:
        raise SystemExit(__doc__)
    rows = [json.loads(line) for line in open(path)]
    if a.endswith(".jsonl"):  # two runs of method b
        rows, a, b = two_runs(rows, [json.loads(line) for line in open(a)], b), "before", "after"
    if "--collapse" in flags:
        rows = collapse_items(rows)
        if not rows:
            raise SystemExit(f"{path}: no collapse-tempting items in these rows (--collapse keeps those only)")
    only_a, only_b, lost = disagreements(rows, a, b)
    kinds = sorted(set(only_a) | set(only_b))
    agree = agreement(rows, a, b)
    print(f"{path}: {agree['n']} items answered by both: accuracy {a} {agree[a]:.3f}, {b} {agree[b]:.3f}; "
          f"same answer on {agree['same_answer']}")
    print(f"only {a} right {sum(only_a.values())}, only {b} right {sum(only_b.values())}\n")
    print(f"| kind | only {a} right | only {b} right |\n|---|---|---|")
    for k in kinds:
        print(f"| {k} | {only_a[k]} | {only_b[k]} |")
    print(f"\n| id | kind | evidence present | {b} answer | {b} confidence | {b} passes | {a} answer | {a} confidence |")
    print("|---|---|---|---|---|---|---|---|")
    for ra, rb in sorted(lost, key=lambda p: (p[0]["kind"], p[0]["id"])):
        print(f"| {ra['id']} | {ra['kind']} | {ra['has_evidence']} | {rb['answer']} | {rb['confidence']:.2f} | "
              f"{rb['forward_passes']} | {ra['answer']} | {ra['confidence']:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
