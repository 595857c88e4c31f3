"""Job assembly: the flags every job takes, Ray start-up, and ``run_job`` (plan -> stages -> commit)."""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import json
import os
import posixpath
import re
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Optional

import typer

from spote.images import DEFAULT_MAX_PIXELS
from spote.uris import redact_uri

from .planning import Plan, not_utf8_path, summarise_skipped
from .progress import reporting_progress
from .report import summarise, write_report
from .runs import (AccountingError, RunInUse, RunLease, RunPaths, check_accounting, checkpoint_files, commit,
                   committed_checkpoint_rows, default_run_id,
                   interrupted_commits, is_committed, prune_uncommitted, read_plan_stats, recover_interrupted_commit, remove_empty_folder,
                   remove_staging,
                   reset_plan, reset_staging,
                   write_plan_stats)
from .stages import ImageLoader, SpotePredictor
from .timelimit import TimedLoader
from .stats import RunStats, collect_stats
from .storage import (PERMANENT_ERRNOS, TRANSIENT_STORAGE_ERRORS, arrow_fs, filesystem, join, local_path, parse_storage_options,
                      read_bytes, retrying, stable_cwd, write_parquet_file)


_STARTED_HERE = {"local": False}  # whether init_ray started the cluster in this process (a fixed one)

# A node label (``ray start --labels=spote-fixed-size=true``) saying the cluster has no autoscaler and never
# grows: a job that cannot fit fails at once instead of waiting --resource-wait-seconds. cluster.local sets it.
FIXED_SIZE_LABEL = "spote-fixed-size"


# a local Ray started by the job holds at most this many actors per core: each holds a frozen model, and
# more would start hundreds of workers on a laptop before failing
LOCAL_ACTORS_PER_CORE = 4


def init_ray(num_actors: int, address: str | None = None):
    """Join the cluster of ``ray job submit`` (RAY_ADDRESS) or start a local one with CPU headroom.

    Raises:
        JobRefused: the cluster at RAY_ADDRESS cannot be reached (checked with one TCP connection first:
            Ray itself retries a dead address for minutes, then fails with a traceback), or more actors than
            a local Ray of this machine holds (``LOCAL_ACTORS_PER_CORE`` per core).
    """
    import ray

    if ray.is_initialized():
        return
    if _STOPPING.pop("unset_failure_handler_env", False):  # read by ray's import; Ray's own processes keep theirs
        os.environ.pop("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
        try:
            with _ray_starting():
                ray.init(address=address, log_to_driver=True)
        except ConnectionError as err:
            raise JobRefused(f"cannot join the Ray cluster at RAY_ADDRESS={address}: {_first_line(err)}") from None
    else:
        cores = os.cpu_count() or 1
        if num_actors > LOCAL_ACTORS_PER_CORE * cores:
            raise JobRefused(f"--num-actors {num_actors} on a local Ray of {cores} cores: at most "
                             f"{LOCAL_ACTORS_PER_CORE * cores} here (each actor holds a model); lower it, or join "
                             "a cluster that has the room (RAY_ADDRESS, or ray job submit)")
        # headroom beyond the actors: the loaders (LOADER_CPUS each), a read task, and on a resume Ray Data's
        # CheckpointFilter actor (1 CPU); without it the resumed read waits forever behind the actors (a
        # cluster joined instead is checked for the same, check_resources)
        # no runtime_env env_vars: the local cluster's workers inherit this process's environment (storage
        # credentials, SPOTE_CACHE, PYTHONPATH), and Ray writes a runtime env's env_vars in plain text to
        # its runtime_env_agent.log, readable by every user of the machine
        # address "local": a Ray of its own even where a `ray start` cluster runs on this machine, which
        # ray.init() without an address joins (read from ray_current_cluster), and refuses num_cpus there
        with _ray_starting():
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, num_actors + 3), include_dashboard=False,
                     log_to_driver=True)
            _STARTED_HERE["local"] = True


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``ray job stop``) on a job's driver, ended as Ctrl-C is: the run lease released,
    what is staged kept, one line saying how to resume."""


# seconds a stopped job run as a program may take to shut down (Ray's processes, the lease's release)
# before it ends at once
STOP_GRACE_S = 60.0
RESUME_HINT = ("the parts staged so far are kept; run the same command again (the same --run-id, or the same input "
               "and settings) to resume")
_STOPPING: dict = {}  # "program": the job is the process (run_as_program); "code": the first stop signal's exit code


def _ignore_signal(signum, frame) -> None:
    """A stop signal once the process is ending at once: it is that stop."""


def _stop_now(code: int, why: str, hint: str = RESUME_HINT) -> None:
    """End the process at once, and every process it started (a local Ray's, loader children): one
    line, SIGKILL to those by pid, ``os._exit`` (no atexit handler, no thread joined). Staged parts
    stay; a lease still held is left to lapse, which the next start waits out. Each step is guarded: a
    stop signal already pending runs its handler in the middle of this (Python runs handlers between
    any two bytecodes), and must not cut it short."""
    from cluster.local import end_own_processes

    _STOPPING.setdefault("code", code)  # a signal handled from here on is a second one
    for _ in range(3):
        try:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, _ignore_signal)
                signal.signal(signal.SIGTERM, _ignore_signal)
            break
        except BaseException:  # noqa: BLE001  a pending signal's handler raised: this stop is that one too
            continue
    word = "terminated" if code == 143 else "interrupted"
    try:
        if not _STOPPING.get("said"):
            _STOPPING["said"] = True
            sys.stderr.write(f"{word}: {why}; stopped at once; {hint}\n")
    except BaseException:  # noqa: BLE001
        pass
    try:
        end_own_processes(grace_s=0)
    except BaseException:  # noqa: BLE001
        pass
    _exit_stopped(code)


def _begin_stop(code: int) -> None:
    """A stop signal to a job run as a program: the first starts a timer that ends the process anyway if
    its clean stop is not over ``STOP_GRACE_S`` later (a Ray shutdown or a thread that never ends would
    hold it for ever); a second ends it at once, as a second Ctrl-C does elsewhere, and so does one
    after the job's command has returned (Ray's shutdown at exit, which an exception would cut short
    with a traceback and Ray's agents left running). Nothing for in-process callers (a notebook, a
    test), whose process outlives the job."""
    if not _STOPPING.get("program"):
        return
    if "code" in _STOPPING:
        _stop_now(_STOPPING["code"], "a second stop signal")
    if _STOPPING.get("finished"):
        _stop_now(code, "a stop signal while the job shut down", "the lines above say how the run ended")
    _STOPPING["code"] = code
    timer = threading.Timer(STOP_GRACE_S, _stop_now, args=(code, f"shutting down took over {STOP_GRACE_S:.0f} s"))
    timer.daemon = True  # it must not itself keep the process alive
    timer.start()


def _on_stop_signal(signum, frame) -> None:
    """SIGINT raises KeyboardInterrupt, SIGTERM ``Terminated``; ``job_command`` turns either into a clean
    stop that says how to resume (exit 130 / 143)."""
    code = 143 if signum == signal.SIGTERM else 130
    if _STOPPING.get("program"):
        install_stop_handlers()  # again: a signal pending behind this one must reach this handler, not ray.init's
    _begin_stop(code)
    raise Terminated() if code == 143 else KeyboardInterrupt()


def install_stop_handlers() -> None:
    """Handle SIGINT and SIGTERM with ``_on_stop_signal``: at a program's start, and again once Ray has
    started (``ray.init`` sets handlers of its own). Only the main thread can set a handler; elsewhere
    the defaults stay."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_stop_signal)
        signal.signal(signal.SIGTERM, _on_stop_signal)


@contextlib.contextmanager
def _ray_starting():
    """Around ``ray.init``: the stop handlers put back after it (its own SIGTERM handler is
    ``sys.exit(15)`` while it starts, which ended the job with no word). A stop signal while Ray starts
    ends a job run as a program at once, with what Ray had started (an ``ray.init`` cut short left
    Ray's agents running for a minute, and its shutdown at exit could crash); elsewhere it raises
    ``Terminated`` / KeyboardInterrupt as at any other time."""
    try:
        yield
        install_stop_handlers()
    except KeyboardInterrupt as err:  # Terminated too
        if _STOPPING.get("program"):
            _stop_now(143 if isinstance(err, Terminated) else 130, "a stop signal while Ray started")
        raise
    except SystemExit as err:
        if err.code != signal.SIGTERM:
            raise
        if _STOPPING.get("program"):
            _stop_now(143, "a stop signal while Ray started")
        raise Terminated() from None


