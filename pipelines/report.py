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
        "items_skipped": int((df["status"] == "skipped").sum()),
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
        "skipped_by_reason": df[df["status"] == "skipped"]["error"].str.split(":").str[0].value_counts().to_dict(),
        "model": model,
        "policy": policy,
    }
    summary.update(extra or {})
    return summary


# The report's pictures: how many rows the gallery shows (each re-read from its source), how many scenes
GALLERY_UNSURE = 12
GALLERY_SURE = 6
SURE_CONFIDENCE = 0.9
MAX_SCENES = 12
PROBLEM_ROWS_SHOWN = 25  # rows listed per reason


def write_report(table, summary: dict, meta_uri: str, storage_options=None, loader=None,
                 timeout_s: float | None = 600.0) -> None:
    """``entropy.png`` (histograms) and ``report.html``, a self-contained page a reviewer works from.

    The page (no network fetches: pictures are ``data:`` URIs, the style is inline): the run's figures
    for people; entropy before/after and forward-pass histograms; answer counts per question; a gallery
    of the least confident answers and a sample of confident ones (thumbnail with the evidence box,
    question, answer, confidence, link to the source), re-read with ``loader`` ((class, kwargs), the
    job's loader) for those rows only; error and skipped rows grouped by reason; for tiled scenes an
    overview per scene and question with the "yes" tiles and their evidence. Every value that comes from
    a user or a file is escaped.
    """
    from .gallery import png_uri

    df = table.to_pandas()
    plots = _histograms(df, summary)
    write_bytes(join(meta_uri, "entropy.png"), plots, storage_options)
    sections = [_figures_section(df, summary), f"<section><h2>Entropy and passes</h2><img class='plot' src='{png_uri(plots)}' "
                f"alt='histograms of answer entropy before and after SPOT-E, and of forward passes per item'></section>",
                _answers_section(df), _gallery_section(table, df, loader, timeout_s, summary),
                _problems_section(df)]
    if {"scene", "tile_col_off", "tile_row_off", "tile_width", "tile_height"} <= set(df.columns):
        sections.append(_scenes_section(df, storage_options, (loader or (None, {}))[1].get("bands")))
    run_id = esc(summary.get("run_id"))
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>SPOT-E run {run_id}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{STYLE}</style></head><body>"
            f"<header><h1>SPOT-E run <span class='runid'>{run_id}</span></h1>"
            f"<p class='lede'>{_lede(summary)}</p></header>{''.join(sections)}</body></html>")
    write_text(join(meta_uri, "report.html"), page, storage_options)


def esc(value) -> str:
    """Text from a user or a file (names, ids, questions, answers, error texts) as HTML text or attribute value."""
    return html.escape("" if value is None else str(value), quote=True)


STYLE = """
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1240px;padding:16px 24px;
color:#1d2228;background:#fafbfc}
h1{font-size:24px;margin:8px 0 2px}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #d8dde3;padding-bottom:4px}
h3{font-size:16px;margin:16px 0 6px}.lede{color:#4a5560;margin:0 0 8px}.runid{font-family:ui-monospace,monospace}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px;border-bottom:1px solid #e6e9ed;text-align:left;
vertical-align:top}th{font-weight:600;color:#3a444e}td.num{text-align:right;font-variant-numeric:tabular-nums}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:10px}
.figure{background:#fff;border:1px solid #e1e5ea;border-radius:6px;padding:8px 12px}
.figure .v{font-size:20px;font-weight:600}.figure .k{color:#5b6670;font-size:13px}
img.plot{max-width:100%;background:#fff;border:1px solid #e1e5ea}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:12px}
.card{background:#fff;border:1px solid #e1e5ea;border-radius:6px;padding:8px;overflow-wrap:anywhere}
.card img{width:100%;height:auto;display:block;border-radius:3px;background:#eee}
.card .q{margin:6px 0 2px;color:#333}.card .a{font-weight:600}.card .meta{color:#5b6670;font-size:13px}
.noimg{height:120px;display:flex;align-items:center;justify-content:center;background:#f0f2f4;color:#6b7680;
font-size:13px;text-align:center;padding:6px}
.bar{display:inline-block;height:10px;background:#4c8bd6;border-radius:2px;vertical-align:middle}
.scene img{max-width:100%;border:1px solid #e1e5ea}.muted{color:#6b7680}code{font-family:ui-monospace,monospace}
"""


