"""Where do easy items spend their passes: the whole image, the coarse probe, or the search?

    python -m research.easy_probe --split val --n 800
    python -m research.easy_probe --split test --seed 3 --n 600 --benchmark --hard-n 0   # a seed's own easy items

Draws ``n`` scenes of a split with large evidence only (``make_item(..., easy_rate=1.0)`` from
index 10000 on, so not the benchmark's own items), answers each with SPOT-E's defaults and sorts
them by what settled them: the whole image (1 pass), the glance (one closer square on the salient
middle, 2 passes), the probe (the four corner squares, then the centre square), or the GRPO search
(tens of passes). The search is the right answer to an unsure
model, but it is what moves a seed's mean passes on easy items: a seed has ~80 easy items, so one
searched item adds almost a pass to its mean. Prints the rate of each path, the measured mean, and
what the probe would cost had it read the centre square first (from the same probe views). Then,
for the benchmark's own hard items whose glance and probe are not clear either, what a loop that stopped there
would lose: at test time an unsure easy scene and such a hard item look alike.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import typer

from spote.bench.scenes import make_item, spotbench
from spote.core import (PolicyConfig, Reader, coarse_windows, exit_threshold, glance_window, in_probe_band, spote,
                        view_mode)
from spote.saliency import saliency_map
from spote.spotlight import ViewRenderer

FIRST_INDEX = 10_000


def probe_reading(adapter, item, cfg: PolicyConfig) -> dict:
    """The whole image, the glance and, in the probe band, the probe's five squares, read as SPOT-E's
    loop reads them (every view read, whatever settled the loop, so the orders can be compared)."""
    renderer = ViewRenderer(item.image, adapter.input_size)
    reader = Reader(adapter, item.question, item.choices)
    mode = view_mode(cfg, adapter)
    tau = exit_threshold(cfg, len(item.choices))
    base = reader.read([[renderer.global_view]])[0]
    h_base = base.entropy
    row = {"id": item.id, "kind": item.kind, "h_base": round(h_base, 5), "tau": round(tau, 5)}
    if h_base <= tau:
        row["band"] = "whole image"
        return row
    reads = []
    if cfg.glance_side:
        look = glance_window(item.image, cfg.glance_side, saliency_map(item.image))
        reads += reader.read([renderer.render(look, mode)])
        row["glance_clear"] = reads[0].entropy <= tau
    if in_probe_band(cfg, h_base, tau):
        corners, centre = coarse_windows(*item.image.size, cfg.probe_side)
        probe = reader.read([renderer.render(b, mode) for b in corners + centre])
        row["band"] = "probe band"
        row["probe_clear"] = [r.entropy <= tau for r in probe]  # four corners, then the centre
        reads += probe
    else:
        row["band"] = "above the probe band"
    clearest = min([base] + reads, key=lambda r: r.entropy)  # what a loop without the search would answer
    row["coarse_answer_correct"] = item.choices[int(clearest.logp.argmax())] == item.answer
    return row


def easy_row(adapter, item, cfg: PolicyConfig) -> dict:
    """One easy scene: what settled it, SPOT-E's passes and whether it answered right."""
    row = probe_reading(adapter, item, cfg)
    res = spote(adapter, item.image, item.question, item.choices, cfg)
    row.update(passes=res.forward_passes, correct=res.answer == item.answer)
    if row["band"] == "whole image":
        row["path"] = "whole image"
    elif row.get("glance_clear"):
        row["path"] = "glance"
    elif any(row.get("probe_clear", [])):
        row["path"] = "probe"
    else:
        row["path"] = f"search ({row['band']})"
    return row


def hard_rows_the_search_settles(adapter, split: str, n: int, seed: int, cfg: PolicyConfig) -> list[dict]:
    """The benchmark's hard items in the probe band with no clear glance or probe view: what capping the
    search would give up (the clearest of the whole image, glance and probe views, against the search)."""
    rows = []
    for item in spotbench(split, n, seed):
        if item.easy:
            continue
        row = probe_reading(adapter, item, cfg)
        if row["band"] == "probe band" and not row.get("glance_clear") and not any(row["probe_clear"]):
            res = spote(adapter, item.image, item.question, item.choices, cfg)
            rows.append({**row, "passes": res.forward_passes, "correct": res.answer == item.answer})
    return rows