def _shut_down_stopped() -> None:
    """A stopped program's shutdown, here rather than at exit, under ``_begin_stop``'s timer:
    ``ray.shutdown``, then whatever outlived it ended (the agents of a raylet ended first)."""
    from cluster.local import end_own_processes

    if "ray" in sys.modules:
        import ray

        with contextlib.suppress(Exception):
            if ray.is_initialized():
                ray.shutdown()
    end_own_processes(grace_s=5.0)


def _exit_stopped(code: int) -> None:
    """End a stopped program once its shutdown is done: ``os._exit``, so that no stop signal meets the
    interpreter's own finalisation, which puts the default handlers back (a late Ctrl-C killed it with
    -2 after its line)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def run_as_program(typer_app) -> None:
    """Run a job's command line as the process (``python -m pipelines.<job>``): ``spote.cli.run_cli``
    with the stop signals handled from the start (``_begin_stop``). Ray's C++ failure signal handler
    is kept out of this process (it took SIGTERM for a crash: a stack dump, then abort) and Python's
    ``faulthandler`` reports a crash instead; Ray's own processes keep theirs."""
    import faulthandler

    _STOPPING["program"] = True
    if "RAY_DISABLE_FAILURE_SIGNAL_HANDLER" not in os.environ:
        os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"
        _STOPPING["unset_failure_handler_env"] = True
    import cluster.local  # noqa: F401  loaded before any stop: an import cut short by a signal cannot be finished in one
    from spote.cli import run_cli

    faulthandler.enable()
    install_stop_handlers()
    try:
        run_cli(typer_app)
    finally:
        _STOPPING["finished"] = True


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """JobRefused unless a TCP connection to ``address`` (``host:port`` of a GCS, ``ray://host:port`` of a Ray
    client server) opens within ``timeout_s``. ``auto``, ``local`` and addresses without a port are left to
    Ray."""
    import socket

    host_port = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit() or address in ("auto", "local"):
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise JobRefused(f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({err.strerror or err}): start it "
                         "or fix the address; without RAY_ADDRESS the job starts a local Ray") from None


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def cluster_is_fixed() -> bool:
    """True for the local cluster init_ray started here, or a joined one whose nodes carry
    ``FIXED_SIZE_LABEL`` = ``true`` (``python -m cluster.local``): their resources never change. Any other
    cluster we joined may have an autoscaler, so a shortfall there is waited for (boundedly)."""
    import ray

    return _STARTED_HERE["local"] or any(
        (n.get("Labels") or {}).get(FIXED_SIZE_LABEL) == "true" for n in ray.nodes() if n.get("Alive"))


class JobRefused(ValueError):
    """The job cannot start as asked (flags, run id, cluster resources); the message says what to change."""


class InsufficientResources(JobRefused):
    """The cluster lacks the CPUs/GPUs the actors ask for."""


@dataclass(frozen=True)
class ResourceRequest:
    """What a job asks of the cluster at once: ``actors`` SPOT-E actors of ``cpus``/``gpus`` each, the CPU
    loader (``loader_cpus``), and ``task_cpus`` for Ray Data's own work beside them (each on any node):
    a read task (1 CPU), and on a resume its ``CheckpointFilter`` actor (1 CPU), which holds its CPU for the
    whole run; without them the read waits forever behind the actors."""

    actors: int
    cpus: float
    gpus: float
    loader_cpus: float
    task_cpus: float = 0.0

    def describe(self) -> str:
        each = f"{_amount(self.cpus, 'CPU')}" + (f" + {_amount(self.gpus, 'GPU')}" if self.gpus else "")
        others = f"{_amount(self.loader_cpus, 'CPU')} for the loader" + (
            f" and {_amount(self.task_cpus, 'CPU')} for Ray Data's read" + (" and checkpoint filter" if
                                                                           self.task_cpus > READ_CPUS else "")
            if self.task_cpus else "")
        return (f"{self.actors} actor(s) x ({each}) = {_amount(self.actors * self.cpus, 'CPU')}"
                + (f" + {_amount(self.actors * self.gpus, 'GPU')}" if self.gpus else "") + f", plus {others}")

    def shortfall(self, nodes: list[dict]) -> str | None:
        """Why ``nodes`` (each a {resource: amount} of one alive node) cannot hold the request, or None.

        Each actor must fit on one node, so the per-node fit is counted, not only the totals.
        """
        fits = 0
        for res in nodes:
            n = []
            if self.cpus > 0:
                n.append(int(res.get("CPU", 0) / self.cpus + 1e-9))
            if self.gpus > 0:
                n.append(int(res.get("GPU", 0) / self.gpus + 1e-9))
            fits += min(n) if n else self.actors
        cpus = sum(r.get("CPU", 0) for r in nodes)
        gpus = sum(r.get("GPU", 0) for r in nodes)
        have = (f"the cluster has {_amount(cpus, 'CPU')} and {_amount(gpus, 'GPU')} on {len(nodes)} node(s) ("
                + ", ".join(f"{_amount(r.get('CPU', 0), 'CPU')}/{_amount(r.get('GPU', 0), 'GPU')}" for r in nodes)
                + f"), room for {fits} such actor(s)")
        if fits < self.actors or cpus + 1e-9 < self.actors * self.cpus + self.loader_cpus + self.task_cpus:
            return have
        return None


def _amount(x: float, unit: str) -> str:
    return f"{x:g} {unit}" + ("" if x == 1 else "s")


def _alive_nodes() -> list[dict]:
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


READ_CPUS = 1.0  # Ray Data's read task; on a resume its CheckpointFilter actor takes as much again


def check_resources(opts: JobOptions, fixed: bool | None = None, poll_seconds: float = 5.0,
                    resuming: bool = False) -> ResourceRequest:
    """Check the job's request against the cluster before any work (Ray would wait for it forever):
    the actors, the loader and Ray Data's read, and on a resume (``resuming``: staged parts to keep) its
    checkpoint filter too (``ResourceRequest``).

    A fixed cluster (the local one init_ray started) that cannot hold it fails at once; a cluster we
    joined may autoscale, so the request is put to its autoscaler and waited for at most
    ``opts.resource_wait_seconds``, saying what it waits for, then fails.

    Raises:
        InsufficientResources: naming what was asked and what exists.
    """
    req = ResourceRequest(opts.num_actors, opts.cpus_per_actor, opts.num_gpus_per_actor, LOADER_CPUS,
                          READ_CPUS * (2 if resuming else 1))
    if opts.num_actors < 1 or opts.cpus_per_actor < 0 or opts.num_gpus_per_actor < 0:
        raise InsufficientResources(f"asked for {req.describe()}: need at least one actor and no negative amounts")
    fixed = cluster_is_fixed() if fixed is None else fixed
    short = req.shortfall(_alive_nodes())
    if short is None:
        return req
    hint = "lower --num-actors, --cpus-per-actor or --num-gpus-per-actor"
    if fixed or opts.resource_wait_seconds <= 0:
        raise InsufficientResources(f"not enough resources: asked for {req.describe()}; {short}. {hint}, "
                                    f"or run on a cluster that has them")
    _ask_autoscaler(req)
    wait = opts.resource_wait_seconds
    print(f"[resources] waiting up to {wait:g} s for the cluster to grow: asked for {req.describe()}; {short}")
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))
            short = req.shortfall(_alive_nodes())
            if short is None:
                print("[resources] the cluster now holds the request")
                return req
    finally:
        _ask_autoscaler(None)  # the actors' own demand keeps the nodes from here on
    raise InsufficientResources(f"not enough resources after waiting {wait:g} s (--resource-wait-seconds): asked for "
                                f"{req.describe()}; {short}. {hint}, or give the cluster's autoscaler room for them")


def _ask_autoscaler(req: ResourceRequest | None) -> None:
    """Put the request to the cluster's autoscaler (a no-op without one); None withdraws it."""
    try:
        from ray.autoscaler.sdk import request_resources

        bundle = {k: v for k, v in (("CPU", req.cpus), ("GPU", req.gpus)) if v} if req else {}
        request_resources(bundles=[bundle] * req.actors if req and bundle else [])
    except Exception as err:  # an old or absent autoscaler: waiting still shows whether nodes appear
        print(f"[resources] could not ask the autoscaler: {type(err).__name__}: {err}")


