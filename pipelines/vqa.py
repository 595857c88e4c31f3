"""Answers for a manifest of (image_uri, question[, choices][, id]) with SPOT-E on Ray Data actors.

    python -m pipelines.vqa --input manifest.jsonl --output out/          # local Ray, spote-tiny
    python -m pipelines.vqa --input s3://b/m.parquet --output s3://b/out --num-actors 8 --num-gpus-per-actor 1

The manifest may be Parquet, JSONL or CSV. ``choices`` is a list or a comma-separated string;
relative image paths are resolved against the manifest's folder.
"""

from __future__ import annotations

import io
import json

import typer

from .job import JobOptions, job_command, run_job
from .runs import check_ids_unique
from .storage import join, parse_storage_options, read_bytes

app = typer.Typer(add_completion=False)


def read_manifest(uri: str, storage_options: dict | None = None) -> list[dict]:
    """Manifest rows as dicts with id, source, question, choices (JSON list or '')."""
    import pandas as pd

    data = read_bytes(uri, storage_options)
    lower = uri.lower()
    if lower.endswith(".parquet"):
        df = pd.read_parquet(io.BytesIO(data))
    elif lower.endswith((".jsonl", ".ndjson", ".json")):
        df = pd.read_json(io.BytesIO(data), lines=not lower.endswith(".json"))
    elif lower.endswith(".csv"):
        df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    else:
        raise ValueError(f"manifest must be .parquet, .jsonl or .csv: {uri}")
    if "image_uri" not in df.columns or "question" not in df.columns:
        raise ValueError(f"manifest needs columns image_uri and question; has {list(df.columns)}")
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    rows = []
    for i, rec in enumerate(df.to_dict("records")):
        src = str(rec["image_uri"])
        if "://" not in src and not src.startswith("/"):
            src = join(base, src)
        rows.append({
            "id": str(rec.get("id")) if rec.get("id") not in (None, "") and str(rec.get("id")) != "nan" else f"row-{i:08d}",
            "source": src,
            "question": "" if rec["question"] is None or str(rec["question"]) == "nan" else str(rec["question"]),
            "choices": _choices_json(rec.get("choices")),
        })
    check_ids_unique(rows)
    return rows


def _choices_json(value) -> str:
    if value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value.strip()):
        return ""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            value = json.loads(value)
        else:
            value = [c.strip() for c in value.split(",") if c.strip()]
    return json.dumps([str(c) for c in list(value)])


@app.command()
@job_command
def main(
    input: str = typer.Option(..., help="manifest: Parquet, JSONL or CSV (local or s3://)"),
    output: str = typer.Option(..., help="output folder or prefix (local or s3://)"),
    *, opts: JobOptions,
):
    """Answer every manifest row; write results, summary and report under OUTPUT."""
    run_job("vqa", opts, read_manifest(input, parse_storage_options(opts.storage_options)))


if __name__ == "__main__":
    app()
