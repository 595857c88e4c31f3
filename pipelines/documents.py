"""Nightly document re-processing: PDFs and page images under a prefix -> pages rendered at a set
DPI -> field questions per page -> results, incrementally.

    python -m pipelines.documents --input s3://docs/inbox/ --output s3://docs/spote --dpi 100

The driver lists the documents (with what the store's listing gives: ETag, size, modification
time); Ray Data tasks count each document's pages (every page of a PDF, every frame of a
multi-page TIFF, GIF or WebP) and plan a row per page and question. A document's id is its path
under the input (``2024-01/scan.png`` and ``2024-02/scan.png`` are two documents).

Incremental: a ledger (``_ledger/documents.parquet`` in the output, one row per document) keeps
each document's fingerprint: ``etag:...`` where the store has ETags, else ``size-mtime:...`` with a
SHA-256 of the content (``size-mtime:...|sha256:...``; a file whose time alone changed is compared by its
content, in the driver, and its ledger row refreshed), else the SHA-256 alone, computed in the planning tasks. A run
processes only documents that are new or changed since the last *committed* run, or that were answered
under other settings (``settings``: a hash of the questions, dpi, model, endpoint options and policy,
so a changed question file re-reads every document once), writes under
``run_id=documents-<date>``, and a re-run of the same night is a no-op (``--force`` redoes it, still
without duplicates: the documents the ledger holds for that night, and any new or changed ones).
The ledger is rewritten whole at commit (one object put, or a rename), and a document enters it
only when every one of its pages is committed.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
from pathlib import Path, PurePosixPath
from typing import Optional

import pyarrow as pa
import typer

from spote.images import DEFAULT_MAX_PIXELS, BadImage
from spote.images import page_count as image_page_count
from spote.uris import redact_uri

from .job import (MAX_PIXELS_OPTION, JobOptions, JobRefused, check_max_pixels, group_partitions, init_ray,
                  job_command,
                  max_pixels_setting, run_job, run_settings)
from .pdfs import UnreadablePDF, open_pdf, page_size, render_page
from .planning import Plan, check_source_ids_unique, list_sources, plan_schema, skip_by_extension
from .questions import default_field, load_questions
from .stages import PASSING_FAILURES, RowLoader, SourceReadError, read_source, source_read_errors
from .stats import OTHER_REASONS, error_reason
from .storage import filesystem, join, parse_storage_options, write_bytes

app = typer.Typer(add_completion=False)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".webp", ".bmp", ".dib", ".gif",
              ".pbm", ".pgm", ".ppm", ".pnm")
DOC_EXTS = (".pdf", *IMAGE_EXTS)
DEFAULT_QUESTIONS = Path(__file__).parent / "samples" / "document_questions.yaml"
LEDGER = "_ledger/documents.parquet"
LEDGER_JSON = "_ledger/documents.json"   # the ledger's earlier form, read when no Parquet ledger exists
# settings: answer_settings() of the run that answered the document ("" in ledgers written before it was kept)
LEDGER_SCHEMA = pa.schema([("source", pa.string()), ("document", pa.string()), ("fingerprint", pa.string()),
                           ("run_id", pa.string()), ("pages", pa.int64()), ("items", pa.int64()),
                           ("settings", pa.string())])
# points_per_pixel: PDF points (1/72 inch) per rendered pixel, set by the page loader for PDF pages (null
# for page images); the predictor turns the evidence box into PDF points with it (evidence_box_pt)
# field: the name the answer is reported under (the question file's ``field``, else q<question_index>)
PAGE_SCHEMA = plan_schema(("document", pa.string()), ("page", pa.int64()), ("pages", pa.int64()),
                          ("question_index", pa.int64()), ("field", pa.string()), ("fingerprint", pa.string()),
                          ("points_per_pixel", pa.float64()), ("evidence_box_pt", pa.list_(pa.float64())))


def answer_settings(settings: dict) -> str:
    """What a document's answers depend on beyond its content, as 16 hex digits of a SHA-256: the run's
    settings (``job.run_settings``: questions, dpi, model, endpoint options, policy) without the input
    prefix, which names where documents are, not how they are answered."""
    rest = {k: v for k, v in settings.items() if k != "input"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:16]


def listed_fingerprint(entry: dict) -> str:
    """A document's fingerprint from its listing entry: ETag, else size + mtime, else "" (hash it)."""
    if entry.get("etag"):
        return f"etag:{entry['etag']}"
    if entry.get("mtime") and entry.get("size") is not None:
        return f"size-mtime:{entry['size']}:{entry['mtime']}"
    return ""


