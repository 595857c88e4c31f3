"""SPOT-E in-process (black-box) against the same model behind an OpenAI-compatible endpoint.

    OMP_NUM_THREADS=1 python -m benchmarks.endpoint --n 50 --out results/bench-endpoint.json
    python -m benchmarks.endpoint --endpoint http://gpu-host:8000/v1 --served-name NAME --model FOLDER_OR_HUB_ID

Both sides run the same black-box policy (no attention prior; the endpoint has none) on the same
SpotBench items, with views rendered at the in-process model's input size and sent as PNG (lossless),
so the two sides see the very same pixels. The sides alternate item by item, so a machine whose speed
drifts (a shared box) slows both alike. In-process, a group of views is one batched forward pass; the
endpoint sends one request per view set (``--concurrency`` in flight) and the fixture server answers
them one forward pass at a time, so its seconds include HTTP, PNG coding and unbatched passes. Without ``--endpoint`` the shipped spote-tiny is served by
the test fixture server (``tests/adapters/openai_server.py``, one forward pass at a time) on
127.0.0.1. Reported per side: accuracy, forward passes and seconds per item; and between them: how
many answers agree, how many items took the same number of passes (the same search), and the
largest difference of the whole-image distribution. Items answered differently are listed with the
whole-image probabilities on both sides, how many choices were outside the endpoint's top-k, and the
answer of the in-process model read with the endpoint's arithmetic (``EndpointArithmetic``): where it
matches the endpoint's, rounding alone parted the two runs.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False)
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "adapters" / "openai_server.py"


def _fixture_module():
    spec = importlib.util.spec_from_file_location("spote_openai_fixture", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_one(adapter, item, cfg) -> dict:
    from spote.core import spote

    t = time.perf_counter()
    res = spote(adapter, item.image, item.question, item.choices, cfg)
    return {"id": item.id, "answer": res.answer, "correct": res.answer == item.answer,
            "forward_passes": res.forward_passes, "seconds": time.perf_counter() - t,
            "whole_image": res.entropy_trace[0], "boxes": res.boxes, "box_rewards": res.box_rewards}


class EndpointArithmetic:
    """The in-process model read the way the endpoint reads it: log-softmax over the whole vocabulary,
    then the choices' probabilities renormalised in float64 (in-process: log-softmax over the choices'
    logits, float32). The same numbers up to float rounding; an item that answers like the endpoint here
    parted from the in-process run through rounding alone, amplified by its search."""

    def __init__(self, adapter):
        self.adapter = adapter

    def __getattr__(self, name):
        return getattr(self.adapter, name)

    def choice_logprobs(self, views_batch, question, choices):
        import math

        import torch

        a = self.adapter
        prompt = a.prompt_text(len(views_batch[0]), question, choices)
        idx = [a.continuation_ids(prompt, c)[0] for c in choices]
        rows = []
        for views in views_batch:
            logp = torch.log_softmax(a._forward(a.encode([views], [prompt]), last=1).logits[0, -1].float(), -1)
            p = [math.exp(float(logp[i])) for i in idx]
            rows.append([math.log(x / sum(p)) for x in p])
        return torch.tensor(rows, dtype=torch.float32)


def divergence(a: dict, b: dict) -> dict:
    """Where two runs of one item part: the first spotlight that differs, and how far apart the rewards of the
    spotlights both scored before it were (about 1e-6: float rounding; larger: a choice outside the top-k)."""
    k = 0
    while k < min(len(a["boxes"]), len(b["boxes"])) and a["boxes"][k] == b["boxes"][k]:
        k += 1
    diffs = [abs(x - y) for x, y in zip(a["box_rewards"][:k], b["box_rewards"][:k])]
    return {"first_different_spotlight": k if k < max(len(a["boxes"]), len(b["boxes"])) else None,
            "shared_spotlights": k, "max_reward_diff_before": max(diffs) if diffs else 0.0}


def whole_image(adapter, item, top_k: int | None = None) -> dict:
    """The whole-image distribution, and (endpoint) how many choices were outside the top-k."""
    from spote.spotlight import ViewRenderer

    views = [ViewRenderer(item.image, adapter.input_size).global_view]
    probs = adapter.choice_logprobs([views], item.question, item.choices)[0].exp().tolist()
    out = {"p": [round(p, 6) for p in probs]}
    if top_k is not None:
        served = adapter._request_all([views], adapter.prompt_text(1, item.question, item.choices), 1, True)[0]
        tokens = {t.strip().casefold() for t, _ in served.top[0]}
        out["choices_outside_top_k"] = sum(c.strip().casefold() not in tokens for c in item.choices)
    return out


def summary(rows: list[dict]) -> dict:
    n = len(rows)
    passes, seconds = sum(r["forward_passes"] for r in rows), sum(r["seconds"] for r in rows)
    return {"accuracy": sum(r["correct"] for r in rows) / n, "forward_passes_mean": passes / n,
            "seconds_per_item": seconds / n, "ms_per_forward_pass": 1000 * seconds / passes,
            "seconds_total": round(seconds, 2)}


@app.command()
def main(n: int = typer.Option(50), seed: int = typer.Option(0), split: str = typer.Option("test"),
         out: Path = typer.Option(Path("results/bench-endpoint.json")),
         model: Optional[str] = typer.Option(None, help="in-process model (default: the shipped spote-tiny)"),
         endpoint: Optional[str] = typer.Option(None, help="a running server; default: start the test fixture"),
         served_name: str = typer.Option("spote-tiny", help="the model name the endpoint serves"),
         concurrency: int = typer.Option(8, help="requests in flight at most")):
    from spote.bench.run import environment
    from spote.bench.scenes import spotbench
    from spote.core import PolicyConfig
    from spote.loading import load_adapter

    local = load_adapter(model, device="cpu", relevance=False)
    cfg = PolicyConfig(seed=seed, use_relevance=False)
    items = list(spotbench(split, n, seed))
    proc = None
    if endpoint is None:
        proc, endpoint = _fixture_module().launch(model or str(Path(__file__).resolve().parents[1] / "spote" /
                                                                  "weights" / "spote-tiny"), served_name)
    try:
        remote = load_adapter(served_name, endpoint=endpoint,
                              endpoint_options={"view_size": local.input_size, "concurrency": concurrency})
        in_rows, ep_rows = [], []
        for item in items:  # item by item, both sides: a drifting machine speed hits them alike
            in_rows.append(run_one(local, item, cfg))
            ep_rows.append(run_one(remote, item, cfg))
        differ = []
        for item, a, b in zip(items, in_rows, ep_rows):
            if a["answer"] != b["answer"]:
                differ.append({"id": item.id, "question": item.question, "truth": item.answer,
                               "in_process": a["answer"], "endpoint": b["answer"],
                               "passes": [a["forward_passes"], b["forward_passes"]], **divergence(a, b),
                               "in_process_with_endpoint_arithmetic": run_one(EndpointArithmetic(local), item,
                                                                              cfg)["answer"],
                               "whole_image_in_process": whole_image(local, item),
                               "whole_image_endpoint": whole_image(remote, item, remote.config.top_logprobs)})
        max_dp = 0.0
        for item in items:
            a, b = whole_image(local, item)["p"], whole_image(remote, item)["p"]
            max_dp = max(max_dp, max(abs(x - y) for x, y in zip(a, b)))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    report = {
        "n_items": n, "split": split, "seed": seed, "model": model or "spote-tiny",
        "endpoint": "fixture server (tests/adapters/openai_server.py) on 127.0.0.1" if proc else remote.name,
        "concurrency": concurrency, "view_size": local.input_size, "policy": cfg.__dict__,
        "in_process": summary(in_rows), "endpoint_side": summary(ep_rows),
        "same_search": sum(divergence(a, b)["first_different_spotlight"] is None for a, b in zip(in_rows, ep_rows)),
        "answers_agree": sum(a["answer"] == b["answer"] for a, b in zip(in_rows, ep_rows)),
        "same_passes": sum(a["forward_passes"] == b["forward_passes"] for a, b in zip(in_rows, ep_rows)),
        "whole_image_max_abs_prob_diff": max_dp, "differing_items": differ,
        "differing_explained_by_rounding": sum(d["in_process_with_endpoint_arithmetic"] == d["endpoint"]
                                               for d in differ),
        "environment": {**environment(), "platform": platform.platform()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".items.jsonl").write_text("\n".join(  # per-item rows, beside the summary (not in git)
        json.dumps({"id": a["id"], **{side: {k: v for k, v in r.items() if k not in ("boxes", "box_rewards")}
                                      for side, r in (("in_process", a), ("endpoint", b))}})
        for a, b in zip(in_rows, ep_rows)))
    i, e = report["in_process"], report["endpoint_side"]
    print(f"in-process: accuracy {i['accuracy']:.3f}, {i['forward_passes_mean']:.1f} passes, "
          f"{i['seconds_per_item']:.3f} s/item")
    print(f"endpoint:   accuracy {e['accuracy']:.3f}, {e['forward_passes_mean']:.1f} passes, "
          f"{e['seconds_per_item']:.3f} s/item")
    print(f"answers agree on {report['answers_agree']}/{n}, same search on {report['same_search']}/{n}, "
          f"same passes on {report['same_passes']}/{n}, whole-image max |dp| {max_dp:.2e}; of the {len(differ)} "
          f"differing, {report['differing_explained_by_rounding']} answer alike in-process read with the endpoint's "
          f"arithmetic -> {out}")


if __name__ == "__main__":
    app()
