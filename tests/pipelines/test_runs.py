"""The run lease: one driver writes a run at a time, on a folder and on S3 (moto's server)."""

import json
import os
import socket
import time

import pytest

from pipelines.runs import RunInUse, RunLease
from pipelines.storage import read_bytes, retrying, write_bytes, write_text

FAST = {"beat_s": 0.1, "stale_s": 1.0, "settle_s": 0.05, "poll_s": 0.05}


def _record(uri: str) -> dict | None:
    try:
        return json.loads(retrying(read_bytes, uri))  # a read racing a beat can fail its ETag check
    except FileNotFoundError:
        return None


def test_a_fresh_lease_names_this_driver_beats_and_goes_on_release(lease_uri):
    lease = RunLease(lease_uri, log=lambda m: None, **FAST).acquire()
    first = _record(lease_uri)
    assert first["token"] == lease.token and first["pid"] == os.getpid() and first["host"] == socket.gethostname()
    deadline = time.monotonic() + 10                            # beats every 0.1 s; a loaded machine may be late
    while _record(lease_uri)["beat"] == first["beat"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _record(lease_uri)["beat"] > first["beat"]            # the holder renews it
    lease.release()
    assert _record(lease_uri) is None


def test_a_live_holder_refuses_a_second_driver(lease_uri):
    holder = RunLease(lease_uri, log=lambda m: None, **FAST).acquire()
    try:
        with pytest.raises(RunInUse, match=f"another driver \\(pid {os.getpid()} on "):
            # a long watch: the holder's next beat ends it, however late a loaded machine runs that beat
            RunLease(lease_uri, log=lambda m: None, **{**FAST, "stale_s": 30.0}).acquire("run night")
        assert _record(lease_uri)["token"] == holder.token        # the refused driver wrote nothing
    finally:
        holder.release()


def test_a_dead_holders_lease_is_waited_out_then_taken_over(lease_uri):
    dead = {"token": "dead", "beat": 7, "host": "node-3", "pid": 4242, "ray_job_id": "05000000"}
    write_text(lease_uri, json.dumps(dead))
    said = []
    t0 = time.monotonic()
    lease = RunLease(lease_uri, log=said.append, **FAST).acquire("run night")
    try:
        assert time.monotonic() - t0 >= FAST["stale_s"]          # its workers got that long to die
        assert "pid 4242 on node-3, Ray job 05000000" in said[0] and "taking the run over" in said[-1]
        assert _record(lease_uri)["token"] == lease.token
    finally:
        lease.release()


@pytest.mark.parametrize("content", [b"[]", b"5", b"null", b"", b"\x00\xffnot json{", b"{}", b'{"token": 5, "beat": 1}',
                                     b'{"token": "x"}', b'{"token": "x", "beat": true}'])
def test_a_damaged_lease_is_waited_out_like_a_dead_one(lease_uri, content):
    write_bytes(lease_uri, content)
    said = []
    t0 = time.monotonic()
    lease = RunLease(lease_uri, log=said.append, **FAST).acquire("run night")
    try:
        assert time.monotonic() - t0 >= FAST["stale_s"]
        assert "is not a lease record" in said[0] and "taking the run over" in said[-1]
        assert _record(lease_uri)["token"] == lease.token
    finally:
        lease.release()


def test_a_lease_damaged_while_watched_is_not_taken_for_a_live_holder(lease_uri):
    dead = {"token": "dead", "beat": 7, "host": "node-3", "pid": 4242}
    write_text(lease_uri, json.dumps(dead))
    said = []

    def log(message):
        said.append(message)
        if "watching it" in message:                               # damaged once the watch has begun
            write_bytes(lease_uri, b'{"token": "de')               # a part-written record

    lease = RunLease(lease_uri, log=log, **FAST).acquire("run night")
    try:
        assert "watching it" in said[0] and "taking the run over" in said[-1]
        assert _record(lease_uri)["token"] == lease.token
    finally:
        lease.release()


def test_a_commit_beside_a_beating_lease_keeps_the_lease(tmp_path):
    """A commit clears the run's folder while the lease beats there, through its temporary file."""
    from pipelines.runs import RunPaths, _drop_meta_outputs
    from pipelines.storage import join

    paths = RunPaths(str(tmp_path), "night")
    said = []
    lease = RunLease(paths.lease, log=said.append, **{**FAST, "beat_s": 0.0005}).acquire()
    try:
        for i in range(300):
            write_text(join(paths.meta, "summary.json"), json.dumps({"i": i}))
            _drop_meta_outputs(paths)                                # raises if it races a beat
            assert not os.path.exists(join(paths.meta, "summary.json"))
        lease.check()
        assert lease._beat > 10 and not [m for m in said if "could not renew" in m]
    finally:
        lease.release()
    assert _record(paths.lease) is None


def test_a_lease_path_that_is_a_folder_fails_at_once_naming_it(tmp_path, capsys):
    uri = tmp_path / "_runs" / "r" / "lease.json"
    uri.mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match="lease.json"):
        RunLease(str(uri), log=lambda m: None, **FAST).acquire()
    assert "retrying" not in capsys.readouterr().out               # not retried as a storage blip