def content_fingerprint(uri: str, so=None) -> str:
    """``"sha256:<hex>"`` of the content, streamed: the fingerprint where the listing gives neither ETag
    nor mtime, and the content check behind a ``size-mtime`` fingerprint (a file touched but not changed
    is not read again). Raises FileNotFoundError for a missing object, ``SourceReadError`` where the bytes
    cannot be fetched."""
    fs, path = filesystem(uri, so)
    h = hashlib.sha256()
    with source_read_errors(), fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def list_documents(input_uri: str, so=None) -> tuple[list[dict], list[dict]]:
    """(documents, skipped): documents as {"uri", "rel", "fingerprint"} from the listing alone."""
    docs, skipped = list_sources(input_uri, so, skip_by_extension(DOC_EXTS, "document"))
    check_source_ids_unique(docs)
    return [{"uri": d["uri"], "rel": d["rel"], "fingerprint": listed_fingerprint(d)} for d in docs], skipped


def read_ledger(output: str, so=None) -> pa.Table:
    """The ledger as a table (LEDGER_SCHEMA); empty when there is none yet."""
    fs, p = filesystem(join(output, LEDGER), so)
    if fs.exists(p):
        import pyarrow.parquet as pq

        with fs.open(p, "rb") as f:
            # read on this thread: read_table's dataset reads run on Arrow's IO threads and hold buffers of this
            # Python file, and one released while the interpreter exits (a refusal right after this) aborts it
            table = pq.ParquetFile(f).read()
        if "settings" not in table.column_names:  # written before the settings were kept
            table = table.append_column("settings", pa.array([""] * table.num_rows, pa.string()))
        return table.select(LEDGER_SCHEMA.names).cast(LEDGER_SCHEMA)
    fs, old = filesystem(join(output, LEDGER_JSON), so)
    if fs.exists(old):
        entries = json.loads(fs.cat_file(old))
        return pa.table({"source": list(entries), "document": [Path(u).name for u in entries],
                         "fingerprint": [e["fingerprint"] for e in entries.values()],
                         "run_id": [e.get("run_id", "") for e in entries.values()],
                         "pages": [None] * len(entries), "items": [None] * len(entries),
                         "settings": [""] * len(entries)}, schema=LEDGER_SCHEMA)
    return LEDGER_SCHEMA.empty_table()


def write_ledger(output: str, table: pa.Table, so=None) -> None:
    """Replace the ledger in one step (``storage.write_bytes``: a rename on a local disk, one object put
    on a store)."""
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table.cast(LEDGER_SCHEMA), buf)
    write_bytes(join(output, LEDGER), buf.getvalue(), so)


def page_count(uri: str, so=None, data: bytes | None = None) -> int:
    """Pages of a PDF, frames of a (multi-page) image. Raises ``UnreadablePDF`` for an unreadable PDF,
    ``BadImage`` for an image whose pages cannot be counted (cut short)."""
    data = data if data is not None else read_source(uri, so)
    if uri.lower().endswith(".pdf"):
        pdf = open_pdf(data)
        try:
            return len(pdf)
        finally:
            pdf.close()
    return image_page_count(data)  # BadImage for a multi-page file cut short: not one clean page