MAX_PIXELS_OPTION = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="pixels an image or rendered page may "
                                  "hold (the decompression-bomb guard; memory per loader: about 3 bytes a pixel, more "
                                  "while a large image decodes)")


def check_max_pixels(max_pixels: int) -> None:
    if max_pixels < 1:
        raise JobRefused(f"--max-pixels must be >= 1 (pixels an image may hold), got {max_pixels}")


def max_pixels_setting(max_pixels: int) -> dict:
    """The job setting of ``--max-pixels``: none at the default (so runs keep the run ids they had), else the
    number, since it turns error rows into answers."""
    return {} if max_pixels == DEFAULT_MAX_PIXELS else {"max_pixels": max_pixels}


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
    item_timeout_seconds: float = 600.0
    resource_wait_seconds: float = 300.0
    rows_per_part: int = 256
    progress_seconds: float = 60.0
    revision: str | None = None
    trust_remote_code: bool = False      # run the checkpoint's own code (its config's auto_map)
    endpoint: str | None = None
    api_key_env: str | None = None       # None: --endpoint-options' api_key_env, else OPENAI_API_KEY
    endpoint_concurrency: int | None = None  # None: --endpoint-options' concurrency, else 8
    endpoint_options: str | None = None

    def __post_init__(self):  # one line naming the flag, before any job lists its input or Ray starts
        for name, least, what in (("batch_size", 1, "rows per actor call"), ("rows_per_part", 1, "rows per staged part"),
                                  ("endpoint_concurrency", 1, "requests in flight")):
            if getattr(self, name) is not None and getattr(self, name) < least:
                raise JobRefused(f"--{name.replace('_', '-')} must be >= {least} ({what}), got {getattr(self, name)}")
        if not self.item_timeout_seconds >= 0:
            raise JobRefused(f"--item-timeout-seconds must be >= 0 seconds (0: no limit), got {self.item_timeout_seconds}")
        if not self.resource_wait_seconds >= 0:
            raise JobRefused(f"--resource-wait-seconds must be >= 0 seconds, got {self.resource_wait_seconds}")
        if not (self.progress_seconds == 0 or PROGRESS_SECONDS[0] <= self.progress_seconds <= PROGRESS_SECONDS[1]):
            raise JobRefused(f"--progress-seconds must be 0 (no progress lines) or {PROGRESS_SECONDS[0]}-"
                             f"{PROGRESS_SECONDS[1]:,} seconds, got {self.progress_seconds}")
        if self.num_actors < 1:  # before Ray starts (check_resources would say so after)
            raise JobRefused(f"--num-actors must be >= 1 (VLM actors), got {self.num_actors}")
        if not self.cpus_per_actor > 0:  # 0 would let Ray place any number of actors, each with no CPU
            raise JobRefused(f"--cpus-per-actor must be > 0 (CPUs, and torch threads, per actor), got {self.cpus_per_actor}")
        if not self.num_gpus_per_actor >= 0:
            raise JobRefused(f"--num-gpus-per-actor must be >= 0 (0 runs on CPU), got {self.num_gpus_per_actor}")
        for name in ("input", "output"):  # "" would be the working directory
            if not getattr(self, name).strip():
                raise JobRefused(f"--{name} is empty: give a folder, a file or a URI")
            if (why := not_utf8_path(f"--{name}", getattr(self, name))) is not None:
                raise JobRefused(why)
            check_not_in_job_package(f"--{name}", getattr(self, name))
        check_output_outside_input(self.input, self.output)
        given = [flag for flag, value in (("--endpoint-options", self.endpoint_options), ("--api-key-env", self.api_key_env),
                                          ("--endpoint-concurrency", self.endpoint_concurrency)) if value is not None]
        if self.endpoint is not None and not self.endpoint.strip():  # "" ran the job on its own model
            raise JobRefused("--endpoint is empty: give the server's base URL, e.g. http://127.0.0.1:8000/v1")
        if self.trust_remote_code and self.endpoint:  # the server runs its own code: nothing here would
            raise JobRefused("--trust-remote-code applies to a model the actors load, not to --endpoint")
        if given and not self.endpoint:  # they would be ignored: the job would answer with its own model instead
            raise JobRefused(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to --endpoint, which is not "
                             "given")

    def endpoint_config(self) -> dict:
        """``load_adapter``'s ``endpoint_options`` (no secret: the key stays in its environment variable): the
        fields of ``--endpoint-options``, with ``--api-key-env`` / ``--endpoint-concurrency`` where given,
        which must agree with the same fields there (``spote.adapters.endpoint.endpoint_options``; ValueError
        if not)."""
        from spote.adapters.endpoint import endpoint_options

        return endpoint_options(self.api_key_env, self.endpoint_concurrency, self.endpoint_options or "{}")

    def predictor_kwargs(self, storage_options: dict | None) -> dict:
        """What each SPOT-E actor loads, checked here first so that a model that cannot be found or bad
        endpoint flags fail the job before any work (``ModelNotFound`` / ``ValueError``, one line). A hub
        id's revision (``main`` when none is given) is pinned to the commit it names now, ``model_commit``:
        every actor loads that commit, and the run records it (``run_settings``), so a branch that moves
        mid-run or between a crash and its resume never mixes two models' answers in one run. A folder
        (local, remote, the shipped model) has no commit: its ``checkpoint_fingerprint``, ``model_fingerprint``,
        is recorded the same way, and each actor checks the folder it loaded still has it."""
        from spote.loading import check_model, checkpoint_fingerprint

        if self.endpoint:
            from spote.adapters.endpoint import check_served_model, endpoint_config

            if self.revision:
                raise ValueError("a revision (--revision, revision=) applies to hub ids; an endpoint serves whatever it "
                                 "serves")
            check_served_model(endpoint_config(self.endpoint, self.model, **self.endpoint_config()))  # validates
            commit = fingerprint = None
        else:
            commit = check_model(self.model, storage_options, self.revision, self.trust_remote_code)
            fingerprint = None if commit else checkpoint_fingerprint(self.model, storage_options)
        return {"model": self.model, "revision": commit or self.revision, "trust_remote_code": self.trust_remote_code,
                "endpoint": self.endpoint,
                "endpoint_options": self.endpoint_config() if self.endpoint else None, "model_commit": commit,
                "model_fingerprint": fingerprint}

    def check_questions(self, questions: list[dict], source: str) -> None:
        """Refuse a question file whose question or choices the model cannot read as written (a choice of
        words it lacks, one of its markers in the text: ``TextRules.check_text``), before any work: every
        tile or page would otherwise be an error row for it. Checked where the model's processor is at hand
        without a download (``spote.loading.text_rules``); elsewhere each row is checked as it is answered.

        Raises:
            JobRefused: one line naming the file, each question's field and what the model cannot read.
        """
        if self.endpoint:
            return
        from spote.adapters.base import UnreadableText
        from spote.loading import text_rules

        rules = text_rules(self.model, self.revision, self.trust_remote_code)
        if rules is None:
            return
        problems = []
        for q in questions:
            try:
                rules.check_text(q["question"], json.loads(q["choices"]) if q.get("choices") else None)
            except UnreadableText as err:
                problems.append(f"field {q['field']!r}: {str(err).removeprefix('unreadable question: ')}")
        if problems:
            raise JobRefused(f"{source}: the model {self.model_label()} cannot read it as written: "
                             + "; ".join(problems))

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
        from spote.cli import unique_keys

        try:
            overrides = json.loads(self.policy, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as err:
            raise JobRefused(f"--policy is not valid JSON: {err}") from err
        except ValueError as err:
            raise JobRefused(f"--policy: {err}") from None
        if not isinstance(overrides, dict):
            raise JobRefused(f"--policy must be a JSON object of PolicyConfig fields, got {self.policy!r}")
        names = {f.name for f in fields(PolicyConfig)}
        unknown = set(overrides) - names
        if unknown:
            raise JobRefused(f"unknown policy fields {sorted(unknown)}; known: {sorted(names)}")
        try:
            PolicyConfig(**overrides)  # validate now, not inside an actor
        except (TypeError, ValueError) as err:
            raise JobRefused(f"--policy: {err}") from err
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
    ("run_id", Optional[str], typer.Option(None, help="default: <job>-<date>-<hash of the input and settings> (documents: documents-<--run-date>)")),
    ("force", bool, typer.Option(False, help="re-run a committed run id")),
    ("item_timeout_seconds", float, typer.Option(600.0, help="reading, and answering, each at most this long per item; "
                                                 "over it the item is an error row 'timeout: ...' (0: no limit)")),
    ("resource_wait_seconds", float, typer.Option(300.0, help="on a cluster we joined (it may autoscale): wait at most "
                                                  "this long for the actors' CPUs/GPUs to exist, then fail")),
    ("rows_per_part", int, typer.Option(256, help="rows per staged Parquet part, about (an actor call's --batch-size rows "
                                                       "stay in one part): the unit a killed run keeps and resumes from")),
    ("progress_seconds", float, typer.Option(60.0, help="say this often how many items are staged, the rate and the "
                                                        "time left (0.1-86400; 0: never)")),
    ("revision", Optional[str], typer.Option(None, help="hub id only: branch, tag or commit (default: main)")),
    ("trust_remote_code", bool, typer.Option(False, "--trust-remote-code",
                                              help="run the Python code the checkpoint ships (its config's auto_map); "
                                                   "only for a model whose code you have read and trust")),
    ("endpoint", Optional[str], typer.Option(None, help="OpenAI-compatible server with logprobs, e.g. "
                                                         "http://host:8000/v1: black-box mode, no model in the actors")),
    ("api_key_env", Optional[str], typer.Option(None, show_default=False, help="environment variable with the "
                                                "endpoint's API key, set where the actors run (default: "
                                                "OPENAI_API_KEY, or api_key_env in --endpoint-options)")),
    ("endpoint_concurrency", Optional[int], typer.Option(None, show_default=False, help="endpoint requests in "
                                                         "flight at most, per actor (default: 8, or concurrency in "
                                                         "--endpoint-options)")),
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
        common = {n: kwargs.pop(n) for n, _, _ in COMMON_FLAGS}
        opts = None
        try:
            import spote.loading  # noqa: F401  torch and transformers, a second or two: inside the Ctrl-C cover
            opts = JobOptions(kwargs["input"], kwargs["output"], **common)
            opts.policy_overrides()  # a bad --policy stops the job here, before it lists its input
            check_output_writable(opts.output, parse_storage_options(opts.storage_options))
            return fn(opts=opts, **kwargs)
        except Exception as err:
            from spote.loading import ModelNotFound

            if _is_ray_error(err):
                _say_ray_failure(err, opts)
                raise  # Ray's own report says where
            if isinstance(err, PermissionError) and opts and "://" in opts.output and not err.filename \
                    and opts.output not in str(err):  # a store's bare "Forbidden": its credentials, for --output
                typer.echo(f"error: --output {redact_uri(opts.output)}: access denied (check the credentials and their "
                           f"permissions): {err}", err=True)
                raise typer.Exit(2) from None
            if isinstance(err, (JobRefused, ModelNotFound, ValueError, FileNotFoundError, IsADirectoryError,
                                NotADirectoryError, PermissionError, AccountingError, RunInUse)):
                typer.echo(f"error: {err}", err=True)  # bad input or a job that cannot start as asked: one line
                raise typer.Exit(2) from None
            if isinstance(err, OSError) and err.errno in PERMANENT_ERRNOS:  # a full or read-only disk, a name too long
                permanent = _permanent_os_error(err)
                typer.echo(f"error: {_permanent_line(*permanent)}", err=True)
                raise typer.Exit(1) from None
            if not is_outage(err):
                raise
            # a store that stayed unreachable through every retry (botocore's errors are no OSError): one line
            typer.echo(f"error: storage unreachable: {type(err).__name__}: {err}; whatever was staged is kept: "
                       "run the same command again when it is back", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: what is staged is kept; say how to go on
            what, code = ("terminated", 143) if isinstance(err, Terminated) else ("interrupted", 130)
            typer.echo(f"{what}: {RESUME_HINT}", err=True)
            if _STOPPING.get("program"):
                _shut_down_stopped()
                _exit_stopped(code)
            raise typer.Exit(code) from None

    command.__signature__ = sig.replace(parameters=own + shared)
    command.__annotations__ = {**{p.name: p.annotation for p in own}, **{n: t for n, t, _ in COMMON_FLAGS}}
    del command.__wrapped__
    return command


LOADER_CPUS = 0.5  # each CPU loader actor (one or two)
PROGRESS_SECONDS = (0.1, 86_400)  # a progress line at most ten times a second (each a listing), at least once a day
GROUP_ROWS_PER_PARTITION = 250_000  # ids per hash partition of an id group-by (about 10-20 MB of ids)
MAX_GROUP_PARTITIONS = 200  # Ray Data's own default, reached from 50 million rows

def check_not_in_job_package(flag: str, uri: str, cwd: str | None = None) -> None:
    """Refuse (JobRefused) a relative local path when the job runs in the working dir ``ray job submit
    --working-dir`` unpacked (``.../runtime_resources/working_dir_files/_ray_pkg_*``): Ray unpacks it again
    for every job and node and deletes it with the cluster's temp dir, so results written there are lost
    (and a lease there wiped by a node unpacking it anew), and an input there gets new file times per
    submission, so a killed run could never resume."""
    cwd = cwd or os.getcwd()
    if "://" in uri or os.path.isabs(os.path.expanduser(uri)) or "/working_dir_files/" not in cwd + "/":
        return
    raise JobRefused(f"{flag} {uri} is relative to the job's working dir, which Ray unpacks anew for every job "
                     "and deletes with the cluster; give an absolute path or an s3:// URI")


# bytes of path a run writes under --output: _staging/<run id, up to 128>/checkpoint/<Ray Data's part names>
OUTPUT_PATH_HEADROOM = 512


def check_output_writable(output_uri: str, storage_options: dict | None = None) -> None:
    """Refuse (JobRefused), before Ray starts, a local ``output`` that is a file or where no folder can be
    made (under a file, on a read-only or virtual file system such as /proc), and an ``s3://`` output
    whose bucket does not exist (the store's own "The specified bucket does not exist" named neither the
    bucket nor the flag), a path holding a ``?`` (a glob wildcard to Ray Data's readers), and an object
    store path holding ``[`` or ``]`` (a wildcard to fsspec's move). Nothing is left behind: a probe folder
    is made and removed in the nearest folder that exists. Whether an object store's prefix can be written
    is checked by the job's first write."""
    import tempfile

    if "?" in output_uri.split("://", 1)[-1]:
        raise JobRefused(f"--output {output_uri}: a '?' in the path is a wildcard to Ray Data's Parquet reader, "
                         "which then finds none of the run's own parts (the run committed empty); name it without one")
    if "://" in output_uri and not output_uri.startswith("file://") and any(c in output_uri for c in "[]"):
        raise JobRefused(f"--output {output_uri}: '[' and ']' in an object store path are a wildcard to fsspec's move, "
                         "which Ray Data's checkpoints use; name it without them")
    if output_uri.startswith("s3://"):
        bucket = output_uri[len("s3://"):].split("/", 1)[0]
        try:  # HEAD bucket: s3fs maps 404 (NoSuchBucket) to FileNotFoundError; its exists() says False for anything
            fs, _ = filesystem(f"s3://{bucket}", storage_options)
            fs.call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError:
            raise JobRefused(f"--output {output_uri}: the bucket {bucket!r} does not exist") from None
        except Exception:  # denied to a role limited to a prefix, no credentials, a store down: the first write says
            pass
        return
    if "://" in output_uri and not output_uri.startswith("file://"):
        return
    path = os.path.abspath(local_path(output_uri))
    if os.path.exists(path) and not os.path.isdir(path):
        raise JobRefused(f"--output {output_uri} is a file; give a folder")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise JobRefused(f"--output {output_uri}: {existing} is a file, so no folder can be made under it")
    name_max, path_max = os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    if len(os.fsencode(path)) + OUTPUT_PATH_HEADROOM > path_max:  # the run's own files lie that much deeper
        raise JobRefused(f"--output: the path is {len(os.fsencode(path))} bytes; the run's files under it need up to "
                         f"{OUTPUT_PATH_HEADROOM} more, past the {path_max} this file system allows: give a shorter one")
    for name in os.path.relpath(path, existing).split(os.sep) if path != existing else ():
        if len(os.fsencode(name)) > name_max:
            raise JobRefused(f"--output: the folder name {_short(name, limit=40)!r} is {len(os.fsencode(name))} bytes, "
                             f"more than the {name_max} this file system allows")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".spote-probe-", dir=existing))
    except OSError as err:
        raise JobRefused(f"--output {output_uri}: no folder can be made in {existing} ({err.strerror or err})") from None


