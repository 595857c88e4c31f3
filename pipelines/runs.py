"""The run: where a job's rows live, how a killed run resumes, and the commit that makes its rows
visible exactly once.

Run layout under ``--output`` (local folder or ``s3://`` prefix)::

    results/run_id=<run_id>/*.parquet        committed results (one row per planned item)
    _staging/<run_id>/plan/*.parquet         the planned items, written by Ray Data tasks
    _staging/<run_id>/plan.json              plan statistics; written last, so a plan without it is redone
    _staging/<run_id>/results/*.parquet      answered rows of a run in flight
    _staging/<run_id>/checkpoint/*.parquet   ids of the rows in results/ (Ray Data's checkpoint)
    _staging/<run_id>/_REPLACING             while a forced commit replaces the committed rows
    _runs/<run_id>/summary.json              statistics; report.html and entropy.png beside it
    _runs/<run_id>/_SUCCESS                  the commit marker, written last
    _runs/<run_id>/lease.json                the lease of the driver writing the run (while it runs)

Resume: a run id started again after a crash reuses its plan and keeps every staged part whose
checkpoint was committed (Ray Data's ``CheckpointConfig`` writes a part's ids as *pending* before
the part and commits them after it; parts of pending checkpoints are removed on restart). A commit
is a move of ``X.pending.parquet`` to ``X.parquet``; on an object store that is a copy, then a
delete, so a driver killed between the two leaves both: that part was written in full, and its
commit is finished before Ray Data's restart would take it for unwritten (``interrupted_commits``).
Only the items not yet staged are answered. A re-run of a committed run id does nothing (``--force``
redoes it).

``--force`` keeps the committed rows until the new ones are all staged and checked: the commit then
writes ``_staging/<run_id>/_REPLACING`` before it removes the old marker and rows, so a commit killed
half way is finished by the next start (``recover_interrupted_commit``) rather than mixing the two
runs' rows. A forced run that fails before its commit leaves the committed run as it was.

One driver writes a run at a time (``RunLease``): a driver killed mid-run leaves workers that may
still be finishing a part for a few seconds, and a second driver of the same run id (a double
``ray job submit``, a retry on another cluster) would stage every item twice. A new driver waits
until the previous holder's lease has stopped beating before it touches the staging area, and
refuses to start while it still beats.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import posixpath
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .storage import filesystem, is_local, join, read_bytes, retrying, write_text

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
    def replacing(self) -> str:
        return join(self.staging, "_REPLACING")

    @property
    def staged(self) -> str:
        return join(self.staging, "results")

    @property
    def checkpoint(self) -> str:
        return join(self.staging, "checkpoint")

    @property
    def staged_meta(self) -> str:
        """The run's own outputs beside its rows (report, roll-up), until the commit moves them to ``meta``."""
        return join(self.staging, "meta")

    @property
    def results(self) -> str:
        return join(self.output, "results", f"run_id={self.run_id}")

    @property
    def meta(self) -> str:
        return join(self.output, "_runs", self.run_id)

    @property
    def marker(self) -> str:
        return join(self.meta, "_SUCCESS")

    @property
    def lease(self) -> str:
        return join(self.meta, "lease.json")


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


def remove_empty_folder(uri: str, storage_options=None) -> None:
    """Remove the folder ``uri`` if it holds nothing (a local or mounted one; object stores keep no
    empty folders)."""
    fs, p = filesystem(uri, storage_options)
    with contextlib.suppress(OSError):
        if fs.isdir(p) and not fs.ls(p, detail=False):
            fs.rmdir(p)


def reset_staging(paths: RunPaths, storage_options=None) -> None:
    """Start a run's staging area afresh (``--force`` on a committed run); the committed rows stay."""
    retrying(_rm, paths.staging, storage_options)


KEPT_META = ("lease.json",)  # under _runs/<id>/: what a commit leaves alone (the lease is the driver's)