def plan_pages(doc: dict, questions: list[dict], so=None):
    """Item rows of one document (runs in a Ray task): every page x every question.

    ``doc``: {"uri", "rel", "fingerprint", "previous"[, "content"]}. Without a listed fingerprint the content
    is hashed here, and a document whose hash equals ``previous`` (the ledger's) gives no rows. A document
    that cannot be read gives one error row per question, at page 0, with ``pages`` 0. A listed size
    and modification time is kept with the content's hash (``size-mtime:...|sha256:...``; ``content``: the
    hash the driver computed already, for a file whose time alone changed), and the same content gives no
    rows either.
    """
    uri, name, fp = doc["uri"], doc["rel"], doc.get("fingerprint") or ""
    previous_content = (doc.get("previous") or "").rsplit("|", 1)[-1]
    try:
        if not fp:
            fp = content_fingerprint(uri, so)
            if fp == previous_content:
                return
        elif fp.startswith("size-mtime:"):
            content = doc.get("content") or content_fingerprint(uri, so)
            if content == previous_content:
                return
            fp = f"{fp}|{content}"
        n_pages, err = page_count(uri, so), ""
        if n_pages == 0:
            n_pages, err = 1, "unreadable PDF: it has no pages"
    except FileNotFoundError:  # listed, then gone before this task ran
        n_pages, err = 1, f"missing object: {uri}"
    except SourceReadError as e:  # a passing failure: the ledger leaves the document for the next run
        n_pages, err = 1, f"could not read: {uri}: {e}"
    except BadImage as e:
        n_pages, err = 1, f"unreadable image: {e}"
    except Exception as e:
        n_pages, err = 1, f"unreadable PDF: {e}" if isinstance(e, UnreadablePDF) else f"unreadable PDF: {type(e).__name__}: {e}"
    for page in range(n_pages):
        for qi, q in enumerate(questions):
            yield {"id": f"{name}/p{page}/q{qi}", "source": uri, **q, "field": q.get("field") or default_field(qi),
                   "document": name, "page": page,
                   "pages": 0 if err else n_pages,  # 0: no page could be counted
                   "question_index": qi, "fingerprint": fp, "points_per_pixel": None,
                   "evidence_box_pt": None, "status": "error" if err else "", "error": err}


def documents_to_read_again(results) -> set[str]:
    """Sources with a row that failed for a passing reason (``PASSING_FAILURES``: a timeout, an endpoint
    or model error, a storage read): left out of the ledger, so the next run reads them again."""
    stats = results.stats
    if stats is not None and not (set(stats.errors_by_reason) & {*PASSING_FAILURES, OTHER_REASONS}):
        return set()  # the statistics already say there is none: no pass over the rows

    def passing(row) -> bool:
        return row["status"] == "error" and error_reason(row["error"]) in PASSING_FAILURES

    return set(results.dataset(["source", "status", "error"]).filter(passing).unique("source"))


def documents_done(results) -> pa.Table:
    """Ledger rows (LEDGER_SCHEMA, without run_id and settings) of the documents all of whose pages are among
    ``results`` (a RunResults), counted with Ray Data group-bys, less ``documents_to_read_again``."""
    from ray.data.aggregate import Count, CountDistinct, Max

    ds = results.dataset(["source", "document", "fingerprint", "page", "pages"])
    n = results.stats.items if results.stats is not None else ds.count()
    rows = ds.groupby(["source", "document", "fingerprint"], num_partitions=group_partitions(n)).aggregate(
        Count(), CountDistinct("page"), Max("pages")).take_all()
    whole = [r for r in rows if r["count_distinct(page)"] >= (r["max(pages)"] or 1)]
    if len(whole) < len(rows):
        print(f"[documents] {len(rows) - len(whole)} document(s) with pages missing are left out of the ledger")
    again = documents_to_read_again(results)
    done = [r for r in whole if r["source"] not in again]
    if len(done) < len(whole):
        print(f"[documents] {len(whole) - len(done)} document(s) with a page that failed for a passing reason "
              f"({', '.join(PASSING_FAILURES)}) are left out of the ledger: the next run reads them again")
    # typed: with no document done the lists are empty, and untyped they would be null columns
    return pa.table({"source": [r["source"] for r in done], "document": [r["document"] for r in done],
                     "fingerprint": [r["fingerprint"] for r in done], "pages": [r["max(pages)"] for r in done],
                     "items": [r["count()"] for r in done]},
                    schema=pa.schema([LEDGER_SCHEMA.field(n) for n in ("source", "document", "fingerprint", "pages", "items")]))


