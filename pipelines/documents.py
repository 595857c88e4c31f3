"""Nightly document re-processing: PDFs and page images under a prefix -> pages rendered at a set
DPI -> field questions per page -> results, incrementally.

    python -m pipelines.documents --input s3://docs/inbox/ --output s3://docs/spote --dpi 100

Incremental: a ledger (``_ledger/documents.json`` in the output) keeps each document's content
fingerprint (ETag where the store has one, else SHA-256). A run processes only documents that
are new or changed since the last *committed* run, writes under ``run_id=documents-<date>``, and
a re-run of the same night is a no-op (``--force`` redoes it, still without duplicates).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path, PurePosixPath
from typing import Optional

import typer

from .job import JobOptions, job_command, run_job
from .pdfs import UnreadablePDF, open_pdf, page_size, render_page
from .questions import load_questions
from .stages import RowLoader
from .storage import content_hash, filesystem, join, parse_storage_options, read_bytes, write_text

app = typer.Typer(add_completion=False)
DOC_EXTS = (".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
DEFAULT_QUESTIONS = Path(__file__).parent / "samples" / "document_questions.yaml"
LEDGER = "_ledger/documents.json"


def fingerprint(fs, path: str) -> str:
    info = fs.info(path)
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    with fs.open(path, "rb") as f:
        return f"sha256:{content_hash(f.read())}"


def read_ledger(output: str, so=None) -> dict:
    fs, p = filesystem(join(output, LEDGER), so)
    return json.loads(fs.cat_file(p)) if fs.exists(p) else {}


def list_documents(input_uri: str, so=None) -> list[tuple[str, str]]:
    """(uri, fingerprint) of every document under the input."""
    fs, path = filesystem(input_uri, so)
    files = [path] if fs.isfile(path) else sorted(p for p in fs.find(path) if p.lower().endswith(DOC_EXTS))
    proto = input_uri.split("://", 1)[0] + "://" if "://" in input_uri else ""
    return [((proto + p) if proto and not p.startswith(proto) else p, fingerprint(fs, p)) for p in files]


def page_count(uri: str, so=None) -> int:
    if not uri.lower().endswith(".pdf"):
        return 1
    pdf = open_pdf(read_bytes(uri, so))
    try:
        return len(pdf)
    finally:
        pdf.close()


def plan_pages(docs: list[tuple[str, str]], questions: list[dict], so=None) -> list[dict]:
    rows = []
    for uri, fp in docs:
        name = PurePosixPath(uri.split("://")[-1]).name
        try:
            n_pages, err = page_count(uri, so), ""
            if n_pages == 0:
                n_pages, err = 1, "unreadable PDF: it has no pages"
        except Exception as e:
            n_pages, err = 1, f"unreadable PDF: {e}" if isinstance(e, UnreadablePDF) else f"unreadable PDF: {type(e).__name__}: {e}"
        for page in range(n_pages):
            for qi, q in enumerate(questions):
                rows.append({"id": f"{name}/p{page}/q{qi}", "source": uri, **q, "document": name, "page": page,
                             "question_index": qi, "fingerprint": fp, "status": "error" if err else "", "error": err})
    return rows


class PageLoader(RowLoader):
    """CPU stage: render one PDF page at ``dpi`` (or decode a page image); keeps the last document open."""

    failure = "unreadable PDF"

    def __init__(self, storage_options=None, dpi: int = 100, max_pixels: int = 40_000_000):
        self.so, self.dpi, self.max_pixels = storage_options, dpi, max_pixels
        self._uri, self._pdf, self._data = None, None, None

    def forget(self) -> None:
        self._uri = None

    def describe(self, row: dict, err: Exception) -> str:
        if isinstance(err, UnreadablePDF):
            return f"{self.failure}: {err}"
        return super().describe(row, err)

    def read(self, row: dict):
        from spote.images import BadImage, load_image

        if row["source"] != self._uri:
            if self._pdf is not None:
                self._pdf.close()
            self._uri, self._pdf, self._data = None, None, read_bytes(row["source"], self.so)
            self._pdf = open_pdf(self._data) if row["source"].lower().endswith(".pdf") else None
            self._uri = row["source"]
        if self._pdf is None:
            return load_image(self._data, self.max_pixels)
        w, h = page_size(self._pdf, row["page"])
        scale = self.dpi / 72
        if w * h * scale * scale > self.max_pixels:
            raise BadImage(f"page {row['page']} at {self.dpi} dpi exceeds {self.max_pixels:,} pixels")
        return render_page(self._pdf, row["page"], scale)


def run(opts: JobOptions, questions_uri: str | None = None, dpi: int = 100, run_date: str | None = None) -> dict:
    so = parse_storage_options(opts.storage_options)
    questions = load_questions(questions_uri or str(DEFAULT_QUESTIONS), so)
    run_date = run_date or f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}"
    opts = JobOptions(**{**opts.__dict__, "run_id": opts.run_id or f"documents-{run_date}"})
    ledger = read_ledger(opts.output, so)
    docs = list_documents(opts.input, so)
    todo = [(u, fp) for u, fp in docs if ledger.get(u, {}).get("fingerprint") != fp]
    print(f"[documents] {len(docs)} documents, {len(todo)} new or changed since the last committed run")
    rows = plan_pages(todo, questions, so)

    def update_ledger(table, paths, so_):
        new = dict(ledger)
        for u, fp in todo:
            new[u] = {"fingerprint": fp, "run_id": paths.run_id}
        write_text(join(opts.output, LEDGER), json.dumps(new, indent=1, sort_keys=True), so_)

    return run_job("documents", opts, rows, loader=(PageLoader, {"storage_options": so, "dpi": dpi}),
                   after_commit=update_ledger,
                   extra_summary=lambda t: {"documents_seen": len(docs), "documents_processed": len(todo),
                                            "run_date": run_date, "dpi": dpi})


@app.command()
@job_command
def main(
    input: str = typer.Option(..., help="folder/prefix of PDFs and page images"),
    output: str = typer.Option(...),
    questions: Optional[str] = typer.Option(None, help="JSON/YAML list of {question, choices} (default: field questions)"),
    dpi: int = typer.Option(100),
    run_date: Optional[str] = typer.Option(None, help="the night this run stands for (default: today, UTC)"),
    *, opts: JobOptions,
):
    """Process new or changed documents; results under run_id=documents-<date>."""
    run(opts, questions, dpi, run_date)


if __name__ == "__main__":
    app()
