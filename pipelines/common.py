"""What every pipeline shares: storage, the run layout and its commit, the VLM actor, the summary.

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
import functools
import hashlib
import inspect
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import fsspec
import numpy as np
import typer

# connection-level messages of s3fs/botocore/aiohttp that Ray Data should retry when writing files
TRANSIENT_STORAGE_ERRORS = ("Could not connect to the endpoint URL", "Cannot connect to host", "Connection reset",
                            "Connection refused", "EndpointConnectionError", "ServerDisconnectedError", "Read timeout")

# The result schema's fixed part. Typed explicitly: a block of error rows only has empty traces and
# no choices, which Arrow would infer as null types that later blocks (and readers) cannot cast.
RESULT_TYPES = {
    "id": "string", "source": "string", "question": "string", "choices": "string", "answer": "string",
    "confidence": "float64", "entropy_initial": "float64", "entropy_final": "float64",
    "entropy_trace": ("list", "float64"), "boxes": ("list", ("list", "int64")), "forward_passes": "int64",
    "latency_ms": "float64", "status": "string", "error": "string", "model": "string", "policy": "string",
    "run_id": "string", "actor": "string",
}


RESULT_COLUMNS = tuple(RESULT_TYPES)


# ============================================================================ storage
def parse_storage_options(text: str | None) -> dict:
    """``--storage-options`` JSON, merged over the S3 endpoint/credentials found in the environment."""
    opts: dict = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    if text:
        try:
            extra = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--storage-options is not valid JSON: {err}") from err
        if "endpoint_url" in extra:
            opts["endpoint_url"] = extra.pop("endpoint_url")
        opts.update(extra)
    if opts.get("endpoint_url"):
        opts.setdefault("client_kwargs", {})["endpoint_url"] = opts.pop("endpoint_url")
    return opts


def filesystem(uri: str, storage_options: dict | None = None):
    """(fs, path) for a local path or any fsspec URI; s3 listings are never cached (they change under us)."""
    opts = dict(storage_options or {})
    if uri.startswith("s3://"):
        opts.setdefault("use_listings_cache", False)
        return fsspec.core.url_to_fs(uri, **opts)
    return fsspec.core.url_to_fs(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    fs, path = filesystem(uri, storage_options)
    with fs.open(path, "rb") as f:
        return f.read()


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def retrying(fn, *args, attempts: int = 6, first_wait: float = 0.5, **kwargs):
    """Call ``fn``, retrying connection-level storage errors with exponential back-off.

    Object stores blip (a restarted endpoint, a throttled request); a run must ride that out
    rather than fail or, worse, commit half its rows.
    """
    wait = first_wait
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except (OSError, ConnectionError, TimeoutError) as err:
            if attempt == attempts - 1:
                raise
            print(f"[storage] {type(err).__name__}: {err}; retrying in {wait:.1f}s")
            time.sleep(wait)
            wait *= 2


# ============================================================================ the run
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


def write_text(uri: str, text: str, storage_options=None) -> None:
    write_bytes(uri, text.encode(), storage_options)


def write_bytes(uri: str, data: bytes, storage_options=None) -> None:
    retrying(_write_bytes, uri, data, storage_options)


def _write_bytes(uri: str, data: bytes, storage_options=None) -> None:
    fs, p = filesystem(uri, storage_options)
    parent = p.rsplit("/", 1)[0]
    if getattr(fs, "auto_mkdir", None) is not None or "file" in str(fs.protocol):
        fs.makedirs(parent, exist_ok=True)
    with fs.open(p, "wb") as f:
        f.write(data)


# ============================================================================ the VLM actor
def error_row(row: dict, reason: str) -> dict:
    return {**row, "status": "error", "error": reason, "pixels": b"", "height": 0, "width": 0}


class RowLoader:
    """CPU stage skeleton: pass upstream errors on, check the question, ``read`` the pixels, turn every
    failure into an error row with a reason. Subclasses implement ``read(row) -> RGB image or array``."""

    failure = "could not read"   # prefix for unexpected errors
    image_errors_as_image = True  # BadImage -> "unreadable image: ..." (else it counts as a ``failure``)

    def read(self, row: dict):
        raise RuntimeError(f"{type(self).__name__} must implement read()")

    def forget(self) -> None:
        """Drop any cached source after a failure."""

    def describe(self, row: dict, err: Exception) -> str:
        return f"{self.failure}: {type(err).__name__}: {err}"

    def load(self, row: dict) -> dict:
        from spote.images import BadImage, check_question

        if row.get("status") == "error":
            return error_row(row, row.get("error") or "failed upstream")
        try:
            check_question(row.get("question"))
        except ValueError as err:
            return error_row(row, str(err))
        try:
            pixels = np.ascontiguousarray(np.asarray(self.read(row)))
        except FileNotFoundError:
            self.forget()
            return error_row(row, f"missing object: {row['source']}")
        except Exception as err:
            self.forget()
            if isinstance(err, BadImage) and self.image_errors_as_image:
                return error_row(row, f"unreadable image: {err}")
            return error_row(row, self.describe(row, err))
        return {**row, "status": "ok", "error": "", "pixels": pixels.tobytes(), "height": pixels.shape[0],
                "width": pixels.shape[1]}

    def __call__(self, batch: dict) -> dict:
        out = [self.load(r) for r in _rows(batch)]
        for r in out:
            r.pop("image_bytes", None)
        return _columns(out)


class ImageLoader(RowLoader):
    """CPU stage: fetch bytes (or take them from the row), decode with the bomb guard, pass pixels on."""

    def __init__(self, storage_options: dict | None = None, max_pixels: int | None = None):
        from spote.images import DEFAULT_MAX_PIXELS

        self.storage_options, self.max_pixels = storage_options, max_pixels or DEFAULT_MAX_PIXELS

    def read(self, row: dict):
        from spote.images import load_image

        data = row.get("image_bytes")
        if data is None or len(data) == 0:
            data = read_bytes(row["source"], self.storage_options)
        return load_image(data, self.max_pixels)

    def describe(self, row: dict, err: Exception) -> str:  # storage errors, permissions, ...
        return f"could not read {row['source']}: {type(err).__name__}: {err}"


class SpotePredictor:
    """Ray Data actor: one frozen VLM per actor, loaded once; SPOT-E per row; never raises per item."""

    def __init__(self, model: str | None = None, policy: dict | None = None, storage_options: dict | None = None,
                 device: str | None = None, threads: int = 1):
        import torch

        from spote.core import PolicyConfig
        from spote.models import load_adapter

        torch.set_num_threads(max(1, threads))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.adapter = load_adapter(model, device=device, storage_options=storage_options)
        self.cfg = PolicyConfig(**(policy or {}))
        self.model_name = str(model or "spote-tiny")
        self.actor = f"{socket.gethostname()}:{os.getpid()}"
        self.policy_json = json.dumps(self.cfg.__dict__, sort_keys=True)
        # Ray, Arrow and the model are here for the actor's life: move them out of the cyclic GC's
        # reach, so the collections spote's many short-lived objects trigger stay short
        import gc

        gc.collect()
        gc.freeze()

    def predict(self, row: dict) -> dict:
        from PIL import Image

        from spote.core import spote
        from spote.images import check_choices

        base = {k: row.get(k) for k in row if k not in ("pixels", "height", "width", "image_bytes")}
        base.update(model=self.model_name, policy=self.policy_json, answer="", confidence=float("nan"),
                    entropy_initial=float("nan"), entropy_final=float("nan"), entropy_trace=[], boxes=[],
                    forward_passes=0, latency_ms=0.0, actor=self.actor)
        if row.get("status") == "error":
            return base
        t0 = time.perf_counter()
        try:
            image = Image.frombytes("RGB", (int(row["width"]), int(row["height"])), row["pixels"])
            choices = check_choices(json.loads(row["choices"]) if row.get("choices") else None)
            res = spote(self.adapter, image, row["question"], choices, self.cfg)
        except Exception as err:
            return {**base, "status": "error", "error": f"{type(err).__name__}: {err}",
                    "latency_ms": (time.perf_counter() - t0) * 1000, "traceback": traceback.format_exc(limit=3)}
        return {**base, "status": "ok", "error": "", "answer": res.answer, "confidence": res.confidence,
                "entropy_initial": res.entropy_trace[0], "entropy_final": res.entropy_trace[-1],
                "entropy_trace": res.entropy_trace, "boxes": res.boxes, "forward_passes": res.forward_passes,
                "latency_ms": (time.perf_counter() - t0) * 1000}

    def __call__(self, batch: dict):
        out = [self.predict(r) for r in _rows(batch)]
        for r in out:
            r.pop("traceback", None)
        return typed_table(_columns(out))


def _arrow_type(spec):
    import pyarrow as pa

    return pa.list_(_arrow_type(spec[1])) if isinstance(spec, tuple) else pa.type_for_alias(spec)


def typed_table(columns: dict):
    """A pyarrow Table with RESULT_TYPES for the known columns; the job's own fields are inferred."""
    import pyarrow as pa

    return pa.table({k: pa.array(v, type=_arrow_type(RESULT_TYPES[k]) if k in RESULT_TYPES else None)
                     for k, v in columns.items()})


