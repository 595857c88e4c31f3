"""Answers for a manifest of (image_uri, question[, choices][, id]) with SPOT-E on Ray Data actors.

    python -m pipelines.vqa --input manifest.jsonl --output out/          # local Ray, spote-tiny
    python -m pipelines.vqa --input s3://b/manifest/ --output s3://b/out --num-actors 8 --num-gpus-per-actor 1

The manifest is a Parquet, JSONL (or JSON array) or CSV file (the text formats may be gzipped, ``.jsonl.gz``),
or a folder/prefix of such parts;
the driver lists the parts and Ray Data tasks read them, so the driver never holds the rows.
Every field is kept exactly as written: ids ``"007"``, ``"0070"`` and ``"1e3"`` stay those strings
(JSON numbers keep their literal text). ``choices`` is a list or a comma-separated string; relative
image paths are resolved against the part's folder. A row without an id gets ``row-<n>`` (its
position in the file from 0, eight digits: ``row-00000003``; ``<part>/row-<n>`` when the manifest has several
parts).
"""

from __future__ import annotations

import base64
import csv
import functools
import gzip
import io
import itertools
import json
import math
import os
import zlib

import pyarrow as pa
import typer

from spote.uris import redact_uri

from .job import MAX_PIXELS_OPTION, JobOptions, check_max_pixels, job_command, max_pixels_setting, run_job
from .planning import (Plan, list_sources, listing_version, lone_surrogate, not_utf8_text, plan_schema,
                       skip_by_extension)
from .stages import ImageLoader
from .storage import filesystem, join, parse_storage_options

app = typer.Typer(add_completion=False)
MANIFEST_EXTS = (".parquet", ".jsonl", ".ndjson", ".json", ".csv", ".jsonl.gz", ".ndjson.gz", ".json.gz", ".csv.gz")
MANIFEST_SCHEMA = plan_schema(("manifest_fields", pa.string()))
NEEDED = ("image_uri", "question")
READ_FIELDS = (*NEEDED, "id", "choices")  # the manifest fields the job reads; any other is carried, as written
# other spellings of a field the job reads, beside its own in another case ("Choices"): a manifest holding one
# and not the field itself would have its choices (its ids) carried as data without a word, and every closed
# question answered as an open one
SPELLED_OTHERWISE = {"choices": ("choice", "options", "option", "answer_choices", "choises"),
                     "id": ("item_id", "row_id", "identifier")}
CSV_FIELD_LIMIT = 64 * 2 ** 20  # characters in one CSV field (the csv module's own limit is 131,072)
COLUMNS_LOOKAHEAD = 100  # records of a JSON part that show its columns (one lacking a field is that row's error)
_BAD = "\0unparsable"   # key of a record standing for a line that could not be parsed


class ManifestError(ValueError):
    """A manifest part cannot be read as a manifest; the message names the part and why."""


def _text(value, name: str = "a value") -> str:
    """A field as the text it was written as (JSON numbers arrive as their literal text; Parquet binary is
    decoded as UTF-8). Raises ValueError for a value that is not one piece of text (a list, a mapping,
    bytes that are not UTF-8): its Python form (``['a', 'b']``, ``b'x.png'``) was taken for the text."""
    if value is None:
        return ""
    if isinstance(value, float) and value != value:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{name} is bytes that are not UTF-8 text") from None
    if isinstance(value, (dict, list, tuple, set)) or type(value).__name__ == "ndarray":
        raise ValueError(f"{name} must be text, got a {type(value).__name__}")
    text = str(value)
    if (odd := lone_surrogate(text)) is not None:  # "\ud800" in JSON: no character
        raise ValueError(f"{name} holds {odd}, an escaped lone surrogate, which is no character")
    return text


def _choices_json(value) -> str:
    if value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value.strip()):
        return ""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            try:
                value = json.loads(value, parse_int=str, parse_float=str)
            except json.JSONDecodeError as err:  # pandas' to_csv writes a list column as "['A', 'B']"
                raise ValueError(f"{value[:60]!r} is not a JSON list ({err}): write it as JSON, "
                                 "[\"A\", \"B\"] (double quotes), or as A,B") from None
        else:
            value = [c.strip() for c in value.split(",")]  # an empty choice stays, for check_choices to name
    if not isinstance(value, (list, tuple)) and not hasattr(value, "tolist"):  # a Parquet list arrives as an array
        raise ValueError(f"choices must be a list or a comma-separated string, got a {type(value).__name__}")
    # stripped as the model is asked them (check_choices), so that the answer is one of the row's choices
    return json.dumps([_text(c, f"choice {i + 1}").strip() for i, c in enumerate(list(value))], ensure_ascii=False)