def _drop_meta_outputs(paths: RunPaths, storage_options=None) -> None:
    """Everything under ``_runs/<id>/`` but the lease: the replaced run's summary, report and roll-up, or
    what a commit killed half way had moved there."""
    fs, meta = filesystem(paths.meta, storage_options)
    if not fs.exists(meta):
        return
    for entry in fs.ls(meta, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        # the lease is rewritten through a hidden temporary file beside it (storage.write_bytes)
        if name in KEPT_META or any(name.startswith(f".{kept}.") for kept in KEPT_META):
            continue
        try:
            retrying(fs.rm, entry, recursive=True)
        except FileNotFoundError:  # gone since the listing
            pass


def _drop_replaced(paths: RunPaths, storage_options=None) -> None:
    """The committed run's marker, then its other outputs and rows, then the record that says they are
    being replaced."""
    retrying(_rm, paths.marker, storage_options)
    _drop_meta_outputs(paths, storage_options)
    for uri in (paths.results, paths.replacing):
        retrying(_rm, uri, storage_options)


def _move_tree(src_uri: str, dst_uri: str, storage_options=None) -> None:
    """Move every file under ``src`` to the same place under ``dst`` (a rename where the store has one)."""
    fs, src = filesystem(src_uri, storage_options)
    _, dst = filesystem(dst_uri, storage_options)
    if not fs.exists(src):
        return
    if is_local(fs) and not fs.exists(dst):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)  # atomic on one filesystem
        return
    for f in fs.find(src):
        target = dst + f[len(src):]
        if is_local(fs):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        fs.mv(f, target)
    if fs.exists(src):
        fs.rm(src, recursive=True)


def recover_interrupted_commit(paths: RunPaths, storage_options=None) -> None:
    """A commit killed half way: a forced one (``_REPLACING``) finishes dropping the replaced rows; a
    first one moves the parts it had moved back to staging. The rows of a committed run stay."""
    fs, record = filesystem(paths.replacing, storage_options)
    if fs.exists(record):
        _drop_replaced(paths, storage_options)
        return
    if is_committed(paths, storage_options):  # a --force in flight: results/ holds the committed run's rows
        return
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


def interrupted_commits(paths: RunPaths, storage_options=None) -> list[tuple[str, str]]:
    """(pending, committed) checkpoint paths of the parts whose checkpoint commit was killed inside
    its move: both files exist.

    Ray Data commits a part's checkpoint only after the part is written, by moving
    ``X.pending.parquet`` to ``X.parquet``; an object store's move is a copy, then a delete (fsspec's
    ``mv``, which pyarrow's ``FSSpecHandler`` calls), and a kill between the two leaves both. On
    restart Ray Data takes every pending checkpoint for an unfinished write and deletes its parts,
    while the committed copy still marks the part's ids as done: they would be neither staged nor
    answered again. Such a commit must be finished (the pending file dropped, the part kept) first.
    """
    committed, pending = checkpoint_files(paths, storage_options)
    done = set(committed)
    twins = [(f, f[:-len(PENDING_SUFFIX)] + ".parquet") for f in pending]
    return [(p, c) for p, c in twins if c in done]