def _rows(batch: dict) -> list[dict]:
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    return [{k: _py(batch[k][i]) for k in keys} for i in range(n)]


def _py(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray) and v.dtype == object:
        return [_py(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _columns(rows: list[dict]) -> dict:
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    return {k: [r.get(k) for r in rows] for k in keys}


# ============================================================================ summary and report
def summarise(table, run_id: str, items_in: int, seconds: float, model: str, policy: dict, extra: dict | None = None) -> dict:
    """Statistics of one run's result table (a pyarrow Table)."""
    df = table.to_pandas()
    ok = df[df["status"] == "ok"]
    n_ok = int(len(ok))
    ids = df["id"].tolist()
    summary = {
        "run_id": run_id,
        "items_in": int(items_in),
        "items_out": int(len(df)),
        "items_ok": n_ok,
        "items_error": int((df["status"] == "error").sum()),
        "duplicate_ids": int(len(ids) - len(set(ids))),
        "entropy_initial_mean": float(ok["entropy_initial"].mean()) if n_ok else None,
        "entropy_final_mean": float(ok["entropy_final"].mean()) if n_ok else None,
        "forward_passes_mean": float(ok["forward_passes"].mean()) if n_ok else None,
        "early_exit_rate": float((ok["forward_passes"] <= 1).mean()) if n_ok else None,
        "latency_ms_mean": float(ok["latency_ms"].mean()) if n_ok else None,
        "latency_ms_p95": float(np.percentile(ok["latency_ms"], 95)) if n_ok else None,
        "seconds": round(seconds, 2),
        "items_per_second": round(len(df) / seconds, 3) if seconds > 0 else None,
        "errors_by_reason": df[df["status"] == "error"]["error"].str.split(":").str[0].value_counts().to_dict(),
        "model": model,
        "policy": policy,
    }
    summary.update(extra or {})
    return summary


def write_report(table, summary: dict, meta_uri: str, storage_options=None) -> None:
    """entropy.png (histograms before/after) and report.html (the numbers and a table of errors)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = table.to_pandas()
    ok = df[df["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    bins = np.linspace(0, max(0.1, float(np.nanmax(ok["entropy_initial"])) if len(ok) else 1.0), 25)
    axes[0].hist(ok["entropy_initial"], bins=bins, alpha=0.6, label="whole image")
    axes[0].hist(ok["entropy_final"], bins=bins, alpha=0.6, label="after SPOT-E")
    axes[0].set_xlabel("answer entropy (nats)")
    axes[0].legend()
    axes[1].hist(ok["forward_passes"], bins=20, color="tab:green")
    axes[1].set_xlabel("forward passes per item")
    fig.suptitle(f"run {summary['run_id']}: {summary['items_ok']} ok, {summary['items_error']} errors")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes(join(meta_uri, "entropy.png"), buf.getvalue(), storage_options)
    errors = df[df["status"] == "error"][["id", "source", "error"]].head(200)
    rows = "".join(f"<tr><td>{r.id}</td><td>{r.source}</td><td>{r.error}</td></tr>" for r in errors.itertuples())
    stats = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in summary.items() if k != "policy")
    html = (f"<html><head><meta charset='utf-8'><title>SPOT-E run {summary['run_id']}</title></head><body>"
            f"<h1>SPOT-E run {summary['run_id']}</h1><img src='entropy.png'><h2>Summary</h2><table>{stats}</table>"
            f"<h2>Errors</h2><table><tr><th>id</th><th>source</th><th>error</th></tr>{rows}</table></body></html>")
    write_text(join(meta_uri, "report.html"), html, storage_options)


# ============================================================================ Ray
def init_ray(num_actors: int, address: str | None = None):
    """Join the cluster of ``ray job submit`` (RAY_ADDRESS) or start a local one with CPU headroom."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, num_actors + 2), include_dashboard=False,
                 log_to_driver=True, runtime_env={"env_vars": _forwarded_env()})


def _forwarded_env() -> dict:
    keys = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "SPOTE_CACHE",
            "PYTHONPATH")
    return {k: os.environ[k] for k in keys if k in os.environ}


