"""A run's statistics (``summary.json``) and its human-readable report (``report.html``, ``entropy.png``)."""

from __future__ import annotations

import html
import json
import pickle
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spote.uris import redact_uri, redact_urls

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
# confident rows kept per block and run: after the GALLERY_UNSURE least confident rows are left out, at
# least GALLERY_SURE of them remain (where the run has that many)
CONFIDENT_KEPT = GALLERY_SURE + GALLERY_UNSURE
MAX_SCENES = 12
PROBLEM_ROWS_SHOWN = 25  # rows listed per reason
QUESTIONS_SHOWN = 100    # questions with answer counts (those with the most answered rows) ...
ANSWERS_SHOWN = 20       # ... and answers listed per question (the most frequent)
# characters of a user's or a file's text shown in a card, table cell or heading; past them an ellipsis,
# the text (up to TITLE_SHOWN characters) in the tooltip. Unbroken long texts wrap (STYLE: overflow-wrap).
TEXT_SHOWN = 200
VALUE_SHOWN = 1000       # ... of a value in the run's settings table
TITLE_SHOWN = 5000
TOKENS_SHOWN = 40        # per-token confidences listed in a card
# distinct (field, question, answer) counted exactly: past it, the most frequent (``Tally``); bounds the
# driver's memory (at most twice as many counts, ~100 bytes each) on runs with an open answer per page
ANSWERS_KEPT = 50_000


@dataclass
class Tally:
    """What the report needs from every row of a run that ``RunStats`` does not keep (its answer counts and
    samples are capped): answer counts per question, and the confident rows the gallery chooses from.
    Built per block of rows (``of_table``) and merged (``merge``), as ``RunStats`` is, so the driver holds
    at most ``2 * ANSWERS_KEPT`` counts and ``CONFIDENT_KEPT`` rows, never the rows.

    ``answers``: {(field or "", question, choices): {answer: ok rows}} (one question of a file asked twice
    with other choices is two questions), exact while a run has at most
    ``ANSWERS_KEPT`` distinct (field, question, answer); past that, each time the counts reach twice as
    many, only the ``ANSWERS_KEPT`` largest are kept (an open field read on a million pages has about a
    million distinct answers), and ``undercount`` grows by the largest count dropped: no kept count is
    low by more than ``undercount`` rows, and no answer given more often than ``undercount`` is missing
    (each drop loses at most that much of any one answer). ``confident``: (id hash, row) of the
    ``CONFIDENT_KEPT`` ok rows of confidence >= ``SURE_CONFIDENCE`` with the smallest id hashes
    (``planning.id_hashes``, as ``RunStats.random_sample``): the same run always offers the same ones."""

    answers: dict = field(default_factory=dict)
    confident: list = field(default_factory=list)
    caveat: str = ""  # why the counts may not be exact (``of_stats``), said on the page
    undercount: int = 0
    kept: int = 0     # counts held in ``answers``

    @classmethod
    def of_table(cls, table: pa.Table) -> "Tally":
        from collections import Counter

        from .planning import id_hashes

        t = cls()
        if not table.num_rows or "status" not in table.column_names:
            return t
        ok = table.filter(pc.equal(table.column("status"), "ok"))
        if not ok.num_rows:
            return t
        if {"question", "answer"} <= set(ok.column_names):
            blank = [None] * ok.num_rows
            fields = ok.column("field").to_pylist() if "field" in ok.column_names else blank
            choices = ok.column("choices").to_pylist() if "choices" in ok.column_names else blank
            pairs = Counter(((f or "", "" if q is None else str(q), c or ""), "" if a is None else str(a))
                            for f, q, c, a in zip(fields, ok.column("question").to_pylist(), choices,
                                                  ok.column("answer").to_pylist()))
            for (question, answer), n in pairs.items():
                t.answers.setdefault(question, {})[answer] = n
            t.kept = len(pairs)
            t._bound()
        if "confidence" in ok.column_names and "id" in ok.column_names:
            conf = np.asarray(pc.cast(ok.column("confidence"), pa.float64()).to_numpy(zero_copy_only=False), np.float64)
            sure = np.flatnonzero(conf >= SURE_CONFIDENCE)  # NaN (no confidence) is not sure
            if len(sure):
                hashes = id_hashes(ok.column("id").take(pa.array(sure)))
                pick = np.argsort(hashes, kind="stable")[:CONFIDENT_KEPT]
                rows = ok.take(pa.array(sure[pick])).to_pylist()
                t.confident = [(int(hashes[i]), row) for i, row in zip(pick, rows)]
        return t

    @classmethod
    def of_stats(cls, stats) -> "Tally":
        """From ``RunStats`` alone, for a caller without the rows: exact only while its caps are not reached
        (answer counts under ``stats.MAX_QUESTIONS``/``MAX_ANSWERS``, confident rows of its random sample)."""
        from .stats import MAX_ANSWERS, MAX_QUESTIONS, OTHER_ANSWERS

        sure = [(h, r) for h, r in stats.random_sample
                if r.get("status") == "ok" and _finite_or_nan(r.get("confidence")) >= SURE_CONFIDENCE]
        capped = len(stats.answers) >= MAX_QUESTIONS or any(OTHER_ANSWERS in c for c in stats.answers.values())
        caveat = (f"from the run statistics alone, which keep {MAX_QUESTIONS} questions and {MAX_ANSWERS} "
                  f"answers each (the rest as {OTHER_ANSWERS!r}): not exact" if capped else "")
        return cls({("", q, ""): dict(c) for q, c in stats.answers.items()}, sure[:CONFIDENT_KEPT], caveat)

    def merge(self, other: "Tally") -> "Tally":
        for question, counts in other.answers.items():
            mine = self.answers.setdefault(question, {})
            for answer, n in counts.items():
                self.kept += answer not in mine
                mine[answer] = mine.get(answer, 0) + n
        # a count kept here may have lost up to self.undercount and the other's up to other.undercount
        self.undercount += other.undercount
        self.confident = sorted(self.confident + other.confident, key=lambda hr: hr[0])[:CONFIDENT_KEPT]
        self._bound()
        return self

    def _bound(self) -> None:
        """Past ``2 * ANSWERS_KEPT`` counts, keep the ``ANSWERS_KEPT`` largest (ties: any), add the largest
        dropped count to ``undercount`` and say so in ``caveat``."""
        if self.kept > 2 * ANSWERS_KEPT:
            self._drop_least_frequent()
        if self.undercount:
            self.caveat = (f"keep the {fmt_count(ANSWERS_KEPT)} most frequent answers of a run with more "
                           f"distinct ones: a count may be low by up to {_n(self.undercount, 'item')}, and an "
                           f"answer given that often or less may be missing; the results table has every row")

    def _drop_least_frequent(self) -> None:
        flat = sorted(((n, q, a) for q, counts in self.answers.items() for a, n in counts.items()),
                      key=lambda nqa: -nqa[0])
        self.undercount += flat[ANSWERS_KEPT][0]
        for _, question, answer in flat[ANSWERS_KEPT:]:
            counts = self.answers[question]
            del counts[answer]
            if not counts:
                del self.answers[question]
        self.kept = ANSWERS_KEPT