def probe_passes(clear: list[bool], centre_first: bool, glance: int = 0) -> int:
    """Passes the whole image, the glance (``glance`` views, not clear) and the probe take."""
    corners, centre = any(clear[:4]), clear[4]
    if centre_first:
        return glance + (2 if centre else 6)
    return glance + (5 if corners else 6)


def summarise(rows: list[dict]) -> dict:
    paths = Counter(r["path"] for r in rows)
    searched = [r["passes"] for r in rows if r["path"].startswith("search")]
    probed = [r for r in rows if r["path"] == "probe"]
    return {
        "n": len(rows),
        "paths": dict(paths),
        "mean_passes": float(np.mean([r["passes"] for r in rows])),
        "accuracy": float(np.mean([r["correct"] for r in rows])),
        "searched_share": len(searched) / len(rows),
        "searched_passes_mean": float(np.mean(searched)) if searched else None,
        "mean_passes_without_search": float(np.mean([r["passes"] for r in rows if not r["path"].startswith("search")])),
        "probe_settled": len(probed),
        "probe_passes_corners_first": sum(probe_passes(r["probe_clear"], False, "glance_clear" in r) for r in probed),
        "probe_passes_centre_first": sum(probe_passes(r["probe_clear"], True, "glance_clear" in r) for r in probed),
    }


def main(split: str = "val", n: int = 800, seed: int = 0, model: str = typer.Option(None, help="default: spote-tiny"),
         hard_n: int = typer.Option(600, help="also check the first N benchmark items' hard ones (0: skip)"),
         out: Path = typer.Option(None, help="write per-scene rows and the summary as JSON"),
         benchmark: bool = typer.Option(False, help="the benchmark's own easy items among its first N instead "
                                                    "(`spote bench`'s easy-items passes, without the other items)")):
    from tqdm import tqdm

    from spote.loading import load_adapter

    adapter, cfg = load_adapter(model), PolicyConfig(seed=seed)
    if benchmark:
        scenes, what = spotbench(split, n, seed), f"benchmark items (first {n})"
    else:
        scenes, what = (make_item(seed, split, i, easy_rate=1.0) for i in range(FIRST_INDEX, FIRST_INDEX + n)), "scenes"
    # an absent boat or defect has no evidence, so it is never easy
    rows = [easy_row(adapter, item, cfg) for item in tqdm(scenes, total=n, desc=f"easy {split} {what}") if item.easy]
    s = summarise(rows)
    print(f"{s['n']} easy {split} {what} (seed {seed}): mean passes {s['mean_passes']:.2f}, accuracy {s['accuracy']:.3f}")
    print("| settled by | scenes | share |\n|---|---|---|")
    for path, k in sorted(s["paths"].items(), key=lambda kv: -kv[1]):
        print(f"| {path} | {k} | {k / s['n']:.3f} |")
    if s["searched_passes_mean"] is not None:
        print(f"\nsearched: {s['searched_share']:.1%} of easy scenes, {s['searched_passes_mean']:.1f} passes each; "
              f"the others {s['mean_passes_without_search']:.2f} passes on average. A seed with 80 easy items "
              f"expects {80 * s['searched_share']:.1f} searched ones, adding "
              f"{s['searched_share'] * (s['searched_passes_mean'] - s['mean_passes_without_search']):.2f} to its mean.")
    print(f"probe settled {s['probe_settled']} scenes: {s['probe_passes_corners_first']} passes reading the corners first "
          f"(defaults), {s['probe_passes_centre_first']} had it read the centre square first")
    hard = hard_rows_the_search_settles(adapter, split, hard_n, seed, cfg) if hard_n else []
    if hard:
        print(f"hard items among the first {hard_n} of {split} in the probe band, glance and probe not clear: {len(hard)}; "
              f"the search gets {sum(r['correct'] for r in hard)} right ({np.mean([r['passes'] for r in hard]):.0f} "
              f"passes each), the clearest of the whole image, glance and probe views "
              f"{sum(r['coarse_answer_correct'] for r in hard)}")
    for r in rows:
        if r["passes"] > 2:
            print(f"  {r['id']} ({r['kind']}): {r['path']}, {r['passes']} passes, {'right' if r['correct'] else 'wrong'}")
    if out:
        Path(out).write_text(json.dumps({"split": split, "n": n, "seed": seed, "benchmark": benchmark, "summary": s,
                                         "rows": rows,
                                         "hard_rows": hard}, indent=1))


if __name__ == "__main__":
    typer.run(main)
