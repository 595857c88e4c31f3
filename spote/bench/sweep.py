"""The cost frontier: every search method at matched forward-pass budgets, on the same items.

    python -m spote.bench.sweep --split test --n 300 --seed 0 --budgets 8,16,32,64 \
        --out results/bench-budget-test-seed0.json          # also writes the .png beside it

For each budget B (and once at each method's defaults) ``run_bench`` holds every search method to B
forward passes per item (see ``spote.baselines``); the JSON has one point per method and budget
(accuracy, mean passes, seconds per item, AUROC, easy-item passes) and the plot draws accuracy
against mean passes per item, a line per method. Methods that stop early (spote, zoomeye) spend less
than B on average, so each point sits at the passes it really used.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..baselines import SEARCH_METHODS

# grid at its defaults reads every window (about 800 passes per item): its full-grid figure is in the seed
# tables of docs/benchmark.md, so the sweep runs it at the budgets only unless asked
DEFAULT_METHODS = tuple(m for m in SEARCH_METHODS if m != "grid")
POINT_KEYS = ("accuracy", "forward_passes_mean", "seconds_per_item", "auroc", "forward_passes_mean_easy",
              "accuracy_collapse_items")


def sweep(split: str, n: int, seed: int, budgets: list[int], methods=SEARCH_METHODS, out: Path = Path("sweep.json"),
          model=None, defaults: bool = True, progress: bool = True, jobs: int = 1, default_methods=None,
          keep: Path | None = None) -> dict:
    """Run ``run_bench`` once per budget (and once at the defaults, for ``default_methods``: every search
    method but grid unless given), ``jobs`` runs at a time; return and write the frontier.

    ``keep``: an earlier frontier JSON of the same split, n, seed, model and budgets whose methods not
    run here are copied into this one, so one method can be re-measured without re-running its peers
    (``kept_points`` raises ValueError when it does not match)."""
    kept = {} if keep is None else kept_points(keep, split, n, seed, budgets, model, methods)
    points: dict[str, list[dict]] = {m: [] for m in methods}
    runs = [*([None] if defaults else []), *budgets]  # the defaults first: the longest run (grid reads every window)
    out = Path(out)
    at_defaults = [m for m in methods if m in (DEFAULT_METHODS if default_methods is None else default_methods)]
    args = [(split, n, seed, at_defaults if b is None else list(methods), b, out.with_name(f"{out.stem}.{_tag(b)}.json"),
             model, progress) for b in runs]
    if jobs > 1:  # one process per budget: each loads its own model (the runs share nothing else)
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(jobs, len(args))) as pool:
            reports = pool.starmap(_run_one, args)
    else:
        reports = [_run_one(*a) for a in args]
    for b, report in zip(runs, reports):
        for m, s in report["methods"].items():
            points[m].append({"budget": b, **{k: s.get(k) for k in POINT_KEYS}})
    result = {"split": split, "n_items": n, "seed": seed, "model": str(model or "spote-tiny"), "budgets": budgets,
              "methods": {**kept, **points}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot_frontier(result, out.with_suffix(".png"))
    return result


def kept_points(keep: Path, split: str, n: int, seed: int, budgets: list[int], model, methods) -> dict:
    """The points of ``keep``'s methods not in ``methods``. Raises ValueError naming the file when it cannot
    be read, is not a frontier JSON, or was run on another split, n, seed, model or set of budgets."""
    try:
        old = json.loads(Path(keep).read_text())
        have = (old["split"], old["n_items"], old["seed"], sorted(old["budgets"]), old["model"])
        points = {m: list(pts) for m, pts in old["methods"].items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"--keep {keep}: not a readable budget-sweep JSON ({type(err).__name__}: {err})") from None
    want = (split, n, seed, sorted(budgets), str(model or "spote-tiny"))
    if have != want:
        raise ValueError(f"--keep {keep}: split/n/seed/budgets/model {'/'.join(map(str, have))} differ from this "
                         f"run's {'/'.join(map(str, want))}")
    return {m: pts for m, pts in points.items() if m not in methods}


def _tag(budget: int | None) -> str:
    return "default" if budget is None else f"b{budget}"


_ADAPTERS: dict = {}


def _run_one(split, n, seed, methods, budget, out, model, progress) -> dict:
    from ..loading import load_adapter
    from .run import run_bench

    if model not in _ADAPTERS:  # one model per process
        _ADAPTERS[model] = load_adapter(model)
    return run_bench(split=split, n=n, seed=seed, methods=methods, adapter=_ADAPTERS[model], budget=budget, plot=False,
                     out=out, progress=progress, model=model)


def plot_frontier(result: dict, path: Path) -> Path:
    """Accuracy against mean forward passes per item (log scale), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    # spote drawn last and widest, naive_entropy dashed over it: with the defaults they often coincide
    style = {"spote": {"lw": 3, "zorder": 3}, "naive_entropy": {"ls": "--", "zorder": 4}}
    for m, pts in sorted(result["methods"].items(), key=lambda kv: kv[0] in style):
        pts = sorted(pts, key=lambda p: p["forward_passes_mean"])
        ax.plot([p["forward_passes_mean"] for p in pts], [p["accuracy"] for p in pts], marker="o", label=m,
                **style.get(m, {}))
        for p in pts:
            if p["budget"] is None:
                ax.annotate("default", (p["forward_passes_mean"], p["accuracy"]), fontsize=7,
                            textcoords="offset points", xytext=(3, -9))
    ax.set_xscale("log")
    ax.set_xlabel("forward passes per item (mean)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"SpotBench {result['split']} n={result['n_items']} seed={result['seed']}: accuracy per forward pass")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(split: str = "test", n: int = 300, seed: int = 0, budgets: str = "8,16,32,64",
         methods: str = ",".join(SEARCH_METHODS), out: Path = Path("results/bench-budget.json"),
         model: str = typer.Option(None), defaults: bool = typer.Option(True, help="also run each method at its defaults"),
         jobs: int = typer.Option(1, help="budgets run at a time, one process and one model each (set OMP_NUM_THREADS)"),
         default_methods: str = typer.Option(",".join(DEFAULT_METHODS), help="methods also run at their defaults"),
         keep: Path = typer.Option(None, help="an earlier frontier JSON: its other methods' points are kept")):
    """Run the budget sweep and write JSON + plot."""
    try:
        bs = [int(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        raise typer.BadParameter(f"--budgets must be integers, got {budgets!r}")
    if any(b < 2 for b in bs):
        raise typer.BadParameter("every budget must be at least 2 forward passes (the whole image and one view)")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if keep is not None:
        try:
            kept_points(keep, split, n, seed, bs, model, names)  # fail before hours of runs, not after
        except ValueError as err:
            raise typer.BadParameter(str(err))
    sweep(split, n, seed, bs, names, out, model, defaults, jobs=jobs,
          default_methods=[m.strip() for m in default_methods.split(",") if m.strip()], keep=keep)


if __name__ == "__main__":
    typer.run(main)