def _compression(name: str) -> dict:
    """``fs.open``'s keyword for a part's name (lower case): gzip for the text formats' ``.gz``."""
    return {"compression": "gzip"} if name.endswith(".gz") and not name.endswith(".parquet.gz") else {}


def _records(uri: str, storage_options=None):
    """(position, record dict) of one manifest part, streamed; every value as written."""
    fs, path = filesystem(uri, storage_options)
    uri = redact_uri(uri)  # named in messages and rows without an http(s) URL's query (a signature?)
    lower = uri.lower()
    gz = _compression(lower)
    lower = lower.removesuffix(".gz") if gz else lower
    if lower.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            _check_columns(uri, pf.schema_arrow.names)
            i = 0
            for batch in pf.iter_batches(batch_size=4096):
                for rec in batch.to_pylist():
                    yield i, rec
                    i += 1
    elif lower.endswith((".jsonl", ".ndjson")):
        with fs.open(path, "rb", **gz) as f:
            i = 0
            for n, raw in enumerate(f):  # bytes, line by line: one line that is not UTF-8 is that line's problem
                if n == 0 and (why := not_utf8_text(raw)) is not None:  # UTF-16: no manifest line is readable
                    raise ManifestError(f"{uri}: {why}")
                try:
                    line = raw.decode("utf-8-sig" if n == 0 else "utf-8")
                except UnicodeDecodeError as err:
                    if i == 0:  # a first line that is not text: not a manifest at all (an image renamed .jsonl)
                        raise ManifestError(f"{uri}: line {n + 1} is not UTF-8 text ({err.reason} at byte "
                                            f"{err.start}); is it a JSONL manifest?") from None
                    line = None
                if line is not None and not line.strip():
                    continue
                try:
                    if line is None:
                        raise ManifestError(f"{uri}: line {n + 1} is not UTF-8 text")
                    rec = _json_record(uri, line, n + 1)
                except ManifestError as err:  # one bad line is one error row, not a failed job
                    rec = {"image_uri": "", "question": "", _BAD: str(err)}
                yield i, rec
                i += 1
    elif lower.endswith(".json"):
        with fs.open(path, "rb", **gz) as f:
            data = json.load(io.TextIOWrapper(f, encoding="utf-8-sig"), parse_int=str, parse_float=str,
                             parse_constant=str)
        if not isinstance(data, list):
            raise ManifestError(f"{uri}: a .json manifest must be a list of objects, got a {type(data).__name__}")
        for i, rec in enumerate(data):  # an element that is not an object is that row's problem
            yield i, rec if isinstance(rec, dict) else {
                "image_uri": "", "question": "", _BAD: f"{uri}: element {i} is {_json_kind(rec)}, not an object"}
    elif lower.endswith(".csv"):
        csv.field_size_limit(CSV_FIELD_LIMIT)
        with fs.open(path, "rb", **gz) as f:
            # bytes that are not UTF-8 (a Latin-1 export) decoded as lone surrogates, so that they are the
            # row's problem: a strict decoder fails a whole chunk of rows, and every row after it
            text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="")
            head = text.readline()
            if not head:  # an empty file: no rows, as an empty JSONL part
                return
            # skipinitialspace: "id, image_uri, question" (a space after each comma) is read as written by hand
            reader = csv.DictReader(itertools.chain([head], text), delimiter=_csv_delimiter(head),
                                    skipinitialspace=True)
            if (why := not_utf8_text(",".join(reader.fieldnames).encode("utf-8", "surrogateescape"))) is not None:
                raise ManifestError(f"{uri}: {why}")
            if any(lone_surrogate(c) for c in reader.fieldnames):  # an image named .csv, or another encoding
                raise ManifestError(f"{uri}: the header line is not UTF-8 text; is it a CSV manifest?")
            # header cells left blank (a spreadsheet's trailing empty columns) are named by position
            blank = {f"column_{k + 1}" for k, name in enumerate(reader.fieldnames) if not name.strip()}
            reader.fieldnames = [name.strip() or f"column_{k + 1}" for k, name in enumerate(reader.fieldnames)]
            _check_columns(uri, reader.fieldnames)
            for i, rec in enumerate(reader):
                if None not in rec and not any((v or "").strip() for v in rec.values()):
                    continue  # a row of empty cells (",,,"): a blank line to a spreadsheet, no item
                rec = {k: v for k, v in rec.items() if k not in blank or v}  # what a blank column holds is kept
                if None in rec:  # DictReader's key for the fields past the header's: the row was split wrongly
                    rec = {"image_uri": "", "question": "", _BAD: f"{uri}: line {reader.line_num} has "
                           f"{len(reader.fieldnames) + len(rec[None])} fields, the header {len(reader.fieldnames)} "
                           "(a comma in a field that is not quoted?)"}
                elif any(lone_surrogate(v) for v in rec.values() if v):
                    rec = {"image_uri": "", "question": "", _BAD: f"{uri}: line {reader.line_num} is not UTF-8 "
                                                                  "text (saved in another encoding?)",
                           **({"id": rec["id"]} if rec.get("id") and not lone_surrogate(rec["id"]) else {})}
                yield i, rec
    else:
        raise ManifestError(f"manifest must be .parquet, .jsonl or .csv: {uri}")


