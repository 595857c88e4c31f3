"""A run's statistics (``summary.json``) and its human-readable report (``report.html``, ``entropy.png``)."""

from __future__ import annotations

import numpy as np

from .storage import join, write_bytes, write_text


def summarise(stats, run_id: str, items_in: int, seconds: float, model: str, policy: dict, extra: dict | None = None) -> dict:
    """``summary.json`` from a run's merged ``RunStats`` (pipelines.stats), never from its rows.

    Means are over ``ok`` rows; ``latency_ms_p95`` comes from a fixed log-spaced histogram (within 5 %).
    ``duplicate_ids`` is 0 for a committed run: the commit is refused otherwise.
    """
    n_ok = stats.ok
    by_status = dict(sorted(stats.by_status.items()))
    summary = {
        "run_id": run_id,
        "items_in": int(items_in),
        "items_out": int(stats.items),
        "items_ok": int(by_status.get("ok", 0)),
        "items_error": int(by_status.get("error", 0)),
        "items_by_status": by_status,
        "duplicate_ids": 0,
        "entropy_initial_mean": stats.mean("entropy_initial"),
        "entropy_final_mean": stats.mean("entropy_final"),
        "forward_passes_mean": stats.mean("forward_passes"),
        "early_exit_rate": stats.early_exit / n_ok if n_ok else None,
        "latency_ms_mean": stats.mean("latency_ms"),
        "latency_ms_p95": stats.latency_ms_quantile(0.95),
        "seconds": round(seconds, 2),
        "items_per_second": round(stats.items / seconds, 3) if seconds > 0 else None,
        "errors_by_reason": dict(sorted(stats.errors_by_reason.items(), key=lambda kv: -kv[1])),
        "model": model,
        "policy": policy,
    }
    summary.update(extra or {})
    return summary


def write_report(table, summary: dict, meta_uri: str, storage_options=None) -> None:
    """entropy.png (histograms before/after) and report.html (the numbers and a table of errors)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = table.to_pandas()
    ok = df[df["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    bins = np.linspace(0, max(0.1, float(np.nanmax(ok["entropy_initial"])) if len(ok) else 1.0), 25)
    axes[0].hist(ok["entropy_initial"], bins=bins, alpha=0.6, label="whole image")
    axes[0].hist(ok["entropy_final"], bins=bins, alpha=0.6, label="after SPOT-E")
    axes[0].set_xlabel("answer entropy (nats)")
    axes[0].legend()
    axes[1].hist(ok["forward_passes"], bins=20, color="tab:green")
    axes[1].set_xlabel("forward passes per item")
    fig.suptitle(f"run {summary['run_id']}: {summary['items_ok']} ok, {summary['items_error']} errors")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes(join(meta_uri, "entropy.png"), buf.getvalue(), storage_options)
    errors = df[df["status"] == "error"][["id", "source", "error"]].head(200)
    rows = "".join(f"<tr><td>{r.id}</td><td>{r.source}</td><td>{r.error}</td></tr>" for r in errors.itertuples())
    stats = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in summary.items() if k != "policy")
    html = (f"<html><head><meta charset='utf-8'><title>SPOT-E run {summary['run_id']}</title></head><body>"
            f"<h1>SPOT-E run {summary['run_id']}</h1><img src='entropy.png'><h2>Summary</h2><table>{stats}</table>"
            f"<h2>Errors</h2><table><tr><th>id</th><th>source</th><th>error</th></tr>{rows}</table></body></html>")
    write_text(join(meta_uri, "report.html"), html, storage_options)
