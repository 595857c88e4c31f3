"""Where and how should SPOT-E read an open answer once its search is over?
(docs/experiments/agreed-answers.md)

    python -m research.agreed_answers run --n 100 --seed 0 --out results/agreed-answers/val-seed0.json
    python -m research.agreed_answers shifts --n 100 --seed 0 --out results/agreed-answers/oracle-shifts-val-seed0.json

For each open item, SPOT-E runs at the defaults before centring (``answer_choice.BEFORE_CENTRING``)
but for ``answer_top`` (how many of the best-rewarded windows locate the answer's window:
``core.answer_window``) and ``answer_grid`` (a g x g grid of shifted copies that decode the answer
jointly: ``core.answer_windows``), once per pair of ``--tops`` and ``--grids``; ``answer_top = 1,
answer_grid = 1`` is one generation on the best window. The
oracle's close-up is read plainly (``baselines.run_oracle``, the benchmark's ``oracle``) and jointly
off the same grid of shifted copies (``oracle_agreed``), and the whole image plainly. Reports exact
match, character accuracy and forward passes per setting, and the median IoU of the answer's window
with the oracle's close-up.

``shifts`` reads only the oracle's close-up, jointly off a 3 x 3 grid of copies at each of
``--shifts`` (window sides; 0: the close-up alone, read plainly): how far apart the copies should be.

``neighbours`` runs SPOT-E at those defaults but for ``answer_step``, once per value of ``--steps``: the
agreed window and its four neighbours moved by that share of its side are each read jointly, and the
reading surest per token answers (``core.answer_neighbours``; 0: the agreed window alone, its search
then has the neighbours' passes). One more row, ``step_0_short``, reads the agreed window alone after a
search as short as the neighbours leave (the budget less their 36 passes): what the shorter search
costs by itself. ``--policy-seed`` draws the search's random stream apart from the items (by default the
two are the same seed, as in the benchmark): the spread over policy seeds on one item set is the noise
a single run's figures carry. ``run`` keeps ``answer_step`` at 0: it studies the agreed window alone.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from tqdm import tqdm

from research.answer_choice import BEFORE_CENTRING
from research.open_reading import oracle_box
from spote.baselines import run_oracle
from spote.bench.run import char_accuracy, exact_match
from spote.bench.scenes import open_items
from spote.core import PolicyConfig, answer_windows, spote, view_mode
from spote.loading import load_adapter
from spote.spotlight import Box, ViewRenderer

app = typer.Typer(add_completion=False)


def setting_name(top: int, grid: int) -> str:
    return f"top{top}_grid{grid}"


def summarise(rows: list[dict]) -> dict:
    """Per method or setting: exact match, character accuracy, mean forward passes, median IoU of the
    answer's window with the oracle's close-up (None where the answer is the whole image's)."""
    out = {}
    for name in rows[0]["answers"]:
        got = [(r["answers"][name], r["gold"]) for r in rows]
        ious = [r["iou"][name] for r in rows if r["iou"].get(name) is not None]
        out[name] = {"exact_match": float(np.mean([exact_match(a, g) for a, g in got])),
                     "char_accuracy": float(np.mean([char_accuracy(a, g) for a, g in got])),
                     "forward_passes_mean": float(np.mean([r["passes"][name] for r in rows])),
                     "window_iou_median": float(np.median(ious)) if ious else None}
    return out


@app.command()
def run(model: str = typer.Option("spote-tiny", help="weights that spell codes (default: the shipped ones)"),
         n: int = 100, seed: int = 0, split: str = "val",
         tops: str = typer.Option("1,4,8,16", help="answer_top values, comma-separated"),
         grids: str = typer.Option("1,3", help="answer_grid values, comma-separated"),
         out: Path = Path("results/agreed-answers/val-seed0.json")):
    adapter = load_adapter(model)
    settings = [(int(t), int(g)) for t in tops.split(",") for g in grids.split(",")]
    base_cfg = replace(PolicyConfig(), seed=seed, **{**BEFORE_CENTRING, "answer_step": 0.0})
    oracle_cfg = replace(base_cfg, answer_grid=max(g for _, g in settings))  # the oracle read jointly as the widest grid
    mode = view_mode(base_cfg, adapter)
    rows = []
    for item in tqdm(list(open_items(split, n, seed)), desc="open items"):
        renderer = ViewRenderer(item.image, adapter.input_size)
        oracle = oracle_box(item, adapter.input_size)
        answers, passes, iou = {}, {}, {}
        p0 = adapter.forward_passes
        answers["whole_image"] = adapter.generate([renderer.global_view], item.question).text
        passes["whole_image"], iou["whole_image"] = adapter.forward_passes - p0, None
        for top, grid in settings:
            cfg = replace(base_cfg, answer_top=top, answer_grid=grid)
            res = spote(adapter, item.image, item.question, None, cfg)
            name = setting_name(top, grid)
            answers[name], passes[name] = res.answer, res.forward_passes
            iou[name] = Box(*res.evidence_box).iou(oracle) if res.evidence_box else None
        orc = run_oracle(adapter, item.image, item.question, None, base_cfg, evidence=item.evidence)
        answers["oracle"], passes["oracle"], iou["oracle"] = orc.answer, orc.forward_passes, 1.0
        p0 = adapter.forward_passes
        views = [renderer.render(w, mode) for w in answer_windows(oracle, oracle_cfg, *item.image.size)]
        answers["oracle_agreed"] = adapter.generate_agreed(views, item.question).text
        passes["oracle_agreed"], iou["oracle_agreed"] = adapter.forward_passes - p0, 1.0
        rows.append({"id": item.id, "gold": item.answer, "variant": item.meta["variant"],
                     "answers": answers, "passes": passes, "iou": iou})
    summary = summarise(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "split": split, "seed": seed, "n": n, "settings": settings,
                               "summary": summary, "items": rows}, indent=1))
    for name, s in summary.items():
        iou_text = "-" if s["window_iou_median"] is None else f"{s['window_iou_median']:.2f}"
        print(f"{name:16s} exact {s['exact_match']:.3f}  chars {s['char_accuracy']:.3f}  "
              f"passes {s['forward_passes_mean']:.1f}  window IoU {iou_text}")