@dataclass(frozen=True)
class JobOptions:
    """Flags every job takes."""

    input: str
    output: str
    model: str | None = None
    num_actors: int = 1
    num_gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    batch_size: int = 4
    storage_options: str | None = None
    policy: str | None = None
    run_id: str | None = None
    force: bool = False

    def policy_overrides(self) -> dict:
        from spote.core import PolicyConfig

        if not self.policy:
            return {}
        try:
            overrides = json.loads(self.policy)
        except json.JSONDecodeError as err:
            raise ValueError(f"--policy is not valid JSON: {err}") from err
        names = {f.name for f in fields(PolicyConfig)}
        unknown = set(overrides) - names
        if unknown:
            raise ValueError(f"unknown policy fields {sorted(unknown)}; known: {sorted(names)}")
        PolicyConfig(**overrides)  # validate now, not inside an actor
        return overrides


# (name, type, typer option) of the flags every job takes, in the order --help shows them
COMMON_FLAGS = (
    ("model", Optional[str], typer.Option(None, help="model folder or fsspec URI (default: the shipped spote-tiny)")),
    ("num_actors", int, typer.Option(1, help="VLM actors, one frozen model each")),
    ("num_gpus_per_actor", float, typer.Option(0.0, help="0 runs on CPU")),
    ("cpus_per_actor", float, typer.Option(1.0, help="CPUs (and torch threads) per actor")),
    ("batch_size", int, typer.Option(4, help="rows per actor call")),
    ("storage_options", Optional[str], typer.Option(None, help='fsspec/s3fs options as JSON, e.g. {"endpoint_url": "..."}')),
    ("policy", Optional[str], typer.Option(None, help='PolicyConfig overrides as JSON, e.g. {"budget": 32}')),
    ("run_id", Optional[str], typer.Option(None, help="default: derived from the inputs and the date")),
    ("force", bool, typer.Option(False, help="re-run a committed run id")),
)


