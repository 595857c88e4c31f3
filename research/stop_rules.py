"""Which stop rule cuts SPOT-E's forward passes without losing accuracy? Record once, replay offline.

    python -m research.stop_rules record --split val --n 600 --seed 0 --out results/stop-rules/val-seed0.jsonl
    python -m research.stop_rules replay results/stop-rules/val-seed0.jsonl [more.jsonl ...]

Record with ``--policy '{"settle_after": 0}'`` (the Makefile does): a recording must not stop early
itself, or the rules replayed on it are cut short by the loop's own settle stop.

``record`` runs SPOT-E at a given ``PolicyConfig`` on closed SpotBench items through an adapter that
keeps every batched reading (the log-probs of each view and the forward passes spent so far). A stop
rule only ever ends a run *earlier*, and what the loop did up to that point does not depend on the
rule, so ``replay`` can evaluate any rule exactly from one recording: the answer at a stop is the
best view so far (the loop's own choice: reward = clarity + anchor term against the whole image,
the glance kept only when clear, the whole image when nothing beat it).

Rules are tried at every read (a chunk of ``read_chunk`` views or a probe group), where the loop
itself can stop. The recording's own end (clear, plateau, budget) is where every rule stops at the latest.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import typer

from spote.bench.run import auroc
from spote.core import PolicyConfig, Reading, exit_threshold, find_anchors, reward, spote

app = typer.Typer(add_completion=False)


class RecordingAdapter:
    """Delegates to an adapter and keeps, per ``choice_logprobs`` call, the passes spent after it and its rows."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def choice_logprobs(self, views_batch, question, choices):
        logp = self.inner.choice_logprobs(views_batch, question, choices)
        self.calls.append((self.inner.forward_passes, logp.tolist()))
        return logp


@app.command()
def record(split: str = "val", n: int = 600, seed: int = 0, out: Path = Path("results/stop-rules/val-seed0.jsonl"),
           policy: str = typer.Option("{}", help="PolicyConfig overrides as JSON")):
    """Run SPOT-E on ``n`` closed items and write one JSON line per item: its readings in order."""
    from tqdm import tqdm

    from spote.bench.scenes import spotbench
    from spote.loading import load_adapter

    cfg = replace(PolicyConfig(**json.loads(policy)), seed=seed)
    adapter = RecordingAdapter(load_adapter("spote-tiny"))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for item in tqdm(spotbench(split, n, seed), total=n, desc=f"record {split} seed={seed}"):
            adapter.calls = []
            p0 = adapter.inner.forward_passes
            res = spote(adapter, item.image, item.question, item.choices, cfg)
            f.write(json.dumps({
                "id": item.id, "kind": item.kind, "easy": item.easy, "choices": list(item.choices),
                "gold": item.choices.index(item.answer), "answer": res.answer, "passes": res.forward_passes,
                "calls": [[p - p0, [[round(v, 5) for v in row] for row in rows]] for p, rows in adapter.calls],
                "size": list(item.image.size), "boxes": res.boxes,
                "evidence": None if item.evidence is None else [round(v) for v in item.evidence],
                "policy": json.loads(policy)}) + "\n")


def replay_item(rec: dict, cfg: PolicyConfig, rule) -> tuple[bool, int, float]:
    """(correct, passes, confidence) of one recorded run had ``rule(state) -> bool`` been asked at every read."""
    calls = rec["calls"]
    base = Reading(logp=torch.tensor(calls[0][1][0]))
    tau = exit_threshold(cfg, len(rec["choices"]))
    anchors = find_anchors(base, cfg)
    best_r, best = 0.0, base
    state = {"passes": calls[0][0], "base_entropy": base.entropy, "tau": tau, "reads": 0, "last_gain": calls[0][0],
             "best_entropy": base.entropy, "best_p": float(base.logp.exp().max()), "best_reward": 0.0,
             "choices": rec["choices"], "base_top": int(base.logp.argmax()), "view_max_p": [0.0] * len(rec["choices"])}
    glance = cfg.glance_side > 0 and base.entropy > tau
    for i, (passes, rows) in enumerate(calls[1:]):
        for row in rows:
            r = Reading(logp=torch.tensor(row))
            state["view_max_p"] = [max(a, math.exp(b)) for a, b in zip(state["view_max_p"], row)]
            if i == 0 and glance and r.entropy > tau:
                continue  # an unclear glance is paid for but never kept
            rw = reward(base, r, anchors, cfg)
            if rw > best_r + 1e-6:
                best_r, best = rw, r
                state["last_gain"] = passes
        state.update(passes=passes, reads=i + 1, best_entropy=best.entropy, best_p=float(best.logp.exp().max()),
                     best_reward=best_r)
        if i + 2 < len(calls) and rule(state):
            break
    final = int(best.logp.argmax())
    passes = state["passes"] if state["reads"] + 1 < len(calls) else rec["passes"]
    return final == rec["gold"], passes, float(best.logp.exp().max())