def fmt_count(n) -> str:
    return "-" if n is None else f"{int(n):,}"


def fmt_number(x, digits: int = 3) -> str:
    """A float for people: a few significant digits, no 0.9672000000000001; '-' for missing."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    x = float(x)
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    mag = abs(x)
    decimals = 0 if mag >= 100 else 1 if mag >= 10 else 2 if mag >= 1 else digits
    return f"{x:,.{decimals}f}"


def fmt_percent(x) -> str:
    return "-" if x is None or not np.isfinite(float(x)) else f"{100 * float(x):.1f} %"


def fmt_seconds(s) -> str:
    if s is None:
        return "-"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {sec:02d} s"


def _lede(summary: dict) -> str:
    parts = [f"{fmt_count(summary.get('items_in'))} items in", f"{fmt_count(summary.get('items_ok'))} answered",
             f"{fmt_count(summary.get('items_error'))} errors"]
    if summary.get("items_skipped"):
        parts.append(f"{fmt_count(summary['items_skipped'])} skipped")
    return esc(", ".join(parts) + f"; model {summary.get('model')}; {fmt_seconds(summary.get('seconds'))}")


def _figures_section(df, summary: dict) -> str:
    skipped = int((df["status"] == "skipped").sum()) if "status" in df else 0
    figures = [
        ("items in", fmt_count(summary.get("items_in"))), ("answered", fmt_count(summary.get("items_ok"))),
        ("errors", fmt_count(summary.get("items_error"))), ("skipped", fmt_count(skipped)),
        ("answer entropy, whole image (mean)", _nats(summary.get("entropy_initial_mean"))),
        ("answer entropy, after SPOT-E (mean)", _nats(summary.get("entropy_final_mean"))),
        ("forward passes per item (mean)", fmt_number(summary.get("forward_passes_mean"), 2)),
        ("answered in one pass", fmt_percent(summary.get("early_exit_rate"))),
        ("latency per item (mean)", _ms(summary.get("latency_ms_mean"))),
        ("latency per item (95th percentile)", _ms(summary.get("latency_ms_p95"))),
        ("wall time", fmt_seconds(summary.get("seconds"))),
        ("items per second", fmt_number(summary.get("items_per_second"), 2)),
    ]
    cards = "".join(f"<div class='figure'><div class='v'>{esc(v)}</div><div class='k'>{esc(k)}</div></div>"
                    for k, v in figures)
    shown = {"run_id", "items_in", "items_out", "items_ok", "items_error", "items_skipped", "entropy_initial_mean",
             "entropy_final_mean", "forward_passes_mean", "early_exit_rate", "latency_ms_mean", "latency_ms_p95",
             "seconds", "items_per_second", "policy", "errors_by_reason", "skipped_by_reason"}
    rest = "".join(f"<tr><th>{esc(k.replace('_', ' '))}</th><td>{esc(_fmt_any(v))}</td></tr>"
                   for k, v in summary.items() if k not in shown)
    policy = summary.get("policy") or {}
    pol = ", ".join(f"{k}={_fmt_any(v)}" for k, v in policy.items())
    return (f"<section><h2>Figures</h2><div class='figures'>{cards}</div>"
            f"<h3>Run</h3><table>{rest}</table><p class='muted'>policy: <code>{esc(pol)}</code></p></section>")


def _nats(x) -> str:
    return "-" if x is None else f"{fmt_number(x, 3)} nats"


def _ms(x) -> str:
    return "-" if x is None else f"{fmt_number(x, 1)} ms"


def _fmt_any(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return fmt_count(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt_any(x)}" for k, x in v.items()) or "-"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt_any(x) for x in v)
    return str(v)


def _histograms(df, summary: dict) -> bytes:
    """PNG: answer entropy before/after SPOT-E, and forward passes per item, over the answered rows."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    top = max(0.1, float(np.nanmax(ok["entropy_initial"]))) if len(ok) else 1.0
    bins = np.linspace(0, top, 25)
    axes[0].hist(ok["entropy_initial"], bins=bins, alpha=0.6, label="whole image")
    axes[0].hist(ok["entropy_final"], bins=bins, alpha=0.6, label="after SPOT-E")
    axes[0].set_xlabel("answer entropy (nats)")
    axes[0].set_ylabel("items")
    axes[0].legend()
    passes = ok["forward_passes"].to_numpy() if len(ok) else np.zeros(0)
    edges = np.arange(0, (passes.max() if len(passes) else 1) + 2) - 0.5
    if len(edges) > 41:
        edges = np.linspace(edges[0], edges[-1], 41)
    axes[1].hist(passes, bins=edges, color="tab:green")
    axes[1].set_xlabel("forward passes per item")
    axes[1].set_ylabel("items")
    axes[1].xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"{fmt_count(summary.get('items_ok'))} answered, {fmt_count(summary.get('items_error'))} errors")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _answers_section(df) -> str:
    ok = df[df["status"] == "ok"]
    if not len(ok):
        return "<section><h2>Answers per question</h2><p class='muted'>no answered items</p></section>"
    blocks = []
    for question, grp in ok.groupby("question", sort=True):
        counts = grp["answer"].value_counts()
        top = int(counts.iloc[0])
        rows = "".join(
            f"<tr><td>{esc(ans)}</td><td class='num'>{fmt_count(n)}</td><td class='num'>{fmt_percent(n / len(grp))}</td>"
            f"<td><span class='bar' style='width:{max(2, round(160 * n / top))}px'></span></td></tr>"
            for ans, n in counts.head(20).items())
        more = f"<p class='muted'>{len(counts) - 20} more answers</p>" if len(counts) > 20 else ""
        blocks.append(f"<h3>{esc(question)}</h3><table><tr><th>answer</th><th>items</th><th>share</th><th></th></tr>"
                      f"{rows}</table>{more}")
    return f"<section><h2>Answers per question</h2>{''.join(blocks)}</section>"


