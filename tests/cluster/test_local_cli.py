"""``python -m cluster.local``'s checks before anything starts, and what ``stop`` removes.

No Ray node starts here: a bad argument, record or port is refused (one line ``error: ...``, exit
code 2) before the first node, and ``stop`` is run on records of processes that are gone. The
commands run in this process (``run_cli`` as ``__main__`` runs it), with ``STATE`` and the temp
folder pointed under ``tmp_path``; a traceback would escape as an exception and fail the test.
"""

import json
import os
import socket
import subprocess
import threading
import sys
import tempfile
from pathlib import Path

import pytest

import cluster.local as local
from spote.cli import run_cli

REPO = Path(__file__).parents[2]


@pytest.fixture
def env(tmp_path, monkeypatch):
    """STATE under tmp_path; every temp dir the tool makes under tmp_path/tmp, to check that none was."""
    state = tmp_path / "state.json"
    monkeypatch.setattr(local, "STATE", state)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    yield state, temp
    if state.is_file():  # a cluster a broken check let start: stop it
        try:
            local.LocalCluster.load(state).stop(grace=5)
        except Exception:
            pass


def _cli(monkeypatch, capsys, *args):
    """(exit code, stdout, stderr) of ``python -m cluster.local ARGS``, run in this process."""
    monkeypatch.setattr(sys, "argv", ["cluster.local", *args])
    with pytest.raises(SystemExit) as exited:
        run_cli(local.app)
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


def _one_error_line(code, out, err) -> str:
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _dead_node() -> dict:
    """A node record whose process has exited."""
    p = subprocess.Popen(["true"])
    p.wait()
    return {"role": "head", "pid": p.pid, "start_time": 0, "log": ""}


def _record(**fields) -> dict:
    """A record as the tool writes it (the fields of a record before ``temp_token``, plus ``fields``)."""
    return {"gcs_port": 6390, "dashboard_port": 8275, "head_cpus": 2, "workers": 0, "cpus_per_worker": 2,
            "gpus_per_worker": 0, "temp_dir": None, "owns_temp_dir": False, "nodes": [_dead_node()], **fields}


FREE_PORTS = ["--gcs-port", "0", "--dashboard-port", "0"]  # no default port, should a broken check let it start


# -- stop removes only a temp dir that start created --------------------------------------------


MARKER = ".spote-local-cluster"  # the marker file start writes in its temp dir


def _victim(case: str, tmp_path) -> tuple[Path, dict]:
    """A folder a record may name that the tool did not create, and the record's token for it."""
    name = {"not-spote-ray": "victim"}.get(case, f"spote-ray-{case}")
    victim = tmp_path / name
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    if case in ("other-token", "no-token-recorded"):
        (victim / MARKER).write_text("a" * 32)
    return victim, ({} if case == "no-token-recorded" else {"temp_token": "b" * 32})


@pytest.mark.parametrize("case", ["not-spote-ray", "no-marker", "other-token", "no-token-recorded"])
def test_stop_leaves_a_temp_dir_it_did_not_create(case, env, tmp_path, monkeypatch, capsys):
    state, _ = env
    victim, token = _victim(case, tmp_path)
    record = _record(temp_dir=str(victim), owns_temp_dir=True, **token)
    state.write_text(json.dumps(record))
    code, out, err = _cli(monkeypatch, capsys, "stop")
    assert (victim / "precious.txt").read_text() == "keep me", "stop removed a folder it did not create"
    assert code in (0, None) and "stopped" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"left {victim} in place" in lines[0], err


def test_stop_leaves_a_victim_folder_from_the_command_line(tmp_path):
    """The tester's case, through ``python -m cluster.local stop`` itself."""
    victim = tmp_path / "x" / "victim"
    victim.mkdir(parents=True)
    (victim / "f").write_text("data")
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"temp_dir": str(victim), "owns_temp_dir": True, "nodes": [_dead_node()]}))
    proc = subprocess.run([sys.executable, "-m", "cluster.local", "stop"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "SPOTE_LOCAL_CLUSTER_STATE": str(state)}, timeout=120)
    assert (victim / "f").read_text() == "data"
    assert "Traceback" not in proc.stderr
    # a record missing fields is not one this tool wrote: refused, and left where it is
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {state} is not a local cluster record")
    assert state.exists()


