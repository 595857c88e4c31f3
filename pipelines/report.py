"""A run's statistics (``summary.json``) and its human-readable report (``report.html``, ``entropy.png``)."""

from __future__ import annotations

import html

import numpy as np

from .storage import join, write_bytes, write_text


def summarise(table, run_id: str, items_in: int, seconds: float, model: str, policy: dict, extra: dict | None = None) -> dict:
    """Statistics of one run's result table (a pyarrow Table)."""
    df = table.to_pandas()
    ok = df[df["status"] == "ok"]
    n_ok = int(len(ok))
    ids = df["id"].tolist()
    summary = {
        "run_id": run_id,
        "items_in": int(items_in),
        "items_out": int(len(df)),
        "items_ok": n_ok,
        "items_error": int((df["status"] == "error").sum()),
        "duplicate_ids": int(len(ids) - len(set(ids))),
        "entropy_initial_mean": float(ok["entropy_initial"].mean()) if n_ok else None,
        "entropy_final_mean": float(ok["entropy_final"].mean()) if n_ok else None,
        "forward_passes_mean": float(ok["forward_passes"].mean()) if n_ok else None,
        "early_exit_rate": float((ok["forward_passes"] <= 1).mean()) if n_ok else None,
        "latency_ms_mean": float(ok["latency_ms"].mean()) if n_ok else None,
        "latency_ms_p95": float(np.percentile(ok["latency_ms"], 95)) if n_ok else None,
        "seconds": round(seconds, 2),
        "items_per_second": round(len(df) / seconds, 3) if seconds > 0 else None,
        "errors_by_reason": df[df["status"] == "error"]["error"].str.split(":").str[0].value_counts().to_dict(),
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
    rows = "".join(f"<tr><td>{esc(r.id)}</td><td>{esc(r.source)}</td><td>{esc(r.error)}</td></tr>"
                   for r in errors.itertuples())
    stats = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in summary.items() if k != "policy")
    run_id = esc(summary["run_id"])
    page = (f"<html><head><meta charset='utf-8'><title>SPOT-E run {run_id}</title></head><body>"
            f"<h1>SPOT-E run {run_id}</h1><img src='entropy.png'><h2>Summary</h2><table>{stats}</table>"
            f"<h2>Errors</h2><table><tr><th>id</th><th>source</th><th>error</th></tr>{rows}</table></body></html>")
    write_text(join(meta_uri, "report.html"), page, storage_options)


def esc(value) -> str:
    """Text from a user or a file (names, ids, questions, answers, error texts) as HTML text or attribute value."""
    return html.escape("" if value is None else str(value), quote=True)
