"""Run SpotBench: every method on the same items, the same model; a table, JSON and a plot.

Closed items are scored by accuracy; open items (``n_open``, codes read from document fields) by:

- exact match: the answer equals the code once both are normalised (``normalise_code``);
- character accuracy: ``1 - Levenshtein(answer, code) / max(len(answer), len(code))`` on the
  normalised strings, the normalised Levenshtein similarity of ANLS (Biten et al., ICCV 2019) without
  its 0.5 cut-off; 1 for a right answer, 0.75 for one character missing from four;
- anchor preservation: the baseline's anchors are the positions of its answer (greedy on the whole
  image) whose entropy is below ``PolicyConfig.anchor_epsilon`` nats; an anchor is kept when the
  method's answer has the same token at that position. The rate pools every anchor of every item
  (kept anchors / anchors); the same anchors serve every method, so ``baseline`` keeps all of them;
- exact match on collapse-tempting open items, forward passes per item, and the AUROC of the
  answer's confidence (its least sure token's p, ``spote.core.answer_confidence``) for exact match.
"""

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
from ..loading import ModelNotFound, load_adapter
from ..uris import replacing
from ..baselines import METHODS, run_method
from ..spotlight import Box, ViewRenderer
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


def normalise_code(text: str) -> str:
    """An open answer as it is compared: white space removed, upper case ("3a 9q" -> "3A9Q")."""
    return "".join(text.split()).upper()


def exact_match(answer: str, gold: str) -> bool:
    return normalise_code(answer) == normalise_code(gold)


def char_accuracy(answer: str, gold: str) -> float:
    """1 - Levenshtein distance / the longer length, on normalised strings; in [0, 1], 1 when both are empty."""
    from rapidfuzz.distance import Levenshtein

    return float(Levenshtein.normalized_similarity(normalise_code(answer), normalise_code(gold)))


def anchor_positions(entropies: list[float], epsilon: float) -> list[int]:
    """Positions of a greedy answer whose entropy (nats) is below ``epsilon``: the anchors."""
    return [i for i, h in enumerate(entropies) if h < epsilon]


def anchors_kept(base_ids: list[int], anchors: list[int], answer_ids: list[int] | None) -> int:
    """How many anchor positions the answer's tokens keep (same token at the same position; none
    when the method returned no tokens)."""
    answer_ids = answer_ids or []
    return sum(1 for i in anchors if i < len(answer_ids) and answer_ids[i] == base_ids[i])


