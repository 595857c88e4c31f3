"""A run's statistics (``summary.json``) and its human-readable report (``report.html``, ``entropy.png``)."""

from __future__ import annotations

import html

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
        "items_skipped": int(by_status.get("skipped", 0)),
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
        "skipped_by_reason": dict(sorted(stats.skipped_by_reason.items(), key=lambda kv: -kv[1])),
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


def write_report(stats, summary: dict, meta_uri: str, storage_options=None, loader=None,
                 timeout_s: float | None = 600.0, results=None) -> None:
    """``entropy.png`` (histograms) and ``report.html``, a self-contained page a reviewer works from.

    The page (no network fetches: pictures are ``data:`` URIs, the style is inline): the run's figures
    for people; entropy before/after and forward-pass histograms; answer counts per question; a gallery
    of the least confident answers and a sample of confident ones (thumbnail with the evidence box,
    question, field name and answer, confidence, an open answer's per-token confidences, link to the
    source), re-read with ``loader`` ((class, kwargs), the job's loader) for those rows only; error and
    skipped rows grouped by reason; for tiled scenes an overview per scene and question with the "yes"
    tiles and their evidence. Every value that comes from a user or a file is escaped.

    ``stats`` is the run's ``RunStats`` (counts, histograms and capped samples, never the whole table);
    ``results`` (a ``RunResults``), where given, is queried for the "yes" tiles of at most ``MAX_SCENES``
    scenes.
    """
    from .gallery import png_uri

    import pandas as pd

    sample = stats.sample_rows()
    df = pd.DataFrame(sample)
    plots = _histograms(stats, summary)
    write_bytes(join(meta_uri, "entropy.png"), plots, storage_options)
    sections = [_figures_section(df, summary), f"<section><h2>Entropy and passes</h2><img class='plot' src='{png_uri(plots)}' "
                f"alt='histograms of answer entropy before and after SPOT-E, and of forward passes per item'></section>",
                _answers_section(stats), _gallery_section(sample, df, loader, timeout_s, summary),
                _problems_section(stats)]
    if results is not None and {"scene", "tile_col_off", "tile_row_off", "tile_width", "tile_height"} <= set(df.columns):
        sections.append(_scenes_section(_scene_rows(results), storage_options, (loader or (None, {}))[1].get("bands")))
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
.card .q{margin:6px 0 2px;color:#333}.card .a{font-weight:600}.card .field{font-family:ui-monospace,monospace;color:#3a444e}.card .meta{color:#5b6670;font-size:13px}
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
    skipped = int(summary.get("items_skipped") or 0)
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


def _histograms(stats, summary: dict) -> bytes:
    """PNG: answer entropy before/after SPOT-E, and forward passes per item, over the answered rows
    (from the run's fixed-bin histograms, so every row counts and none is held in memory)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .stats import ENTROPY_EDGES

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    used = np.flatnonzero(stats.entropy_initial_hist + stats.entropy_final_hist)
    top = int(used.max()) + 2 if len(used) else 10
    edges = ENTROPY_EDGES[:top + 1]
    axes[0].stairs(stats.entropy_initial_hist[:top], edges, fill=True, alpha=0.6, label="whole image")
    axes[0].stairs(stats.entropy_final_hist[:top], edges, fill=True, alpha=0.6, label="after SPOT-E")
    axes[0].set_xlabel("answer entropy (nats)")
    axes[0].set_ylabel("items")
    axes[0].legend()
    counts = stats.forward_passes_counts
    if counts:
        xs = sorted(counts)
        axes[1].bar(xs, [counts[x] for x in xs], width=0.9 if len(xs) < 60 else 1.0, color="tab:green")
    axes[1].set_xlabel("forward passes per item")
    axes[1].set_ylabel("items")
    axes[1].xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"{fmt_count(summary.get('items_ok'))} answered, {fmt_count(summary.get('items_error'))} errors")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _answers_section(stats) -> str:
    answers = stats.answers
    if not answers:
        return "<section><h2>Answers per question</h2><p class='muted'>no answered items</p></section>"
    blocks = []
    for question in sorted(answers):
        counts = sorted(answers[question].items(), key=lambda kv: -kv[1])
        total, top = sum(n for _, n in counts), counts[0][1]
        rows = "".join(
            f"<tr><td>{esc(ans)}</td><td class='num'>{fmt_count(n)}</td><td class='num'>{fmt_percent(n / total)}</td>"
            f"<td><span class='bar' style='width:{max(2, round(160 * n / top))}px'></span></td></tr>"
            for ans, n in counts[:20])
        more = f"<p class='muted'>{len(counts) - 20} more answers</p>" if len(counts) > 20 else ""
        blocks.append(f"<h3>{esc(question)}</h3><table><tr><th>answer</th><th>items</th><th>share</th><th></th></tr>"
                      f"{rows}</table>{more}")
    return f"<section><h2>Answers per question</h2>{''.join(blocks)}</section>"


def pick_gallery(df, run_id: str, unsure: int = GALLERY_UNSURE, sure: int = GALLERY_SURE):
    """(row positions of the least confident answered rows, a sample of the confident ones): a top-k and a
    seeded sample over the confidence column, so only these rows' sources are read again."""
    import pandas as pd

    # numbers, whatever the rows held: a run with no answered row has only nulls there (an object column)
    conf = pd.to_numeric(df["confidence"], errors="coerce").where(df["status"] == "ok")
    answered = conf.dropna()
    low = answered.nsmallest(min(unsure, max(1, len(answered) // 2))).index.tolist()  # a small run keeps some sure ones
    pool = answered[(answered >= SURE_CONFIDENCE) & ~answered.index.isin(low)]
    seed = int.from_bytes(str(run_id).encode()[:8].ljust(8, b"\0"), "little") % (2 ** 32)
    high = pool.sample(min(sure, len(pool)), random_state=seed).sort_values(ascending=False).index.tolist()
    return low, high


def _gallery_section(sample: list[dict], df, loader, timeout_s, summary) -> str:
    from .gallery import row_thumbnails

    if not len(df) or "confidence" not in df:
        return "<section><h2>Gallery</h2><p class='muted'>no answered items</p></section>"
    low, high = pick_gallery(df, summary.get("run_id", ""))
    rows = [sample[df.index.get_loc(i)] for i in low + high]
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
    field = f"<span class='field'>{esc(row['field'])}</span>: " if row.get("field") else ""
    return (f"<div class='card'>{img}<div class='q'>{esc(row.get('question'))}</div>"
            f"<div>{field}<span class='a'>{esc(row.get('answer'))}</span> &middot; confidence "
            f"{fmt_percent(row.get('confidence'))} &middot; {_passes(row.get('forward_passes'))}</div>"
            f"{_token_confidences(row.get('token_confidences'))}"
            f"<div class='meta'><a href='{esc(source_href(str(row.get('source'))))}'>{esc(row.get('source'))}</a>"
            f"{esc(where)}<br>id <code>{esc(row.get('id'))}</code></div></div>")


def _token_confidences(values) -> str:
    """An open answer's per-token confidences, in order, as a line of percentages ('' for closed answers)."""
    if values is None or not len(values):
        return ""
    return f"<div class='meta'>per token: {esc(', '.join(fmt_percent(v) for v in values))}</div>"


def _passes(n) -> str:
    return f"{fmt_count(n)} forward pass" + ("" if n == 1 else "es")


def _where(row: dict) -> str:
    if row.get("page") is not None and row.get("document") is not None:
        return f", page {row['page']}"
    if row.get("tile_width"):
        return f", tile at column {row.get('tile_col_off')}, row {row.get('tile_row_off')}"
    return ""


def _problems_section(stats) -> str:
    """Error and skipped rows grouped by reason: every row counted, up to a few examples listed per reason."""
    blocks = []
    for status, counts, examples in (("error", stats.errors_by_reason, stats.error_examples),
                                     ("skipped", stats.skipped_by_reason, stats.skipped_examples)):
        for reason, n in counts.items():
            shown = examples.get(reason, [])[:PROBLEM_ROWS_SHOWN]
            rows = "".join(f"<tr><td><code>{esc(r.get('id'))}</code></td><td>{esc(r.get('source'))}</td>"
                           f"<td>{esc(r.get('error'))}</td></tr>" for r in shown)
            more = f"<p class='muted'>{fmt_count(n - len(shown))} more</p>" if n > len(shown) else ""
            blocks.append((n, f"<h3>{esc(status)}: {esc(reason)} ({fmt_count(n)})</h3><table><tr><th>id</th>"
                              f"<th>source</th><th>reason</th></tr>{rows}</table>{more}"))
    if not blocks:
        return "<section><h2>Errors and skipped items</h2><p class='muted'>none</p></section>"
    blocks.sort(key=lambda b: -b[0])
    return f"<section><h2>Errors and skipped items</h2>{''.join(b for _, b in blocks)}</section>"


SCENE_COLUMNS = ["source", "question", "status", "answer", "evidence_box", "tile_col_off", "tile_row_off",
                 "tile_width", "tile_height"]


def _scene_rows(results):
    """The rows the scene overviews draw, for the first ``MAX_SCENES`` scenes only (a Ray Data query)."""
    import pandas as pd

    ds = results.dataset(SCENE_COLUMNS)
    scenes = sorted(ds.unique("source"))  # scenes are sources: few, next to tiles
    first = set(scenes[:MAX_SCENES])
    rows = ds.filter(lambda r: r["source"] in first).take_all()
    df = pd.DataFrame(rows, columns=SCENE_COLUMNS)
    df.attrs["scenes_total"] = len(scenes)
    return df


def _box_or_none(box):
    return None if box is None or len(box) != 4 else [int(v) for v in box]


def _scenes_section(df, storage_options, bands) -> str:
    from .gallery import draw_scene, scene_overview

    blocks = []
    scenes = df.groupby("source", sort=True)
    for source, grp in scenes:
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
    hidden = df.attrs.get("scenes_total", scenes.ngroups) - scenes.ngroups
    if hidden > 0:
        blocks.append(f"<p class='muted'>{fmt_count(hidden)} more scenes not shown</p>")
    return f"<section><h2>Scenes</h2>{''.join(blocks)}</section>"