def prune_uncommitted(paths: RunPaths, storage_options=None) -> int:
    """Remove staged parts that no checkpoint vouches for; returns how many were removed.

    A part's file name starts with its checkpoint's name (Ray Data's two-phase commit). Parts of a
    *pending* checkpoint are left to Ray Data, which removes them with the checkpoint on restart
    (a pending checkpoint beside its committed copy is a commit killed inside its move, finished
    before: ``interrupted_commits``); anything else without a committed checkpoint (a part from an
    older layout, a stray file) would be counted twice, so it goes.
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


class StagedRows:
    """Rows of a run whose staged parts are committed: the row counts of its committed checkpoint files'
    Parquet footers. ``count()`` lists the checkpoint folder and reads only the footers of files it has not
    counted before (a committed checkpoint never changes), so counting again as a run goes on costs a listing."""

    def __init__(self, paths: RunPaths, storage_options=None):
        self.paths, self.storage_options = paths, storage_options
        self._counted: set[str] = set()
        self._rows = 0

    def count(self) -> int:
        import pyarrow.dataset as pads

        from .storage import arrow_fs

        committed, _ = checkpoint_files(self.paths, self.storage_options)
        new = [f for f in committed if f not in self._counted]
        if new:
            fs, _ = filesystem(self.paths.checkpoint, self.storage_options)
            self._rows += int(pads.dataset(new, format="parquet", filesystem=arrow_fs(fs)).count_rows())
            self._counted.update(new)
        return self._rows


def committed_checkpoint_rows(paths: RunPaths, storage_options=None) -> int:
    """Rows whose staged parts are committed (read from the checkpoint files' Parquet footers)."""
    return StagedRows(paths, storage_options).count()


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
    """Move the staged parts into the results partition and the staged outputs (report, roll-up) into
    ``_runs/<id>/``, write the summary, then the marker; the plan and checkpoint go last. A commit
    killed half way is finished by the next start. Over a committed run (``--force``), its marker,
    outputs and rows are dropped first, under ``_REPLACING``: the new run's outputs never sit beside
    the old run's rows, and none of the old run's files outlive it."""
    if is_committed(paths, storage_options):
        write_text(paths.replacing, dt.datetime.now(dt.timezone.utc).isoformat(), storage_options)
        _drop_replaced(paths, storage_options)
    else:
        _drop_meta_outputs(paths, storage_options)  # a killed commit's moved outputs; staging holds them all
    fs, staged = filesystem(paths.staged, storage_options)
    if not fs.exists(staged):
        fs.makedirs(staged, exist_ok=True)
    retrying(_move_tree, paths.staged, paths.results, storage_options)
    retrying(_move_tree, paths.staged_meta, paths.meta, storage_options)
    fs_r, results = filesystem(paths.results, storage_options)
    if is_local(fs_r):
        Path(results).mkdir(parents=True, exist_ok=True)  # an empty run still has its partition
    write_text(join(paths.meta, "summary.json"), json.dumps(summary, indent=2), storage_options)
    write_text(paths.marker, dt.datetime.now(dt.timezone.utc).isoformat(), storage_options)
    try:
        remove_staging(paths, storage_options)
    except OSError as err:  # committed all the same: the next start of the run id removes what is left
        print(f"run {paths.run_id} is committed; {paths.staging} could not be removed ({err}): the next start of "
              "this run removes it")


def remove_staging(paths: RunPaths, storage_options=None) -> None:
    """Remove the run's staging area (plan, parts, checkpoint) and ``_staging/`` if that leaves it empty."""
    retrying(_rm, paths.staging, storage_options)
    fs_s, staging_root = filesystem(join(paths.output, "_staging"), storage_options)
    if is_local(fs_s):  # a store has no empty folders; a local one is left only while another run stages there
        with contextlib.suppress(OSError):
            os.rmdir(staging_root)


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
                          + ("" if missing or dupes else " (ids differ from the plan)")
                          + "; nothing was committed: run again with --force to redo this run from the start")


class RunInUse(RuntimeError):
    """Another driver holds the run's lease: it is writing the same run id now."""