def test_a_released_lease_lets_the_waiting_driver_in_at_once(lease_uri):
    holder = RunLease(lease_uri, log=lambda m: None, **{**FAST, "stale_s": 60.0}).acquire()
    holder.release()
    lease = RunLease(lease_uri, log=lambda m: None, **{**FAST, "stale_s": 60.0}).acquire()
    assert _record(lease_uri)["token"] == lease.token
    lease.release()


@pytest.mark.parametrize("content", [b"{}", b"not json", b'{"beat": 3}'])
def test_a_live_holder_rewrites_a_lease_damaged_under_it_and_keeps_the_run(lease_uri, content):
    lease = RunLease(lease_uri, log=lambda m: None, **FAST).acquire()
    try:
        write_bytes(lease_uri, content)                             # by hand, while the run goes on
        deadline = time.monotonic() + 10
        while (_record_or_none(lease_uri) or {}).get("token") != lease.token and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _record(lease_uri)["token"] == lease.token           # its next beat wrote it whole again
        lease.check("run night")                                    # and the run may still commit
    finally:
        lease.release()


def _record_or_none(uri: str) -> dict | None:
    try:
        return _record(uri)
    except ValueError:
        return None


def test_a_driver_whose_lease_was_taken_over_must_not_commit(lease_uri):
    lease = RunLease(lease_uri, log=lambda m: None, **FAST).acquire()
    try:
        lease.check()                                               # still ours
        write_text(lease_uri, json.dumps({"token": "usurper", "beat": 0}))
        deadline = time.monotonic() + 10
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(RunInUse, match="took the run over"):
            lease.check("run night")
    finally:
        lease.release()
    assert _record(lease_uri)["token"] == "usurper"                # not removed: it is not ours


# --force: the committed rows stay until the new ones are committed ------------------------------------------------

@pytest.fixture(params=["local", "s3"])
def run_paths(request, tmp_path):
    from pipelines.runs import RunPaths

    if request.param == "local":
        return RunPaths(str(tmp_path / "out"), "r")
    request.getfixturevalue("s3")
    return RunPaths(f"s3://spote/force-{request.node.name.replace('[', '-').rstrip(']')}-{time.time_ns()}", "r")


def _parts(uri: str) -> dict[str, bytes]:
    from pipelines.storage import filesystem

    fs, p = filesystem(uri)
    return {f[len(p):]: fs.cat_file(f) for f in fs.find(p)} if fs.exists(p) else {}


def _committed_run(paths) -> None:
    from pipelines.runs import commit

    write_bytes(paths.staged + "/old-0.parquet", b"old rows")
    write_text(paths.staged_meta + "/report.html", "old report")
    write_text(paths.staged_meta + "/scenes/gone.q0.geojson", "{}")  # a scene the forced run no longer has
    commit(paths, {"items_in": 1}, None)