def _json_kind(value) -> str:
    """What a JSON value that is no object is, in JSON's words (numbers are read as their text)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, list):
        return "an array"
    return "a string or a number"


def _csv_delimiter(head: str) -> str:
    """``","``, or ``";"`` / tab where the header line ``head``, read as CSV (quotes and all), has the needed
    columns only when split there (a spreadsheet saved where ``,`` is the decimal mark)."""
    for delimiter in (",", ";", "\t"):
        names = [n.strip() for n in next(csv.reader([head], delimiter=delimiter, skipinitialspace=True), [])]
        if all(n in names for n in NEEDED):
            return delimiter
    return ","


def _json_record(uri: str, line: str, line_no: int) -> dict:
    try:
        rec = json.loads(line, parse_int=str, parse_float=str, parse_constant=str)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{uri}: line {line_no} is not JSON: {err}") from err
    except RecursionError:  # json's decoder recurses per nesting level
        raise ManifestError(f"{uri}: line {line_no} is nested too deeply to read") from None
    if not isinstance(rec, dict):
        raise ManifestError(f"{uri}: line {line_no} is not a JSON object")
    return rec


def _read_otherwise(columns) -> list[tuple[str, str]]:
    """(column, field): the columns that spell a field the job reads otherwise (``SPELLED_OTHERWISE``, or the
    field in another case or with spaces), where the field itself is not a column."""
    columns = [str(c) for c in columns]
    return [(c, field) for field, others in SPELLED_OTHERWISE.items() if field not in columns
            for c in columns if c != field and (c.strip().lower() == field or c.strip().lower() in others)]


def _not_read(misses: list[tuple[str, str]]) -> str:
    """What ``_read_otherwise``'s (column, field) pairs mean, for a part's refusal and a row's error."""
    return "; ".join(f"{c!r} is not read: the job reads {f!r}" for c, f in misses)


def _check_spelling(uri: str, columns) -> None:
    """ManifestError naming each column that spells a field the job reads otherwise (``_read_otherwise``)."""
    if misses := _read_otherwise(columns):
        raise ManifestError(f"{uri}: {_not_read(misses)} (column names are lower case, as written in the docs): "
                            f"rename {'it' if len(misses) == 1 else 'them'}")


def _check_columns(uri: str, columns) -> None:
    columns = list(columns)
    if _BAD in columns:
        return
    _check_spelling(uri, columns)
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:  # a record keeps one value per name: the other column's values would be lost without a word
        raise ManifestError(f"{uri}: the header names {', '.join(repr(c) for c in twice)} more than once; give each "
                            "column its own name")
    if any(c not in columns for c in NEEDED):
        raise ManifestError(f"manifest needs columns image_uri and question; {uri} has {columns}")


def _check_records(uri: str, records) -> None:
    """The columns of a JSON part, whose records each have their own keys: refused (ManifestError) when
    none of its first ``COLUMNS_LOOKAHEAD`` records has both needed fields (the manifest names them
    otherwise), or one of them spells a field the job reads otherwise (``_check_spelling``); a record that
    lacks a needed field among records that have them is that row's error, not the part's."""
    first = None
    for _, rec in itertools.islice(records, COLUMNS_LOOKAHEAD):
        if not isinstance(rec, dict) or _BAD in rec:
            continue
        _check_spelling(uri, rec)
        if all(c in rec for c in NEEDED):
            return
        first = first if first is not None else list(rec)
    if first is not None:
        _check_columns(uri, first)


