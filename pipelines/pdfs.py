"""Opening PDFs with PDFium (pypdfium2), with errors that say what is wrong with *this* file.

PDFium reports a failed open through a process-wide "last error" that a successful open does not
reset, and pypdfium2 refuses a document without pages with that same code. So a valid PDF with no
pages read after an encrypted one is reported as "Incorrect password error", and after a good one
as "(PDFium: Success)". Here a failed open is diagnosed afresh: a document PDFium can load but
that has no pages is said to have none, and only a failed load (which sets the code) is described
by its code, plus what the bytes show (no ``%PDF`` header, no end-of-file marker).
"""

from __future__ import annotations

import io
import logging
import warnings


class UnreadablePDF(ValueError):
    """A PDF (or a file named .pdf) that cannot be rendered; the message says why, for this file."""


def open_pdf(data: bytes):
    """A ``pypdfium2.PdfDocument`` over ``data`` (kept alive by the document).

    Raises:
        UnreadablePDF: empty file, not a PDF, encrypted, truncated, damaged, or no pages.
    """
    import pypdfium2 as pdfium

    if not data:
        raise UnreadablePDF("empty file (0 bytes)")
    if b"%PDF-" not in data[:1024]:
        raise UnreadablePDF(f"not a PDF: {_what_it_is(data)}")
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError:
        raise UnreadablePDF(_diagnose(data)) from None
    import pypdfium2.raw as pdfium_c

    xfa = "XFA" in pdfium.PDFIUM_INFO.flags
    if pdf.get_formtype() == pdfium_c.FORMTYPE_XFA_FULL and not xfa:  # its pages are a "Please wait..." placeholder
        pdf.close()
        raise UnreadablePDF("a dynamic XFA form, whose pages only a renderer with XFA draws (this PDFium has none; "
                            "they show a placeholder): flatten it, or print it to PDF, first")
    # a filled-in form's values, drawn as a viewer draws them: a form saved with /NeedAppearances (as many
    # form fillers save it) holds no picture of its values, and without the form environment PDFium renders
    # the fields empty. It must be set up before any page is loaded.
    quiet = logging.getLogger("pypdfium2")  # its advice to rebuild with XFA, for a static XFA form's AcroForm half
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # an XFA form PDFium cannot load: its AcroForm fields still draw
            warnings.simplefilter("ignore")
            pdf.init_forms()
    finally:
        quiet.setLevel(level)
    return pdf


def render_page(pdf, index: int, scale: float):
    """Page ``index`` (0-based, as in the rows' ``page``) as an RGB PIL image, ``scale`` pixels per point.

    Raises:
        UnreadablePDF: the page does not exist or PDFium cannot load or render it.
    """
    import pypdfium2 as pdfium

    if not 0 <= index < len(pdf):
        raise UnreadablePDF(_no_such_page(pdf, index))
    try:
        return pdf[index].render(scale=scale).to_pil().convert("RGB")
    except pdfium.PdfiumError as err:
        raise UnreadablePDF(f"page {index} of pages 0-{len(pdf) - 1} cannot be rendered (damaged page: {err})") from err


def page_size(pdf, index: int) -> tuple[float, float]:
    """(width, height) of page ``index`` in points; UnreadablePDF when it cannot be loaded."""
    import pypdfium2 as pdfium

    if not 0 <= index < len(pdf):
        raise UnreadablePDF(_no_such_page(pdf, index))
    try:
        return pdf[index].get_size()
    except pdfium.PdfiumError as err:
        raise UnreadablePDF(f"page {index} of pages 0-{len(pdf) - 1} cannot be loaded (damaged page: {err})") from err


def _no_such_page(pdf, index: int) -> str:
    return f"page {index} does not exist: the document has {len(pdf)} pages, numbered from 0"


def _diagnose(data: bytes) -> str:
    """Why PDFium refused ``data``: loaded afresh through the C API, so the error code is this file's."""
    import ctypes

    import pypdfium2.raw as pdfium_c

    buf = ctypes.create_string_buffer(data, len(data))
    handle = pdfium_c.FPDF_LoadMemDocument64(buf, len(data), None)
    if handle:  # the load worked: the refusal was for having no pages, and the last error is stale
        try:
            pages = pdfium_c.FPDF_GetPageCount(handle)
        finally:
            pdfium_c.FPDF_CloseDocument(handle)
        return "the document has no pages" if pages < 1 else "PDFium could not open it"
    code = pdfium_c.FPDF_GetLastError()
    if code == pdfium_c.FPDF_ERR_PASSWORD:
        return "encrypted: a password is needed to open it"
    if code == pdfium_c.FPDF_ERR_SECURITY:
        return "encrypted with a security handler PDFium does not support"
    if code == pdfium_c.FPDF_ERR_FORMAT:
        if b"%%EOF" not in data[-2048:]:
            return f"truncated: the file ends after {len(data):,} bytes without an end-of-file marker (%%EOF)"
        return "damaged: its structure (cross-reference table or objects) cannot be parsed"
    if code == pdfium_c.FPDF_ERR_FILE:
        return "the file could not be read"
    return f"PDFium could not open it (error code {code})"


def _what_it_is(data: bytes) -> str:
    """A short description of bytes that are not a PDF: an image format PIL knows, text, or binary."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:  # an image saved as .pdf: its own extension has it read as one
            ext = {"JPEG": ".jpg", "TIFF": ".tif"}.get(im.format) or next(
                (e for e, f in Image.registered_extensions().items() if f == im.format), "")
            return f"the file is a {im.format} image" + (f" under a PDF's name: rename it to {ext}" if ext else "")
    except (UnidentifiedImageError, OSError, ValueError):
        pass
    head = data[:24]
    try:
        text = head.decode("utf-8")
        if text.isprintable() or text.replace("\n", " ").replace("\r", " ").replace("\t", " ").isprintable():
            return f"the file starts with text {text.strip()!r}, not %PDF-"
    except UnicodeDecodeError:
        pass
    return f"no %PDF- header (the file starts with bytes {head[:12].hex(' ')})"
