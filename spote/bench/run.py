"""Run SpotBench: every method on the same items, the same model; a table, JSON and a plot."""

from __future__ import annotations

import json
import platform
import time
import zlib
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from ..core import PolicyConfig
from ..images import corrupt as corrupt_image
from ..loading import load_adapter
from ..baselines import METHODS, run_method
from ..spotlight import Box
from .gpu import GpuMemoryPeak, torch_peak_mb
from .scenes import spotbench


def auroc(confidence: list[float], correct: list[bool]) -> float | None:
    """Area under the ROC curve of confidence for correctness (None if only one class)."""
    if len(set(correct)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(correct, int), np.asarray(confidence)))


def evidence_hit(evidence_box, evidence, image_size) -> bool:
    """The answer came from a spotlight (< 1/4 of the image) holding at least half of the evidence."""
    if evidence_box is None or evidence is None:
        return False
    b = Box(*evidence_box)
    return b.contains_frac(Box(*evidence)) >= 0.5 and b.area <= 0.25 * image_size[0] * image_size[1]


def summarise(rows: list[dict]) -> dict:
    by_size, by_kind = defaultdict(list), defaultdict(list)
    for r in rows:
        by_size[r["size_bucket"]].append(r["correct"])
        by_kind[r["kind"]].append(r["correct"])
    collapse = [r["correct"] for r in rows if r["collapse"]]
    easy = [r["forward_passes"] for r in rows if r["easy"]]
    with_ev = [r["hit"] for r in rows if r["has_evidence"]]
    return {
        "accuracy": float(np.mean([r["correct"] for r in rows])),
        "forward_passes_mean": float(np.mean([r["forward_passes"] for r in rows])),
        "seconds_per_item": float(np.mean([r["seconds"] for r in rows])),
        "items_per_second": float(1 / max(np.mean([r["seconds"] for r in rows]), 1e-9)),
        "evidence_hit_rate": float(np.mean(with_ev)) if with_ev else None,
        "accuracy_by_evidence_size": {k: float(np.mean(v)) for k, v in sorted(by_size.items())},
        "n_by_evidence_size": {k: len(v) for k, v in sorted(by_size.items())},
        "accuracy_by_kind": {k: float(np.mean(v)) for k, v in sorted(by_kind.items())},
        "accuracy_collapse_items": float(np.mean(collapse)) if collapse else None,
        "n_collapse_items": len(collapse),
        "forward_passes_mean_easy": float(np.mean(easy)) if easy else None,
        "auroc": auroc([r["confidence"] for r in rows], [r["correct"] for r in rows]),
    }


def run_bench(split="test", n=600, seed=0, methods=METHODS, out: Path = Path("results/bench.json"), model=None,
              corrupt="none", mode="zoom+context", plot=True, cfg: PolicyConfig | None = None, progress=True,
              device: str | None = None, dtype: str | None = None, budget: int | None = None, adapter=None,
              revision: str | None = None, endpoint: str | None = None, endpoint_options: dict | None = None) -> dict:
    """Every method on the same SpotBench items; with ``budget`` every search method is held to that many
    forward passes per item (matched cost), else each runs at its defaults. Writes ``out`` (JSON), the
    per-item rows beside it (``.items.jsonl``) and, with ``plot``, accuracy against passes (``.png``)."""
    methods = [m.strip() for m in methods if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; expected some of {METHODS}")
    cfg = cfg or PolicyConfig(mode=mode, seed=seed)
    if budget is not None:
        cfg = replace(cfg, budget=budget)
    adapter = adapter or load_adapter(model, device=device, dtype=dtype, revision=revision, endpoint=endpoint,
                                      endpoint_options=endpoint_options)
    rows = {m: [] for m in methods}
    t_start = time.time()
    with GpuMemoryPeak() as gpu:
        _run_items(adapter, split, n, seed, methods, corrupt, cfg, rows, progress, budget)
    report = {
        "n_items": n, "seed": seed, "split": split, "model": getattr(adapter, "name", str(model or "spote-tiny")),
        "corrupt": corrupt, "mode": mode, "budget": budget, "policy": cfg.__dict__,
        "wall_seconds": round(time.time() - t_start, 1), "device": str(adapter.device),
        "dtype": str(next(adapter.model.parameters()).dtype).removeprefix("torch.") if hasattr(adapter, "model") else None,
        "gpu_memory_torch_peak_mb": torch_peak_mb(), "gpu_memory_smi_peak_mb": gpu.peak_mb,
        "environment": environment(),
        "methods": {m: summarise(r) for m, r in rows.items()},
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    (out.with_suffix(".items.jsonl")).write_text("\n".join(json.dumps({"method": m, **r}) for m, rs in rows.items() for r in rs))
    print_table(report)
    if plot:
        plot_bench(report, out.with_suffix(".png"))
    return report


def environment() -> dict:
    """What a re-run must match to give the same items: long searches amplify float rounding, so
    the same code on another CPU or library version can end a few items differently."""
    from importlib.metadata import version

    libs = {name: version(name) for name in ("torch", "transformers", "numpy", "pillow", "scipy")}
    return {"cpu": _cpu_model(), "machine": platform.machine(), "python": platform.python_version(), **libs}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _run_items(adapter, split, n, seed, methods, corrupt, cfg, rows, progress, budget=None) -> None:
    for item in tqdm(spotbench(split, n, seed), total=n, desc=f"SpotBench {split} seed={seed}", disable=not progress):
        image = corrupt_image(item.image, corrupt, seed=zlib.crc32(item.id.encode()))  # str hash() is salted per process
        spote_passes = None
        for m in sorted(methods, key=lambda x: x != "spote"):  # spote first: random gets its budget
            kw = {"evidence": item.evidence, "max_passes": budget}
            if m == "random":  # at the defaults: spote's own passes on this item
                kw["n_windows"] = budget or (spote_passes if spote_passes is not None else cfg.budget)
            res = run_method(m, adapter, image, item.question, item.choices, replace(cfg, seed=seed), **kw)
            if m == "spote":
                spote_passes = res.forward_passes
            rows[m].append({
                "id": item.id, "kind": item.kind, "correct": res.answer == item.answer, "confidence": res.confidence,
                "forward_passes": res.forward_passes, "seconds": res.seconds, "collapse": item.collapse_tempting,
                "easy": item.easy, "size_bucket": item.size_bucket, "has_evidence": item.evidence is not None,
                "hit": evidence_hit(res.evidence_box, item.evidence, item.image.size), "answer": res.answer,
            })


def print_table(report: dict) -> None:
    t = Table(title=f"SpotBench {report['split']} n={report['n_items']} seed={report['seed']} corrupt={report['corrupt']}")
    for col in ("method", "accuracy", "passes", "s/item", "hit", "collapse acc", "easy passes", "AUROC"):
        t.add_column(col, justify="right")
    f = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    for m, s in report["methods"].items():
        t.add_row(m, f(s["accuracy"]), f(s["forward_passes_mean"], 1), f(s["seconds_per_item"]),
                  f(s["evidence_hit_rate"]), f(s["accuracy_collapse_items"]), f(s["forward_passes_mean_easy"], 2),
                  f(s["auroc"]))
    Console().print(t)


def plot_bench(report: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m, s in report["methods"].items():
        ax.scatter(s["forward_passes_mean"], s["accuracy"], s=60, zorder=3)
        ax.annotate(m, (s["forward_passes_mean"], s["accuracy"]), textcoords="offset points", xytext=(5, 4), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("mean forward passes per item (log)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"SpotBench {report['split']} n={report['n_items']} seed={report['seed']} ({report['model']})", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