def update_ledger(output: str, results, run_id: str, so=None, settings: str = "",
                  refreshed: dict[str, str] | None = None, start_ray=None, newer_than_ledger: bool = False) -> int:
    """Merge this run's completed documents into the ledger (replaced in one step), each recorded with
    the run's ``settings`` (``answer_settings``); returns their number. Rows of an older ledger, kept
    without settings and taken as answered under this run's, are stamped with them, so that a later
    change of settings re-reads them too.

    For a run committed earlier (asked for again: ``results`` without statistics) the ledger is only
    mended where the driver stopped between the commit and the ledger write: where the ledger holds no row
    of the run, the documents it lacks are recorded (``start_ray()`` is called first: the rows are read
    with Ray Data); rows it holds stand, a later night's, or a fingerprint refreshed since, which the run's
    older one would put back (that document would be hashed or read again). With ``newer_than_ledger`` (a run
    committed after the ledger was last written: every row of the ledger is older) the run's rows replace the
    ledger's for its documents, as its own write would have: a document it read again after a change takes the
    fingerprint it read.
    ``refreshed`` ({source: fingerprint}): documents whose time alone changed, their content the same: their
    rows take the new fingerprint and keep their run, so that the next night does not hash them again."""
    import pyarrow.compute as pc

    old = read_ledger(output, so)
    if refreshed:
        sources = old.column("source").to_pylist()
        fingerprints = [refreshed.get(s, f) for s, f in zip(sources, old.column("fingerprint").to_pylist())]
        old = old.set_column(old.schema.get_field_index("fingerprint"), "fingerprint",
                             pa.array(fingerprints, pa.string()))
    legacy = pc.equal(pc.fill_null(old.column("settings"), ""), "")
    stamped = bool(settings) and bool(pc.any(legacy).as_py())
    if stamped:
        old = old.set_column(old.schema.get_field_index("settings"), "settings",
                             pc.if_else(legacy, pa.scalar(settings), old.column("settings")))
    # the ledger is written in one step, so one row of a run committed earlier says its write happened
    recorded = results.stats is None and bool(pc.any(pc.equal(old.column("run_id"), run_id)).as_py())
    if recorded or not results.has_rows():
        if stamped or refreshed:
            write_ledger(output, old, so)
        return 0
    if results.stats is None and start_ray is not None:
        start_ray()
    done = documents_done(results)
    done = done.append_column("run_id", pa.array([run_id] * done.num_rows, pa.string()))
    done = done.append_column("settings", pa.array([settings] * done.num_rows, pa.string())).select(LEDGER_SCHEMA.names)
    if results.stats is None and not newer_than_ledger:  # committed earlier: fill in what a lost write left out
        done = done.filter(pc.invert(pc.is_in(done.column("source"), value_set=old.column("source"))))
    kept = old.filter(pc.invert(pc.is_in(old.column("source"), value_set=done.column("source"))))
    write_ledger(output, pa.concat_tables([kept, done.cast(LEDGER_SCHEMA)]).sort_by("source"), so)
    return done.num_rows


def _modified(info: dict) -> float | None:
    """A listing entry's modification time in seconds (a local file's ``mtime``, an object's ``LastModified``)."""
    t = info.get("mtime", info.get("LastModified"))
    return t.timestamp() if isinstance(t, dt.datetime) else (float(t) if t is not None else None)