def _mean(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarise(rows: list[dict]) -> dict:
    """Closed-set figures over the closed rows, and ``open`` (``summarise_open``) over the open ones."""
    closed = [r for r in rows if not r.get("open")]
    return {**summarise_closed(closed), "open": summarise_open([r for r in rows if r.get("open")])}


def summarise_open(rows: list[dict]) -> dict:
    """Open items: exact match, character accuracy, anchor preservation (pooled over every anchor),
    exact match on the collapse-tempting ones, passes and AUROC; every figure None when there are none."""
    collapse = [r["correct"] for r in rows if r["collapse"]]
    n_anchors = sum(r["anchors"] for r in rows)
    by_variant = defaultdict(list)
    for r in rows:
        by_variant[r["variant"]].append(r["correct"])
    return {
        "n": len(rows),
        "exact_match": _mean([r["correct"] for r in rows]),
        "char_accuracy": _mean([r["char_accuracy"] for r in rows]),
        "anchor_preservation": sum(r["anchors_kept"] for r in rows) / n_anchors if n_anchors else None,
        "n_anchor_positions": n_anchors,
        "exact_match_collapse_items": _mean(collapse),
        "n_collapse_items": len(collapse),
        "forward_passes_mean": _mean([r["forward_passes"] for r in rows]),
        "auroc": auroc([r["confidence"] for r in rows], [r["correct"] for r in rows]) if rows else None,
        "exact_match_by_variant": {k: float(np.mean(v)) for k, v in sorted(by_variant.items())},
    }


def summarise_closed(rows: list[dict]) -> dict:
    if not rows:
        return {"accuracy": None, "forward_passes_mean": None, "seconds_per_item": None, "items_per_second": None,
                "evidence_hit_rate": None, "accuracy_by_evidence_size": {}, "n_by_evidence_size": {},
                "accuracy_by_kind": {}, "accuracy_collapse_items": None, "n_collapse_items": 0,
                "forward_passes_mean_easy": None, "auroc": None}
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


def run_bench(split="test", n=600, seed=0, methods=METHODS, out: Path = Path("out/bench.json"), model=None,
              corrupt="none", mode="zoom+context", plot=True, cfg: PolicyConfig | None = None, progress=True,
              device: str | None = None, dtype: str | None = None, budget: int | None = None, adapter=None,
              revision: str | None = None, endpoint: str | None = None, endpoint_options: dict | None = None,
              n_open: int = 0, trust_remote_code: bool = False) -> dict:
    """Every method on the same SpotBench items; with ``budget`` every search method is held to that many
    forward passes per item (matched cost), else each runs at its defaults. ``n_open`` open items follow
    the ``n`` closed ones; each method's closed-set figures cover the closed items only, its ``open``
    figures the open ones. Writes ``out`` (JSON), the per-item rows beside it (``.items.jsonl``) and,
    with ``plot``, accuracy against passes (``.png``)."""
    methods = [m.strip() for m in methods if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; expected some of {METHODS}")
    cfg = cfg or PolicyConfig(mode=mode, seed=seed)
    if budget is not None:
        cfg = replace(cfg, budget=budget)
    adapter = adapter or _load(model, device=device, dtype=dtype, revision=revision, endpoint=endpoint,
                               endpoint_options=endpoint_options, trust_remote_code=trust_remote_code)
    rows = {m: [] for m in methods}
    t_start = time.time()
    with GpuMemoryPeak() as gpu:
        _run_items(adapter, split, n, seed, methods, corrupt, cfg, rows, progress, budget, n_open)
    report = {
        "n_items": n, "n_open_items": n_open, "seed": seed, "split": split, "model": getattr(adapter, "name", str(model or "spote-tiny")),
        "corrupt": corrupt, "mode": mode, "budget": budget, "policy": cfg.__dict__,
        "wall_seconds": round(time.time() - t_start, 1), "device": str(adapter.device),
        "dtype": str(next(adapter.model.parameters()).dtype).removeprefix("torch.") if hasattr(adapter, "model") else None,
        "gpu_memory_torch_peak_mb": torch_peak_mb(), "gpu_memory_smi_peak_mb": gpu.peak_mb,
        "environment": environment(),
        "methods": {m: summarise(r) for m, r in rows.items()},
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as part:
        part.write_text(json.dumps(report, indent=2))
    with replacing(out.with_suffix(".items.jsonl")) as part:
        part.write_text("\n".join(json.dumps({"method": m, **r}) for m, rs in rows.items() for r in rs))
    print_table(report)
    if plot:
        plot_bench(report, out.with_suffix(".png"))
    return report


def _load(model, **kwargs):
    """``load_adapter``, a checkpoint that transformers refuses in its own words (a tokenizer it cannot
    read, say) given as one line, as ``spote ask`` gives it.

    Raises:
        ModelNotFound, ValueError, EndpointError: as ``load_adapter``; ModelNotFound for a checkpoint
            transformers refuses otherwise. Out of memory and a missing package are raised as they are:
            they are not the model's fault, and their own message says what to change.
    """
    import torch

    from ..adapters.endpoint import EndpointError

    try:
        return load_adapter(model, **kwargs)
    except (ModelNotFound, ValueError, EndpointError, ImportError, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as err:
        text = str(err).strip().splitlines()
        raise ModelNotFound(f"cannot load the model {model or 'spote-tiny'}: "
                            f"{text[0] if text else type(err).__name__}") from err


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


def _run_items(adapter, split, n, seed, methods, corrupt, cfg, rows, progress, budget=None, n_open=0) -> None:
    for item in tqdm(spotbench(split, n, seed, n_open=n_open), total=n + n_open, desc=f"SpotBench {split} seed={seed}",
                     disable=not progress):
        image = corrupt_image(item.image, corrupt, seed=zlib.crc32(item.id.encode()))  # str hash() is salted per process
        base = None
        if item.open:  # the baseline's greedy reading of the whole image: its anchors, shared by every method
            base = adapter.generate([ViewRenderer(image, adapter.input_size).global_view], item.question)
            anchors = anchor_positions(base.entropies, cfg.anchor_epsilon)
        spote_passes = None
        for m in sorted(methods, key=lambda x: x != "spote"):  # spote first: random gets its budget
            kw = {"evidence": item.evidence, "max_passes": budget}
            if m == "random":  # at the defaults: spote's own passes on this item
                kw["n_windows"] = budget or (spote_passes if spote_passes is not None else cfg.budget)
            res = run_method(m, adapter, image, item.question, item.choices, replace(cfg, seed=seed), **kw)
            if m == "spote":
                spote_passes = res.forward_passes
            row = {
                "id": item.id, "kind": item.kind, "correct": res.answer == item.answer, "confidence": res.confidence,
                "forward_passes": res.forward_passes, "seconds": res.seconds, "collapse": item.collapse_tempting,
                "easy": item.easy, "size_bucket": item.size_bucket, "has_evidence": item.evidence is not None,
                "hit": evidence_hit(res.evidence_box, item.evidence, item.image.size), "answer": res.answer,
            }
            if item.open:
                row.update(open=True, variant=item.meta["variant"], gold=item.answer,
                           correct=exact_match(res.answer, item.answer),
                           char_accuracy=round(char_accuracy(res.answer, item.answer), 6), anchors=len(anchors),
                           anchors_kept=anchors_kept(base.token_ids, anchors, res.answer_token_ids))
                if res.reward_standout is not None:  # after a search that beat the whole image (1e6: infinitely far)
                    row["standout"] = res.reward_standout
                if res.token_confidences is not None:
                    row["token_confidences"] = [round(p, 6) for p in res.token_confidences]
                if res.answer_readings:  # every place read after the search: its text and log p (nats)
                    row["readings"] = [[text, round(float(sum(lps)), 5)] for _, text, lps in res.answer_readings]
            rows[m].append(row)


def print_table(report: dict) -> None:
    t = Table(title=f"SpotBench {report['split']} n={report['n_items']} seed={report['seed']} corrupt={report['corrupt']}")
    for col in ("method", "accuracy", "passes", "s/item", "hit", "collapse acc", "easy passes", "AUROC"):
        t.add_column(col, justify="right")
    f = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    for m, s in report["methods"].items():
        t.add_row(m, f(s["accuracy"]), f(s["forward_passes_mean"], 1), f(s["seconds_per_item"]),
                  f(s["evidence_hit_rate"]), f(s["accuracy_collapse_items"]), f(s["forward_passes_mean_easy"], 2),
                  f(s["auroc"]))
    if report["n_items"]:  # --n 0 --open-items K: no closed-set item to show
        Console().print(t)
    opened = {m: s["open"] for m, s in report["methods"].items() if s.get("open", {}).get("n")}
    if opened:
        t = Table(title=f"open items n={next(iter(opened.values()))['n']}")
        for col in ("method", "exact match", "char acc", "anchors kept", "collapse EM", "passes", "AUROC"):
            t.add_column(col, justify="right")
        for m, o in opened.items():
            t.add_row(m, f(o["exact_match"]), f(o["char_accuracy"]), f(o["anchor_preservation"]),
                      f(o["exact_match_collapse_items"]), f(o["forward_passes_mean"], 1), f(o["auroc"]))
        Console().print(t)


def plot_bench(report: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m, s in report["methods"].items():
        if s["accuracy"] is None:  # open items only
            continue
        ax.scatter(s["forward_passes_mean"], s["accuracy"], s=60, zorder=3)
        ax.annotate(m, (s["forward_passes_mean"], s["accuracy"]), textcoords="offset points", xytext=(5, 4), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("mean forward passes per item (log)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"SpotBench {report['split']} n={report['n_items']} seed={report['seed']} ({report['model']})", fontsize=10,
                 parse_math=False)  # a model path is no TeX math
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with replacing(out) as part:
        fig.savefig(part, dpi=110)
    plt.close(fig)
    return out
