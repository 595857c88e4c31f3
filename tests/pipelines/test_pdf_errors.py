"""Every kind of unreadable PDF gets its own message, whatever file was read before it."""

import io
import itertools

import pytest
from PIL import Image
from pypdf import PdfWriter

from pipelines.documents import PageLoader, plan_pages
from pipelines.pdfs import UnreadablePDF, open_pdf


def _pdf_bytes(pages: int) -> bytes:
    imgs = [Image.new("RGB", (200, 300), c) for c in ("red", "green", "blue")[:pages]]
    buf = io.BytesIO()
    imgs[0].save(buf, "PDF", save_all=True, append_images=imgs[1:])
    return buf.getvalue()


def _written(writer: PdfWriter) -> bytes:
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def _encrypted() -> bytes:
    w = PdfWriter()
    w.add_blank_page(100, 100)
    w.encrypt("secret", algorithm="RC4-128")
    return _written(w)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buf, "PNG")
    return buf.getvalue()


# file kind -> (bytes, what the message must say, what it must not say)
KINDS = {
    "encrypted": (_encrypted(), "encrypted: a password is needed", "no pages"),
    "zero-pages": (_written(PdfWriter()), "the document has no pages", "password"),
    "truncated": (_pdf_bytes(3)[:2000], "truncated: the file ends after 2,000 bytes", "password"),
    "png-named-pdf": (_png(), "not a PDF: the file is a PNG image", "password"),
    "text-named-pdf": (b"name,amount\nx,1\n", "not a PDF: the file starts with text", "password"),
    "empty": (b"", "empty file (0 bytes)", "password"),
}
STALE = ("Incorrect password", "PDFium: Success", "Data format error", "PdfiumError")


@pytest.mark.parametrize("order", list(itertools.permutations(["encrypted", "zero-pages", "truncated"])) + [
    ("png-named-pdf", "text-named-pdf", "empty", "encrypted", "zero-pages")])
def test_open_pdf_says_what_is_wrong_with_this_file_in_any_order(order):
    for kind in order:
        data, says, not_says = KINDS[kind]
        open_pdf(_pdf_bytes(2)).close()  # a good file between the bad ones leaves PDFium's last error at success
        with pytest.raises(UnreadablePDF) as err:
            open_pdf(data)
        msg = str(err.value)
        assert says in msg and not_says not in msg, (kind, msg)
        assert not any(s in msg for s in STALE), (kind, msg)


def test_error_rows_of_the_documents_job(tmp_path):
    """Planning (page counts) and the page loader give the same per-file reasons, in inbox order."""
    for i, (kind, (data, _, _)) in enumerate(KINDS.items()):
        (tmp_path / f"{i}-{kind}.pdf").write_bytes(data)
    (tmp_path / "9-good.pdf").write_bytes(_pdf_bytes(3))
    docs = [{"uri": str(p), "rel": p.name, "fingerprint": "fp"} for p in sorted(tmp_path.iterdir())]
    question = [{"question": "is it signed ?", "choices": '["yes", "no"]'}]
    rows = [r for d in docs for r in plan_pages(d, question)]  # one planning task per document
    by_doc = {r["document"]: r for r in rows}
    for i, (kind, (_, says, not_says)) in enumerate(KINDS.items()):
        row = by_doc[f"{i}-{kind}.pdf"]
        assert row["status"] == "error" and row["error"].startswith("unreadable PDF: " + says), row["error"]
        assert not any(s in row["error"] for s in STALE)
    assert sorted(r["page"] for r in rows if r["document"] == "9-good.pdf") == [0, 1, 2]

    loader = PageLoader(dpi=36)  # the loader opens the files itself (a file can change after planning)
    for i, (kind, (_, says, _)) in enumerate(KINDS.items()):
        out = loader.load({"id": kind, "source": str(tmp_path / f"{i}-{kind}.pdf"), "page": 0,
                           "question": "is it signed ?", "status": "", "error": ""})
        assert out["status"] == "error" and out["error"].startswith("unreadable PDF: " + says), out["error"]
    good = str(tmp_path / "9-good.pdf")
    ok = loader.load({"id": "g", "source": good, "page": 2, "question": "q ?", "status": "", "error": ""})
    assert ok["status"] == "ok" and (ok["height"], ok["width"]) == (150, 100)
    gone = loader.load({"id": "g5", "source": good, "page": 5, "question": "q ?", "status": "", "error": ""})
    assert gone["error"] == "unreadable PDF: page 5 does not exist: the document has 3 pages, numbered from 0"


def test_a_page_too_large_at_the_dpi_says_so_and_what_to_lower(tmp_path):
    """A readable page that would render past the pixel cap is not an unreadable image: its reason is
    ``page too large`` and the message names --dpi. The same page at a lower dpi renders."""
    (tmp_path / "p.pdf").write_bytes(_pdf_bytes(1))  # 200 x 300 pt
    row = {"id": "p", "source": str(tmp_path / "p.pdf"), "page": 0, "question": "q ?", "status": "", "error": ""}
    big = PageLoader(dpi=720, max_pixels=1_000_000).load(row)  # 2000 x 3000 px
    assert big["status"] == "error"
    assert big["error"] == "page too large: page 0 at 720 dpi exceeds 1,000,000 pixels; lower --dpi"
    assert PageLoader(dpi=72, max_pixels=1_000_000).load(row)["status"] == "ok"