@dataclass
class RunLease:
    """The right to write one run, held by one driver: a small JSON file under ``_runs/<run_id>/``
    that the holder rewrites every ``beat_s`` seconds (a counter goes up).

    ``acquire()`` reads the lease left by an earlier driver, if any, and watches it: if it changes,
    that driver is alive and ``RunInUse`` is raised; once it has stayed unchanged for ``stale_s``
    seconds (timed here, so clocks on other machines do not matter) the earlier driver and the
    workers it left are taken to be gone, and the lease is taken over. Two drivers starting at once
    both write theirs; after ``settle_s`` the one whose lease was overwritten backs off. ``lost`` is
    set when a beat finds another driver's lease (this driver stalled past ``stale_s``); the run
    must not be committed then.

    Object stores have no compare-and-swap that fsspec exposes everywhere, so this is a lease, not
    a lock: it relies on a holder beating more often than ``stale_s``.
    """

    uri: str
    storage_options: dict | None = None
    beat_s: float = 5.0
    stale_s: float = 30.0
    settle_s: float = 1.0
    poll_s: float = 1.0
    log: object = print
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    lost: bool = False
    _beat: int = 0
    _waited_out: tuple | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        """The lease record, None when there is none; a file that is not a lease record (not JSON, or
        JSON without a string ``token`` and an integer ``beat``: damaged, or written by hand) reads as
        an unreadable record, waited out like a dead driver's and overwritten by a live one's beat."""
        try:
            record = json.loads(retrying(read_bytes, self.uri, self.storage_options))
        except FileNotFoundError:
            return None
        except ValueError:
            record = None
        if (isinstance(record, dict) and isinstance(record.get("token"), str)
                and isinstance(record.get("beat"), int) and not isinstance(record.get("beat"), bool)):
            return record
        return {"token": "?", "beat": -1, "unreadable": True}

    def _write(self) -> None:
        record = {"token": self.token, "beat": self._beat, "host": socket.gethostname(), "pid": os.getpid(),
                  "ray_job_id": _ray_job_id(), "time": dt.datetime.now(dt.timezone.utc).isoformat()}
        write_text(self.uri, json.dumps(record), self.storage_options)

    @staticmethod
    def _holder(record: dict) -> str:
        if record.get("unreadable"):
            return "its lease file is not a lease record"
        job = f", Ray job {record['ray_job_id']}" if record.get("ray_job_id") else ""
        return f"pid {record.get('pid', '?')} on {record.get('host', '?')}{job}"

    def wait_out(self, what: str = "this run") -> "RunLease":
        """Watch an earlier holder's lease, writing nothing: raises ``RunInUse`` as soon as a live
        driver renews it; returns once there is none or it has stayed still for ``stale_s`` seconds.
        A job calls this before it starts Ray, so a second driver of a live run is refused within one
        beat; ``acquire`` then takes a lease still as it was here without watching it again."""
        seen = self._read()
        self._waited_out = None
        if seen is not None and self._watch(seen, what):
            self._waited_out = (seen.get("token"), seen.get("beat"))
        return self

    def _watch(self, seen: dict, what: str) -> bool:
        """Watch ``seen`` for up to ``stale_s``: True if it stayed still, False if it was released."""
        found = (f"{self.uri} is not a lease record" if seen.get("unreadable")
                 else f"found the lease of a driver that wrote it ({self._holder(seen)})")
        self.log(f"{what}: {found}; watching it for up to {self.stale_s:.0f} s: a live driver renews it, "
                 "a dead one's goes still")
        since = time.monotonic()
        while time.monotonic() - since < self.stale_s:
            time.sleep(self.poll_s)
            now = self._read()
            if now is None:  # released: that driver finished or gave up
                return False
            if now.get("unreadable"):  # damaged since: no sign of a live holder, keep watching
                continue
            if (now.get("token"), now.get("beat")) != (seen.get("token"), seen.get("beat")):
                raise RunInUse(f"{what} is being written by another driver ({self._holder(now)}); "
                               "wait for it to finish, or use another --run-id")
        self.log(f"{what}: the lease stayed still for {self.stale_s:.0f} s; taking the run over")
        return True

    def acquire(self, what: str = "this run") -> "RunLease":
        """Wait out an earlier holder's lease (unless ``wait_out`` already saw this one go still), take
        it, start beating. Raises ``RunInUse``."""
        seen = self._read()
        if seen is not None and (seen.get("token"), seen.get("beat")) != self._waited_out:
            self._watch(seen, what)
        self._write()
        time.sleep(self.settle_s)
        now = self._read()
        if now is None or now.get("token") != self.token:
            raise RunInUse(f"{what} was started by another driver at the same moment "
                           f"({self._holder(now or {})}); use another --run-id")
        self._thread = threading.Thread(target=self._beating, name="run-lease", daemon=True)
        self._thread.start()
        return self

    def _beating(self) -> None:
        while not self._stop.wait(self.beat_s):
            try:
                now = self._read()
                if now is not None and now.get("token") not in (self.token, "?"):
                    self.lost = True
                    return
                self.renew()
            except Exception as err:  # one missed beat is not fatal (stale_s allows several); a dead thread
                # would be: the lease would go stale while this driver works on, and another take the run over
                self.log(f"[lease] could not renew: {type(err).__name__}: {err}")

    def renew(self) -> None:
        """Write the lease with the counter one up (each beat)."""
        self._beat += 1
        self._write()

    def check(self, what: str = "this run") -> None:
        """Raise ``RunInUse`` if another driver took the lease over while this one stalled."""
        if self.lost:
            raise RunInUse(f"{what}: this driver stalled for over {self.stale_s:.0f} s and another driver "
                           "took the run over; nothing was committed here")

    def release(self) -> None:
        """Stop beating and remove the lease if it is still this driver's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            now = self._read()
            if now is not None and now.get("token") == self.token:
                retrying(_rm, self.uri, self.storage_options)
                # a run refused or stopped before any output leaves no empty _runs/<id>/ behind
                remove_empty_folder(posixpath.dirname(self.uri), self.storage_options)
        except OSError as err:
            self.log(f"[lease] could not remove {self.uri}: {err}")


def _ray_job_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_job_id() if ray.is_initialized() else None
    except Exception:  # no Ray here (a unit test, a tool): the lease names pid and host alone
        return None