def check_output_outside_input(input_uri: str, output_uri: str) -> None:
    """Refuse an ``output`` at or under ``input`` (JobRefused): the next run would list this run's results,
    reports and ledger as inputs. Local paths are compared resolved; URIs by scheme and path."""
    def place(uri: str) -> str:
        if "://" in uri and not uri.startswith("file://"):
            return uri.rstrip("/")
        return os.path.realpath(local_path(uri))

    src, dst = place(input_uri), place(output_uri)
    if dst == src or dst.startswith(src + "/"):
        raise JobRefused(f"--output {output_uri} lies inside --input {input_uri}: the next run would read this run's "
                         f"results as inputs; write them elsewhere")


RUN_ID_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> str:
    """A run id is a folder name (``results/run_id=<id>``) that every hive reader must read back as the
    same text: a letter first, then letters, digits, ``.``, ``_``, ``-`` (no ``%``, ``/`` or ``=``, which
    readers decode), and not a word DuckDB's partition-type inference turns into a number or a date.

    Raises:
        JobRefused: naming the run id and the rule.
    """
    rule = "a letter first, then letters, digits, '.', '_' or '-' (at most 128)"
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise JobRefused(f"run id {run_id!r} cannot be a partition folder name: use {rule}")
    try:
        float(run_id)  # inf, nan, infinity
        numeric = True
    except ValueError:
        numeric = run_id.lower() == "epoch"
    if numeric:
        raise JobRefused(f"run id {run_id!r} reads back as a number or a date in hive readers: add a word, "
                         f"e.g. 'run-{run_id}'")
    return run_id


