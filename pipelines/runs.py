"""The run: where a job's rows live, how a killed run resumes, and the commit that makes its rows
visible exactly once.

Run layout under ``--output`` (local folder or ``s3://`` prefix)::

    results/run_id=<run_id>/*.parquet        committed results (one row per planned item)
    _staging/<run_id>/plan/*.parquet         the planned items, written by Ray Data tasks
    _staging/<run_id>/plan.json              plan statistics; written last, so a plan without it is redone
    _staging/<run_id>/results/*.parquet      answered rows of a run in flight
    _staging/<run_id>/checkpoint/*.parquet   ids of the rows in results/ (Ray Data's checkpoint)
    _runs/<run_id>/summary.json              statistics; report.html and entropy.png beside it
    _runs/<run_id>/_SUCCESS                  the commit marker, written last

Resume: a run id started again after a crash reuses its plan and keeps every staged part whose
checkpoint was committed (Ray Data's ``CheckpointConfig`` writes a part's ids as *pending* before
the part and commits them after it; parts of pending checkpoints are removed on restart). Only the
items not yet staged are answered. A re-run of a committed run id does nothing (``--force`` redoes it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from .storage import filesystem, join, retrying, write_text

PENDING_SUFFIX = ".pending.parquet"


@dataclass(frozen=True)
class RunPaths:
    output: str
    run_id: str

    @property
    def staging(self) -> str:
        return join(self.output, "_staging", self.run_id)

    @property
    def plan(self) -> str:
        return join(self.staging, "plan")

    @property
    def plan_stats(self) -> str:
        return join(self.staging, "plan.json")

    @property
    def staged(self) -> str:
        return join(self.staging, "results")

    @property
    def checkpoint(self) -> str:
        return join(self.staging, "checkpoint")

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


def _rm(uri: str, storage_options=None) -> None:
    fs, p = filesystem(uri, storage_options)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def forget_run(paths: RunPaths, storage_options=None) -> None:
    """Remove every trace of a run (``--force``): the marker first, so it is never half-committed."""
    for uri in (paths.marker, paths.meta, paths.results, paths.staging):
        retrying(_rm, uri, storage_options)


def _is_local(fs) -> bool:
    proto = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return any(p in ("file", "local") for p in proto)


def _move_tree(src_uri: str, dst_uri: str, storage_options=None) -> None:
    """Move every file under ``src`` to the same place under ``dst`` (a rename where the store has one)."""
    fs, src = filesystem(src_uri, storage_options)
    _, dst = filesystem(dst_uri, storage_options)
    if not fs.exists(src):
        return
    if _is_local(fs) and not fs.exists(dst):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)  # atomic on one filesystem
        return
    for f in fs.find(src):
        target = dst + f[len(src):]
        if _is_local(fs):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        fs.mv(f, target)
    if fs.exists(src):
        fs.rm(src, recursive=True)


def recover_interrupted_commit(paths: RunPaths, storage_options=None) -> None:
    """A commit killed while moving parts: move them back to staging (the run is not committed)."""
    fs, results = filesystem(paths.results, storage_options)
    if fs.exists(results) and fs.find(results):
        retrying(_move_tree, paths.results, paths.staged, storage_options)


def checkpoint_files(paths: RunPaths, storage_options=None) -> tuple[list[str], list[str]]:
    """(committed, pending) checkpoint file paths of the run."""
    fs, ckpt = filesystem(paths.checkpoint, storage_options)
    if not fs.exists(ckpt):
        return [], []
    files = [f for f in fs.find(ckpt) if f.endswith(".parquet")]
    return [f for f in files if not f.endswith(PENDING_SUFFIX)], [f for f in files if f.endswith(PENDING_SUFFIX)]


def prune_uncommitted(paths: RunPaths, storage_options=None) -> int:
    """Remove staged parts that no checkpoint vouches for; returns how many were removed.

    A part's file name starts with its checkpoint's name (Ray Data's two-phase commit). Parts of a
    *pending* checkpoint are left to Ray Data, which removes them with the checkpoint on restart;
    anything else without a committed checkpoint (a part from an older layout, a stray file) would
    be counted twice, so it goes.
    """
    committed, pending = checkpoint_files(paths, storage_options)
    keep = [posixpath.basename(f)[:-len(".parquet")] for f in committed]
    keep += [posixpath.basename(f)[:-len(PENDING_SUFFIX)] for f in pending]
    fs, staged = filesystem(paths.staged, storage_options)
    if not fs.exists(staged):
        return 0
    removed = 0
    for f in fs.find(staged):
        name = posixpath.basename(f)
        if not any(name.startswith(k) for k in keep):
            retrying(fs.rm, f)
            removed += 1
    return removed


def committed_checkpoint_rows(paths: RunPaths, storage_options=None) -> int:
    """Rows whose staged parts are committed (read from the checkpoint files' Parquet footers)."""
    import pyarrow.dataset as pads

    from .storage import arrow_fs

    committed, _ = checkpoint_files(paths, storage_options)
    if not committed:
        return 0
    fs, _ = filesystem(paths.checkpoint, storage_options)
    return int(pads.dataset(committed, format="parquet", filesystem=arrow_fs(fs)).count_rows())


def read_plan_stats(paths: RunPaths, storage_options=None) -> dict | None:
    fs, p = filesystem(paths.plan_stats, storage_options)
    return json.loads(fs.cat_file(p)) if fs.exists(p) else None


def write_plan_stats(paths: RunPaths, stats: dict, storage_options=None) -> None:
    write_text(paths.plan_stats, json.dumps(stats, indent=1), storage_options)


def reset_plan(paths: RunPaths, storage_options=None) -> None:
    """An unfinished plan (no plan.json) is redone from the listing, and nothing was answered from it."""
    for uri in (paths.plan, paths.staged, paths.checkpoint):
        retrying(_rm, uri, storage_options)


def commit(paths: RunPaths, summary: dict, storage_options=None) -> None:
    """Move the staged parts into the results partition, write the summary, then the marker; the
    plan and checkpoint go last. A commit killed half way is finished by the next start."""
    fs, staged = filesystem(paths.staged, storage_options)
    if not fs.exists(staged):
        fs.makedirs(staged, exist_ok=True)
    retrying(_move_tree, paths.staged, paths.results, storage_options)
    fs_r, results = filesystem(paths.results, storage_options)
    if _is_local(fs_r):
        Path(results).mkdir(parents=True, exist_ok=True)  # an empty run still has its partition
    write_text(join(paths.meta, "summary.json"), json.dumps(summary, indent=2), storage_options)
    write_text(paths.marker, dt.datetime.now(dt.timezone.utc).isoformat(), storage_options)
    retrying(_rm, paths.staging, storage_options)


class AccountingError(RuntimeError):
    """The staged rows are not every planned item exactly once; the run is not committed."""


def check_accounting(planned: int, planned_digest: int, staged: int, staged_digest: int,
                     count_duplicates=None) -> None:
    """Every planned id exactly once among the staged rows, or raise ``AccountingError``.

    The check is counts plus the id digests (sum of 64-bit id hashes mod 2**64): equal counts with
    a missing id and a duplicated one leave the digests unequal (but for a 2**-64 chance).
    ``count_duplicates()`` (a Ray Data group-by over the staged ids) is only run to word the error.
    """
    if planned == staged and planned_digest == staged_digest:
        return
    dupes = count_duplicates() if count_duplicates is not None else 0
    distinct = staged - dupes
    missing = max(0, planned - distinct)
    raise AccountingError(f"accounting failed: {planned} in, {staged} out, {missing} missing, {dupes} duplicated"
                          + ("" if missing or dupes else " (ids differ from the plan)"))