def job_command(fn):
    """Give a job's typer command the common flags; ``fn`` receives them as ``opts: JobOptions``.

    ``fn`` declares ``input``, ``output`` and its own flags, plus a keyword ``opts``.
    """
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.name != "opts"]
    shared = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=o, annotation=t) for n, t, o in COMMON_FLAGS]

    @functools.wraps(fn)
    def command(**kwargs):
        common = {n: kwargs.pop(n) for n, _, _ in COMMON_FLAGS}
        return fn(opts=JobOptions(kwargs["input"], kwargs["output"], **common), **kwargs)

    command.__signature__ = sig.replace(parameters=own + shared)
    command.__annotations__ = {**{p.name: p.annotation for p in own}, **{n: t for n, t, _ in COMMON_FLAGS}}
    del command.__wrapped__
    return command


def answer_dataset(rows: list[dict], opts: JobOptions, policy: dict, so: dict, loader=None, predictor=None):
    """The job's Ray Data stages, unexecuted: rows -> CPU loader actors -> SPOT-E actors."""
    import ray

    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * opts.num_actors * 4)))
    loader_cls, loader_kwargs = loader or (ImageLoader, {"storage_options": so})
    ds = ds.map_batches(loader_cls, fn_constructor_kwargs=loader_kwargs, batch_size=opts.batch_size,
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2), num_cpus=0.5)
    return ds.map_batches(
        predictor or SpotePredictor,
        fn_constructor_kwargs={"model": opts.model, "policy": policy, "storage_options": so,
                               "threads": max(1, int(opts.cpus_per_actor))},
        compute=ray.data.ActorPoolStrategy(size=opts.num_actors), num_gpus=opts.num_gpus_per_actor,
        num_cpus=opts.cpus_per_actor, batch_size=opts.batch_size)


