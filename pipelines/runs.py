"""The run: where a job's rows live, and the commit that makes them visible exactly once.

Run layout under ``--output`` (local folder or ``s3://`` prefix)::

    results/run_id=<run_id>/part-*.parquet   committed results (one row per input item)
    _staging/<run_id>/                       rows of a run in flight (wiped when a run restarts)
    _runs/<run_id>/summary.json              statistics; report.html and entropy.png beside it
    _runs/<run_id>/_SUCCESS                  the commit marker, written last

A re-run of a committed run id does nothing; a re-run after a crash starts that run id
afresh in staging, so rows are never duplicated.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .storage import filesystem, join, retrying, write_text


@dataclass
class RunPaths:
    output: str
    run_id: str

    @property
    def staging(self) -> str:
        return join(self.output, "_staging", self.run_id)

    @property
    def results(self) -> str:
        return join(self.output, "results", f"run_id={self.run_id}")

    @property
    def meta(self) -> str:
        return join(self.output, "_runs", self.run_id)

    @property
    def marker(self) -> str:
        return join(self.meta, "_SUCCESS")


def default_run_id(job: str, *keys: str) -> str:
    digest = hashlib.sha256("|".join(keys).encode()).hexdigest()[:8]
    return f"{job}-{dt.datetime.now(dt.timezone.utc):%Y%m%d}-{digest}"


def is_committed(paths: RunPaths, storage_options=None) -> bool:
    fs, p = filesystem(paths.marker, storage_options)
    return fs.exists(p)


def prepare_staging(paths: RunPaths, storage_options=None) -> None:
    """Start the run afresh: whatever an earlier crashed attempt left is removed."""
    for uri in (paths.staging, paths.results):
        fs, p = filesystem(uri, storage_options)
        if fs.exists(p):
            fs.rm(p, recursive=True)


def commit(paths: RunPaths, summary: dict, storage_options=None) -> None:
    retrying(_commit, paths, summary, storage_options)


def _commit(paths: RunPaths, summary: dict, storage_options=None) -> None:
    """Move staged files into the results partition, then write the summary and the marker."""
    fs, staging = filesystem(paths.staging, storage_options)
    _, results = filesystem(paths.results, storage_options)
    local = getattr(fs, "protocol", None) in ("file", ("file", "local"), "local") or isinstance(fs.protocol, tuple) and "file" in fs.protocol
    if local:
        Path(results).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, results)  # atomic on one filesystem
    else:
        for src in fs.find(staging):
            fs.mv(src, results + src[len(staging):])
        if fs.exists(staging):
            fs.rm(staging, recursive=True)
    write_text(join(paths.meta, "summary.json"), json.dumps(summary, indent=2), storage_options)
    write_text(paths.marker, dt.datetime.now(dt.timezone.utc).isoformat(), storage_options)



def check_accounting(rows: list[dict], table) -> None:
    """Every input id exactly once in the output, or the run is not committed."""
    want = [r["id"] for r in rows]
    got = table.column("id").to_pylist() if len(table) else []
    missing = set(want) - set(got)
    dupes = len(got) - len(set(got))
    if missing or dupes or len(got) != len(want):
        raise RuntimeError(f"accounting failed: {len(want)} in, {len(got)} out, {len(missing)} missing, {dupes} duplicated")



def check_ids_unique(rows: list[dict]) -> None:
    seen = set()
    for r in rows:
        if r["id"] in seen:
            raise ValueError(f"duplicate id in the input: {r['id']!r}")
        seen.add(r["id"])
