"""A multi-node Ray cluster on one machine, for scaling and fault tests.

    python -m cluster.local start --workers 2 --gpus-per-worker 2     # head + 2 worker nodes
    python -m cluster.local status
    python -m cluster.local stop

Worker nodes can advertise fake ``GPU`` resources (plus a ``fake_accel`` marker and the label
``pool=gpu``) so that GPU scheduling is exercised without GPUs; ``torch.cuda.is_available()``
stays False there and the actors fall back to the CPU. The head runs the dashboard and the job
server on 127.0.0.1, so ``ray job submit --address http://127.0.0.1:<dashboard_port>`` works
against it. Token auth is disabled for this throwaway cluster (``RAY_AUTH_MODE=disabled``).

The cluster owns what it starts and nothing else, so it can run beside a user's Ray (a pipeline
run, another cluster) on the same machine:

- its own temp dir (``/tmp/spote-ray-*``): session files, logs and Ray's ``ray_current_cluster``
  address file live there, so ``ray.init()`` elsewhere never attaches to this cluster. ``start``
  creates it with a marker file holding a random token, which the record keeps; ``stop`` removes
  the folder only when it is a ``spote-ray-*`` folder of this user whose marker matches the record,
  and leaves anything else alone with a line saying so;
- its own ports: the GCS and dashboard ports are checked free (bound on 127.0.0.1, 0.0.0.0 and
  ``::``) before any node starts, or picked free when 0 / None; the client server and dashboard agent
  ports are picked free, and workers bind random ports instead of Ray's shared default range;
- each node is a ``ray start --block`` that we launch as the leader of a new session, and we
  record its pid (= session id) with its start time. Every process Ray starts for the node (GCS,
  raylet, dashboard, agents, workers, job drivers) stays in that session; the workers get process
  groups of their own, so the session, not the group, is what covers them all. Under ``--block``
  Ray's processes also die with their ``ray start`` parent (Ray sets ``PR_SET_PDEATHSIG``).
  ``stop`` signals only the processes of the recorded sessions and their descendants: SIGTERM, a
  grace period, then SIGKILL. It never runs ``ray stop``, which ends every Ray process on the
  machine by name.

Processes are read from ``/proc``, so this is Linux only, like Ray's multi-node mode on one
machine. The CLI records its cluster in ``$SPOTE_LOCAL_CLUSTER_STATE`` (default
``/tmp/spote-local-cluster.json``) so that ``status`` and ``stop`` find it from another process.
A file there that is not a cluster record of this user (not JSON, other fields, another owner) is
refused with one line and never overwritten or removed: it may belong to something else.

The cluster is not private to this machine. Ray 2.60 replaces ``--node-ip-address=127.0.0.1`` with
the machine's own address (``services.resolve_ip_for_localhost``), and has no option to bind its
gRPC servers to loopback: the GCS, raylets and workers listen on every interface (``*:<port>``), the
client server, dashboard agent and runtime env agent on the machine's address or 0.0.0.0. Only the
dashboard and job server are bound to 127.0.0.1. With token auth disabled, anyone who can reach the
machine's GCS port can run code on the cluster while it runs.
"""

from __future__ import annotations

import errno
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import typer

from pipelines.job import FIXED_SIZE_LABEL

app = typer.Typer(add_completion=False, no_args_is_help=True)
STATE = Path(os.environ.get("SPOTE_LOCAL_CLUSTER_STATE", Path(tempfile.gettempdir()) / "spote-local-cluster.json"))
TEMP_PREFIX = "spote-ray-"         # every temp dir this tool creates is named so ...
TEMP_MARKER = ".spote-local-cluster"  # ... and holds this file, whose token the record keeps
# the fields of a record as ``save`` writes them; ``temp_token`` is optional (records written before it
# existed load, but their temp dir is never removed)
STATUS_TIMEOUT_S = 10  # seconds ``status`` waits for the cluster's answer
RECORD_FIELDS = ("gcs_port", "dashboard_port", "head_cpus", "workers", "cpus_per_worker", "gpus_per_worker",
                 "temp_dir", "owns_temp_dir", "nodes")