def _outputs(paths) -> dict[str, bytes]:
    """The run's files under _runs/<id>/ but its marker and summary."""
    return {k: v for k, v in _parts(paths.meta).items() if k not in ("/_SUCCESS", "/summary.json")}


def _exists(uri: str) -> bool:
    from pipelines.storage import filesystem

    fs, p = filesystem(uri)
    return fs.exists(p)


def test_a_forced_commit_replaces_the_committed_rows_only_at_the_commit(run_paths):
    from pipelines.runs import commit, is_committed, recover_interrupted_commit, reset_staging

    _committed_run(run_paths)
    assert _outputs(run_paths) == {"/report.html": b"old report", "/scenes/gone.q0.geojson": b"{}"}
    reset_staging(run_paths)                                        # what --force does first
    write_bytes(run_paths.staged + "/new-0.parquet", b"new rows")
    write_text(run_paths.staged_meta + "/report.html", "new report")  # written before the commit, in staging
    write_text(run_paths.lease, json.dumps({"token": "forced", "beat": 0}))  # the forced run's driver holds the lease
    recover_interrupted_commit(run_paths)                           # the next start while it runs: rows stay
    assert _parts(run_paths.results) == {"/old-0.parquet": b"old rows"} and is_committed(run_paths)
    assert _outputs(run_paths)["/report.html"] == b"old report"     # the old rows keep their own report
    commit(run_paths, {"items_in": 1})
    assert _parts(run_paths.results) == {"/new-0.parquet": b"new rows"} and is_committed(run_paths)
    assert _outputs(run_paths) == {"/report.html": b"new report",                  # no old scene file
                                   "/lease.json": json.dumps({"token": "forced", "beat": 0}).encode()}
    assert not _exists(run_paths.staging)


@pytest.mark.parametrize("killed_after", ["record", "marker", "rows"])
def test_a_forced_commit_killed_half_way_is_finished_without_mixing_the_runs(run_paths, killed_after):
    from pipelines.runs import _rm, commit, is_committed, recover_interrupted_commit, reset_staging

    _committed_run(run_paths)
    reset_staging(run_paths)
    write_bytes(run_paths.staged + "/new-0.parquet", b"new rows")
    write_text(run_paths.replacing, "now")                          # the commit's first step ...
    for uri in {"record": [], "marker": [run_paths.marker], "rows": [run_paths.marker, run_paths.results]}[killed_after]:
        _rm(uri)                                                    # ... and the ones it got through
    recover_interrupted_commit(run_paths)
    assert _parts(run_paths.results) == {} and not is_committed(run_paths) and not _exists(run_paths.replacing)
    assert _parts(run_paths.staged) == {"/new-0.parquet": b"new rows"} and _outputs(run_paths) == {}
    commit(run_paths, {"items_in": 1})
    assert _parts(run_paths.results) == {"/new-0.parquet": b"new rows"} and is_committed(run_paths)


