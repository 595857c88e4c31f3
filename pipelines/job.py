"""Job assembly: the flags every job takes, Ray start-up, and ``run_job`` (rows -> stages -> commit)."""

from __future__ import annotations

import functools
import inspect
import json
import os
import time
from dataclasses import dataclass, fields
from typing import Optional

import typer

from .report import summarise, write_report
from .runs import RunPaths, check_accounting, commit, default_run_id, is_committed, prepare_staging
from .stages import ImageLoader, SpotePredictor
from .storage import TRANSIENT_STORAGE_ERRORS, arrow_fs, filesystem, join, parse_storage_options, read_bytes, retrying


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
    revision: str | None = None
    endpoint: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    endpoint_concurrency: int = 8
    endpoint_options: str | None = None

    def endpoint_config(self) -> dict:
        """``load_adapter``'s ``endpoint_options`` (no secret: the key stays in its environment variable)."""
        try:
            extra = json.loads(self.endpoint_options) if self.endpoint_options else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"--endpoint-options is not valid JSON: {err}") from err
        if not isinstance(extra, dict):
            raise ValueError("--endpoint-options must be a JSON object")
        return {**extra, "api_key_env": self.api_key_env, "concurrency": self.endpoint_concurrency}

    def predictor_kwargs(self, storage_options: dict | None) -> dict:
        """What each SPOT-E actor loads, checked here first so that a model that cannot be found or bad
        endpoint flags fail the job before any work (``ModelNotFound`` / ``ValueError``, one line)."""
        from spote.loading import check_model

        if self.endpoint:
            from spote.adapters.endpoint import EndpointConfig

            if self.revision:
                raise ValueError("--revision applies to hub ids; an endpoint serves whatever it serves")
            EndpointConfig(url=self.endpoint, model=self.model or "", **self.endpoint_config())  # validates
        else:
            check_model(self.model, storage_options, self.revision)
        return {"model": self.model, "revision": self.revision, "endpoint": self.endpoint,
                "endpoint_options": self.endpoint_config() if self.endpoint else None}

    def model_label(self) -> str:
        """The model as runs name it: ``NAME``, ``NAME@REVISION`` or ``NAME @ ENDPOINT`` (no credentials)."""
        from spote.adapters.endpoint import safe_url

        label = str(self.model or "spote-tiny")
        if self.endpoint:
            return f"{label} @ {safe_url(self.endpoint)}"
        return f"{label}@{self.revision}" if self.revision else label

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
    ("model", Optional[str], typer.Option(None, help="model folder, s3:// checkpoint or hub id ORG/NAME (default: the "
                                                     "shipped spote-tiny); with --endpoint, the served model's name")),
    ("num_actors", int, typer.Option(1, help="VLM actors, one frozen model each")),
    ("num_gpus_per_actor", float, typer.Option(0.0, help="0 runs on CPU")),
    ("cpus_per_actor", float, typer.Option(1.0, help="CPUs (and torch threads) per actor")),
    ("batch_size", int, typer.Option(4, help="rows per actor call")),
    ("storage_options", Optional[str], typer.Option(None, help='fsspec/s3fs options as JSON, e.g. {"endpoint_url": "..."}')),
    ("policy", Optional[str], typer.Option(None, help='PolicyConfig overrides as JSON, e.g. {"budget": 32}')),
    ("run_id", Optional[str], typer.Option(None, help="default: derived from the inputs and the date")),
    ("force", bool, typer.Option(False, help="re-run a committed run id")),
    ("revision", Optional[str], typer.Option(None, help="hub id only: branch, tag or commit (default: main)")),
    ("endpoint", Optional[str], typer.Option(None, help="OpenAI-compatible server with logprobs, e.g. "
                                                         "http://host:8000/v1: black-box mode, no model in the actors")),
    ("api_key_env", str, typer.Option("OPENAI_API_KEY", help="environment variable with the endpoint's API key "
                                                              "(set it where the actors run)")),
    ("endpoint_concurrency", int, typer.Option(8, help="endpoint requests in flight at most, per actor")),
    ("endpoint_options", Optional[str], typer.Option(None, help='more EndpointConfig fields as JSON, e.g. '
                                                                 '{"max_images": 1, "view_size": 448}')),
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
        from spote.loading import ModelNotFound

        common = {n: kwargs.pop(n) for n, _, _ in COMMON_FLAGS}
        try:
            return fn(opts=JobOptions(kwargs["input"], kwargs["output"], **common), **kwargs)
        except (ModelNotFound, ValueError) as err:  # bad flags or inputs, found before any work: one line
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    command.__signature__ = sig.replace(parameters=own + shared)
    command.__annotations__ = {**{p.name: p.annotation for p in own}, **{n: t for n, t, _ in COMMON_FLAGS}}
    del command.__wrapped__
    return command


def answer_dataset(rows: list[dict], opts: JobOptions, policy: dict, so: dict, loader=None, predictor=None,
                   model_kwargs: dict | None = None):
    """The job's Ray Data stages, unexecuted: rows -> CPU loader actors -> SPOT-E actors."""
    import ray

    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * opts.num_actors * 4)))
    loader_cls, loader_kwargs = loader or (ImageLoader, {"storage_options": so})
    ds = ds.map_batches(loader_cls, fn_constructor_kwargs=loader_kwargs, batch_size=opts.batch_size,
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2), num_cpus=0.5)
    return ds.map_batches(
        predictor or SpotePredictor,
        fn_constructor_kwargs={**(model_kwargs or {"model": opts.model}), "policy": policy, "storage_options": so,
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
    model_kwargs = opts.predictor_kwargs(so)
    model_key = opts.model_label() if opts.endpoint or opts.revision else str(opts.model)  # same ids as before
    run_id = opts.run_id or default_run_id(job, opts.input, json.dumps(policy, sort_keys=True), model_key)
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
        ds = answer_dataset(rows, opts, policy, so, loader, model_kwargs=model_kwargs)
        fs, staging = filesystem(paths.staging, so)
        ds.write_parquet(staging, filesystem=arrow_fs(fs))
        table = retrying(pq.read_table, staging, filesystem=arrow_fs(fs))
    else:
        table = pa.table({c: pa.array([], pa.string()) for c in ("id", "source", "status", "error")})
    check_accounting(rows, table)
    summary = summarise(table, run_id, items_in, time.time() - t0, opts.model_label(),
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
