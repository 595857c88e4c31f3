"""Is the SPOT-E loop model-bound? Its forward passes per second against the model's raw batched throughput.

    python -m benchmarks.loop_efficiency --n 100 --out results/loop-efficiency.json

Same process, same model, same machine, interleaved in rounds (this machine's speed drifts by
10-20% between minutes, so each round times every side and the means are compared):

- ``raw``: ``choice_logprobs`` on ready-rendered view sets (the default ``zoom+context`` pair), in
  batches of ``--batch`` (the policy's group size), nothing else: the most passes per second the
  model gives on this machine;
- one row per policy (``--policies``: a JSON object of name -> PolicyConfig overrides; the shipped
  defaults and the previous ones by default): SpotBench test items answered by ``spote()``, its
  passes divided by its seconds (rendering, saliency, relevance, policy updates, generation all
  included).

The efficiency of a policy is its passes/s over raw passes/s: 1.0 means every second of the loop
is spent in the model's batched forward pass; smaller groups (``read_chunk``) trade some of it for
fewer passes.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import typer

# the first group and stop as they were before the saliency peaks were read first and the settle stop
PRIOR_FIRST_GROUP = {"peaks_first": False, "saliency_size": 256, "settle_after": 0}
PREVIOUS_DEFAULTS = {"group_size": 16, "first_group": 0, "read_chunk": 0, "greedy_steps": 0, "budget": 256,
                     "plateau_patience": 5, **PRIOR_FIRST_GROUP}  # 0.2.0
# the cheaper point of docs/design.md's cost table before the settle stop: ~20 passes per item
FAST = {"first_group": 24, "group_size": 12, "budget": 48, "plateau_patience": 2, **PRIOR_FIRST_GROUP}


def raw_passes_per_second(adapter, items, batch: int, seconds: float = 10.0) -> float:
    """Batched ``choice_logprobs`` on pre-rendered zoom+context view pairs for about ``seconds``."""
    from spote.spotlight import Box, ViewRenderer

    sets = []
    for item in items:
        r = ViewRenderer(item.image, adapter.input_size)
        w, h = item.image.size
        side = min(w, h) / 4
        sets.append((item, [r.render(Box(x, y, x + side, y + side), "zoom+context")
                            for x, y in np.random.default_rng(0).uniform(0, 1, (batch, 2)) * (w - side, h - side)]))
    passes, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for item, views in sets:
            adapter.choice_logprobs(views, item.question, item.choices)
            passes += len(views)
    return passes / (time.perf_counter() - t0)


def loop_passes_per_second(adapter, items, cfg) -> tuple[float, float]:
    """(passes/s, mean passes/item) of ``spote()`` over the items."""
    from spote.core import spote

    passes, t0 = 0, time.perf_counter()
    for item in items:
        passes += spote(adapter, item.image, item.question, item.choices, cfg).forward_passes
    return passes / (time.perf_counter() - t0), passes / len(items)


def main(n: int = 100, seed: int = 0, rounds: int = 3, batch: int = 16, raw_seconds: float = 10.0,
         policies: str = typer.Option("", help='JSON {"name": {overrides}}; default: the defaults, before the settle stop, the fast point and the 0.2.0 defaults'),
         out: Path = Path("results/loop-efficiency.json")):
    from spote.bench.run import environment
    from spote.bench.scenes import spotbench
    from spote.core import PolicyConfig
    from spote.loading import load_adapter

    named = json.loads(policies) if policies else {"defaults": {}, "before the settle stop": PRIOR_FIRST_GROUP,
                                                   "fast": FAST, "previous defaults": PREVIOUS_DEFAULTS}
    adapter = load_adapter(None)
    items = list(spotbench("test", n, seed))
    per_round = max(1, len(items) // rounds)
    raw, loops = [], {name: [] for name in named}
    for r in range(rounds):
        chunk = items[r * per_round:(r + 1) * per_round]
        raw.append(raw_passes_per_second(adapter, chunk[:4], batch, raw_seconds))
        for name, over in named.items():
            loops[name].append(loop_passes_per_second(adapter, chunk, replace(PolicyConfig(seed=seed), **over)))
        print(f"round {r + 1}/{rounds}: raw {raw[-1]:.1f} passes/s; "
              + "; ".join(f"{k} {v[-1][0]:.1f} passes/s ({v[-1][1]:.1f}/item)" for k, v in loops.items()), flush=True)
    raw_mean = float(np.mean(raw))
    report = {"n_items": len(items), "seed": seed, "rounds": rounds, "batch": batch, "raw_passes_per_second": raw_mean,
              "policies": {name: {"overrides": named[name], "passes_per_second": float(np.mean([x[0] for x in v])),
                                  "passes_per_item": float(np.mean([x[1] for x in v])),
                                  "efficiency": float(np.mean([x[0] for x in v]) / raw_mean)}
                           for name, v in loops.items()},
              # each round on its own: the machine's speed can change between rounds (another job starts),
              # and a round's own ratio is then the comparable figure
              "per_round": [{"raw_passes_per_second": raw[r],
                             "policies": {name: {"passes_per_second": v[r][0], "passes_per_item": v[r][1],
                                                 "efficiency": v[r][0] / raw[r]} for name, v in loops.items()}}
                            for r in range(len(raw))],
              "environment": environment()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for name, p in report["policies"].items():
        print(f"{name}: {p['passes_per_second']:.1f} passes/s at {p['passes_per_item']:.1f} passes/item, "
              f"{p['efficiency']:.2f} of raw ({raw_mean:.1f} passes/s)")


if __name__ == "__main__":
    typer.run(main)