@app.command()
def neighbours(model: str = typer.Option("spote-tiny", help="weights that spell codes (default: the shipped ones)"),
               n: int = 100, seed: int = 0, split: str = "val",
               steps: str = typer.Option("0,0.1,0.15,0.2", help="answer_step values (window sides), comma-separated"),
               policy_seed: Annotated[Optional[int], typer.Option(help="the search's random seed (PolicyConfig.seed; "
                                                                      "default: --seed, as the benchmark sets it)")] = None,
               out: Path = Path("results/agreed-answers/neighbours-val-seed0.json")):
    adapter = load_adapter(model)
    values = [float(v) for v in steps.split(",")]
    policy_seed = seed if policy_seed is None else policy_seed
    base_cfg = replace(PolicyConfig(), seed=policy_seed, **BEFORE_CENTRING)
    rows = []
    for item in tqdm(list(open_items(split, n, seed)), desc="open items"):
        oracle = oracle_box(item, adapter.input_size)
        answers, passes, iou, moved = {}, {}, {}, {}
        for v, short in [(v, False) for v in values] + [(0.0, True)]:
            cfg = replace(base_cfg, answer_step=v, budget=base_cfg.budget - (4 * base_cfg.answer_grid ** 2 if short else 0))
            res = spote(adapter, item.image, item.question, None, cfg)
            name = f"step_{v:g}" + ("_short" if short else "")
            answers[name], passes[name] = res.answer, res.forward_passes
            iou[name] = Box(*res.evidence_box).iou(oracle) if res.evidence_box else None
            moved[name] = res.answer_from_neighbour if v > 0 else None
        rows.append({"id": item.id, "gold": item.answer, "variant": item.meta["variant"],
                     "answers": answers, "passes": passes, "iou": iou, "neighbour_answered": moved})
    summary = summarise(rows)
    for name in summary:
        flags = [r["neighbour_answered"][name] for r in rows if r["neighbour_answered"][name] is not None]
        summary[name]["neighbour_answered_share"] = float(np.mean(flags)) if flags else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "split": split, "seed": seed, "policy_seed": policy_seed, "n": n,
                               "steps": values, "summary": summary, "items": rows}, indent=1))
    for name, s in summary.items():
        iou_text = "-" if s["window_iou_median"] is None else f"{s['window_iou_median']:.2f}"
        share = "-" if s["neighbour_answered_share"] is None else f"{s['neighbour_answered_share']:.2f}"
        print(f"{name:10s} exact {s['exact_match']:.3f}  chars {s['char_accuracy']:.3f}  "
              f"passes {s['forward_passes_mean']:.1f}  window IoU {iou_text}  a neighbour answered {share}")


@app.command()
def shifts(model: str = typer.Option("spote-tiny", help="weights that spell codes (default: the shipped ones)"),
           n: int = 100, seed: int = 0, split: str = "val", shift_list: str = typer.Option("0,0.01,0.03,0.06", "--shifts"),
           out: Path = Path("results/agreed-answers/oracle-shifts-val-seed0.json")):
    adapter = load_adapter(model)
    values = [float(v) for v in shift_list.split(",")]
    cfg = replace(PolicyConfig(), seed=seed, **BEFORE_CENTRING)
    mode = view_mode(cfg, adapter)
    got: dict[str, list] = {f"shift_{v:g}": [] for v in values}
    for item in tqdm(list(open_items(split, n, seed)), desc="open items"):
        renderer = ViewRenderer(item.image, adapter.input_size)
        oracle = oracle_box(item, adapter.input_size)
        for v in values:
            grid = 1 if v == 0 else 3
            windows = answer_windows(oracle, replace(cfg, answer_grid=grid, answer_shift=v), *item.image.size)
            text = adapter.generate_agreed([renderer.render(w, mode) for w in windows], item.question).text
            got[f"shift_{v:g}"].append((exact_match(text, item.answer), char_accuracy(text, item.answer)))
    summary = {k: {"exact_match": float(np.mean([e for e, _ in v])), "char_accuracy": float(np.mean([c for _, c in v]))}
               for k, v in got.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "split": split, "seed": seed, "n": n, "summary": summary}, indent=1))
    for k, s in summary.items():
        print(f"{k:12s} exact {s['exact_match']:.3f}  chars {s['char_accuracy']:.3f}")


if __name__ == "__main__":
    app()
