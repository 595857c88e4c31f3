"""The local cluster stops only what it started, so the tests can run beside a user's Ray.

A Ray head started here on its own (as a user's pipeline or cluster would be) must come
through ``python -m cluster.local start`` and ``stop`` with every daemon alive and still run a
task; the ownership rule behind ``stop`` is checked on plain ``sleep`` processes first.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster.local import LocalCluster, free_port, process_table, read_proc

REPO = Path(__file__).parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


def _wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


def _alive(pid: int, start_time: int) -> bool:
    p = read_proc(pid)
    return p is not None and p.start_time == start_time and not p.exited


def _end_session(leader: subprocess.Popen) -> None:
    """SIGTERM a leader we started, then SIGKILL whatever is left in its session."""
    if leader.poll() is None:
        leader.terminate()
        try:
            leader.wait(30)
        except subprocess.TimeoutExpired:
            pass
    for p in process_table().values():
        if p.sid == leader.pid and not p.exited:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    leader.wait(10)


def test_stop_signals_recorded_sessions_and_their_escaped_children_only():
    # a node whose session holds a child that started a session of its own
    node = subprocess.Popen(["sh", "-c", "setsid sleep 300 & sleep 300"], start_new_session=True)
    # a process whose pid a stale record names, though it started after the record was made
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        escaped = _wait_for(lambda: [p for p in process_table().values()
                                     if p.ppid == node.pid and p.sid not in (node.pid, os.getsid(0))],
                            what="the setsid child")[0]
        record = [{"role": "head", "pid": node.pid, "start_time": read_proc(node.pid).start_time, "log": ""},
                  {"role": "worker-0", "pid": stranger.pid, "start_time": read_proc(stranger.pid).start_time - 1,
                   "log": ""}]
        c = LocalCluster(nodes=record)
        ours = c.processes()
        assert node.pid in ours and escaped.pid in ours and stranger.pid not in ours
        c.stop(grace=5)
        # terminated by SIGTERM: killed by it (-15), or sh exiting 128 + 15 when the signal reached its child first
        assert node.wait(5) in (-signal.SIGTERM, 128 + signal.SIGTERM)
        assert not _alive(escaped.pid, escaped.start_time)
        assert stranger.poll() is None, "stop signalled a process it did not start"
    finally:
        for p in (node, stranger):
            _end_session(p)


@pytest.fixture
def other_ray():
    """An unrelated Ray head with its own session, temp dir and ports; stopped by its own pid."""
    # short: Ray's socket paths must fit 107 bytes. Named .../ray, so that RAY_TMPDIR=<its parent> makes it the
    # default temp dir, whose ray_current_cluster file `ray start` writes and ray.init() reads
    temp = str(Path(tempfile.mkdtemp(prefix="other-ray-")) / "ray")
    Path(temp).mkdir()
    port = free_port()
    cmd = [RAY, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
           "--include-dashboard=false", f"--temp-dir={temp}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", "--min-worker-port=0", "--max-worker-port=0",
           "--disable-usage-stats"]
    with open(Path(temp) / "head.log", "wb") as log:
        head = subprocess.Popen(cmd, env=RAY_ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert _runs_a_task(port), (Path(temp) / "head.log").read_text()[-3000:]
        yield head, port
    finally:
        _end_session(head)
        shutil.rmtree(Path(temp).parent, ignore_errors=True)


def _runs_a_task(port: int) -> bool:
    code = ("import ray; ray.init(address='127.0.0.1:%d', log_to_driver=False); "
            "print(ray.get(ray.remote(lambda: 6 * 7).remote()))" % port)
    proc = subprocess.run([sys.executable, "-c", code], env=RAY_ENV, capture_output=True, text=True, timeout=120)
    return proc.returncode == 0 and proc.stdout.strip().endswith("42")


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "cluster.local", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_stop_kills_an_escaped_child_that_ignores_sigterm_after_its_leader_is_gone():
    # the leader dies on SIGTERM at once; its escaped child (own session) ignores SIGTERM, so only
    # SIGKILL ends it, and by then the leader no longer leads stop to it
    node = subprocess.Popen(["sh", "-c", "setsid sh -c 'trap \"\" TERM; sleep 300' & sleep 300"],
                            start_new_session=True)
    try:
        escaped = _wait_for(lambda: [p for p in process_table().values()
                                     if p.ppid == node.pid and p.sid not in (node.pid, os.getsid(0))],
                            what="the setsid child")[0]
        c = LocalCluster(nodes=[{"role": "head", "pid": node.pid, "start_time": read_proc(node.pid).start_time,
                                 "log": ""}])
        assert escaped.pid in c.processes()
        c.stop(grace=1)
        assert not _alive(escaped.pid, escaped.start_time), "stop returned with a signalled process alive"
    finally:
        _end_session(node)


def test_unrelated_ray_head_survives_local_cluster_start_and_stop(other_ray, tmp_path):
    head, port = other_ray
    leader = read_proc(head.pid)
    # the head's daemons (GCS, raylet, log monitor, ...): children of its `ray start`, unlike its
    # workers, which Ray may end on its own when idle
    daemons = {p.pid: p.start_time for p in process_table().values() if p.ppid == head.pid and not p.exited}
    assert len(daemons) >= 2, daemons

    state = tmp_path / "cluster.json"
    env = {**os.environ, "SPOTE_LOCAL_CLUSTER_STATE": str(state)}
    ours = None
    try:
        proc = _cli("start", "--workers", "1", "--head-cpus", "1", "--cpus-per-worker", "1",
                    "--gcs-port", str(free_port()), "--dashboard-port", str(free_port()), env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        ours = LocalCluster.load(state)
        started = ours.processes()
        assert len(ours.nodes) == 2 and len(started) > len(ours.nodes)
        assert not set(started) & ({head.pid} | set(daemons))
        assert Path(ours.temp_dir).is_dir() and ours.temp_dir != tempfile.gettempdir()

        proc = _cli("status", env=env)  # our two nodes, never the other head's
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        listed = proc.stdout.strip().splitlines()
        assert len(listed) == 2 and all(" alive " in line for line in listed), proc.stdout
        assert sorted(line.split()[2] for line in listed) == ["head", "worker"], proc.stdout

        proc = _cli("stop", env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert not ours.processes(), "the local cluster left processes behind"
        assert not state.exists() and not Path(ours.temp_dir).exists()
    finally:
        if ours is not None:
            ours.stop()

    assert _alive(head.pid, leader.start_time), "the unrelated Ray head was stopped"
    dead = [pid for pid, t in daemons.items() if not _alive(pid, t)]
    assert not dead, f"daemons {dead} of the unrelated Ray head were stopped"
    assert _runs_a_task(port), "the unrelated Ray head no longer runs tasks"


def test_a_job_beside_a_users_ray_start_cluster_runs_on_its_own_ray_and_leaves_it_alone(other_ray, tmp_path):
    """A job without RAY_ADDRESS on a machine where the user ran `ray start` (recorded in the default temp
    dir's ray_current_cluster): ray.init() joined that cluster and refused num_cpus, so every job failed
    with "num_cpus and num_gpus must not be provided". It starts a Ray of its own, and the user's head
    keeps running."""
    head, port = other_ray
    leader = read_proc(head.pid)
    temp_root = Path(head.args[[a.startswith("--temp-dir=") for a in head.args].index(True)].split("=", 1)[1]).parent
    assert (temp_root / "ray" / "ray_current_cluster").read_text().strip().endswith(f":{port}")
    env = {k: v for k, v in RAY_ENV.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(temp_root),
                                                                      "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pipelines.vqa", "--input",
                           str(REPO / "pipelines" / "samples" / "vqa" / "manifest.jsonl"), "--output", str(out),
                           "--model", str(REPO / "spote" / "weights" / "spote-tiny"), "--run-id", "beside",
                           "--policy", '{"budget": 4, "group_size": 2, "steps": 1}'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    n_in = len((REPO / "pipelines" / "samples" / "vqa" / "manifest.jsonl").read_text().splitlines())
    assert len(list((out / "results" / "run_id=beside").glob("*.parquet"))) >= 1
    import pyarrow.parquet as pq
    assert pq.read_table(out / "results" / "run_id=beside").num_rows == n_in
    assert _alive(head.pid, leader.start_time), "the user's Ray head was stopped"
    assert _runs_a_task(port), "the user's Ray head no longer runs tasks"


def test_the_cluster_record_is_read_whole_while_it_is_rewritten(tmp_path):
    """``start`` rewrites the record as each node comes up; a ``stop`` reading it then gets a whole one."""
    import json
    import threading

    record = tmp_path / "cluster.json"
    stop = threading.Event()

    def rewrite():
        n = 0
        while not stop.is_set():
            n += 1
            LocalCluster(nodes=[{"role": "worker", "pid": 1000 + i, "start_time": i, "log": "x" * 200}
                                for i in range(n % 50 + 1)]).save(record)

    LocalCluster().save(record)
    writer = threading.Thread(target=rewrite)
    writer.start()
    sizes = []
    try:
        for _ in range(2000):
            sizes.append(len(LocalCluster.load(record).nodes))   # json.loads raises on a part-written record
    finally:
        stop.set()
        writer.join()
    assert len(set(sizes)) > 1                                     # the reads did overlap the rewrites
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.json"]
    assert json.loads(record.read_text())["nodes"]