def _finite_or_nan(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def partial_tally(table: pa.Table) -> pa.Table:
    """Ray Data UDF: one block of result rows -> one row holding its pickled ``Tally``."""
    return pa.table({"tally": pa.array([pickle.dumps(Tally.of_table(table))], pa.binary())})


def tally_run(results) -> Tally:
    """The ``Tally`` of every row of ``results`` (a ``RunResults``), merged one block at a time."""
    total = Tally()
    parts = results.dataset().map_batches(partial_tally, batch_format="pyarrow", batch_size=None)
    for batch in parts.iter_batches(batch_format="pyarrow", batch_size=None):
        for blob in batch.column("tally").to_pylist():
            total.merge(pickle.loads(blob))
    return total


def write_report(stats, summary: dict, meta_uri: str, storage_options=None, loader=None,
                 timeout_s: float | None = 600.0, results=None) -> None:
    """``report.html``, a self-contained page a reviewer works from, and ``entropy.png`` (its histograms,
    written where any row was answered).

    The page (no network fetches: pictures are ``data:`` URIs, the style is inline): the run's figures
    for people; entropy before/after and forward-pass histograms; answer counts per question; a gallery
    of the least confident answers and a sample of confident ones (thumbnail with the evidence box,
    question, field name and answer, confidence, an open answer's per-token confidences, link to the
    source), re-read with ``loader`` ((class, kwargs), the job's loader) for those rows only; error and
    skipped rows grouped by reason; for tiled scenes an overview per scene and question with the "yes"
    tiles and their evidence, drawn with the loader's ``bands`` and ``stretch``. A run of no items gets a
    short page saying so. Every value that comes from a user or a file is escaped, isolated and
    neutralised (``show``).

    ``stats`` is the run's ``RunStats`` (counts, histograms and capped samples, never the whole table);
    ``results`` (a ``RunResults``), where given, is read once more for exact answer counts and the
    confident rows (``tally_run``), and queried for the "yes" tiles of at most ``MAX_SCENES`` scenes;
    without it the page is built from ``stats`` alone (``Tally.of_stats``).
    """
    if not stats.items:  # nothing to plot, count or show: the run's figures and why it had no items
        write_text(join(meta_uri, "report.html"), _page(summary, [_figures_section(summary), _empty_section(summary)]),
                   storage_options)
        return
    columns = {name for row in stats.sample_rows() for name in row}
    tally = tally_run(results) if results is not None else Tally.of_stats(stats)
    sections = [_figures_section(summary), _plots_section(stats, summary, meta_uri, storage_options),
                _answers_section(tally.answers, tally.caveat),
                _gallery_section(stats.least_confident, [r for _, r in tally.confident], loader, timeout_s),
                _problems_section(stats)]
    if results is not None and {"scene", "tile_col_off", "tile_row_off", "tile_width", "tile_height"} <= columns:
        kwargs = (loader or (None, {}))[1]
        sections.append(_scenes_section(_scene_rows(results), storage_options, kwargs.get("bands"),
                                        kwargs.get("stretch", "scene")))
    write_text(join(meta_uri, "report.html"), _page(summary, sections), storage_options)


def _page(summary: dict, sections: list[str]) -> str:
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>SPOT-E run "
            f"{esc(_cut(clean(summary.get('run_id')), TEXT_SHOWN))}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{STYLE}</style></head><body>"
            f"<header><h1>SPOT-E run <span class='runid'>{show(summary.get('run_id'))}</span></h1>"
            f"<p class='lede'>{_lede(summary)}</p></header>{''.join(sections)}</body></html>")