def manifest_rows(part: dict, storage_options=None) -> "iter[dict]":
    """Item rows of one manifest part ``{"uri", "rel", "prefix"}``: id, source, question, choices."""
    uri = part["uri"]
    name = redact_uri(uri)  # in rows and messages, and as the folder of relative image paths: without its query
    base = name.rsplit("/", 1)[0] if "/" in name else "."
    prefix = part.get("prefix") or ""
    i = -1
    try:
        for i, rec in _records(uri, storage_options):
            yield _manifest_row(name, base, prefix, i, rec)
    except (ManifestError, ValueError, csv.Error, RecursionError, gzip.BadGzipFile, EOFError, zlib.error) as err:
        # a part that stops reading part way (a truncated .json array, a damaged CSV or Parquet file): the
        # rows read so far stand, and one error row says where and why the rest was not read
        why = str(err) if str(err).startswith(name) else f"{name}: {err}"
        yield {"id": f"{prefix}unreadable-after-row-{i:08d}" if i >= 0 else f"{prefix}unreadable", "source": name,
               "question": "", "choices": "", "manifest_fields": "", "status": "error",
               "error": f"bad manifest: {why}" + (f" (after row {i}; the rows after it were not read)" if i >= 0 else "")}


def _plain(value):
    """A manifest value as JSON can hold it: NaN and infinities None, bytes their UTF-8 text (else
    ``"base64:..."``), dates and decimals their text, arrays lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)) or type(value).__name__ == "ndarray":
        return [_plain(v) for v in list(value)]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def manifest_fields(rec: dict) -> str:
    """The record's fields the job does not read (``READ_FIELDS``), as one JSON object, in the manifest's
    order: a label, a site, a reference, carried into the results beside the answer. Values as written (a
    JSON or CSV number as its text, Parquet's typed values as JSON types); "" when there are none."""
    extra = {str(k): _plain(v) for k, v in rec.items() if k not in READ_FIELDS and k != _BAD}
    if not extra:
        return ""
    text = json.dumps(extra, ensure_ascii=False)
    return json.dumps(extra) if lone_surrogate(text) else text  # "\ud800" in JSON: escaped, as Arrow can hold it


def _manifest_row(uri: str, base: str, prefix: str, i: int, rec: dict) -> dict:
    """One item row of a manifest record (``i``: its position in the part)."""
    fields, bad = {}, []
    for name in ("image_uri", "id", "question"):
        try:
            fields[name] = _text(rec.get(name), name)
        except ValueError as err:
            fields[name], bad = "", [*bad, str(err)]
    src = fields["image_uri"]
    if src.startswith("~"):  # as a shell and pandas read it: the home folder of the user running the job
        src = os.path.expanduser(src)
    # a URI (s3://, https://; file:/a and file:///a, which the loader reads as RFC 8089 says) as written; a
    # path relative to the part's folder
    if src and "://" not in src and not src.startswith(("/", "file:")):
        src = join(base, src)
    row = {"id": fields["id"] or f"{prefix}row-{i:08d}", "source": src, "question": fields["question"],
           "manifest_fields": manifest_fields(rec)}
    try:
        row["choices"] = _choices_json(rec.get("choices"))
    except ValueError as err:  # json.JSONDecodeError included
        row.update(choices="", status="error", error=f"unreadable choices: {err}")
    if not src and not bad:
        row.update(status="error", error=f"missing image_uri: row {i} of {uri} has none")
    elif "question" not in rec and _BAD not in rec and not bad:
        row.update(status="error", error=f"missing question: row {i} of {uri} has none")
    if misses := _read_otherwise(rec):  # past the columns the planning checked (a JSON record of its own keys)
        bad.append(f"{_not_read(misses)} (column names are lower case): rename {'it' if len(misses) == 1 else 'them'}")
    if bad:
        row.update(status="error", error=f"bad manifest field: row {i} of {uri}: {'; '.join(bad)}")
    if _BAD in rec:  # "bad manifest line" before the message, which starts with the manifest's name
        row.update(status="error", error=f"bad manifest line: {rec[_BAD]}")
    return row


def _check_part(uri: str, storage_options=None) -> None:
    """ManifestError, naming the part, when its start shows it is no manifest of its kind or lacks the
    needed columns (a .json array: its first bytes only, since it is read whole in a task)."""
    name = redact_uri(uri)  # as messages name it: without an http(s) URL's query
    lower = name.lower()
    if lower.endswith((".json", ".json.gz")):
        fs, path = filesystem(uri, storage_options)
        try:
            with fs.open(path, "rb", **_compression(lower)) as f:
                head = f.read(65536)
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise ManifestError(f"{name}: cannot be read as a JSON manifest: {err}") from None
        if (why := not_utf8_text(head)) is not None:
            raise ManifestError(f"{name}: {why}")
        start = head.decode("utf-8-sig", errors="replace").lstrip()
        if not start.startswith("["):
            got = "an empty file" if not start else "a JSON object" if start.startswith("{") else "no JSON array"
            raise ManifestError(f"{name}: a .json manifest must be a list of objects, got {got}")
        _check_records(name, enumerate(_leading_elements(start[1:])))
        return
    try:
        if name.lower().endswith((".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")):
            _check_records(name, _records(uri, storage_options))
        else:
            next(_records(uri, storage_options), None)
    except ManifestError:
        raise
    except (ValueError, csv.Error, gzip.BadGzipFile, EOFError, zlib.error) as err:  # Arrow's "magic bytes not found", ...
        raise ManifestError(f"{name}: cannot be read as a {name.rsplit('.', 1)[-1].upper()} manifest: {err}") from None


def _leading_elements(text: str):
    """The elements of a JSON array whose text (after its ``[``) starts ``text``, as far as they are whole
    there: a .json part is read whole only in its task, so the plan sees its first bytes."""
    decoder, pos = json.JSONDecoder(), 0
    while True:
        pos = len(text) - len(text[pos:].lstrip(" \t\r\n,"))
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:  # the end of the array, or an element longer than what was read
            return
        yield value


def plan_manifest(uri: str, storage_options=None) -> Plan:
    """The manifest's parts (listed here) and how a task turns one part into rows."""
    parts, skipped = list_sources(uri, storage_options, skip_by_extension(MANIFEST_EXTS, "manifest"))
    for p in parts:  # a part that is no manifest, or lacks the needed columns, stops the run here in one line
        _check_part(p["uri"], storage_options)
    several = len(parts) > 1
    sources = [{"uri": p["uri"], "rel": p["rel"], "prefix": f"{p['rel']}/" if several else ""} for p in parts]
    return Plan(sources, functools.partial(manifest_rows, storage_options=storage_options), MANIFEST_SCHEMA,
                ids_from_sources=False, skipped=skipped, input_version=listing_version(parts))


def read_manifest(uri: str, storage_options: dict | None = None) -> list[dict]:
    """Every row of a (small) manifest in this process, with the tasks' own parsing; for tools and
    tests. Jobs use ``plan_manifest``, which leaves the rows to Ray Data tasks.
    Raises ManifestError (a ValueError) for an unreadable part or a duplicated id."""
    plan = plan_manifest(uri, storage_options)
    rows = [row for part in plan.sources for row in plan.expand(part)]
    seen: set[str] = set()
    for r in rows:
        if r["id"] in seen:
            raise ManifestError(f"duplicate ids in the input: {r['id']!r}; every row needs its own id")
        seen.add(r["id"])
    return rows


@app.command()
@job_command
def main(
    input: str = typer.Option(..., help="manifest: Parquet, JSONL, JSON array or CSV file (the text formats also .gz), or a folder of parts (local or s3://)"),
    output: str = typer.Option(..., help="output folder or prefix (local or s3://)"),
    max_pixels: int = MAX_PIXELS_OPTION,
    *, opts: JobOptions,
):
    """Answer every manifest row; write results, summary and report under OUTPUT."""
    check_max_pixels(max_pixels)
    so = parse_storage_options(opts.storage_options)
    run_job("vqa", opts, plan_manifest(input, so), loader=(ImageLoader, {"storage_options": so, "max_pixels": max_pixels}),
            job_settings=max_pixels_setting(max_pixels))


if __name__ == "__main__":
    from pipelines.job import run_as_program

    run_as_program(app)