def run_job(job: str, opts: JobOptions, rows: list[dict], extra_summary=None, post_commit=None, loader=None,
            after_commit=None) -> dict:
    """Rows (metadata only) -> load on CPU -> SPOT-E actors -> staged Parquet -> summary -> commit."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from spote.core import PolicyConfig

    so = parse_storage_options(opts.storage_options)
    policy = opts.policy_overrides()
    run_id = opts.run_id or default_run_id(job, opts.input, json.dumps(policy, sort_keys=True), str(opts.model))
    paths = RunPaths(opts.output, run_id)
    if is_committed(paths, so) and not opts.force:
        summary = json.loads(read_bytes(join(paths.meta, "summary.json"), so))
        print(f"[{job}] run {run_id} is already committed; nothing to do ({paths.results})")
        return summary
    retrying(prepare_staging, paths, so)
    t0 = time.time()
    items_in = len(rows)
    for r in rows:
        r.setdefault("status", "")
        r.setdefault("error", "")
        r["run_id"] = run_id
    if items_in:
        init_ray(opts.num_actors)
        ctx = ray.data.DataContext.get_current()
        ctx.retried_io_errors = list(dict.fromkeys([*ctx.retried_io_errors, *TRANSIENT_STORAGE_ERRORS]))
        ds = answer_dataset(rows, opts, policy, so, loader)
        fs, staging = filesystem(paths.staging, so)
        ds.write_parquet(staging, filesystem=_arrow_fs(fs))
        table = retrying(pq.read_table, staging, filesystem=_arrow_fs(fs))
    else:
        table = pa.table({c: pa.array([], pa.string()) for c in ("id", "source", "status", "error")})
    check_accounting(rows, table)
    summary = summarise(table, run_id, items_in, time.time() - t0, str(opts.model or "spote-tiny"),
                        PolicyConfig(**policy).__dict__, extra_summary(table) if extra_summary else None)
    if len(table):
        write_report(table, summary, paths.meta, so)
    if post_commit is not None:
        post_commit(table, paths, so)
    if items_in == 0:
        fs, staging = filesystem(paths.staging, so)
        fs.makedirs(staging, exist_ok=True)
    commit(paths, summary, so)
    if after_commit is not None:
        after_commit(table, paths, so)
    print(f"[{job}] run {run_id}: {summary['items_in']} in, {summary['items_ok']} ok, {summary['items_error']} errors, "
          f"{summary['items_per_second']} items/s, early exit {summary['early_exit_rate']} -> {paths.results}")
    return summary


def check_accounting(rows: list[dict], table) -> None:
    """Every input id exactly once in the output, or the run is not committed."""
    want = [r["id"] for r in rows]
    got = table.column("id").to_pylist() if len(table) else []
    missing = set(want) - set(got)
    dupes = len(got) - len(set(got))
    if missing or dupes or len(got) != len(want):
        raise RuntimeError(f"accounting failed: {len(want)} in, {len(got)} out, {len(missing)} missing, {dupes} duplicated")


def _arrow_fs(fs):
    import pyarrow.fs as pafs

    if "file" in str(fs.protocol) or "local" in str(fs.protocol):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def check_ids_unique(rows: list[dict]) -> None:
    seen = set()
    for r in rows:
        if r["id"] in seen:
            raise ValueError(f"duplicate id in the input: {r['id']!r}")
        seen.add(r["id"])
