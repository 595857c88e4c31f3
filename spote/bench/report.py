"""Markdown tables from ``spote bench`` JSON files, for docs/benchmark.md (so its numbers are re-derivable).

    python -m spote.bench.report results/bench-test-seed0.json [more.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def table(report: dict) -> str:
    head = (f"SpotBench `{report['split']}`, n={report['n_items']}, seed={report['seed']}, corrupt={report.get('corrupt', 'none')}, "
            f"model {report['model']}\n\n")
    rows = ["| method | accuracy | passes/item | s/item | evidence hit | acc. collapse items | passes (easy) | AUROC |",
            "|---|---|---|---|---|---|---|---|"]
    for m, s in report["methods"].items():
        rows.append(f"| {m} | {_f(s['accuracy'])} | {_f(s['forward_passes_mean'], 1)} | {_f(s['seconds_per_item'])} | "
                    f"{_f(s['evidence_hit_rate'])} | {_f(s['accuracy_collapse_items'])} | {_f(s['forward_passes_mean_easy'], 2)} | "
                    f"{_f(s['auroc'])} |")
    opened = {m: s["open"] for m, s in report["methods"].items() if (s.get("open") or {}).get("n")}
    if opened:
        rows += ["", f"Open items (n={next(iter(opened.values()))['n']}):", "",
                 "| method | exact match | char. accuracy | anchors kept | exact match, collapse items | passes/item | AUROC |",
                 "|---|---|---|---|---|---|---|"]
        for m, o in opened.items():
            rows.append(f"| {m} | {_f(o['exact_match'])} | {_f(o['char_accuracy'])} | {_f(o['anchor_preservation'])} | "
                        f"{_f(o['exact_match_collapse_items'])} | {_f(o['forward_passes_mean'], 1)} | {_f(o['auroc'])} |")
    kinds = sorted({k for s in report["methods"].values() for k in s.get("accuracy_by_kind", {})})
    if kinds:
        rows += ["", "| method | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
        for m, s in report["methods"].items():
            rows.append(f"| {m} | " + " | ".join(_f(s.get("accuracy_by_kind", {}).get(k), 2) for k in kinds) + " |")
    return head + "\n".join(rows)


def targets(report: dict) -> list[str]:
    """The issue's targets, checked on one report (those whose methods and items it contains)."""
    m = report["methods"]
    out = []

    def check(name, ok, detail):
        out.append(f"- [{'x' if ok else ' '}] {name}: {detail}")

    out += open_targets(report)
    if any(s["accuracy"] is None for s in m.values()):  # open items only
        return out
    if {"spote", "oracle", "baseline"} <= set(m):
        s, o, b = m["spote"]["accuracy"], m["oracle"]["accuracy"], m["baseline"]["accuracy"]
        check("spote >= 0.85 x oracle", s >= 0.85 * o, f"{s:.3f} vs {0.85 * o:.3f}")
        need = 0.15 if report.get("corrupt", "none") != "none" else 0.25
        check(f"spote >= baseline + {int(need * 100)} points", s >= b + need, f"{s:.3f} vs {b + need:.3f}")
    if {"spote", "grid"} <= set(m):
        s, g = m["spote"], m["grid"]
        check("spote within 2 points of grid", s["accuracy"] >= g["accuracy"] - 0.02, f"{s['accuracy']:.3f} vs {g['accuracy']:.3f}")
        check("spote passes <= 40% of grid", s["forward_passes_mean"] <= 0.4 * g["forward_passes_mean"],
              f"{s['forward_passes_mean']:.1f} vs {0.4 * g['forward_passes_mean']:.1f}")
    for peer in ("vicrop", "api", "random"):
        if {"spote", peer} <= set(m):
            check(f"spote above {peer}", m["spote"]["accuracy"] > m[peer]["accuracy"],
                  f"{m['spote']['accuracy']:.3f} vs {m[peer]['accuracy']:.3f}")
    if {"spote", "naive_entropy"} <= set(m):
        a, n = m["spote"]["accuracy_collapse_items"], m["naive_entropy"]["accuracy_collapse_items"]
        if a is not None and n is not None:
            check("spote >= naive_entropy + 5 points on collapse items", a >= n + 0.05, f"{a:.3f} vs {n:.3f}")
    if "spote" in m:
        e = m["spote"]["forward_passes_mean_easy"]
        if e is not None:
            check("spote passes on easy items <= 1.5", e <= 1.5, f"{e:.2f}")
        if m["spote"]["auroc"] is not None:
            check("spote AUROC >= 0.8", m["spote"]["auroc"] >= 0.8, f"{m['spote']['auroc']:.3f}")
    return out


def open_targets(report: dict) -> list[str]:
    """Open items: spote's exact match >= 0.85 x the oracle's and >= the whole image's + 25 points;
    spote >= naive_entropy + 5 points on the collapse-tempting ones."""
    opened = {k: v["open"] for k, v in report["methods"].items() if (v.get("open") or {}).get("n")}
    lines: list[str] = []

    def add(name, ok, detail):
        lines.append(f"- [{'x' if ok else ' '}] open items: {name}: {detail}")

    if {"spote", "oracle", "baseline"} <= set(opened):
        s, o, b = (opened[k]["exact_match"] for k in ("spote", "oracle", "baseline"))
        add("spote >= 0.85 x oracle (exact match)", s >= 0.85 * o, f"{s:.3f} vs {0.85 * o:.3f}")
        add("spote >= baseline + 25 points (exact match)", s >= b + 0.25, f"{s:.3f} vs {b + 0.25:.3f}")
    if {"spote", "naive_entropy"} <= set(opened):
        a, n = opened["spote"]["exact_match_collapse_items"], opened["naive_entropy"]["exact_match_collapse_items"]
        if a is not None and n is not None:
            add("spote >= naive_entropy + 5 points on collapse items", a >= n + 0.05, f"{a:.3f} vs {n:.3f}")
    return lines


def main(paths: list[str]) -> None:
    for p in paths:
        report = json.loads(Path(p).read_text())
        print(f"### `{p}`\n\n{table(report)}\n\nTargets:\n" + "\n".join(targets(report)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