def test_a_first_commit_killed_while_moving_still_moves_its_parts_back(run_paths):
    from pipelines.runs import _move_tree, commit, recover_interrupted_commit

    write_bytes(run_paths.staged + "/a.parquet", b"a")
    write_text(run_paths.staged_meta + "/report.html", "report")
    write_text(run_paths.staged_meta + "/scenes/s.q0.geojson", "{}")
    _move_tree(run_paths.staged, run_paths.results)                 # killed before the marker ...
    _move_tree(run_paths.staged_meta + "/scenes", run_paths.meta + "/scenes")  # ... half way through the outputs
    recover_interrupted_commit(run_paths)
    assert _parts(run_paths.staged) == {"/a.parquet": b"a"} and _parts(run_paths.results) == {}
    write_text(run_paths.staged_meta + "/scenes/s.q0.geojson", '{"again": 1}')  # the next start writes them again
    commit(run_paths, {"items_in": 1})
    assert _outputs(run_paths) == {"/report.html": b"report", "/scenes/s.q0.geojson": b'{"again": 1}'}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_second_driver_of_a_live_run_is_refused_before_ray_starts(where, tmp_path, monkeypatch, request):
    from pipelines import job
    from pipelines.runs import RunPaths
    from pipelines.vqa import plan_manifest

    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image_uri": str(tmp_path / "a.png"), "question": "q ?"}) + "\n")
    if where == "s3":
        request.getfixturevalue("s3")
    output = str(tmp_path / "out") if where == "local" else f"s3://spote/second-driver-{time.time_ns()}"
    holder = RunLease(RunPaths(output, "night").lease, log=lambda m: None, **FAST).acquire()
    started = []
    monkeypatch.setattr(job, "init_ray", lambda *a, **k: started.append("ray"))
    try:
        with pytest.raises(RunInUse, match="run night is being written by another driver"):
            job.run_job("vqa", job.JobOptions(str(manifest), output, run_id="night"), plan_manifest(str(manifest)))
        assert started == []                                     # refused before Ray, within a beat
        assert _record(holder.uri)["token"] == holder.token       # and the holder's lease untouched
    finally:
        holder.release()


def test_a_lease_waited_out_before_ray_starts_is_taken_without_a_second_watch(lease_uri):
    dead = {"token": "dead", "beat": 7, "host": "node-3", "pid": 4242}
    write_text(lease_uri, json.dumps(dead))
    said = []
    lease = RunLease(lease_uri, log=said.append, **FAST).wait_out("run night")
    assert _record(lease_uri) == dead                            # watching writes nothing
    lease.acquire("run night")
    try:
        assert [m for m in said if "watching it" in m] == [said[0]]
        assert _record(lease_uri)["token"] == lease.token
    finally:
        lease.release()


def test_a_lease_rewritten_after_the_wait_is_watched_again(lease_uri):
    write_text(lease_uri, json.dumps({"token": "dead", "beat": 7}))
    lease = RunLease(lease_uri, log=lambda m: None, **FAST).wait_out("run night")
    # another driver came in while this one started Ray
    holder = RunLease(lease_uri, log=lambda m: None, **FAST).wait_out().acquire()
    try:
        with pytest.raises(RunInUse, match="being written by another driver"):
            lease.acquire("run night")
    finally:
        holder.release()


def test_the_lease_beats_on_through_a_store_error_that_is_no_oserror(tmp_path):
    """botocore's EndpointConnectionError is no OSError: one missed beat during an S3 outage ended the
    beating thread, the lease went stale while the driver worked on, and a second driver took the run over
    (561 rows staged twice, a run refused on every resume)."""
    from botocore.exceptions import EndpointConnectionError

    said = []
    lease = RunLease(str(tmp_path / "lease.json"), log=said.append, **FAST)
    real_renew, fails = lease.renew, [2]

    def renew():
        if fails[0]:
            fails[0] -= 1
            raise EndpointConnectionError(endpoint_url="http://store/lease.json")
        real_renew()

    lease.renew = renew
    lease.acquire()
    deadline = time.monotonic() + 10
    while fails[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    first = _record(lease.uri)["beat"]
    while _record(lease.uri)["beat"] == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _record(lease.uri)["beat"] > first and not lease.lost  # beating again after the outage
    assert any(m.startswith("[lease] could not renew: EndpointConnectionError") for m in said), said
    lease.release()


def test_storage_retries_botocore_connection_errors(capsys):
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise EndpointConnectionError(endpoint_url="http://store/x")
        if len(calls) == 2:
            raise ReadTimeoutError(endpoint_url="http://store/x")
        return b"ok"

    assert retrying(flaky, first_wait=0.01) == b"ok" and len(calls) == 3
    assert "[storage] EndpointConnectionError" in capsys.readouterr().out