# A user's or a file's text must not change how the page reads: a right-to-left override in a file name
# ("invoice-\u202efdp.exe" shows as "invoice-exe.pdf") or in an id would reorder what follows it.
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
# control characters (but tab and newline), and lone surrogates (which UTF-8 cannot hold)
_CONTROL = "\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff"
BIDI_CONTROLS = re.compile(f"[{_BIDI}]")
CONTROLS = re.compile(f"[{_CONTROL}]")
UNSHOWABLE = re.compile(f"[{_CONTROL}{_BIDI}]")


def clean(value) -> str:
    """A user's or a file's text as the page may hold it: bidi controls as visible marks (``[U+202E]``),
    control characters but tab and newline (a NUL from a question) and lone surrogates as U+FFFD."""
    text = CONTROLS.sub("\ufffd", "" if value is None else str(value))
    return BIDI_CONTROLS.sub(lambda m: f"[U+{ord(m.group()):04X}]", text)


def esc(value) -> str:
    """Text from a user or a file (names, ids, questions, answers, error texts) as HTML text or attribute
    value: ``clean``, then escaped."""
    return html.escape(clean(value), quote=True)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "\u2026"


def show(value, limit: int = TEXT_SHOWN, css_class: str = "") -> str:
    """Text from a user or a file as page text: ``esc``, isolated (right-to-left text stays within itself,
    the page's own words around it keep their order: a ``<bdi>``, or a span of ``css_class``, whose style
    isolates it) and at most ``limit`` characters, then an ellipsis; a shortened text carries the whole
    (up to ``TITLE_SHOWN``) in its tooltip."""
    text = clean(value)
    title = f" title='{html.escape(_cut(text, TITLE_SHOWN), quote=True)}'" if len(text) > limit else ""
    shown = html.escape(_cut(text, limit), quote=True)
    return f"<span class='{css_class}'{title}>{shown}</span>" if css_class else f"<bdi{title}>{shown}</bdi>"