def _share(rate: float | None) -> str:
    """A rate for the summary line: three significant digits (0.417), "-" where nothing was answered."""
    return "-" if rate is None else f"{rate:.3g}"


def _is_ray_error(err: Exception) -> bool:
    return type(err).__module__.startswith("ray.")


def _say_ray_failure(err: Exception, opts: "JobOptions | None") -> None:
    """Where a Ray error has a cause the user can act on, say it in one line and exit (``typer.Exit``): a model
    an actor refused (2), a full or read-only disk (1), a store down now (1); else return (Ray's report says where)."""
    import typer

    if refused := _model_refused(err):  # an actor could not load the model, or found it changed
        typer.echo(f"error: {refused}", err=True)
        raise typer.Exit(2) from None
    if permanent := _permanent_os_error(err):  # a task's write met a full or read-only disk
        typer.echo(f"error: {_permanent_line(*permanent)}", err=True)
        raise typer.Exit(1) from None
    # a task's failure reaches the driver without its cause (Ray Data re-raises it as a user-code error holding
    # the task's traceback as text): where the store is down now, that is why
    outage = store_outage(opts.output, parse_storage_options(opts.storage_options)) if opts else None
    if outage is not None:
        typer.echo(f"error: a Ray task failed and the store is unreachable: {type(outage).__name__}: "
                   f"{_first_line(outage)}; whatever was staged is kept: run the same command again when it is back",
                   err=True)
        raise typer.Exit(1) from None


_ERRNO_TEXT = re.compile(r"\[errno (\d+)\][^:'\n]+(?::\s*'([^'\n]*)')?", re.IGNORECASE)