def test_stop_removes_the_temp_dir_start_created(env, monkeypatch, capsys):
    state, temp = env
    c = local.LocalCluster(nodes=[_dead_node()])
    made = Path(c.make_temp_dir())
    assert made.parent == temp and made.name.startswith("spote-ray-") and (made / MARKER).is_file()
    (made / "session.log").write_text("x")
    c.save(state)
    code, out, err = _cli(monkeypatch, capsys, "stop")
    assert code in (0, None) and "stopped" in out and not err
    assert not made.exists() and not state.exists()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give the record to another user")
def test_a_record_of_another_user_is_refused(env, tmp_path, monkeypatch, capsys):
    state, _ = env
    victim = tmp_path / "victim"
    victim.mkdir()
    state.write_text(json.dumps(_record(temp_dir=str(victim), owns_temp_dir=True)))
    os.chown(state, 65534, 65534)
    line = _one_error_line(*_cli(monkeypatch, capsys, "stop"))
    assert str(state) in line and "user id 65534" in line
    assert state.exists() and victim.exists()


def test_a_record_never_leads_stop_to_init_or_to_our_own_session():
    # in a container init, or this process's session leader, may lie outside the pid namespace:
    # /proc then has no entry for it (and getsid gives 0), which must not matter either
    def start_time(pid):
        proc = local.read_proc(pid)
        return proc.start_time if proc else 0

    own = os.getsid(0)
    c = local.LocalCluster(nodes=[{"role": "head", "pid": pid, "start_time": start_time(pid), "log": ""}
                                  for pid in (1, own)])
    assert c.processes() == {}


# -- a file that is not a cluster record --------------------------------------------------------

CORRUPT = {"empty": "", "not-json": "not json", "list": "[]", "null": "null", "bogus": '{"bogus":1}',
           "node-pid-only": '{"nodes":[{"pid":1}]}',
           "node-pid-1": json.dumps({"gcs_port": 1, "dashboard_port": 2, "head_cpus": 1, "workers": 0,
                                     "cpus_per_worker": 1, "gpus_per_worker": 0, "temp_dir": None,
                                     "owns_temp_dir": False,
                                     "nodes": [{"role": "head", "pid": 1, "start_time": -5, "log": ""}]})}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
@pytest.mark.parametrize("command", [["status"], ["stop"], ["start", "--workers", "0", *FREE_PORTS]],
                         ids=["status", "stop", "start"])
def test_a_corrupt_record_is_refused_in_one_line_and_kept(content, command, env, monkeypatch, capsys):
    state, temp = env
    state.write_text(content)
    line = _one_error_line(*_cli(monkeypatch, capsys, *command))
    assert f"{state} is not a local cluster record" in line and "SPOTE_LOCAL_CLUSTER_STATE" in line
    assert state.read_text() == content, "the file was changed"
    assert not list(temp.iterdir()), "start created a temp dir"


def test_a_folder_at_the_record_path_is_refused(env, tmp_path, monkeypatch, capsys):
    _, temp = env
    monkeypatch.setattr(local, "STATE", tmp_path)
    for command in (["status"], ["stop"], ["start", "--workers", "0", *FREE_PORTS]):
        line = _one_error_line(*_cli(monkeypatch, capsys, *command))
        assert f"{tmp_path} is a folder" in line
    assert tmp_path.is_dir() and not list(temp.iterdir())


# -- a record path that cannot be written -------------------------------------------------------


@pytest.mark.parametrize("where", ["missing-folder", "parent-is-a-file", "proc"])
def test_an_unwritable_record_path_is_refused_before_any_node(where, env, tmp_path, monkeypatch, capsys):
    _, temp = env
    (tmp_path / "afile").write_text("")
    state = {"missing-folder": tmp_path / "missing" / "s.json", "parent-is-a-file": tmp_path / "afile" / "s.json",
             "proc": Path("/proc/self/x")}[where]
    monkeypatch.setattr(local, "STATE", state)
    line = _one_error_line(*_cli(monkeypatch, capsys, "start", "--workers", "0", *FREE_PORTS))
    assert f"cannot write the cluster record {state}" in line
    assert not list(temp.iterdir()), "a temp dir (and so a node) was made before the check"


# -- arguments ----------------------------------------------------------------------------------