STYLE = """
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1240px;padding:16px 24px;
color:#1d2228;background:#fafbfc;overflow-wrap:anywhere;word-break:break-word}
h1{font-size:24px;margin:8px 0 2px}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #d8dde3;padding-bottom:4px}
h3{font-size:16px;margin:16px 0 6px}.lede{color:#4a5560;margin:0 0 8px}.runid{font-family:ui-monospace,monospace}
table{border-collapse:collapse;margin:6px 0;max-width:100%}td,th{padding:3px 10px;border-bottom:1px solid #e6e9ed;text-align:left;
vertical-align:top}th{font-weight:600;color:#3a444e;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;overflow-wrap:normal;word-break:normal;white-space:nowrap}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:10px}
.figure{background:#fff;border:1px solid #e1e5ea;border-radius:6px;padding:8px 12px}
.figure .v{font-size:20px;font-weight:600}.figure .k{color:#5b6670;font-size:13px}
img.plot{max-width:100%;background:#fff;border:1px solid #e1e5ea}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:12px}
.card{background:#fff;border:1px solid #e1e5ea;border-radius:6px;padding:8px;min-width:0;overflow:hidden}
.card img{width:100%;height:auto;max-height:360px;object-fit:contain;display:block;border-radius:3px;background:#eee}
.card .q{margin:6px 0 2px;color:#333}.card .a{font-weight:600}
.field{font-family:ui-monospace,monospace;color:#3a444e;unicode-bidi:isolate}.card .meta{color:#5b6670;font-size:13px}
.noimg{height:120px;display:flex;align-items:center;justify-content:center;background:#f0f2f4;color:#6b7680;
font-size:13px;text-align:center;padding:6px;overflow:hidden}
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
    return (f"{esc(', '.join(parts))}; model {show(summary.get('model'))}; "
            f"{esc(fmt_seconds(summary.get('seconds')))}")


def _figures_section(summary: dict) -> str:
    skipped = int(summary.get("items_skipped") or 0)
    figures = [
        ("items in", fmt_count(summary.get("items_in"))), ("answered", fmt_count(summary.get("items_ok"))),
        ("errors", fmt_count(summary.get("items_error"))), ("skipped", fmt_count(skipped)),
        ("answer entropy, whole image (mean)", _nats(summary.get("entropy_initial_mean"))),
        ("answer entropy, after SPOT-E (mean)", _nats(summary.get("entropy_final_mean"))),
        ("forward passes per item (mean)", fmt_number(summary.get("forward_passes_mean"), 2)),
        ("answered by the whole image", fmt_percent(summary.get("early_exit_rate"))),
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
    rest = "".join(f"<tr><th>{esc(k.replace('_', ' '))}</th><td>{show(_fmt_any(v), VALUE_SHOWN)}</td></tr>"
                   for k, v in summary.items() if k not in shown)
    policy = summary.get("policy") or {}
    pol = ", ".join(f"{k}={_fmt_any(v)}" for k, v in policy.items())
    return (f"<section><h2>Figures</h2><div class='figures'>{cards}</div>"
            f"<h3>Run</h3><table>{rest}</table><p class='muted'>policy: <code>{show(pol, VALUE_SHOWN)}</code></p>"
            f"</section>")


def _empty_section(summary: dict) -> str:
    """A run of no items: that, and what the listing skipped (``summary['skipped_sources']``), if anything."""
    skipped = summary.get("skipped_sources") or {}
    reasons = "".join(f"<tr><td>{show(reason)}</td><td class='num'>{fmt_count(n)}</td></tr>"
                      for reason, n in (skipped.get("by_reason") or {}).items())
    why = (f"<p>The input held {fmt_count(skipped.get('count'))} files the job does not process:</p>"
           f"<table><tr><th>reason</th><th>files</th></tr>{reasons}</table>") if skipped.get("count") else ""
    return f"<section><h2>No items</h2><p>This run had no items: nothing was asked or answered.</p>{why}</section>"


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


def _plots_section(stats, summary: dict, meta_uri: str, storage_options) -> str:
    """The histograms (also written as ``entropy.png``); with no answered row there is nothing to plot (an
    empty histogram's axis would run from -0.04 to 0.04), so a line says so and no file is written."""
    from .gallery import png_uri

    if not stats.ok:
        return "<section><h2>Entropy and passes</h2><p class='muted'>no answered rows: nothing to plot</p></section>"
    plots = _histograms(stats, summary)
    write_bytes(join(meta_uri, "entropy.png"), plots, storage_options)
    return (f"<section><h2>Entropy and passes</h2><img class='plot' src='{png_uri(plots)}' "
            f"alt='histograms of answer entropy before and after SPOT-E, and of forward passes per item'></section>")


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
    skipped = f", {fmt_count(summary['items_skipped'])} skipped" if summary.get("items_skipped") else ""
    fig.suptitle(f"{fmt_count(summary.get('items_ok'))} answered, {fmt_count(summary.get('items_error'))} errors{skipped}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _answers_section(answers: dict, caveat: str = "") -> str:
    """Exact answer counts (``Tally.answers``): for the ``QUESTIONS_SHOWN`` questions with the most answered
    rows, each one's ``ANSWERS_SHOWN`` most frequent answers and how many more answers and rows are not
    listed (a line under the table, so it cannot be taken for an answer); then how many questions are
    not shown."""
    if not answers:
        return "<section><h2>Answers per question</h2><p class='muted'>no answered items</p></section>"
    totals = {q: sum(counts.values()) for q, counts in answers.items()}
    shown = sorted(sorted(totals, key=lambda q: (-totals[q], q))[:QUESTIONS_SHOWN])
    asked = {}  # (field, question) -> its choice sets: the choices are shown where they tell questions apart
    for field_name, text, choices in answers:
        asked.setdefault((field_name, text), set()).add(choices)
    blocks = []
    for question in shown:
        field_name, text, choices = question
        counts = sorted(answers[question].items(), key=lambda kv: (-kv[1], kv[0]))
        total, top = totals[question], counts[0][1]
        rows = "".join(
            f"<tr><td>{show(ans) if ans else _muted('(empty)')}</td><td class='num'>{fmt_count(n)}</td>"
            f"<td class='num'>{fmt_percent(n / total)}</td>"
            f"<td><span class='bar' style='width:{max(2, round(160 * n / top))}px'></span></td></tr>"
            for ans, n in counts[:ANSWERS_SHOWN])
        rest = counts[ANSWERS_SHOWN:]
        folded = sum(n for _, n in rest)
        more = (f"<p class='muted'>not listed: {_n(len(rest), 'more distinct answer')}, {_n(folded, 'item')} "
                f"({fmt_percent(folded / total)})</p>") if rest else ""
        heading = (f"{show(field_name, css_class='field')}: " if field_name else "") + show(text) + (
            _choices_note(choices) if len(asked[(field_name, text)]) > 1 else "")
        blocks.append(f"<h3>{heading}</h3><table><tr><th>answer</th><th>items</th><th>share</th><th></th></tr>"
                      f"{rows}</table><p class='muted'>{_n(total, 'answered item')}, "
                      f"{_n(len(counts), 'distinct answer')}</p>{more}")
    hidden = len(totals) - len(shown)
    if hidden:
        rows_hidden = sum(totals.values()) - sum(totals[q] for q in shown)
        blocks.append(f"<p class='muted'>{_n(hidden, 'more question')} ({_n(rows_hidden, 'answered item')}) not "
                      f"shown: the {fmt_count(len(shown))} with the most answered items are; the results table has "
                      f"every row.</p>")
    warning = f"<p><strong>Answer counts {esc(caveat)}.</strong></p>" if caveat else ""
    return f"<section><h2>Answers per question</h2>{warning}{''.join(blocks)}</section>"


def _choices_note(choices: str) -> str:
    """The choices of a closed-set question (a JSON list), shown after it muted: `` (yes, no)``; "" for none."""
    try:
        listed = json.loads(choices) if choices else None
    except ValueError:
        listed = None
    return f" <span class='muted'>({show(', '.join(map(str, listed)))})</span>" if isinstance(listed, list) else ""


def _n(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless one ("1 item", "2 items")."""
    return f"{fmt_count(n)} {noun}{'' if n == 1 else 's'}"


def _muted(text: str) -> str:
    return f"<span class='muted'>{esc(text)}</span>"


def pick_gallery(df, unsure: int = GALLERY_UNSURE, sure: int = GALLERY_SURE) -> tuple[list, list]:
    """(index labels of the ``unsure`` least confident answered rows, lowest first; of up to ``sure`` rows
    of confidence >= ``SURE_CONFIDENCE`` not among them, the ones of smallest id hash, most confident
    first). No row is in both; a run of at most ``unsure`` answered rows shows them all as least
    confident. Rows with no confidence are in neither.

    ``df`` (columns ``id``, ``status``, ``confidence``) holds the candidates: every row, or the run's
    ``RunStats.least_confident`` and ``Tally.confident`` rows, which hold every row either list can take.
    """
    import pandas as pd

    from .planning import id_hashes

    # numbers, whatever the rows held: a run with no answered row has only nulls there (an object column)
    conf = pd.to_numeric(df["confidence"], errors="coerce").where(df["status"] == "ok")
    answered = conf.dropna()
    low = answered.sort_values(kind="stable").index[:unsure].tolist()
    pool = answered[(answered >= SURE_CONFIDENCE) & ~answered.index.isin(low)]
    hashes = pd.Series(id_hashes(pa.array(df.loc[pool.index, "id"].astype(str).tolist(), pa.string())), pool.index)
    chosen = hashes.sort_values(kind="stable").index[:sure]
    high = pool[chosen].sort_values(ascending=False, kind="stable").index.tolist()
    return low, high


def _gallery_section(least_confident: list[dict], confident: list[dict], loader, timeout_s) -> str:
    import pandas as pd

    from .gallery import row_thumbnails

    candidates = list({r.get("id"): r for r in [*least_confident, *confident]}.values())
    df = pd.DataFrame(candidates)
    if not len(df) or not {"id", "status", "confidence"} <= set(df.columns):
        return "<section><h2>Gallery</h2><p class='muted'>no answered items</p></section>"
    low, high = pick_gallery(df)
    rows = [candidates[i] for i in low + high]
    pictures = {}
    if loader is not None and rows:
        try:
            pictures = row_thumbnails(rows, loader, timeout_s)
        except Exception as err:  # the report never costs the run: cards without pictures, saying why
            print(f"[report] thumbnails skipped: {type(err).__name__}: {err}")

    def cards(index, empty: str) -> str:
        return "".join(_card(candidates[i], pictures.get(candidates[i]["id"])) for i in index) or \
            f"<p class='muted'>{esc(empty)}</p>"

    shown_above = any(_finite_or_nan(candidates[i].get("confidence")) >= SURE_CONFIDENCE for i in low)
    return (f"<section><h2>Gallery</h2><p class='muted'>Each picture is what the model was given; the cyan box is "
            f"the view the answer came from (no box: the whole image answered).</p>"
            f"<h3>Least confident answers: check these first</h3>"
            f"<div class='cards'>{cards(low, 'none')}</div>"
            f"<h3>A sample of confident answers (confidence &ge; {fmt_percent(SURE_CONFIDENCE)})</h3>"
            f"<div class='cards'>{cards(high, 'none besides those above' if shown_above else 'none')}</div></section>")


def source_href(source: str) -> str:
    """A link to the source: file:// for local paths (percent-encoded); other URIs (s3://, https://, file:)
    as they are, an http(s) URL without its credentials (``redact_uri``), but for control and bidi
    characters, percent-encoded (a link is never where a name reorders)."""
    from pathlib import Path
    from urllib.parse import quote

    if "://" in source or source.startswith("file:"):
        return UNSHOWABLE.sub(lambda m: quote(m.group(), safe="", errors="replace"), redact_uri(source))
    return Path(source).absolute().as_uri()


def _card(row: dict, picture) -> str:
    if picture is not None and picture.uri:
        img = (f"<img src='{picture.uri}' width='{picture.width}' height='{picture.height}' "
               f"alt='{esc(_cut(clean(row['id']), TEXT_SHOWN))}' title='{esc(picture.note)}'>")
    else:
        img = f"<div class='noimg'>{show(picture.note if picture else 'no preview')}</div>"
    where = _where(row)
    field_name = f"{show(row['field'], css_class='field')}: " if row.get("field") else ""
    return (f"<div class='card'>{img}<div class='q'>{show(row.get('question'))}</div>"
            f"<div>{field_name}<span class='a'>{show(row['answer']) if row.get('answer') else _muted('(empty)')}</span>"
            f" &middot; confidence "
            f"{fmt_percent(row.get('confidence'))} &middot; {_passes(row.get('forward_passes'))}</div>"
            f"{_token_confidences(row.get('token_confidences'))}"
            f"<div class='meta'><a href='{esc(source_href(str(row.get('source'))))}'>{show(_shown_source(row))}</a>"
            f"{esc(where)}<br>id <code>{show(row.get('id'))}</code></div></div>")


def _shown_source(row: dict):
    """The row's source as the report shows it: an http(s) URL without user:password or query (a presigned
    URL's signature); the results keep it whole, to read it again."""
    source = row.get("source")
    return redact_uri(source) if isinstance(source, str) else source


def _token_confidences(values) -> str:
    """An open answer's per-token confidences, in order, as a line of percentages ('' for closed answers);
    past ``TOKENS_SHOWN`` of them, how many there are."""
    if values is None or not len(values):
        return ""
    listed = ", ".join(fmt_percent(v) for v in list(values)[:TOKENS_SHOWN])
    more = f", &hellip; ({fmt_count(len(values))} tokens)" if len(values) > TOKENS_SHOWN else ""
    return f"<div class='meta'>per token: {esc(listed)}{more}</div>"


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
            rows = "".join(f"<tr><td><code>{show(r.get('id'))}</code></td><td>{show(_shown_source(r))}</td>"
                           f"<td>{show(r.get('error'))}</td></tr>" for r in shown)
            more = f"<p class='muted'>{fmt_count(n - len(shown))} more</p>" if n > len(shown) else ""
            blocks.append((n, f"<h3>{esc(status)}: {show(reason)} ({fmt_count(n)})</h3><table><tr><th>id</th>"
                              f"<th>source</th><th>reason</th></tr>{rows}</table>{more}"))
    if not blocks:
        return "<section><h2>Errors and skipped items</h2><p class='muted'>none</p></section>"
    blocks.sort(key=lambda b: -b[0])
    return f"<section><h2>Errors and skipped items</h2>{''.join(b for _, b in blocks)}</section>"


SCENE_COLUMNS = ["source", "question_index", "field", "question", "status", "answer", "evidence_box", "tile_col_off",
                 "tile_row_off", "tile_width", "tile_height"]


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


def _scenes_section(df, storage_options, bands, stretch: str = "scene") -> str:
    """An overview per scene and question, drawn as the tiles are (the job's 1-based ``bands`` and its
    ``stretch``: ``gallery.scene_overview``), with the "yes" tiles and their evidence."""
    from .gallery import draw_scene, scene_overview
    from .rasters import describe_error

    blocks = []
    scenes = df.groupby("source", sort=True)
    for source, grp in scenes:
        name = redact_uri(str(source))  # as the page names it: without a URL's credentials
        try:
            overview, scale = scene_overview(str(source), storage_options, bands, stretch)
        except Exception as err:  # an unreadable scene has its error rows; the report goes on
            # GDAL's own words, as the scene's rows give them ("gone.tif: No such file or directory"), not rasterio's
            # "Read failed. See previous exception for details."
            blocks.append(f"<h3>{show(name)}</h3><p class='muted'>no overview: {show(redact_urls(describe_error(err)))}</p>")
            continue
        # one overview per question of the file (its position): two entries may share their words
        for _, q in grp.groupby("question_index", sort=True, dropna=False):
            question = q["question"].iloc[0]
            field_name = q["field"].iloc[0] if "field" in q and isinstance(q["field"].iloc[0], str) else ""
            yes = q[(q["status"] == "ok") & (q["answer"].astype(str).str.lower() == "yes")]
            tiles = [([int(r.tile_col_off), int(r.tile_row_off), int(r.tile_width), int(r.tile_height)],
                      _box_or_none(getattr(r, "evidence_box", None))) for r in yes.itertuples()]
            pic = draw_scene(overview, scale, tiles)
            title = (f"{show(field_name, css_class='field')}: " if field_name else "") + show(question)
            blocks.append(f"<div class='scene'><h3>{show(name)}: {title}</h3><img src='{pic.uri}' "
                          f"width='{pic.width}' height='{pic.height}' alt='{esc(_cut(clean(name), TEXT_SHOWN))}'>"
                          f"<p class='muted'>{fmt_count(len(yes))} of {fmt_count(len(q))} tiles answered yes; "
                          f"{esc(pic.note)}</p></div>")
    hidden = df.attrs.get("scenes_total", scenes.ngroups) - scenes.ngroups
    if hidden > 0:
        blocks.append(f"<p class='muted'>{fmt_count(hidden)} more scenes not shown</p>")
    return f"<section><h2>Scenes</h2>{''.join(blocks)}</section>"