def pick_gallery(df, run_id: str, unsure: int = GALLERY_UNSURE, sure: int = GALLERY_SURE):
    """(row positions of the least confident answered rows, a sample of the confident ones): a top-k and a
    seeded sample over the confidence column, so only these rows' sources are read again."""
    conf = df["confidence"].where(df["status"] == "ok")
    answered = conf.dropna()
    low = answered.nsmallest(min(unsure, max(1, len(answered) // 2))).index.tolist()  # a small run keeps some sure ones
    pool = answered[(answered >= SURE_CONFIDENCE) & ~answered.index.isin(low)]
    seed = int.from_bytes(str(run_id).encode()[:8].ljust(8, b"\0"), "little") % (2 ** 32)
    high = pool.sample(min(sure, len(pool)), random_state=seed).sort_values(ascending=False).index.tolist()
    return low, high


def _gallery_section(table, df, loader, timeout_s, summary) -> str:
    from .gallery import row_thumbnails

    low, high = pick_gallery(df, summary.get("run_id", ""))
    positions = [df.index.get_loc(i) for i in low + high]
    rows = table.take(positions).to_pylist() if positions else []
    pictures = {}
    if loader is not None and rows:
        try:
            pictures = row_thumbnails(rows, loader, timeout_s)
        except Exception as err:  # the report never costs the run: cards without pictures, saying why
            print(f"[report] thumbnails skipped: {type(err).__name__}: {err}")
    by_id = {r["id"]: r for r in rows}

    def cards(index) -> str:
        return "".join(_card(by_id[df.at[i, "id"]], pictures.get(df.at[i, "id"])) for i in index) or \
            "<p class='muted'>none</p>"

    return (f"<section><h2>Gallery</h2><p class='muted'>Each picture is what the model was given; the cyan box is "
            f"the view the answer came from (no box: the whole image answered).</p>"
            f"<h3>Least confident answers: check these first</h3>"
            f"<div class='cards'>{cards(low)}</div>"
            f"<h3>A sample of confident answers (confidence &ge; {fmt_percent(SURE_CONFIDENCE)})</h3>"
            f"<div class='cards'>{cards(high)}</div></section>")


def source_href(source: str) -> str:
    """A link to the source: file:// for local paths; other URIs (s3://, https://) as they are."""
    from pathlib import Path

    if "://" in source:
        return source
    return Path(source).absolute().as_uri()


def _card(row: dict, picture) -> str:
    if picture is not None and picture.uri:
        img = (f"<img src='{picture.uri}' width='{picture.width}' height='{picture.height}' "
               f"alt='{esc(row['id'])}' title='{esc(picture.note)}'>")
    else:
        img = f"<div class='noimg'>{esc(picture.note if picture else 'no preview')}</div>"
    where = _where(row)
    return (f"<div class='card'>{img}<div class='q'>{esc(row.get('question'))}</div>"
            f"<div><span class='a'>{esc(row.get('answer'))}</span> &middot; confidence {fmt_percent(row.get('confidence'))}"
            f" &middot; {_passes(row.get('forward_passes'))}</div>"
            f"<div class='meta'><a href='{esc(source_href(str(row.get('source'))))}'>{esc(row.get('source'))}</a>"
            f"{esc(where)}<br>id <code>{esc(row.get('id'))}</code></div></div>")


def _passes(n) -> str:
    return f"{fmt_count(n)} forward pass" + ("" if n == 1 else "es")


def _where(row: dict) -> str:
    if row.get("page") is not None and row.get("document") is not None:
        return f", page {row['page']}"
    if row.get("tile_width"):
        return f", tile at column {row.get('tile_col_off')}, row {row.get('tile_row_off')}"
    return ""


def _problems_section(df) -> str:
    bad = df[df["status"].isin(["error", "skipped"])]
    if not len(bad):
        return "<section><h2>Errors and skipped items</h2><p class='muted'>none</p></section>"
    blocks = []
    for status in ("error", "skipped"):
        part = bad[bad["status"] == status]
        if not len(part):
            continue
        reasons = part["error"].fillna("").str.split(":").str[0].replace("", "no reason given")
        for reason, grp in part.groupby(reasons, sort=False):
            shown = grp.head(PROBLEM_ROWS_SHOWN)
            rows = "".join(f"<tr><td><code>{esc(r.id)}</code></td><td>{esc(r.source)}</td><td>{esc(r.error)}</td></tr>"
                           for r in shown.itertuples())
            more = (f"<p class='muted'>{fmt_count(len(grp) - len(shown))} more</p>" if len(grp) > len(shown) else "")
            blocks.append((len(grp), f"<h3>{esc(status)}: {esc(reason)} ({fmt_count(len(grp))})</h3><table><tr><th>id</th>"
                                     f"<th>source</th><th>reason</th></tr>{rows}</table>{more}"))
    blocks.sort(key=lambda b: -b[0])
    return f"<section><h2>Errors and skipped items</h2>{''.join(b for _, b in blocks)}</section>"


def _box_or_none(box):
    return None if box is None or len(box) != 4 else [int(v) for v in box]


def _scenes_section(df, storage_options, bands) -> str:
    from .gallery import draw_scene, scene_overview

    blocks = []
    scenes = df.groupby("source", sort=True)
    for n, (source, grp) in enumerate(scenes):
        if n == MAX_SCENES:
            blocks.append(f"<p class='muted'>{fmt_count(scenes.ngroups - MAX_SCENES)} more scenes not shown</p>")
            break
        try:
            overview, scale = scene_overview(str(source), storage_options, bands)
        except Exception as err:  # an unreadable scene has its error rows; the report goes on
            blocks.append(f"<h3>{esc(source)}</h3><p class='muted'>no overview: {esc(type(err).__name__)}: {esc(err)}</p>")
            continue
        for question, q in grp.groupby("question", sort=True):
            yes = q[(q["status"] == "ok") & (q["answer"].astype(str).str.lower() == "yes")]
            tiles = [([int(r.tile_col_off), int(r.tile_row_off), int(r.tile_width), int(r.tile_height)],
                      _box_or_none(getattr(r, "evidence_box", None))) for r in yes.itertuples()]
            pic = draw_scene(overview, scale, tiles)
            blocks.append(f"<div class='scene'><h3>{esc(source)}: {esc(question)}</h3><img src='{pic.uri}' "
                          f"width='{pic.width}' height='{pic.height}' alt='{esc(source)}'>"
                          f"<p class='muted'>{fmt_count(len(yes))} of {fmt_count(len(q))} tiles answered yes; "
                          f"{esc(pic.note)}</p></div>")
    return f"<section><h2>Scenes</h2>{''.join(blocks)}</section>"