BAD_ARGS = {"workers": (["--workers", "-1"], "--workers"),
            "cpus-per-worker": (["--cpus-per-worker", "-1"], "--cpus-per-worker"),
            "head-cpus": (["--head-cpus", "-1"], "--head-cpus"),
            "gpus-per-worker-negative": (["--gpus-per-worker", "-1"], "--gpus-per-worker"),
            "gpus-per-worker-fraction": (["--gpus-per-worker", "0.5"], "--gpus-per-worker"),
            "gcs-port-too-big": (["--gcs-port", "70000", "--dashboard-port", "0"], "--gcs-port"),
            "dashboard-port-negative": (["--dashboard-port", "-1", "--gcs-port", "0"], "--dashboard-port"),
            "same-ports": (["--gcs-port", "7001", "--dashboard-port", "7001"], "--gcs-port")}


@pytest.mark.parametrize("args,flag", BAD_ARGS.values(), ids=BAD_ARGS.keys())
def test_bad_arguments_are_refused_before_anything_starts(args, flag, env, monkeypatch, capsys):
    state, temp = env
    ports = [] if any(a.endswith("-port") for a in args) else FREE_PORTS
    line = _one_error_line(*_cli(monkeypatch, capsys, "start", "--workers", "0", *ports, *args))
    assert flag in line
    assert not state.exists() and not list(temp.iterdir())


# -- ports --------------------------------------------------------------------------------------


@pytest.fixture(params=["0.0.0.0", "127.0.0.1"])
def held_port(request):
    """A port another server listens on (as another cluster's GCS or dashboard would)."""
    with socket.socket() as s:
        s.bind((request.param, 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("flag,other", [("--gcs-port", "--dashboard-port"), ("--dashboard-port", "--gcs-port")])
def test_a_port_in_use_is_refused_naming_the_flag(flag, other, held_port, env, monkeypatch, capsys):
    state, temp = env
    line = _one_error_line(*_cli(monkeypatch, capsys, "start", "--workers", "0", flag, str(held_port), other, "0"))
    assert f"port {held_port} ({flag}) is in use" in line
    assert not state.exists() and not list(temp.iterdir())


def test_port_taken_sees_listeners_and_not_free_ports(held_port):
    assert local.port_taken(held_port) == "in use"
    assert local.port_taken(local.free_port()) is None


def _dribble(listener: socket.socket, stop: threading.Event) -> None:
    """A server that answers every connection one byte of an HTTP response at a time, 0.2 s apart."""
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            continue
        with conn:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" * 100:
                if stop.wait(0.2):
                    break
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    break


@pytest.mark.timeout(120)
@pytest.mark.parametrize("server, says", [("closed", "does not answer: nothing listens there"),
                                          ("silent", "does not answer within 2 s"),
                                          ("dribble", "does not answer within 2 s")])
def test_status_of_a_cluster_that_does_not_answer_is_one_line(server, says, env, monkeypatch, capsys):
    """A record whose processes live but whose ports nothing answers on (closed), where a frozen process
    holds them (silent: the connection is taken, no byte comes back), or where a server sends a byte now
    and then (dribble: each read meets its timeout, the answer never ends): ``status`` waited on Ray's
    retries and printed a traceback, or waited for ever; now one line within ``STATUS_TIMEOUT_S``."""
    state, _ = env
    monkeypatch.setattr(local, "STATUS_TIMEOUT_S", 2)
    held, stop = [], threading.Event()
    for _ in range(2):  # the GCS and the dashboard
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        if server != "closed":
            s.listen(8)  # the kernel takes connections into the backlog; nothing reads them
        held.append(s)
    gcs, dashboard = (s.getsockname()[1] for s in held)
    if server == "closed":
        for s in held:
            s.close()
    if server == "dribble":
        threading.Thread(target=_dribble, args=(held[1], stop), daemon=True).start()
    live = subprocess.Popen(["sleep", "60"], start_new_session=True)  # ours, in a session of its own
    try:
        node = {"role": "head", "pid": live.pid, "start_time": local.read_proc(live.pid).start_time, "log": ""}
        state.write_text(json.dumps(_record(gcs_port=gcs, dashboard_port=dashboard, nodes=[node])))
        line = _one_error_line(*_cli(monkeypatch, capsys, "status"))
        assert says in line and f":{gcs}" in line and f":{dashboard}" in line, line
    finally:
        stop.set()
        live.kill()
        live.wait()
        for s in held:
            s.close()


def test_nodes_find_the_python_of_the_environment_that_started_them(monkeypatch):
    """A job's ``python`` comes from the head node's PATH: it must be this environment's, activated or not."""
    here = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/local/bin", "/usr/bin", here]))
    path = local.LocalCluster()._node_env()["PATH"].split(os.pathsep)
    assert path[0] == here and path.count(here) == 1 and path[1:] == ["/usr/local/bin", "/usr/bin"]
