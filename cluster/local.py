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
  address file live there, so ``ray.init()`` elsewhere never attaches to this cluster;
- its own ports: the GCS, dashboard, client server and dashboard agent ports are picked free,
  and workers bind random ports instead of Ray's shared default range;
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
"""

from __future__ import annotations

import json
import os
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

app = typer.Typer(add_completion=False, no_args_is_help=True)
STATE = Path(os.environ.get("SPOTE_LOCAL_CLUSTER_STATE", Path(tempfile.gettempdir()) / "spote-local-cluster.json"))


def free_port() -> int:
    """A TCP port that nothing on 127.0.0.1 holds right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        return cls(**json.loads(path.read_text()))

    def start(self, record: Optional[Path] = None) -> "LocalCluster":
        """Start the head, then the workers, one at a time.

        The record (default ``<temp_dir>/spote-cluster.json``) is rewritten as each node is
        launched, so even a start that is killed half-way leaves what it started findable:
        ``SPOTE_LOCAL_CLUSTER_STATE=<record> python -m cluster.local stop`` ends it.
        """
        if self.processes():
            raise RuntimeError("this LocalCluster is already running")
        self.nodes = []
        if self.temp_dir is None:
            # short on purpose: Ray's socket paths under it must stay within 107 bytes
            self.temp_dir, self.owns_temp_dir = tempfile.mkdtemp(prefix="spote-ray-"), True
        Path(self.temp_dir).mkdir(parents=True, exist_ok=True)
        record = record or Path(self.temp_dir) / "spote-cluster.json"
        self.gcs_port = self.gcs_port or free_port()
        self.dashboard_port = self.dashboard_port or free_port()
        try:
            self._launch(record, "head", ["--head", f"--port={self.gcs_port}", f"--num-cpus={self.head_cpus}",
                                          "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                                          f"--dashboard-port={self.dashboard_port}",
                                          f"--ray-client-server-port={free_port()}"])
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
            leader = table.get(node["pid"])
            if leader is None or leader.start_time == node["start_time"]:
                sessions.add(node["pid"])
        ours = {pid for pid, p in table.items() if p.sid in sessions}
        children: dict[int, list[int]] = {}
        for p in table.values():
            children.setdefault(p.ppid, []).append(p.pid)
        stack = list(ours)
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in ours:
                    ours.add(child)
                    stack.append(child)
        return {pid: table[pid].start_time for pid in ours if not table[pid].exited}

    def stop(self, grace: float = 15.0) -> None:
        """End the processes this cluster started and nothing else: SIGTERM, ``grace`` seconds, SIGKILL."""
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
        if self.owns_temp_dir and self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

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


@app.command()
def start(workers: int = 2, cpus_per_worker: int = 2, gpus_per_worker: int = 0, head_cpus: int = 2,
          gcs_port: int = 6390, dashboard_port: int = 8275):
    """Start a head and WORKERS worker nodes on this machine."""
    if STATE.exists() and LocalCluster.load(STATE).processes():
        typer.echo(f"a local cluster recorded in {STATE} is running; stop it first", err=True)
        raise typer.Exit(1)
    c = LocalCluster(gcs_port, dashboard_port, head_cpus, workers, cpus_per_worker, gpus_per_worker)
    try:
        c.start(record=STATE)
        c.wait_for_job_server()
    except BaseException:
        c.stop()
        STATE.unlink(missing_ok=True)
        raise
    typer.echo(f"cluster up: RAY_ADDRESS={c.address}  job server: {c.dashboard}")


@app.command()
def status():
    """Show the nodes and resources of the running local cluster."""
    if not STATE.exists():
        typer.echo("no local cluster")
        raise typer.Exit(1)
    c = LocalCluster.load(STATE)
    if not c.processes():
        typer.echo(f"the local cluster recorded in {STATE} is not running")
        raise typer.Exit(1)
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address=c.address, log_to_driver=False)
    for node in ray.nodes():
        typer.echo(f"{node['NodeID'][:8]} alive={node['Alive']} {node['Resources']}")
    ray.shutdown()


@app.command()
def stop():
    """Stop the processes of the local cluster that ``start`` recorded, and no other."""
    if not STATE.exists():
        typer.echo("no local cluster")
        return
    LocalCluster.load(STATE).stop()
    STATE.unlink()
    typer.echo("stopped")


if __name__ == "__main__":
    from spote.cli import run_cli

    run_cli(app)