def nights_committed_since_the_ledger(output: str, so=None) -> list[tuple[str, dict]]:
    """(run id, summary) of the documents runs under ``output`` whose markers are newer than the ledger,
    oldest first (times from the store, so comparable): runs whose driver stopped between the commit and the
    ledger write leave their documents out of the ledger. A night that read nothing writes no ledger and is
    listed too; it records nothing."""
    fs, runs = filesystem(join(output, "_runs"), so)
    try:
        markers = fs.glob(join(runs, "*", "_SUCCESS"), detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    fs_l, ledger = filesystem(join(output, LEDGER), so)
    written = _modified(fs_l.info(ledger)) if fs_l.exists(ledger) else None
    newer = sorted(((_modified(info) or 0.0, PurePosixPath(path).parent.name) for path, info in markers.items()
                    if written is None or (_modified(info) or 0.0) > written))
    nights = []
    for _, run_id in newer:
        fs_s, path = filesystem(join(output, "_runs", run_id, "summary.json"), so)
        try:
            summary = json.loads(fs_s.cat_file(path))
        except (FileNotFoundError, ValueError):
            continue
        if "documents_seen" in summary:  # not another job's run in the same --output
            nights.append((run_id, summary))
    return nights


def mend_lost_ledger_writes(output: str, so=None, start_ray=None) -> dict[str, int]:
    """Record in the ledger the documents of the nights ``nights_committed_since_the_ledger`` lists, each under
    its own settings (its summary's), oldest first, each replacing the ledger's rows of its documents as its
    own write would have (a later night's row of a document read by two of them wins), so that tonight does
    not read them again: {run id: documents recorded}, for those that recorded any. The run starting now is
    one of them where it was committed before (asked again, or ``--force``: whose plan needs its documents
    in the ledger)."""
    from .job import RunResults
    from .runs import RunPaths

    mended = {}
    for run_id, summary in nights_committed_since_the_ledger(output, so):
        settings = answer_settings(summary.get("settings") or {})
        n = update_ledger(output, RunResults(RunPaths(output, run_id).results, so, None), run_id, so, settings,
                          start_ray=start_ray, newer_than_ledger=True)
        if n:
            mended[run_id] = n
    return mended


class PageTooLarge(Exception):
    """A PDF page that would render to more pixels than the loader accepts at the job's ``--dpi``."""


class PageLoader(RowLoader):
    """CPU stage: render one PDF page at ``dpi`` (or decode one frame of a page image); keeps the
    last document open."""

    failure = "unreadable PDF"
    max_pixels_flag = "--max-pixels"

    def __init__(self, storage_options=None, dpi: int = 100, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.so, self.dpi, self.max_pixels = storage_options, dpi, max_pixels
        self._uri, self._pdf, self._data = None, None, None

    def forget(self) -> None:
        self._uri = None

    def load(self, row: dict) -> dict:
        out = super().load(row)
        if out.get("status") == "ok" and str(row.get("source", "")).lower().endswith(".pdf"):
            out["points_per_pixel"] = 72 / self.dpi
        return out

    def describe(self, row: dict, err: Exception) -> str:
        if isinstance(err, UnreadablePDF):
            return f"{self.failure}: {err}"
        if isinstance(err, PageTooLarge):
            return f"page too large: {err}; lower --dpi or raise --max-pixels"
        if not str(row.get("source", "")).lower().endswith(".pdf"):  # a page image's decoder failed
            return f"unreadable image: {type(err).__name__}: {err}"
        return super().describe(row, err)

    def read(self, row: dict):
        if row["source"] != self._uri:
            if self._pdf is not None:
                self._pdf.close()
            self._uri, self._pdf, self._data = None, None, read_source(row["source"], self.so)
            self._pdf = open_pdf(self._data) if row["source"].lower().endswith(".pdf") else None
            self._uri = row["source"]
        if self._pdf is None:
            return self._frame(int(row.get("page") or 0))
        w, h = page_size(self._pdf, row["page"])
        scale = self.dpi / 72
        if w * h * scale * scale > self.max_pixels:
            raise PageTooLarge(f"page {row['page']} at {self.dpi} dpi exceeds {self.max_pixels:,} pixels")
        return render_page(self._pdf, row["page"], scale)

    def _frame(self, page: int):
        """Frame ``page`` of a (multi-page) image, decoded as its first frame is; page 0 is the image itself."""
        from spote.images import load_image

        try:
            return load_image(self._data, self.max_pixels, frame=page)
        except BadImage as err:
            if err.kind == "a PDF":  # the advice for spote ask (run this job) is no advice here
                raise BadImage("the file is a PDF under an image's name: rename it to .pdf (this job renders a file as "
                               "a PDF by its name)") from None
            raise


def plan_documents(input_uri: str, output: str, questions: list[dict], so=None,
                   redo_run: str | None = None, settings: str = "") -> tuple[Plan, int, int, dict[str, str]]:
    """(plan of the new or changed documents, documents seen, documents planned again because the
    ledger holds their answers under other ``settings``, documents whose time alone changed as {source:
    new fingerprint}): the driver lists and compares with the ledger, and hashes a file whose size is the
    ledger's and time is not (the same content: not planned, its ledger row refreshed by ``update_ledger``);
    tasks count pages and hash documents the listing gave no fingerprint for. A ledger row without settings
    (an older ledger) counts as answered under these.
    ``redo_run`` (``--force``): the documents the ledger holds for that run are planned again too,
    so a forced re-run of a night answers its documents anew instead of committing an empty run;
    ValueError if the input no longer holds one of them (its answers would be dropped for good)."""
    docs, skipped = list_documents(input_uri, so)
    ledger = read_ledger(output, so).select(["source", "fingerprint", "run_id", "settings"]).to_pylist()
    if redo_run is not None:  # a forced night replaces all its rows: each of its documents must be answered again
        listed = {d["uri"] for d in docs}
        gone = [r["source"] for r in ledger if r["run_id"] == redo_run and r["source"] not in listed]
        if gone:
            raise ValueError(f"--force would drop the answers of {len(gone)} document(s) of run {redo_run} that "
                             f"{input_uri} does not hold ({', '.join(gone[:3])}{', ...' if len(gone) > 3 else ''}): "
                             "give this input another --run-id")
    stale = {r["source"] for r in ledger if r["settings"] and settings and r["settings"] != settings}
    known = {r["source"]: r["fingerprint"] for r in ledger if r["run_id"] != redo_run and r["source"] not in stale}
    # the ledger's "size-mtime:...|sha256:..." is unchanged when the listing gives the same size and time; with
    # the time alone changed the planning task compares the content's hash
    todo = [{**d, "previous": known.get(d["uri"], ""), "content": ""} for d in docs
            if not d["fingerprint"] or known.get(d["uri"], "").split("|", 1)[0] != d["fingerprint"]]
    refreshed = {}
    for d in [d for d in todo if _time_alone_changed(d["fingerprint"], d["previous"])]:
        try:
            d["content"] = content_fingerprint(d["uri"], so)  # the planning task takes it, not hashing again
        except Exception:  # gone, or unreadable now: the planning task says which, as for any document
            continue
        if d["content"] == d["previous"].rsplit("|", 1)[-1]:
            refreshed[d["uri"]] = f"{d['fingerprint']}|{d['content']}"
    todo = [d for d in todo if d["uri"] not in refreshed]
    expand = functools.partial(plan_pages, questions=questions, so=so)
    return Plan(todo, expand, PAGE_SCHEMA, skipped=skipped, count_sources=True,
                empty_reason=("no document is new or changed since the last committed run" if docs
                              else "the input holds no documents")), len(docs), \
        len(stale & {d["uri"] for d in docs}), refreshed


def _time_alone_changed(listed: str, previous: str) -> bool:
    """Whether a listed ``size-mtime:<size>:<mtime>`` has the size of the ledger's ``previous`` and a content
    hash to compare with (a ledger row written with it)."""
    if not (listed.startswith("size-mtime:") and "|sha256:" in previous):
        return False
    return listed.split(":")[1] == previous.split("|", 1)[0].split(":")[1]


def _not_a_date(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return True
    return False


def run(opts: JobOptions, questions_uri: str | None = None, dpi: int = 100, run_date: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    if not 1 <= dpi <= 1200:
        raise JobRefused(f"--dpi must be 1-1200 (pixels per inch a PDF page is rendered at), got {dpi}")
    check_max_pixels(max_pixels)
    so = parse_storage_options(opts.storage_options)
    questions = load_questions(questions_uri or str(DEFAULT_QUESTIONS), so)
    opts.check_questions(questions, redact_uri(questions_uri) if questions_uri else "the default questions")
    if run_date is not None and not run_date.strip():  # `--run-date "$NIGHT"` with the variable unset in a cron job
        raise JobRefused("--run-date is empty; give the night as YYYY-MM-DD, or leave the flag out for today (UTC)")
    run_date = run_date or f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}"
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_date) or _not_a_date(run_date):
        raise JobRefused(f"--run-date must be a date as YYYY-MM-DD (the night the run stands for), got {run_date!r}")
    opts = JobOptions(**{**opts.__dict__, "run_id": opts.run_id or f"documents-{run_date}"})
    job_settings = {"questions": questions, "dpi": dpi, **max_pixels_setting(max_pixels)}
    model_kwargs = opts.predictor_kwargs(so)  # a hub branch that moved (model_commit): other answers
    settings = answer_settings(run_settings(opts, opts.policy_overrides(), job_settings, model_kwargs["model_commit"],
                                            model_kwargs["model_fingerprint"]))
    for night, n in mend_lost_ledger_writes(opts.output, so, start_ray=lambda: init_ray(opts.num_actors)).items():
        print(f"[documents] run {night} was committed without its ledger write (its driver stopped between the "
              f"two): its {n} document(s) are recorded now, not read again")
    plan, seen, restated, refreshed = plan_documents(opts.input, opts.output, questions, so,
                                                     redo_run=opts.run_id if opts.force else None, settings=settings)
    unlisted = sum(1 for d in plan.sources if not d["fingerprint"])
    changed = sum(1 for d in plan.sources if d["previous"])  # the ledger holds another fingerprint of it
    new = len(plan.sources) - changed - restated
    print(f"[documents] {seen} documents, {len(plan.sources)} new or changed since the last committed run"
          + (f" ({new} new, {changed} changed)" if plan.sources and not opts.force else "")
          + (f" or recorded for run {opts.run_id} (--force)" if opts.force else "")
          + (f" ({restated} answered before under other questions, dpi, model or policy)" if restated else "")
          + (f"; {unlisted} of them without a listed fingerprint, hashed in the planning tasks (unchanged ones are then "
             "skipped)" if unlisted else "")
          + (f"; {len(refreshed)} more with only a new modification time and the same content (hashed), not read "
             "again" if refreshed else "")
          + (f"; skipped {len(plan.skipped)} files (not documents, hidden, or links that cannot be followed: "
             "skipped_sources in the summary)" if plan.skipped else ""))
    # said once the committed run is found to have these settings (with others the run is refused instead)
    stands = (f"run {opts.run_id} stands; the {len(plan.sources)} document(s) above (new or changed since, or left "
              "for a retry) are read by the next night's run (--run-date)") if plan.sources and not opts.force else ""

    def after_commit(results, paths, so_):
        n = update_ledger(opts.output, results, paths.run_id, so_, settings, refreshed,
                          start_ray=lambda: init_ray(opts.num_actors))
        if n or (results.stats is not None and results.has_rows()):  # a run that read nothing records nothing
            print(f"[documents] ledger: {n} document(s) recorded for run {paths.run_id}")

    return run_job("documents", opts, plan, loader=(PageLoader, {"storage_options": so, "dpi": dpi, "max_pixels": max_pixels}),
                   after_commit=after_commit, job_settings=job_settings, committed_note=stands,
                   model_kwargs=model_kwargs,
                   extra_summary=lambda stats, planned: {"documents_seen": seen,
                                                         "documents_processed": planned.get("sources_planned") or 0,
                                                         "run_date": run_date, "dpi": dpi})


@app.command()
@job_command
def main(
    input: str = typer.Option(..., help="folder/prefix of PDFs and page images"),
    output: str = typer.Option(...),
    questions: Optional[str] = typer.Option(None, help="JSON/YAML list of {question, choices, field} (default: "
                                            "reference code, date, total amount, signed; docs/pipelines.md)"),
    dpi: int = typer.Option(100),
    run_date: Optional[str] = typer.Option(None, help="the night this run stands for (default: today, UTC)"),
    max_pixels: int = MAX_PIXELS_OPTION,
    *, opts: JobOptions,
):
    """Process new or changed documents; results under run_id=documents-<date>."""
    run(opts, questions, dpi, run_date, max_pixels)


if __name__ == "__main__":
    from pipelines.job import run_as_program

    run_as_program(app)