def _permanent_os_error(err: BaseException) -> tuple[int, str, str] | None:
    """(errno, what, where) of a full or read-only disk, a name too long, ... (``PERMANENT_ERRNOS``) behind a
    Ray error, whose cause a task's write reaches the driver as text only (``[Errno 28] No space left on device:
    '<path>'``, pyarrow's ``[errno 30] Read-only file system``); or None."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in PERMANENT_ERRNOS:
            return err.errno, err.strerror or str(err), err.filename or ""
        for code, where in _ERRNO_TEXT.findall(str(err)):
            if int(code) in PERMANENT_ERRNOS:  # the system's words: pyarrow's are "Error writing bytes to file"
                return int(code), os.strerror(int(code)), where
        err = err.__cause__
    return None


def _permanent_line(code: int, what: str, where: str | None) -> str:
    """The one line for a write that fails the same on every try (``PERMANENT_ERRNOS``): what, where, what to do."""
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        then = "again once there is room (or give another --output)"
    elif code == errno.EROFS:
        then = "again once --output can be written (or give another --output)"
    else:  # a name too long, a loop of links: the path itself
        then = "with another --output"
    return (f"{what}{f': {where}' if where else ''}; whatever was staged is kept: run the same command "
            f"{then}")


def _model_refused(err: BaseException) -> str | None:
    """The message of a ``ModelNotFound`` or ``ModelChanged`` an actor raised when it loaded (a model the
    driver's checks could not judge: a hub snapshot still to download, a folder changed since), from a Ray
    error, which holds the actor's traceback as text only; or None."""
    while err is not None:
        if found := re.search(r"\b(?:ModelChanged|ModelNotFound): (.+)", str(err)):
            return found.group(1).strip()
        err = err.__cause__
    return None


def is_outage(err: BaseException) -> bool:
    """Whether ``err`` is a store's outage: a transient storage error (``storage.transient_errors``) and, of
    OSError's kin, only a connection failure or a time limit (a full disk or a bad path is no outage)."""
    from .storage import transient_errors

    return isinstance(err, transient_errors()) and (
        not isinstance(err, OSError) or isinstance(err, (ConnectionError, TimeoutError)))


def store_outage(uri: str, storage_options: dict | None = None) -> BaseException | None:
    """The outage of the object store holding ``uri`` now (``is_outage``), found by one look at ``uri``
    (the store client's own retries only), or None: a local path, a store that answers (whatever it
    says: a missing path, a refusal), or a failure that is no outage."""
    if "://" not in uri or uri.startswith("file://"):
        return None
    try:
        fs, path = filesystem(uri, storage_options)
        fs.invalidate_cache()
        fs.info(path)
    except Exception as err:  # a missing path or a refusal is an answer (no outage): the store is up
        return err if is_outage(err) else None
    return None


@dataclass(frozen=True)
class RunResults:
    """A run's result rows where they are now (staged before the commit, committed after), with
    their merged statistics. ``dataset()`` reads them lazily as a Ray dataset; never whole."""

    uri: str
    storage_options: dict
    stats: RunStats | None  # None where the run was committed earlier and not re-read

    def has_rows(self) -> bool:
        """Whether any result row is there (a run of no items holds one Parquet file of no rows)."""
        if self.stats is not None:
            return self.stats.items > 0
        import pyarrow.parquet as pq

        fs, path = filesystem(self.uri, self.storage_options)
        if not fs.exists(path):
            return False
        for f in fs.find(path):
            if f.endswith(".parquet"):
                with fs.open(f, "rb") as fh:  # the footer alone says how many rows
                    if pq.ParquetFile(fh).metadata.num_rows:
                        return True
        return False

    def dataset(self, columns: list[str] | None = None):
        """The rows as a lazy Ray dataset (Ray must be up: see ``has_rows`` first)."""
        return _read(self.uri, self.storage_options, columns)


def _has_parquet(fs, path: str) -> bool:
    return fs.exists(path) and any(f.endswith(".parquet") for f in fs.find(path))


@contextlib.contextmanager
def file_based_parquet_reads():
    """Within the block, ``ray.data.read_parquet`` (ours and the checkpoint filter's) uses Ray Data's
    file-based Parquet reader rather than the DataSourceV2 one.

    Why: in Ray 2.60 every V2 read starts a pool of footer-reader actors (32 by default) for its
    listing and kills it afterwards; on a small cluster that is seconds per read even of a one-file
    folder, and a job reads its plan and parts five or more times (``make bench-reads``). The files
    read here are the job's own parts, so V2's listing push-downs have nothing to gain."""
    import ray

    ctx = ray.data.DataContext.get_current()
    previous = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False
    try:
        yield
    finally:
        ctx.use_datasource_v2 = previous


def _read(uri: str, so: dict, columns: list[str] | None = None):
    import ray

    fs, path = filesystem(uri, so)
    with file_based_parquet_reads():
        return ray.data.read_parquet(path, filesystem=arrow_fs(fs), columns=columns, partitioning=None)


def group_partitions(rows: int) -> int:
    """Hash partitions for a group-by over ``rows`` rows: one per ``GROUP_ROWS_PER_PARTITION`` rows,
    1 to ``MAX_GROUP_PARTITIONS`` (Ray Data's default of 200 costs seconds of task start-up on a
    small input and a small cluster)."""
    return max(1, min(MAX_GROUP_PARTITIONS, -(-rows // GROUP_ROWS_PER_PARTITION)))


def conform(table, *, schema):
    """Ray Data UDF: cast the columns a result schema names (a block of error rows alone would
    otherwise carry null-typed lists that other blocks, and readers, cannot merge with), and store a
    missing number (NaN in the batches: an error row's confidence, an image page's points per pixel)
    as null, which SQL aggregates skip (``avg(confidence)`` over NaN is NaN)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name in table.column_names:
        idx = schema.get_field_index(name)
        if idx < 0:
            continue
        col, target = table.column(name), schema.field(idx).type
        if col.type != target:
            if pa.types.is_null(col.type) or (pa.types.is_list(col.type) and pa.types.is_null(col.type.value_type)):
                col = pa.array(col.to_pylist(), type=target)
            else:
                col = col.cast(target)
        if pa.types.is_floating(target):
            col = pc.if_else(pc.is_nan(col), pa.scalar(None, target), col)
        table = table.set_column(table.column_names.index(name), name, col)
    return table


def result_schema(plan_schema):
    """The plan's columns and the predictor's RESULT_TYPES, as one Arrow schema."""
    import pyarrow as pa

    from .stages import RESULT_TYPES, _arrow_type

    fields = {f.name: f.type for f in plan_schema}
    fields.update({k: _arrow_type(v) for k, v in RESULT_TYPES.items()})
    return pa.schema(list(fields.items()))


def answer_dataset(ds, opts: JobOptions, policy: dict, so: dict, schema=None, loader=None, predictor=None,
                   model_kwargs: dict | None = None):
    """The job's Ray Data stages over planned item rows, unexecuted: parts of ``rows_per_part``
    rows -> CPU loader actors -> SPOT-E actors -> the result schema."""
    import ray

    ds = ds.repartition(target_num_rows_per_block=max(1, opts.rows_per_part))
    loader_cls, loader_kwargs = loader or (ImageLoader, {"storage_options": so})
    ds = ds.map_batches(TimedLoader, fn_constructor_kwargs={"loader": loader_cls, "loader_kwargs": loader_kwargs,
                                                            "timeout_s": opts.item_timeout_seconds},
                        batch_size=opts.batch_size, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
                        num_cpus=LOADER_CPUS)
    ds = ds.map_batches(
        predictor or SpotePredictor,
        fn_constructor_kwargs={**(model_kwargs or {"model": opts.model}), "policy": policy, "storage_options": so,
                               "threads": max(1, int(opts.cpus_per_actor)), "timeout_s": opts.item_timeout_seconds},
        compute=ray.data.ActorPoolStrategy(size=opts.num_actors), num_gpus=opts.num_gpus_per_actor,
        num_cpus=opts.cpus_per_actor, batch_size=opts.batch_size)
    if schema is not None:
        ds = ds.map_batches(functools.partial(conform, schema=schema), batch_format="pyarrow", batch_size=None,
                            num_cpus=0.25)
    return ds


def run_settings(opts: JobOptions, policy: dict, job_settings: dict | None = None,
                 model_commit: str | None = None, model_fingerprint: str | None = None) -> dict:
    """What a run's rows depend on: the input (a local path made absolute), the model (``model_label``;
    for a hub id also ``model_commit``, the commit its revision named when the run started; for a folder
    ``model_fingerprint``, what it held then, ``spote.loading.checkpoint_fingerprint``) and its
    endpoint options, the whole policy (defaults filled in, so spelling a default out changes nothing)
    and the job's own settings. Recorded with the plan and in the summary, hashed into the
    default run id; a resume or a re-run of the run id must match it (``check_same_settings``)."""
    from spote.core import PolicyConfig

    source = redact_uri(local_path(opts.input))  # a presigned URL's signature is not recorded
    if "://" not in source:
        source = os.path.abspath(source)
    endpoint = None
    if opts.endpoint:  # the resolved options, so that spelling a default out changes nothing; not those that
        # leave the answers alone (how many requests at once, where the key is read from)
        from spote.adapters.endpoint import endpoint_config

        resolved = asdict(endpoint_config(opts.endpoint, opts.model or "", **opts.endpoint_config()))
        endpoint = {k: v for k, v in resolved.items() if k not in ("url", "model", "concurrency", "api_key_env")}
    # a hub id is its commit: the revision that named it (main, a tag, the commit itself) changes nothing
    model = str(opts.model) if model_commit else opts.model_label()
    settings = {"input": source, "model": model, "endpoint_options": endpoint,
                "policy": asdict(PolicyConfig(**policy)), **(job_settings or {})}
    if model_commit:  # only where there is one: an endpoint's run keeps the settings, and so the run id, it had
        settings["model_commit"] = model_commit
    if model_fingerprint:
        settings["model_fingerprint"] = model_fingerprint
    return json.loads(json.dumps(settings, sort_keys=True))  # as plan.json gives it back (tuples -> lists)


LATER_SETTINGS = ("input_files", "model_commit", "model_fingerprint")  # settings added after runs were first recorded (see check_same_settings)


def check_same_settings(run_id: str, started: dict | None, now: dict, committed: bool = False) -> None:
    """ValueError, naming each difference, when a run is resumed (or, ``committed``, asked for again)
    with other settings than it ran with: resumed, its rows would mix two runs' and the summary name
    only the second's; committed, the old rows would be returned as if they answered the new
    settings. Settings recorded by an older version (none) are not checked, nor a ``LATER_SETTINGS`` one
    the run did not record."""
    if started is None or started == now:
        return
    # a setting added since runs were first recorded is not checked against a run that lacks it
    diffs = _differences("", started, {k: v for k, v in now.items() if k in started or k not in LATER_SETTINGS})
    if not diffs:
        return
    was, again, redo = ("is committed", "ask for it", "redo it") if committed else ("was started", "resume it",
                                                                                   "start it over")
    raise ValueError(f"run {run_id} {was} with other settings ({'; '.join(diffs)}): {again} with the same ones, give "
                     f"another --run-id, or pass --force to {redo} with these")


_ABSENT = object()  # a key one side of two settings lacks (not the same as a value of None)


def _differences(where: str, old, new) -> list[str]:
    """Each leaf where two settings differ, as ``path old -> new``: dicts by key, lists of one length by
    index (``questions[1].question``), so that a long question file names the entry that changed; long
    values are shown from just before where they part."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new))
                for d in _differences(f"{where}.{k}" if where else k, old.get(k, _ABSENT), new.get(k, _ABSENT))]
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{where}: {len(old)} -> {len(new)} entries"]
        return [d for i, (o, n) in enumerate(zip(old, new)) for d in _differences(f"{where}[{i}]", o, n)]
    a, b = ("(absent)" if v is _ABSENT else repr(v) for v in (old, new))
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, start - 20) if max(len(a), len(b)) > 80 else 0
    return [f"{where} {_short(a, start)} -> {_short(b, start)}"]


def _short(text: str, start: int = 0, limit: int = 80) -> str:
    """``text`` from ``start``, at most ``limit`` characters, with ``...`` where it is cut."""
    cut = text[start:]
    return ("..." if start else "") + (cut if len(cut) <= limit else cut[:limit - 3] + "...")


def make_plan(plan: Plan, paths: RunPaths, so: dict, run_id: str, settings: dict | None = None) -> dict:
    """Expand the sources into item rows in Ray Data tasks, write them under the run's staging
    folder, check the ids, and record the plan's statistics and the run's ``settings`` (written
    last: a plan is reused only when complete). Raises ValueError on an id clash, before any item
    is answered."""
    import ray

    from .planning import expand_sources

    fs, plan_path = filesystem(paths.plan, so)
    stats = RunStats(sources=set() if plan.count_sources else None)
    if plan.sources:
        sources = ray.data.from_items(plan.sources, override_num_blocks=max(1, min(len(plan.sources), 64)))
        udf = functools.partial(expand_sources, expand=plan.expand, schema=plan.schema, run_id=run_id)
        sources.map_batches(udf, batch_size=1, batch_format="pyarrow").write_parquet(plan_path, filesystem=arrow_fs(fs))
    if _has_parquet(fs, plan_path):
        cols = ["id", "status"] + (["source"] if plan.count_sources else [])
        stats = collect_stats(_read(paths.plan, so, cols), with_samples=False, with_sources=plan.count_sources)
        if not plan.ids_from_sources:
            try:
                check_plan_ids_unique(paths, so, rows=stats.items)
            except ValueError:  # a refused input leaves nothing behind: its next run plans afresh anyway
                reset_plan(paths, so)
                remove_empty_folder(paths.staging, so)
                raise
    result = {"items": stats.items, "id_digest": str(stats.id_digest), "planned_errors": stats.by_status.get("error", 0),
              "sources_planned": len(stats.sources) if stats.sources is not None else None, "settings": settings}
    write_plan_stats(paths, result, so)
    return result


def check_plan_ids_unique(paths: RunPaths, so: dict, rows: int, examples: int = 5) -> None:
    """A Ray Data group-by count over the plan's ``rows`` ids (one shuffle); ValueError naming some
    clashing ids."""
    from ray.data.expressions import col

    groups = _read(paths.plan, so, ["id"]).groupby("id", num_partitions=group_partitions(rows)).count()
    clashes = groups.filter(expr=col("count()") > 1).materialize()  # counted and named from one pass
    found = clashes.take(examples)
    if found:
        n = clashes.count()
        named = ", ".join(f"{r['id']!r} x{r['count()']}" for r in found)
        auto = any(re.fullmatch(r"(.*/)?row-\d{8}", str(r["id"])) for r in found)
        raise ValueError(f"duplicate ids in the input: {n} ids appear more than once ({named}{', ...' if n > len(found) else ''}); "
                         "every row needs its own id" + ("; a row without an id is given row-<n> (its position), "
                                                         "which a given id may repeat" if auto else ""))


def _count_duplicates(uri: str, so: dict, rows: int) -> int:
    """Rows beyond the first of each id among the ``rows`` rows (already counted) under ``uri``."""
    distinct = _read(uri, so, ["id"]).groupby("id", num_partitions=group_partitions(rows)).count().count()
    return rows - distinct


def _checkpoint_config(paths: RunPaths, so: dict):
    from ray.data.checkpoint import CheckpointConfig

    fs, ckpt = filesystem(paths.checkpoint, so)
    cfg = CheckpointConfig(id_column="id", checkpoint_path=ckpt, delete_checkpoint_on_success=False,
                           override_filesystem=arrow_fs(fs))
    cfg.checkpoint_actor_pool_max_size = 1  # the ids of one run fit one filter actor; leave CPUs to the model
    return cfg


def finish_interrupted_commits(paths: RunPaths, so: dict) -> int:
    """Finish the checkpoint commits a killed write left half way through its move (both the pending
    and the committed checkpoint exist: ``interrupted_commits``), with Ray Data's own commit, which
    then only drops the pending file; the part stays. Returns how many. Run before Ray Data's restart
    (the next checkpointed write), which would otherwise delete those parts as unwritten while their
    committed checkpoints filter their items out: items lost, not redone."""
    from ray.data.checkpoint.checkpoint_writer import CheckpointWriter, PendingCheckpoint

    twins = interrupted_commits(paths, so)
    if twins:
        writer = CheckpointWriter.create(_checkpoint_config(paths, so))
        for pending, committed in twins:
            writer.commit_checkpoint(PendingCheckpoint(pending_path=pending, committed_path=committed))
    return len(twins)


def run_job(job: str, opts: JobOptions, plan: Plan | list[dict], extra_summary=None, before_commit=None, loader=None,
            after_commit=None, predictor=None, job_settings: dict | None = None, committed_note: str = "",
            model_kwargs: dict | None = None) -> dict:
    """Plan (sources -> item rows, in tasks) -> load on CPU -> SPOT-E actors -> staged Parquet parts
    (resumable) -> statistics from per-block partials -> exactly-once check -> commit.

    ``plan``: a ``Plan``, or a list of item-row dicts for small inputs. ``extra_summary``: a dict or
    ``fn(RunStats, planned) -> dict`` (``planned``: plan.json's statistics: items, sources_planned, ...). ``before_commit(RunResults, paths, so)`` runs before the commit (its
    outputs are part of the run: it writes them under ``paths.staged_meta``, which the commit moves to
    ``paths.meta``), ``after_commit(RunResults, paths, so)`` after it, also when the run
    id was already committed (so it must be idempotent; the results then have no statistics, and Ray is not
    started for it). ``job_settings``: the job's own flags that
    change its rows (JSON values: questions, tile size, dpi, ...), part of the run's settings
    (``run_settings``). ``committed_note``: printed where the run id was committed already with these
    settings (what the committed run leaves to a later one). ``model_kwargs``: ``opts.predictor_kwargs(...)``
    where the caller needed it already (the model is then checked once: a hub fetch, an endpoint's
    listing). Returns the summary.
    Raises ValueError for an id clash or a run id started with other settings (before any work), ``RunInUse`` when another driver is writing
    the same run (its lease still beats; see ``RunLease``), and AccountingError when the staged rows
    are not every planned item exactly once (nothing is committed then).
    """
    if isinstance(plan, list):
        plan = Plan.of_rows(plan)
    so = parse_storage_options(opts.storage_options)
    policy = opts.policy_overrides()
    model_kwargs = dict(model_kwargs) if model_kwargs is not None else opts.predictor_kwargs(so)
    model_commit = model_kwargs.pop("model_commit", None)  # the actors get model_fingerprint, to check what they load
    if plan.input_version:  # an input edited since a run is another run (see planning.listing_version)
        job_settings = {**(job_settings or {}), "input_files": plan.input_version}
    settings = run_settings(opts, policy, job_settings, model_commit, model_kwargs.get("model_fingerprint"))
    run_id = check_run_id(opts.run_id or default_run_id(job, json.dumps(settings, sort_keys=True)))
    paths = RunPaths(opts.output, run_id)
    if is_committed(paths, so) and not opts.force:
        return _already_committed(job, opts, paths, so, after_commit, settings, committed_note)
    # a live driver of this run refuses this one here, before Ray starts; the lease is taken only after the
    # resource check, so a job refused for resources writes nothing under its output
    lease = RunLease(paths.lease, so, log=lambda m: print(f"[{job}] {m}")).wait_out(f"run {run_id}")
    if plan.sources or read_plan_stats(paths, so) is not None:
        init_ray(opts.num_actors)
        # before any work: a request the cluster cannot hold would wait forever (a resume's checkpoint filter too)
        check_resources(opts, resuming=any(checkpoint_files(paths, so)))
    lease.acquire(f"run {run_id}")
    try:
        committed = is_committed(paths, so)  # again: the driver waited out may have committed it
        committed_meanwhile = committed and not opts.force
        if not committed_meanwhile:
            if opts.force:  # a fresh staging area; the committed rows stay until the new commit
                recover_interrupted_commit(paths, so)  # a commit killed half way: its rows out of results/ first
                reset_staging(paths, so)
            summary, stats = _stage_and_commit(job, opts, plan, paths, so, policy, settings, model_kwargs, lease,
                                               extra_summary, before_commit, loader, predictor)
    finally:
        lease.release()
    if committed_meanwhile:
        return _already_committed(job, opts, paths, so, after_commit, settings, committed_note)
    if after_commit is not None:
        after_commit(RunResults(paths.results, so, stats), paths, so)
    items_resumed = summary["items_resumed"]
    if summary["items_in"] == 0:
        print(f"[{job}] run {run_id}: nothing to do ({_nothing_reason(plan)}); committed an empty run -> {paths.results}")
    else:
        skipped = f"{summary['items_skipped']} skipped, " if summary.get("items_skipped") else ""
        print(f"[{job}] run {run_id}: {summary['items_in']} in ({items_resumed} resumed), {summary['items_ok']} ok, "
              f"{summary['items_error']} errors, {skipped}{summary['items_per_second']} items/s, "
              f"early exit {_share(summary['early_exit_rate'])} -> {paths.results}")
    files = (summary.get("skipped_sources") or {}).get("count") or 0
    if files:  # a manifest part or scene the job did not read is said here too, not only in the summary
        print(f"[{job}] run {run_id}: {files} file(s) under the input not read (skipped_sources in "
              f"{join(paths.meta, 'summary.json')})")
    return summary


def unfinished_runs(paths: RunPaths, so: dict) -> list[str]:
    """Other run ids with a staging area under the same ``--output`` (started, not committed), sorted."""
    fs, root = filesystem(join(paths.output, "_staging"), so)
    try:
        names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if n and n != paths.run_id and not n.startswith("."))


