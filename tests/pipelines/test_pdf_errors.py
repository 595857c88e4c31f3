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
    "png-named-pdf": (_png(), "not a PDF: the file is a PNG image under a PDF's name: rename it to .png", "password"),
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
        assert (row["page"], row["pages"]) == (0, 0)  # one row at page 0; no page was counted (was pages 1)
    assert sorted(r["page"] for r in rows if r["document"] == "9-good.pdf") == [0, 1, 2]
    assert {r["pages"] for r in rows if r["document"] == "9-good.pdf"} == {3}

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
    assert big["error"] == "page too large: page 0 at 720 dpi exceeds 1,000,000 pixels; lower --dpi or raise --max-pixels"
    assert PageLoader(dpi=72, max_pixels=1_000_000).load(row)["status"] == "ok"


def _pdf_of(objects: list[bytes]) -> bytes:
    """A PDF of ``objects`` (numbered from 1, the first the catalog) with its cross-reference table."""
    out, offsets = bytearray(b"%PDF-1.7\n"), []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return bytes(out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))


def _filled_form(value: bytes) -> bytes:
    """A one-page PDF with a text field holding ``value``, saved as form fillers often save one: /NeedAppearances
    set and no appearance stream, so a viewer draws the value itself."""
    field = b"/V (" + value + b") " if value else b""
    objs = [b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [4 0 R] /NeedAppearances true "
            b"/DA (/Helv 18 Tf 0 g) /DR << /Font << /Helv 5 0 R >> >> >> >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 100] /Annots [4 0 R] >>",
            b"<< /Type /Annot /Subtype /Widget /FT /Tx /T (ref) " + field + b"/Rect [20 30 280 70] /F 4 /P 3 0 R "
            b"/DA (/Helv 18 Tf 0 g) >>",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    return _pdf_of(objs)


def test_a_filled_in_form_is_rendered_with_its_values(tmp_path):
    import numpy as np

    def dark(value: bytes) -> int:
        path = tmp_path / f"form{len(value)}.pdf"
        path.write_bytes(_filled_form(value))
        row = PageLoader(dpi=72).load({"source": str(path), "page": 0, "question": "what is the code ?", "status": ""})
        page = np.frombuffer(row["pixels"], np.uint8).reshape(row["height"], row["width"], 3)
        return int((page[30:70, 20:280] < 128).any(-1).sum())   # the field (PDF y 30-70 of 100: rows 30-70)

    assert dark(b"") == 0
    assert dark(b"K7-3A9Q") > 150   # the value is drawn, as a viewer draws it


def test_a_pdf_under_an_image_name_is_told_to_be_renamed(tmp_path):
    """The advice written for spote ask ("run pipelines.documents, which reads PDFs named .pdf") was given by
    the documents job itself."""
    (tmp_path / "scan.jpg").write_bytes(_pdf_bytes(2))
    out = PageLoader().load({"id": "s", "source": str(tmp_path / "scan.jpg"), "page": 0, "question": "q ?",
                             "status": "", "error": ""})
    assert out["error"] == (f"unreadable image: {tmp_path / 'scan.jpg'}: the file is a PDF under an image's name: "
                            "rename it to .pdf (this job renders a file as a PDF by its name)")


def test_a_dynamic_xfa_form_is_refused_not_answered_on_its_placeholder(tmp_path, capsys):
    """A LiveCycle form (/NeedsRendering, XFA alone) renders as its "Please wait..." page without an XFA build of
    PDFium: it was answered ok on that page and recorded as done."""
    import pypdfium2

    if "XFA" in pypdfium2.PDFIUM_INFO.flags:
        pytest.skip("this PDFium draws XFA forms")
    xfa = (b'<?xml version="1.0"?><xdp:xdp xmlns:xdp="http://ns.adobe.com/xdp/"><template '
           b'xmlns="http://www.xfa.org/schema/xfa-template/3.3/"><subform name="f"><field name="ref"/></subform>'
           b'</template></xdp:xdp>')
    wait = b"BT /F1 14 Tf 50 740 Td (Please wait...) Tj ET"
    data = _pdf_of([b"<< /Type /Catalog /Pages 2 0 R /NeedsRendering true /AcroForm << /Fields [] /XFA 5 0 R >> >>",
                    b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 6 0 R >> >> "
                    b"/Contents 4 0 R >>",
                    b"<< /Length %d >>\nstream\n" % len(wait) + wait + b"\nendstream",
                    b"<< /Length %d >>\nstream\n" % len(xfa) + xfa + b"\nendstream",
                    b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"])
    with pytest.raises(UnreadablePDF, match=r"^a dynamic XFA form, whose pages only a renderer with XFA draws"):
        open_pdf(data)
    (tmp_path / "form.pdf").write_bytes(data)
    out = PageLoader().load({"id": "f", "source": str(tmp_path / "form.pdf"), "page": 0, "question": "q ?",
                             "status": "", "error": ""})
    assert out["status"] == "error" and out["error"].startswith("unreadable PDF: a dynamic XFA form")
    assert "pypdfium2" not in capsys.readouterr().err