NODE_FIELDS = {"role": str, "pid": int, "start_time": int, "log": str}
RECORD_HELP = "remove it if nothing else uses it, or set SPOTE_LOCAL_CLUSTER_STATE to another path"


class ClusterError(Exception):
    """A bad setting, record or port, found before anything starts; the CLI prints it as one line
    ``error: ...`` with exit code 2."""


def free_port() -> int:
    """A TCP port that nothing on 127.0.0.1 holds right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_taken(port: int) -> Optional[str]:
    """Why ``port`` cannot be listened on (e.g. another Ray's GCS holds it), or None when it is free.

    Bound on 127.0.0.1, 0.0.0.0 and, where the machine has IPv6, ``::``: a server on any of them
    (Ray's gRPC servers listen on ``*``) holds the port for ours. ``SO_REUSEADDR`` as servers set
    it, so a port left in TIME_WAIT by a cluster that just stopped counts as free.
    """
    hosts = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    for family, host in hosts:
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 here
            continue
        with s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as err:
                if family == socket.AF_INET6 and err.errno == errno.EADDRNOTAVAIL:
                    continue
                return "in use" if err.errno == errno.EADDRINUSE else f"cannot be bound on {host}: {err.strerror}"
    return None


def check_record_path(path: Path) -> None:
    """Raise ClusterError unless the record can be written at ``path`` (as ``save`` writes it)."""
    if path.is_dir():
        raise ClusterError(f"cannot write the cluster record {path}: it is a folder")
    parent = path.parent
    if not parent.exists():
        raise ClusterError(f"cannot write the cluster record {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise ClusterError(f"cannot write the cluster record {path}: {parent} is not a folder")
    probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        raise ClusterError(f"cannot write the cluster record {path}: {err.strerror}") from None
    probe.unlink(missing_ok=True)


def _check_record(data, path: Path) -> None:
    """Raise ClusterError unless ``data`` (parsed JSON) is a record as ``save`` writes it."""
    def bad(what: str):
        raise ClusterError(f"{path} is not a local cluster record ({what}); {RECORD_HELP}")

    if not isinstance(data, dict):
        kinds = {list: "an array", str: "a string", bool: "true/false", int: "a number", float: "a number"}
        bad(f"JSON {kinds.get(type(data), 'null')}, not an object")
    unknown = sorted(set(data) - set(RECORD_FIELDS) - {"temp_token"})
    missing = [k for k in RECORD_FIELDS if k not in data]
    if unknown:
        bad(f"unknown fields {unknown}")
    if missing:
        bad(f"missing fields {missing}")

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for k in ("gcs_port", "dashboard_port"):
        if not (data[k] is None or is_int(data[k])):
            bad(f"{k} is {data[k]!r}, not a port")
    for k in ("head_cpus", "workers", "cpus_per_worker", "gpus_per_worker"):
        if not is_int(data[k]):
            bad(f"{k} is {data[k]!r}, not a whole number")
    for k in ("temp_dir", "temp_token"):
        if not (data.get(k) is None or isinstance(data[k], str)):
            bad(f"{k} is {data[k]!r}, not a string")
    if not isinstance(data["owns_temp_dir"], bool):
        bad(f"owns_temp_dir is {data['owns_temp_dir']!r}, not true/false")
    if not isinstance(data["nodes"], list):
        bad("nodes is not a list")
    for i, node in enumerate(data["nodes"]):
        if not isinstance(node, dict) or set(node) != set(NODE_FIELDS):
            bad(f"nodes[{i}] is not an object of {sorted(NODE_FIELDS)}")
        for k, kind in NODE_FIELDS.items():
            if not isinstance(node[k], kind) or (kind is int and isinstance(node[k], bool)):
                bad(f"nodes[{i}].{k} is {node[k]!r}")
        if node["pid"] < 2:  # pid 0 is no process and 1 is init: signalling either's group reaches every process
            bad(f"nodes[{i}].pid is {node['pid']}")


@dataclass(frozen=True)
class Proc:
    """One row of the process table; ``start_time`` (clock ticks after boot) tells a reused pid apart."""

    pid: int
    ppid: int
    sid: int
    start_time: int
    exited: bool  # a zombie: dead, waiting for its parent to reap it


def read_proc(pid: int) -> Optional[Proc]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone (or never there)
        return None
    # the command name (field 2) may hold spaces and parentheses: fields 3.. follow the last ')'
    f = stat[stat.rindex(")") + 2:].split()
    return Proc(pid, ppid=int(f[1]), sid=int(f[3]), start_time=int(f[19]), exited=f[0] in "ZX")


def process_table() -> dict[int, Proc]:
    procs = (read_proc(int(name)) for name in os.listdir("/proc") if name.isdigit())
    return {p.pid: p for p in procs if p is not None}


def descendants(roots: set[int], table: dict[int, Proc]) -> set[int]:
    """The pids of ``table`` below ``roots`` (their children, the children's children, ...), roots
    excluded."""
    children: dict[int, list[int]] = {}
    for p in table.values():
        children.setdefault(p.ppid, []).append(p.pid)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found and child not in roots:
                found.add(child)
                stack.append(child)
    return found


def end_own_processes(grace_s: float) -> None:
    """End every process this one started, and theirs (found now, by parent pid in ``/proc``; nothing
    where there is no ``/proc``): SIGTERM, up to ``grace_s`` seconds for them to exit, then SIGKILL.
    Each is signalled only while its pid still names the process found (its start time)."""
    if not os.path.isdir("/proc"):
        return
    table = process_table()
    ours = {pid: table[pid].start_time for pid in descendants({os.getpid()}, table) if not table[pid].exited}
    if grace_s > 0:
        _signal(ours, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(_running(pid, t) for pid, t in ours.items()) and time.monotonic() < deadline:
            time.sleep(0.1)  # an exited child not yet reaped (a zombie) counts as ended
    _signal(ours, signal.SIGKILL)


@dataclass
class LocalCluster:
    """Ports left as None are picked free at ``start``; so is the temp dir, which ``stop`` removes."""

    gcs_port: Optional[int] = None
    dashboard_port: Optional[int] = None
    head_cpus: int = 2
    workers: int = 2
    cpus_per_worker: int = 2
    gpus_per_worker: int = 0
    temp_dir: Optional[str] = None
    owns_temp_dir: bool = False
    # the content of the marker file in a temp dir that ``start`` created; ``stop`` removes the
    # temp dir only when its marker still holds it
    temp_token: Optional[str] = None
    # one record per started node: {"role", "pid", "start_time", "log"}; the pid is also the
    # node's session id. Kept after ``stop``: ``processes()`` then shows what, if anything, is left.
    nodes: list = field(default_factory=list)

    def __post_init__(self):
        self._popen: list[subprocess.Popen] = []  # our children in this process, to reap them

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict:
        """The environment for Ray clients (``ray job ...``, ``ray.init``) of this cluster."""
        return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}

    def _node_env(self) -> dict:
        env = self.env()
        env.pop("RAY_ADDRESS", None)  # a node must never join whatever cluster the caller points at
        # SIGTERM ends a node at once: its default is to drain for 30 s first, for rolling upgrades
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
        # a job's entrypoint (`ray job submit -- python -m pipelines.vqa`) runs with the head node's PATH: its
        # `python` must be the environment this cluster was started from, activated or not (`.venv/bin/python
        # -m cluster.local start`), not whatever python comes first on the caller's PATH
        here = str(Path(sys.executable).parent)
        rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != here]
        env["PATH"] = os.pathsep.join([here, *rest])
        return env

    def save(self, path: Path) -> None:
        """Rewrite the record whole: ``stop`` in another process reads the old one or the new one."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(asdict(self)))
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> "LocalCluster":
        """The record at ``path``; ClusterError, naming the file and what is wrong, for anything that
        is not a record ``save`` wrote for this user (another user's file, not JSON, other fields)."""
        try:
            st = os.lstat(path)
            if os.path.isdir(path) and not os.path.islink(path):
                raise ClusterError(f"{path} is a folder, not a local cluster record; set SPOTE_LOCAL_CLUSTER_STATE "
                                   f"to a file path")
            if not os.path.isfile(path) or os.path.islink(path):
                raise ClusterError(f"{path} is not a local cluster record (not a regular file); {RECORD_HELP}")
            if st.st_uid != os.getuid():
                raise ClusterError(f"{path} belongs to user id {st.st_uid}, not to you; set "
                                   f"SPOTE_LOCAL_CLUSTER_STATE to a path of your own")
            text = path.read_text()
        except OSError as err:
            raise ClusterError(f"cannot read the cluster record {path}: {err.strerror}") from None
        except UnicodeDecodeError:
            raise ClusterError(f"{path} is not a local cluster record (not text); {RECORD_HELP}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            what = "empty" if not text.strip() else f"not JSON: {err.msg} at line {err.lineno}"
            raise ClusterError(f"{path} is not a local cluster record ({what}); {RECORD_HELP}") from None
        _check_record(data, path)
        return cls(**data)

    def validate(self) -> None:
        """Raise ClusterError naming the first setting out of range (by its ``start`` flag)."""
        def whole(name: str, flag: str, low: int) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ClusterError(f"{flag} must be a whole number >= {low}, got {v!r}")

        whole("workers", "--workers", 0)
        whole("head_cpus", "--head-cpus", 0)
        whole("cpus_per_worker", "--cpus-per-worker", 0)
        whole("gpus_per_worker", "--gpus-per-worker", 0)
        for name, flag in (("gcs_port", "--gcs-port"), ("dashboard_port", "--dashboard-port")):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 65535):
                raise ClusterError(f"{flag} must be a port from 1 to 65535 (0 picks a free one), got {v!r}")
        if self.gcs_port and self.gcs_port == self.dashboard_port:
            raise ClusterError(f"--gcs-port and --dashboard-port are both {self.gcs_port}")

    def check_ports(self) -> None:
        """Raise ClusterError when a port asked for is held: a node started on it would fail, or join
        the cluster that holds it."""
        for port, flag in ((self.gcs_port, "--gcs-port"), (self.dashboard_port, "--dashboard-port")):
            if port and (why := port_taken(port)):
                raise ClusterError(f"port {port} ({flag}) is {why}; pass a free port with {flag}, "
                                   f"or {flag} 0 to pick one")

    def make_temp_dir(self) -> str:
        """Create this cluster's temp dir, ``spote-ray-*`` with a marker file holding a fresh token."""
        # short on purpose: Ray's socket paths under it must stay within 107 bytes
        temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX)
        token = secrets.token_hex(16)
        fd = os.open(Path(temp_dir) / TEMP_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        self.temp_dir, self.owns_temp_dir, self.temp_token = temp_dir, True, token
        return temp_dir

    def temp_dir_not_ours(self) -> Optional[str]:
        """Why the recorded temp dir is not one ``make_temp_dir`` created for this record (None when
        it is): not named ``spote-ray-*``, not a folder of this user, no marker, or another token."""
        path = Path(self.temp_dir)
        if not path.is_absolute() or not path.name.startswith(TEMP_PREFIX):
            return f"not a {TEMP_PREFIX}* folder"
        try:
            st = os.lstat(path)
        except OSError as err:
            return err.strerror
        if os.path.islink(path) or not os.path.isdir(path):
            return "not a folder"
        if st.st_uid != os.getuid():
            return f"it belongs to user id {st.st_uid}"
        if not self.temp_token:
            return "the record holds no token for it"
        try:
            fd = os.open(path / TEMP_MARKER, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                marker = f.read(256)
        except OSError:
            return f"it holds no {TEMP_MARKER} marker"
        if not hmac.compare_digest(marker, self.temp_token.encode()):
            return f"its {TEMP_MARKER} marker does not match the record"
        return None

    def remove_temp_dir(self) -> Optional[str]:
        """Remove the temp dir if this cluster created it; else a line saying why it was left alone
        (None when there was nothing to say: a temp dir the caller gave, or one already gone)."""
        if not (self.owns_temp_dir and self.temp_dir) or not os.path.lexists(self.temp_dir):
            return None
        if why := self.temp_dir_not_ours():
            return f"left {self.temp_dir} in place: {why} (stop removes only a temp dir that start created)"
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return None

    def start(self, record: Optional[Path] = None) -> "LocalCluster":
        """Start the head, then the workers, one at a time.

        The record (default ``<temp_dir>/spote-cluster.json``) is rewritten as each node is
        launched, so even a start that is killed half-way leaves what it started findable:
        ``SPOTE_LOCAL_CLUSTER_STATE=<record> python -m cluster.local stop`` ends it.
        """
        if self.processes():
            raise RuntimeError("this LocalCluster is already running")
        # every check before anything is created or started: a bad setting, record path or port
        # must not leave half a cluster behind
        self.validate()
        self.check_ports()
        if record is not None:
            check_record_path(record)
        self.nodes = []
        if self.temp_dir is None:
            self.make_temp_dir()
        Path(self.temp_dir).mkdir(parents=True, exist_ok=True)
        record = record or Path(self.temp_dir) / "spote-cluster.json"
        self.gcs_port = self.gcs_port or free_port()
        self.dashboard_port = self.dashboard_port or free_port()
        try:
            self._launch(record, "head", ["--head", f"--port={self.gcs_port}", f"--num-cpus={self.head_cpus}",
                                          "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                                          f"--dashboard-port={self.dashboard_port}",
                                          f"--ray-client-server-port={free_port()}", f"--labels={FIXED_SIZE_LABEL}=true"])
            for i in range(self.workers):
                args = [f"--address={self.address}", f"--num-cpus={self.cpus_per_worker}",
                        f"--num-gpus={self.gpus_per_worker}"]
                if self.gpus_per_worker:
                    args += [f"--resources={json.dumps({'fake_accel': self.gpus_per_worker})}", "--labels=pool=gpu"]
                self._launch(record, f"worker-{i}", args)
            self.wait_for_nodes(1 + self.workers)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, record: Path, role: str, args: list[str], timeout: float = 180) -> None:
        """Run ``ray start --block`` for one node as the leader of a new session, record it, and
        wait until the node is up.

        One node at a time, as a plain ``ray start`` would: nodes registering together can
        overload the GCS of a small machine past Ray's startup timeout.
        """
        ray_bin = str(Path(sys.executable).with_name("ray"))
        # Ray 2.60 turns a loopback --node-ip-address into the machine's own address and binds its gRPC
        # servers on every interface regardless (see the module's docstring)
        cmd = [ray_bin, "start", "--block", *args, "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
               f"--dashboard-agent-listen-port={free_port()}", "--min-worker-port=0", "--max-worker-port=0",
               "--disable-usage-stats"]
        log = Path(self.temp_dir) / f"spote-{role}.log"
        with open(log, "wb") as out:
            p = subprocess.Popen(cmd, env=self._node_env(), stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self._popen.append(p)
        proc = read_proc(p.pid)
        self.nodes.append({"role": role, "pid": p.pid, "start_time": proc.start_time if proc else -1,
                           "log": str(log)})
        self.save(record)
        deadline = time.time() + timeout
        while b"Ray runtime started" not in log.read_bytes():  # what `ray start` prints once the node is up
            self._check_nodes_running()
            if time.time() > deadline:
                raise TimeoutError(f"ray node {role} did not come up in {timeout:.0f} s; see {log}")
            time.sleep(0.5)

    def _check_nodes_running(self) -> None:
        for node in self.nodes:
            proc = read_proc(node["pid"])
            if proc is None or proc.exited or proc.start_time != node["start_time"]:
                tail = Path(node["log"]).read_text(errors="replace")[-3000:] if Path(node["log"]).exists() else ""
                raise RuntimeError(f"ray node {node['role']} exited during start; its log ends:\n{tail}")

    def wait_for_nodes(self, n: int, timeout: float = 90) -> None:
        import ray

        deadline = time.time() + timeout
        os.environ["RAY_AUTH_MODE"] = "disabled"
        ray.init(address=self.address, log_to_driver=False)
        try:
            while time.time() < deadline:
                self._check_nodes_running()
                if len([x for x in ray.nodes() if x["Alive"]]) >= n:
                    return
                time.sleep(1)
            raise TimeoutError(f"only {len(ray.nodes())} of {n} nodes came up")
        finally:
            ray.shutdown()

    def wait_for_job_server(self, timeout: float = 60) -> None:
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"job server at {self.dashboard} did not come up")

    def processes(self) -> dict[int, int]:
        """The live processes this cluster started, as ``{pid: start_time}``.

        Every process in a recorded session, and every descendant of one (in case a process
        started its own session). A recorded pid that now names a process started later is
        someone else's: the kernel reuses a pid only once its session is empty, so that session
        holds none of ours.
        """
        table = process_table()
        sessions = set()
        for node in self.nodes:
            if node["pid"] < 2 or node["pid"] == os.getsid(0):  # init's process group, or this process's: never a node's
                continue
            leader = table.get(node["pid"])
            if leader is None or leader.start_time == node["start_time"]:
                sessions.add(node["pid"])
        ours = {pid for pid, p in table.items() if p.sid in sessions}
        ours |= descendants(ours, table)
        return {pid: table[pid].start_time for pid in ours if not table[pid].exited}

    def stop(self, grace: float = 15.0) -> Optional[str]:
        """End the processes this cluster started and nothing else: SIGTERM, ``grace`` seconds, SIGKILL.
        Then remove the temp dir if this cluster created it; returns a line saying why it was left
        in place otherwise (``remove_temp_dir``)."""
        termed: set[tuple[int, int]] = set()

        def still_ours() -> dict[int, int]:
            # what the sessions hold now, and everything already signalled that has not exited: once a
            # session's leader is gone its escaped descendants are no longer found through it
            return {**{pid: t for pid, t in termed if _running(pid, t)}, **self.processes()}

        deadline = time.time() + grace
        while (alive := still_ours()) and time.time() < deadline:
            # newly found ones too: a raylet may start a worker while it shuts down
            fresh = {pid: t for pid, t in alive.items() if (pid, t) not in termed}
            _signal(fresh, signal.SIGTERM)
            termed.update(fresh.items())
            self._reap()
            time.sleep(0.2)
        deadline = time.time() + 10
        while (alive := still_ours()) and time.time() < deadline:
            _signal(alive, signal.SIGKILL)
            self._reap()
            time.sleep(0.2)
        self._reap()
        if alive:
            raise RuntimeError(f"processes {sorted(alive)} of the local cluster survived SIGKILL")
        return self.remove_temp_dir()

    def _reap(self) -> None:
        for p in self._popen:
            p.poll()


def _running(pid: int, start_time: int) -> bool:
    """``pid`` is still the process that started at ``start_time``, and has not exited."""
    proc = read_proc(pid)
    return proc is not None and proc.start_time == start_time and not proc.exited


def _signal(procs: dict[int, int], sig: int) -> None:
    """Signal each ``{pid: start_time}`` that is still that same process."""
    for pid, start_time in procs.items():
        if _running(pid, start_time):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _load_state() -> Optional[LocalCluster]:
    """The record at STATE, None when there is none; a file that is not a record is an error."""
    if not os.path.lexists(STATE):
        return None
    try:
        return LocalCluster.load(STATE)
    except ClusterError as err:
        _fail(str(err))


@app.command()
def start(workers: int = typer.Option(2, help="worker nodes (0: the head only)"),
          cpus_per_worker: int = typer.Option(2, help="CPUs each worker node advertises (whole number >= 0)"),
          gpus_per_worker: int = typer.Option(0, help="fake GPUs each worker node advertises (whole number >= 0)"),
          head_cpus: int = typer.Option(2, help="CPUs the head advertises (whole number >= 0)"),
          gcs_port: int = typer.Option(6390, help="GCS port; refused when in use; 0 picks a free one"),
          dashboard_port: int = typer.Option(8275, help="dashboard / job server port; refused when in use; "
                                                        "0 picks a free one")):
    """Start a head and WORKERS worker nodes on this machine."""
    c = LocalCluster(gcs_port, dashboard_port, head_cpus, workers, cpus_per_worker, gpus_per_worker)
    try:
        c.validate()
    except ClusterError as err:
        _fail(str(err))
    old = _load_state()
    if old is not None and old.processes():
        _fail(f"a local cluster recorded in {STATE} is running; stop it first (python -m cluster.local stop)")
    try:
        check_record_path(STATE)
        c.check_ports()
    except ClusterError as err:
        _fail(str(err))
    if old is not None and (note := old.remove_temp_dir()):  # a stale record: nothing of it runs
        typer.echo(note, err=True)
    try:
        c.start(record=STATE)
        c.wait_for_job_server()
    except ClusterError as err:  # found before any node started; the record was not written
        _fail(str(err))
    except BaseException as err:
        try:
            note = c.stop()
        except RuntimeError as stop_err:  # a process survived SIGKILL
            note = str(stop_err)
        STATE.unlink(missing_ok=True)
        if not isinstance(err, Exception):
            raise  # Ctrl-C: "aborted"
        first, _, rest = str(err).partition("\n")
        if rest:
            typer.echo(rest, err=True)  # the failed node's log
        if note:
            typer.echo(note, err=True)
        _fail(f"the local cluster did not come up: {first}")
    typer.echo(f"cluster up: RAY_ADDRESS={c.address}  job server: {c.dashboard}")


def _list_nodes(dashboard: str, timeout_s: float) -> list:
    """The cluster's nodes from the dashboard's state API (``ray.util.state.list_nodes``; ``ray.init``
    would wait on a GCS that does not answer), within ``timeout_s`` seconds in all: the request runs in a
    daemon thread, since a server that sends a byte now and then meets every per-read timeout.

    Raises:
        OSError: nothing listens at the dashboard (says so), or the request failed (its first line).
        TimeoutError: no answer within ``timeout_s``.
    """
    import threading
    from urllib.parse import urlsplit

    from ray.util.state import list_nodes
    from requests.exceptions import Timeout

    url = urlsplit(dashboard)
    try:
        socket.create_connection((url.hostname, url.port), timeout=timeout_s).close()
    except TimeoutError:  # a full accept queue, or a host that drops the packets: something may listen
        raise TimeoutError(f"does not answer within {timeout_s:g} s") from None
    except OSError as err:
        raise OSError(f"does not answer: nothing listens there ({err.strerror or err})") from None
    result: dict = {}

    def ask():
        try:
            result["nodes"] = list_nodes(address=dashboard, timeout=int(max(1, timeout_s)),
                                         raise_on_missing_output=False)
        except Exception as err:  # requests' and the state API's errors, reported by the caller
            result["error"] = err

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TimeoutError(f"does not answer within {timeout_s:g} s")
    if "error" in result:
        err = cause = result["error"]
        while cause is not None:  # the state API wraps requests' read timeout in its own error
            if isinstance(cause, (TimeoutError, Timeout)):
                raise TimeoutError(f"does not answer within {timeout_s:g} s")
            cause = cause.__cause__ or cause.__context__
        lines = str(err).strip().splitlines()
        # the state API's message leads with the URL and then guesses (dependencies, --include-dashboard)
        first = lines[0].split(". ")[0] if lines else type(err).__name__
        raise OSError(f"did not answer: {first}")
    return result["nodes"]


@app.command()
def status():
    """Show the nodes and resources of the running local cluster."""
    c = _load_state()
    if c is None:
        typer.echo("no local cluster")
        raise typer.Exit(1)
    if not c.processes():
        typer.echo(f"the local cluster recorded in {STATE} is not running")
        raise typer.Exit(1)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        nodes = _list_nodes(c.dashboard, STATUS_TIMEOUT_S)
    except (OSError, ValueError, TimeoutError) as err:
        typer.echo(f"error: the local cluster recorded in {STATE} runs, but its dashboard {c.dashboard} "
                   f"(GCS {c.address}) {err}", err=True)
        raise typer.Exit(2) from None
    for node in nodes:
        typer.echo(f"{node.node_id[:8]} {node.state.lower()} {'head' if node.is_head_node else 'worker'} "
                   f"{node.resources_total}")


@app.command()
def stop():
    """Stop the processes of the local cluster that ``start`` recorded, and no other."""
    c = _load_state()
    if c is None:
        typer.echo("no local cluster")
        return
    try:
        note = c.stop()
    except RuntimeError as err:  # a process survived SIGKILL: keep the record, to stop it again
        _fail(str(err))
    STATE.unlink(missing_ok=True)
    if note:
        typer.echo(note, err=True)
    typer.echo("stopped")


if __name__ == "__main__":
    from spote.cli import run_cli

    run_cli(app)
