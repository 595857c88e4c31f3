"""Answers for a manifest of (image_uri, question[, choices][, id]) with SPOT-E on Ray Data actors.

    python -m pipelines.vqa --input manifest.jsonl --output out/          # local Ray, spote-tiny
    python -m pipelines.vqa --input s3://b/manifest/ --output s3://b/out --num-actors 8 --num-gpus-per-actor 1

The manifest is a Parquet, JSONL (or JSON array) or CSV file, or a folder/prefix of such parts;
the driver lists the parts and Ray Data tasks read them, so the driver never holds the rows.
Every field is kept exactly as written: ids ``"007"``, ``"0070"`` and ``"1e3"`` stay those strings
(JSON numbers keep their literal text). ``choices`` is a list or a comma-separated string; relative
image paths are resolved against the part's folder. A row without an id gets ``row-<n>`` (its
position in the file; ``<part>/row-<n>`` when the manifest has several parts).
"""

from __future__ import annotations

import csv
import functools
import io
import json

import typer

from .job import JobOptions, job_command, run_job
from .planning import Plan, list_sources, listing_version, plan_schema, skip_by_extension
from .storage import filesystem, join, parse_storage_options

app = typer.Typer(add_completion=False)
MANIFEST_EXTS = (".parquet", ".jsonl", ".ndjson", ".json", ".csv")
MANIFEST_SCHEMA = plan_schema()
NEEDED = ("image_uri", "question")
_BAD = "\0unparsable"   # key of a record standing for a line that could not be parsed


class ManifestError(ValueError):
    """A manifest part cannot be read as a manifest; the message names the part and why."""


def _text(value) -> str:
    """A field as the text it was written as (JSON numbers arrive as their literal text)."""
    if value is None:
        return ""
    if isinstance(value, float) and value != value:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _choices_json(value) -> str:
    if value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value.strip()):
        return ""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            value = json.loads(value, parse_int=str, parse_float=str)
        else:
            value = [c.strip() for c in value.split(",")]  # an empty choice stays, for check_choices to name
    if not isinstance(value, (list, tuple)) and not hasattr(value, "tolist"):  # a Parquet list arrives as an array
        raise ValueError(f"choices must be a list or a comma-separated string, got a {type(value).__name__}")
    return json.dumps([_text(c) for c in list(value)])


def _records(uri: str, storage_options=None):
    """(position, record dict) of one manifest part, streamed; every value as written."""
    fs, path = filesystem(uri, storage_options)
    lower = uri.lower()
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
        with fs.open(path, "rb") as f:
            i = 0
            for n, line in enumerate(io.TextIOWrapper(f, encoding="utf-8-sig")):
                if not line.strip():
                    continue
                try:
                    rec = _json_record(uri, line, n + 1)
                except ManifestError as err:  # one bad line is one error row, not a failed job
                    rec = {"image_uri": "", "question": "", _BAD: str(err)}
                if i == 0:
                    _check_columns(uri, rec.keys())
                yield i, rec
                i += 1
    elif lower.endswith(".json"):
        with fs.open(path, "rb") as f:
            data = json.load(io.TextIOWrapper(f, encoding="utf-8-sig"), parse_int=str, parse_float=str,
                             parse_constant=str)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ManifestError(f"{uri}: a .json manifest must be a list of objects")
        if data:
            _check_columns(uri, data[0].keys())
        yield from enumerate(data)
    elif lower.endswith(".csv"):
        with fs.open(path, "rb") as f:
            reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8-sig", newline=""))
            _check_columns(uri, reader.fieldnames or [])
            for i, rec in enumerate(reader):
                yield i, rec
    else:
        raise ManifestError(f"manifest must be .parquet, .jsonl or .csv: {uri}")


def _json_record(uri: str, line: str, line_no: int) -> dict:
    try:
        rec = json.loads(line, parse_int=str, parse_float=str, parse_constant=str)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{uri}: line {line_no} is not JSON: {err}") from err
    if not isinstance(rec, dict):
        raise ManifestError(f"{uri}: line {line_no} is not a JSON object")
    return rec


def _check_columns(uri: str, columns) -> None:
    columns = list(columns)
    if _BAD in columns:
        return
    if any(c not in columns for c in NEEDED):
        raise ManifestError(f"manifest needs columns image_uri and question; {uri} has {columns}")


def manifest_rows(part: dict, storage_options=None) -> "iter[dict]":
    """Item rows of one manifest part ``{"uri", "rel", "prefix"}``: id, source, question, choices."""
    uri = part["uri"]
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    prefix = part.get("prefix") or ""
    for i, rec in _records(uri, storage_options):
        src = _text(rec.get("image_uri"))
        if src and "://" not in src and not src.startswith("/"):
            src = join(base, src)
        given = _text(rec.get("id"))
        row = {"id": given if given else f"{prefix}row-{i:08d}", "source": src, "question": _text(rec.get("question"))}
        try:
            row["choices"] = _choices_json(rec.get("choices"))
        except ValueError as err:  # json.JSONDecodeError included
            row.update(choices="", status="error", error=f"unreadable choices: {err}")
        if not src:
            row.update(status="error", error=f"missing image_uri: row {i} of {uri} has none")
        if _BAD in rec:  # "bad manifest line" before the message, which starts with the manifest's name
            row.update(status="error", error=f"bad manifest line: {rec[_BAD]}")
        yield row


def plan_manifest(uri: str, storage_options=None) -> Plan:
    """The manifest's parts (listed here) and how a task turns one part into rows."""
    parts, skipped = list_sources(uri, storage_options, skip_by_extension(MANIFEST_EXTS, "manifest"))
    for p in parts:  # a part without the needed columns stops the run here, in one line (.json arrays: in tasks)
        if not p["uri"].lower().endswith(".json"):
            next(_records(p["uri"], storage_options), None)
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
    input: str = typer.Option(..., help="manifest: Parquet, JSONL or CSV file, or a folder of parts (local or s3://)"),
    output: str = typer.Option(..., help="output folder or prefix (local or s3://)"),
    *, opts: JobOptions,
):
    """Answer every manifest row; write results, summary and report under OUTPUT."""
    run_job("vqa", opts, plan_manifest(input, parse_storage_options(opts.storage_options)))


if __name__ == "__main__":
    from spote.cli import run_cli

    run_cli(app)