def _clear_stale_staging(job: str, paths: RunPaths, so: dict) -> None:
    """Beside a committed run, remove a staging area no live driver writes: a commit stopped between its
    marker and its last step (a kill, a file it could not remove) leaves the plan and checkpoint, and an
    interrupted ``--force`` re-run its parts, which a new ``--force`` would clear anyway. One that a live
    driver writes (a ``--force`` re-run under way) is left, and said."""
    try:
        lease = RunLease(paths.lease, so, log=lambda m: print(f"[{job}] {m}")).wait_out(f"run {paths.run_id}")
        lease.acquire(f"run {paths.run_id}")
    except RunInUse:
        print(f"[{job}] run {paths.run_id}: a re-run (--force) is under way in another driver; the committed "
              "results stand until it commits")
        return
    try:
        fs, replacing = filesystem(paths.replacing, so)
        if is_committed(paths, so) and not fs.exists(replacing):  # a forced commit half done is the next start's
            remove_staging(paths, so)
            print(f"[{job}] run {paths.run_id}: removed {paths.staging}, which no driver writes (what a stopped "
                  "commit or an interrupted --force left); the committed results stand")
    finally:
        lease.release()


def _already_committed(job: str, opts: JobOptions, paths: RunPaths, so: dict, after_commit, settings: dict,
                       note: str = "") -> dict:
    summary = json.loads(read_bytes(join(paths.meta, "summary.json"), so))
    check_same_settings(paths.run_id, summary.get("settings"), settings, committed=True)
    print(f"[{job}] run {paths.run_id} is already committed; nothing to do ({paths.results})")
    if note:
        print(f"[{job}] {note}")
    fs, staging = filesystem(paths.staging, so)
    if fs.exists(staging):  # a --force re-run under way, one interrupted, or a commit stopped in its last step
        _clear_stale_staging(job, paths, so)
    if after_commit is not None:  # it starts Ray itself where it must read the rows (most often it need not)
        after_commit(RunResults(paths.results, so, None), paths, so)
    return summary


