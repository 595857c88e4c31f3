"""Which of the windows SPOT-E reads on an open item would have read the code, and which rule finds it?
(docs/experiments/window-scales.md)

    python -m research.open_views run --model out/open7/spote-tiny-open --n 100 --out results/open-views/open7-val-seed0.json
    python -m research.open_views summary results/open-views/open7-val-seed0.json   # the rules again, no model

Writes the summary and each rule's answer per item to ``--out``, and every window's reading
to ``<out>.items.jsonl``. For each open item, SPOT-E runs at the defaults and logs every candidate window it scored, with its
reward (clarity of the whole image's greedy answer, teacher-forced on the window). Each window is
then read greedily, its *own* answer, and the item is scored under rules for picking one window:

- ``spote``: the loop's own answer (generated on its best window by reward);
- ``finalists_1``: that window again, read from its logged box. The log rounds a window to whole
  source pixels, so this is the loop's pick shifted by under half a pixel: the reference the other
  rules, read from the same logged boxes, are compared with;
- ``own_entropy``: the window whose own answer has the lowest mean token entropy (nats);
- ``own_logp``: the window whose own answer has the highest mean token log p;
- ``finalists_k``: of the ``k`` windows with the highest reward, the one whose own answer has the
  highest mean token log p (``k`` more generations after the search);
- ``any``: some window read the code exactly (the ceiling of any rule over these windows);
- ``oracle``: the ground-truth close-up.

It tells whether SPOT-E's open-item losses come from the windows it tries or from how it ranks them.
The summary also gives the share of items where some window holds the whole field, and the median
side of the smallest such window over the oracle's (``field_window_ratio``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import typer
from tqdm import tqdm

from spote.baselines import run_oracle
from spote.bench.run import char_accuracy, exact_match
from research.open_reading import oracle_box
from spote.bench.scenes import make_open_item, open_items
from spote.core import PolicyConfig, spote, view_mode
from spote.loading import load_adapter
from spote.spotlight import Box, ViewRenderer

app = typer.Typer(add_completion=False)
FINALISTS = (1, 2, 4, 8)
PICK_RULES = ("own_entropy", "own_logp", *(f"finalists_{k}" for k in FINALISTS))  # rules over read windows


@torch.inference_mode()
def greedy_batch(adapter, views_batch: list[list], question: str, max_new_tokens: int = 8) -> list[dict]:
    """Greedy answers on a batch of view sets (left-padded, ``adapter.batch_size`` at a time): one dict per
    set with its text, mean token entropy (nats) and mean token log p; inf / -inf for an empty answer."""
    prompt = adapter.prompt_text(len(views_batch[0]), question)
    eos = adapter.tokenizer.eos_token_id
    rows: list[dict] = []
    for a in range(0, len(views_batch), adapter.batch_size):
        chunk = views_batch[a:a + adapter.batch_size]
        batch = adapter.encode(chunk, [prompt] * len(chunk))
        adapter.forward_passes += len(chunk)
        out = adapter.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     output_scores=True, return_dict_in_generate=True, pad_token_id=eos)
        start = batch["input_ids"].shape[1]
        logp = torch.log_softmax(torch.stack(out.scores, 1).float(), -1)  # [B, T, V]
        for i in range(len(chunk)):
            ids, ents, lps = [], [], []
            for t in range(logp.shape[1]):
                tok = int(out.sequences[i, start + t])
                if tok == eos:
                    break
                ids.append(tok)
                ents.append(float(-(logp[i, t].exp() * logp[i, t]).sum()))
                lps.append(float(logp[i, t, tok]))
            rows.append({"text": adapter.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                         "entropy": float(np.mean(ents)) if ents else float("inf"),
                         "logp": float(np.mean(lps)) if lps else float("-inf")})
    return rows


def choose(reads: list[dict], rule: str) -> dict | None:
    """The read ``rule`` picks (``own_entropy``, ``own_logp`` or ``finalists_<k>``); None if there are none."""
    if not reads:
        return None
    if rule == "own_entropy":
        return min(reads, key=lambda r: r["entropy"])
    if rule == "own_logp":
        return max(reads, key=lambda r: r["logp"])
    if rule.startswith("finalists_"):
        top = sorted(reads, key=lambda r: -r["reward"])[:int(rule.split("_")[1])]
        return max(top, key=lambda r: r["logp"])
    raise ValueError(f"unknown rule {rule!r}")


def field_window_ratio(item, reads: list[dict], input_size: int) -> float | None:
    """Side of the smallest read window that holds the whole field, over the oracle's side (None: none
    holds it). Above 1, the window shows the code's glyphs that much smaller than the oracle's view."""
    field = Box(*item.evidence)
    sides = [Box(*r["box"]).width for r in reads if Box(*r["box"]).contains_frac(field) >= 0.999]
    return min(sides) / oracle_box(item, input_size).width if sides else None


def summarise(items: list[dict]) -> dict:
    """Exact match and character accuracy per rule over per-item rows (``gold``, ``answers``, ``reads``)."""
    answers = [picks(it) for it in items]
    out = {}
    for rule in ("spote", *PICK_RULES, "oracle"):
        got = [a[rule] for a in answers]
        out[rule] = {"exact_match": float(np.mean([exact_match(a, it["gold"]) for a, it in zip(got, items)])),
                     "char_accuracy": float(np.mean([char_accuracy(a, it["gold"]) for a, it in zip(got, items)]))}
    out["any"] = {"exact_match": float(np.mean([any(exact_match(r["text"], it["gold"]) for r in it["reads"])
                                                for it in items]))}
    # how often the loop's own window, shifted by under half a source pixel, reads another answer
    shifted = [choose(it["reads"], "finalists_1") for it in items]
    out["spote_window_shifted_reads_otherwise"] = float(np.mean(
        [p is not None and p["text"] != it["answers"]["spote"] for p, it in zip(shifted, items)]))
    ratios = [it["field_window_ratio"] for it in items if it.get("field_window_ratio") is not None]
    if "field_window_ratio" in items[0]:
        out["field_in_a_window"] = len(ratios) / len(items)
        out["field_window_ratio_median"] = float(np.median(ratios)) if ratios else None
    return out


def picks(item: dict) -> dict:
    """Each rule's answer on one item (the loop's own where a rule has no read to pick)."""
    return {**item["answers"], **{r: (choose(item["reads"], r) or {"text": item["answers"]["spote"]})["text"]
                                  for r in PICK_RULES}}


def write(out: Path, meta: dict, items: list[dict]) -> dict:
    """The summary and each rule's answer per item to ``out``; every window's reading beside it."""
    summary = summarise(items)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"id": it["id"], "gold": it["gold"], "variant": it["variant"], "picks": picks(it)} for it in items]
    out.write_text(json.dumps({**meta, "summary": summary, "items": rows}, indent=1))
    out.with_suffix(".items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))  # large: not in git
    for rule, s in summary.items():
        shown = "  ".join(f"{k} {v:.3f}" for k, v in s.items()) if isinstance(s, dict) else \
            "-" if s is None else f"{s:.3f}"
        print(f"{rule:38s} {shown}")
    return summary


@app.command()
def summary(out: Path = typer.Argument(..., help="a JSON this script wrote; its .items.jsonl is read again")):
    """Score the rules again from the saved window readings (no model needed)."""
    meta = json.loads(out.read_text())
    items = [json.loads(line) for line in out.with_suffix(".items.jsonl").read_text().splitlines()]
    for i, it in enumerate(items):
        item = make_open_item(meta["seed"], meta["split"], i)
        it["field_window_ratio"] = field_window_ratio(item, it["reads"], meta.get("input_size", 64))
    write(out, {k: meta[k] for k in ("model", "split", "seed", "n")}
          | {"input_size": meta.get("input_size", 64), "policy": meta.get("policy", {})}, items)


@app.command()
def run(model: str = typer.Option(..., help="weights that spell codes"), n: int = 100, seed: int = 0,
        split: str = "val", out: Path = Path("results/open-views/val-seed0.json"),
        policy: str = typer.Option("{}", help='PolicyConfig overrides as JSON, e.g. \'{"scale_step": 1.4142}\'')):
    """Run SPOT-E on ``n`` open items, read every window it scored, score the rules."""
    adapter = load_adapter(model)
    cfg = replace(PolicyConfig(**json.loads(policy)), seed=seed)
    mode = view_mode(cfg, adapter)
    items = []
    for item in tqdm(list(open_items(split, n, seed)), desc="open items"):
        res = spote(adapter, item.image, item.question, None, cfg)
        renderer = ViewRenderer(item.image, adapter.input_size)
        best_reward: dict[tuple, float] = {}  # a window scored twice keeps its higher reward
        for b, r in zip(res.boxes, res.box_rewards):
            best_reward[tuple(b)] = max(r, best_reward.get(tuple(b), -np.inf))
        boxes = [Box(*b) for b in best_reward]
        reads = greedy_batch(adapter, [renderer.render(b, mode) for b in boxes], item.question) if boxes else []
        orc = run_oracle(adapter, item.image, item.question, None, cfg, evidence=item.evidence)
        read = [dict(r, box=b.as_list(), reward=best_reward[tuple(b.as_list())]) for r, b in zip(reads, boxes)]
        items.append({"id": item.id, "gold": item.answer, "variant": item.meta["variant"],
                      "answers": {"spote": res.answer, "oracle": orc.answer}, "reads": read,
                      "field_window_ratio": field_window_ratio(item, read, adapter.input_size)})
    write(out, {"model": model, "split": split, "seed": seed, "n": n, "input_size": adapter.input_size,
                "policy": json.loads(policy)}, items)


if __name__ == "__main__":
    app()