RULES = {
    "recorded": lambda s: False,
    **{f"budget {b}": (lambda b: lambda s: s["passes"] >= b)(b) for b in (24, 32, 40, 48, 64)},
    **{f"sure p>={c} after {m}": (lambda c, m: lambda s: s["passes"] >= m and s["best_p"] >= c)(c, m)
       for c in (0.6, 0.7, 0.8) for m in (8, 16, 24)},
    **{f"no gain for {k}": (lambda k: lambda s: s["passes"] - s["last_gain"] >= k)(k) for k in (12, 16, 24, 32)},
    **{f"yes/no: no view p(yes)>={t} after {m}": (lambda t, m: lambda s: s["passes"] >= m and sorted(s["choices"]) == ["no", "yes"]
                                                   and s["view_max_p"][s["choices"].index("yes")] < t)(t, m)
       for t in (0.5, 0.7, 0.8, 0.9) for m in (8, 16, 24, 32)},
    **{f"no view p>={t} after {m}": (lambda t, m: lambda s: s["passes"] >= m and max(s["view_max_p"]) < t)(t, m)
       for t in (0.8, 0.9) for m in (16, 24, 32)},
    # the settle stop (PolicyConfig.settle_after / settle_p): no view gave any answer but the whole image's p >= t
    **{f"settle: no other answer p>={t} after {m}": (lambda t, m: lambda s: s["passes"] >= m and all(
        p < t for i, p in enumerate(s["view_max_p"]) if i != s["base_top"]))(t, m)
       for t in (0.6, 0.7, 0.8) for m in (16, 24, 32)},
    **{f"H>{f:.1f}*H0 after {m}": (lambda f, m: lambda s: s["passes"] >= m and s["best_entropy"] > f * s["base_entropy"])(f, m)
       for f in (0.5, 0.7) for m in (24, 32)},
}


def kind_of(rec: dict) -> str:
    """The item's kind; "absent" for a presence item without evidence, "easy" for large evidence."""
    return "easy" if rec["easy"] else "absent" if rec.get("evidence", 0) is None else rec["kind"]


@app.command()
def replay(paths: list[Path], policy: str = typer.Option("{}", help="PolicyConfig overrides the recording used"),
           by_kind: list[str] = typer.Option([], help="also print these rules' accuracy / passes per kind")):
    """Accuracy, mean passes, easy-item passes and AUROC of each rule in RULES, per recording."""
    cfg = PolicyConfig(**json.loads(policy))
    for path in paths:
        recs = [json.loads(line) for line in path.open()]
        if by_kind:
            kinds = sorted({kind_of(r) for r in recs})
            print(f"\n{path}: accuracy / passes per kind\n")
            print("| rule | " + " | ".join(f"{k} ({sum(kind_of(r) == k for r in recs)})" for k in kinds) + " |")
            print("|---|" + "---|" * len(kinds))
            for name in by_kind:
                out = [replay_item(r, cfg, RULES[name]) for r in recs]
                cells = [f"{np.mean([o[0] for o, r in zip(out, recs) if kind_of(r) == k]):.2f} / "
                         f"{np.mean([o[1] for o, r in zip(out, recs) if kind_of(r) == k]):.0f}" for k in kinds]
                print(f"| {name} | " + " | ".join(cells) + " |")
        print(f"\n{path}: {len(recs)} items")
        print("| rule | accuracy | passes/item | easy passes | AUROC | items at 96 |")
        print("|---|---|---|---|---|---|")
        for name, rule in RULES.items():
            out = [replay_item(r, cfg, rule) for r in recs]
            ok, passes, conf = (list(c) for c in zip(*out))
            easy = [p for p, r in zip(passes, recs) if r["easy"]]
            area = auroc(conf, ok)
            print(f"| {name} | {np.mean(ok):.3f} | {np.mean(passes):.1f} | {np.mean(easy) if easy else math.nan:.2f} | "
                  f"{'-' if area is None else f'{area:.3f}'} | {sum(p >= cfg.budget for p in passes)} |")


if __name__ == "__main__":
    app()