def _stage_and_commit(job: str, opts: JobOptions, plan: Plan, paths: RunPaths, so: dict, policy: dict, settings: dict,
                      model_kwargs: dict, lease: RunLease, extra_summary, before_commit, loader, predictor):
    """The body of ``run_job`` while this driver holds the run's lease -> (summary, RunStats)."""
    import ray

    from spote.core import PolicyConfig

    run_id = paths.run_id
    t0 = time.time()
    recover_interrupted_commit(paths, so)
    if ray.is_initialized():
        ctx = ray.data.DataContext.get_current()
        ctx.retried_io_errors = list(dict.fromkeys([*ctx.retried_io_errors, *TRANSIENT_STORAGE_ERRORS]))
    t_plan = time.time()
    planned = read_plan_stats(paths, so)
    if planned is None:
        retrying(reset_plan, paths, so)
        planned = make_plan(plan, paths, so, run_id, settings)
    else:
        check_same_settings(run_id, planned.get("settings"), settings)
        if (was := planned.get("sources_planned")) is not None and was != len(plan.sources):
            # a resume answers the plan its first start made: the listing's changes since are a later run's
            print(f"[{job}] run {run_id}: resuming the plan of its first start ({was} source(s)); the input lists "
                  f"{len(plan.sources)} now: what changed since is read by the next run")
    plan_seconds = time.time() - t_plan
    items_in = int(planned["items"])
    finished = finish_interrupted_commits(paths, so)
    if finished:
        print(f"[{job}] run {run_id}: finished {finished} checkpoint commit(s) a killed driver left half done")
    stray = prune_uncommitted(paths, so)
    if stray:
        print(f"[{job}] run {run_id}: removed {stray} staged part(s) no checkpoint vouches for")
    items_resumed = committed_checkpoint_rows(paths, so)
    if items_resumed:
        print(f"[{job}] run {run_id}: resuming; {items_resumed} of {items_in} items already staged")
    elif others := unfinished_runs(paths, so):
        # a run id is its settings, input listing and date: a retry after midnight UTC or an edited input is
        # another run, and the one it was meant to resume would stay behind without a word
        print(f"[{job}] run {run_id} starts anew; {len(others)} other unfinished run(s) under "
              f"{join(opts.output, '_staging')}: {', '.join(others[:3])}{', ...' if len(others) > 3 else ''} "
              "(run the same command with --run-id <id> to resume one, or remove its folder)")
    fs, staged = filesystem(paths.staged, so)
    if items_in > items_resumed:
        ctx = ray.data.DataContext.get_current()
        previous = ctx.checkpoint_config
        ctx.checkpoint_config = _checkpoint_config(paths, so)
        try:
            schema = result_schema(plan.schema)
            with file_based_parquet_reads():  # the checkpoint filter reads the checkpoint in this pass
                ds = answer_dataset(_read(paths.plan, so), opts, policy, so, schema, loader, predictor,
                                    model_kwargs=model_kwargs)
                with reporting_progress(job, paths, so, items_in, items_resumed, opts.progress_seconds):
                    ds.write_parquet(staged, filesystem=arrow_fs(fs))
        finally:
            ctx.checkpoint_config = previous
    elif items_in == 0 and not _has_parquet(fs, staged):
        # a run of no items still commits one file, of no rows, with the result columns: pandas, DuckDB and
        # geopandas then read it as an empty table with its columns, not as a folder with no file
        write_parquet_file(result_schema(plan.schema).empty_table(), join(paths.staged, "empty-run.parquet"), so)
    stats = collect_stats(_read(paths.staged, so)) if _has_parquet(fs, staged) else RunStats()
    stable_cwd()  # a Ray job's working dir may have been extracted again while the datasets ran
    check_accounting(items_in, int(planned["id_digest"]), stats.items, stats.id_digest,
                     count_duplicates=lambda: _count_duplicates(paths.staged, so, stats.items))
    extra = extra_summary(stats, planned) if callable(extra_summary) else (extra_summary or {})
    summary = summarise(stats, run_id, items_in, time.time() - t0, opts.model_label(),
                        PolicyConfig(**policy).__dict__, extra)
    summary.update(settings=settings, items_resumed=items_resumed, plan_seconds=round(plan_seconds, 2),
                   skipped_sources=summarise_skipped(plan.skipped))
    if summary["seconds"] > 0:  # this driver's rate: rows a killed driver staged before it are not its work
        summary["items_per_second"] = round((stats.items - items_resumed) / summary["seconds"], 3)
    write_report(stats, summary, paths.staged_meta, so, loader=loader or (ImageLoader, {"storage_options": so}),
                 timeout_s=opts.item_timeout_seconds, results=RunResults(paths.staged, so, stats))
    if before_commit is not None:
        before_commit(RunResults(paths.staged, so, stats), paths, so)
    lease.check(f"run {run_id}")
    commit(paths, summary, so)
    return summary, stats


def _nothing_reason(plan: Plan) -> str:
    skipped = summarise_skipped(plan.skipped)
    if not plan.sources and skipped["count"]:
        reasons = "; ".join(f"{n} x {r}" for r, n in skipped["by_reason"].items())
        return f"no input it can read; skipped {skipped['count']}: {reasons}"
    if not plan.sources:
        return plan.empty_reason or "the input has no items"
    return "every source expanded to no items"
