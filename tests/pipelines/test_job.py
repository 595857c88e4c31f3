"""pipelines.job's Ray Data settings: the Parquet reader the jobs use and their group-by partitions."""

from __future__ import annotations

import re

import pytest

from pipelines.job import (GROUP_ROWS_PER_PARTITION, MAX_GROUP_PARTITIONS, JobRefused, _count_duplicates,
                          file_based_parquet_reads, group_partitions)


@pytest.mark.parametrize("rows, partitions", [(0, 1), (1, 1), (GROUP_ROWS_PER_PARTITION, 1),
                                              (GROUP_ROWS_PER_PARTITION + 1, 2), (10 * GROUP_ROWS_PER_PARTITION, 10),
                                              (10**12, MAX_GROUP_PARTITIONS)])
def test_group_partitions_grow_with_the_rows_up_to_the_cap(rows, partitions):
    assert group_partitions(rows) == partitions


@pytest.mark.parametrize("before", [True, False])
def test_file_based_reads_are_scoped_and_restored_after_an_error(before):
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = ctx.use_datasource_v2
    ctx.use_datasource_v2 = before
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with file_based_parquet_reads():
                assert ctx.use_datasource_v2 is False
                raise RuntimeError("inside")
        assert ctx.use_datasource_v2 is before
    finally:
        ctx.use_datasource_v2 = saved


def test_duplicates_are_the_rows_beyond_each_ids_first(ray_local, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = tmp_path / "staged"
    parts.mkdir()
    pq.write_table(pa.table({"id": ["a", "b", "a"]}), parts / "part-0.parquet")
    pq.write_table(pa.table({"id": ["c", "a", "b"]}), parts / "part-1.parquet")
    assert _count_duplicates(str(parts), {}, rows=6) == 3   # a twice more, b once more


def test_other_settings_name_the_question_that_changed():
    from pipelines.job import check_same_settings

    long = "what is the reference code printed in the box at the top right of the first page of the form ?"
    old = {"questions": [{"question": "is it signed ?", "field": "signed"}, {"question": long, "field": "ref"}],
           "policy": {"budget": 96, "seed": 0}, "dpi": 100}
    new = {"questions": [{"question": "is it signed ?", "field": "signed"}, {"question": long[:-1] + "?!", "field": "ref"}],
           "policy": {"budget": 64, "seed": 0}, "dpi": 100}
    with pytest.raises(ValueError) as err:
        check_same_settings("night", old, new, committed=True)
    message = str(err.value)
    assert "(policy.budget 96 -> 64; questions[1].question ..." in message
    shown = message.split("questions[1].question ")[1].split(")")[0]
    assert "form ?'" in shown.split(" -> ")[0] and "form ?!'" in shown.split(" -> ")[1]   # where they part, both sides
    assert "questions[0]" not in str(err.value) and "dpi" not in str(err.value)
    with pytest.raises(ValueError, match=r"questions: 2 -> 1 entries"):
        check_same_settings("night", old, {**old, "questions": old["questions"][:1]})
    with pytest.raises(ValueError, match=r"\(endpoint_options \(absent\) -> None\)"):
        check_same_settings("night", old, {**old, "endpoint_options": None})  # a key one side lacks is named
    check_same_settings("night", old, dict(old))  # the same settings pass


@pytest.mark.parametrize("src, dst, inside", [
    ("/data/in", "/data/in/out", True), ("/data/in", "/data/in", True), ("/data/in/", "/data/in/results", True),
    ("/data/in", "/data/input-results", False), ("/data/in", "/data/out", False),
    ("s3://bucket/in", "s3://bucket/in/out", True), ("s3://bucket/in", "s3://bucket/inbox", False),
    ("s3://bucket/in", "/data/in/out", False),
])
def test_an_output_at_or_under_the_input_is_refused(src, dst, inside):
    from pipelines.job import JobOptions, JobRefused, check_output_outside_input

    if inside:
        with pytest.raises(JobRefused, match="lies inside --input"):
            check_output_outside_input(src, dst)
        with pytest.raises(JobRefused, match="lies inside --input"):  # every job's options are checked so
            JobOptions(src, dst)
    else:
        check_output_outside_input(src, dst)
        JobOptions(src, dst)


@pytest.mark.parametrize("flag, value, says", [
    ("batch_size", 0, "--batch-size must be >= 1"), ("rows_per_part", 0, "--rows-per-part must be >= 1"),
    ("endpoint_concurrency", 0, "--endpoint-concurrency must be >= 1"),
    ("item_timeout_seconds", -1.0, r"--item-timeout-seconds must be >= 0 seconds \(0: no limit\)"),
    ("resource_wait_seconds", -1.0, "--resource-wait-seconds must be >= 0"),
    ("progress_seconds", -1.0, r"--progress-seconds must be 0 \(no progress lines\) or 0.1-86,400 seconds, got -1.0"),
    ("progress_seconds", float("nan"), "--progress-seconds must be 0"), ("progress_seconds", 1e-9, "--progress-seconds"),
    ("progress_seconds", 1e10, "--progress-seconds must be 0"), ("progress_seconds", float("inf"), "--progress-seconds"),
    ("num_actors", 0, r"--num-actors must be >= 1 \(VLM actors\), got 0"),
    ("input", "", "--input is empty"), ("output", " ", "--output is empty"),
])
def test_job_options_out_of_range_are_refused_naming_the_flag(flag, value, says):
    """Refused on the options, before Ray starts (--num-actors 0 used to start it first; --input "" listed
    the working directory)."""
    from pipelines.job import JobOptions, JobRefused

    with pytest.raises(JobRefused, match=says):
        JobOptions(**{"input": "in", "output": "out", flag: value})
    JobOptions("in", "out")  # the defaults hold
    JobOptions("in", "out", item_timeout_seconds=0.0)  # no limit, as the flag's help says


@pytest.mark.parametrize("job", ["vqa", "satellite", "documents"])
def test_endpoint_flags_without_an_endpoint_are_refused(tmp_path, job):
    """``--endpoint-options`` (even invalid JSON) or ``--api-key-env`` without ``--endpoint`` ran the job on
    its own model without a word, as ``spote ask`` refuses."""
    import importlib

    from typer.testing import CliRunner

    from pipelines.job import JobOptions, JobRefused

    with pytest.raises(JobRefused, match=r"^--endpoint-options, --api-key-env apply to --endpoint, which is not given$"):
        JobOptions("in", "out", endpoint_options="notjson{", api_key_env="X Y")
    JobOptions("in", "out", endpoint="http://127.0.0.1:9/v1", model="m", endpoint_concurrency=2)
    app = importlib.import_module(f"pipelines.{job}").app
    (tmp_path / "in").mkdir()
    needs = ["--questions", "is there a boat ?"] if job == "satellite" else []
    res = CliRunner().invoke(app, ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                                   "--endpoint-concurrency", "4", *needs])
    assert res.exit_code == 2 and res.stderr.strip() == ("error: --endpoint-concurrency applies to --endpoint, which "
                                                         "is not given"), res.output
    with pytest.raises(JobRefused, match=r"^--endpoint is empty: give the server's base URL"):
        JobOptions("in", "out", endpoint=" ")
    assert not (tmp_path / "out").exists()


def test_an_output_no_folder_can_be_made_at_is_one_line_before_ray_or_listing(tmp_path):
    """A file, a path under a file, a virtual file system: each used to start Ray first, then fail with a raw
    OSError naming the lease file."""
    from typer.testing import CliRunner

    from pipelines import vqa

    (tmp_path / "a_file").write_text("x")
    cases = {str(tmp_path / "a_file"): "is a file; give a folder",
             str(tmp_path / "a_file" / "out"): "is a file, so no folder can be made under it",
             "/proc/spote-out": "no folder can be made in /proc"}
    for output, says in cases.items():
        res = CliRunner().invoke(vqa.app, ["--input", str(tmp_path / "m.jsonl"), "--output", output])
        assert res.exit_code == 2, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: --output {output}") and says in lines[0], res.stderr
    long_name = str(tmp_path / ("a" * 300) / "out")   # ENAMETOOLONG was retried for a minute as a store outage
    res = CliRunner().invoke(vqa.app, ["--input", str(tmp_path / "m.jsonl"), "--output", long_name])
    assert res.exit_code == 2 and res.stderr.strip() == (
        "error: --output: the folder name 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...' is 300 bytes, more than the 255 "
        "this file system allows"), res.output
    deep = tmp_path / "/".join(["d" * 200] * 19)   # every name allowed; the whole too long for the run's files
    res = CliRunner().invoke(vqa.app, ["--input", str(tmp_path / "m.jsonl"), "--output", str(deep)])
    assert res.exit_code == 2 and res.stderr.startswith("error: --output: the path is ") and \
        "past the 4096 this file system allows" in res.stderr, res.output
    # a place a folder can be made passes the check (the job then stops at its missing input), leaving nothing
    res = CliRunner().invoke(vqa.app, ["--input", str(tmp_path / "m.jsonl"), "--output", str(tmp_path / "new" / "out")])
    assert res.exit_code == 2 and "--input" in res.stderr and "--output" not in res.stderr, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]            # no probe folder, no output


def test_an_s3_output_in_a_bucket_that_does_not_exist_is_one_line_naming_it(s3, tmp_path):
    """The store's own "The specified bucket does not exist" named neither the bucket nor --output."""
    from typer.testing import CliRunner

    from pipelines import vqa

    output = "s3://no-such-bucket-spote/res"
    res = CliRunner().invoke(vqa.app, ["--input", str(tmp_path / "m.jsonl"), "--output", output])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == f"error: --output {output}: the bucket 'no-such-bucket-spote' does not exist"
    for ok in (["--output", "s3://spote/new/out"],  # a bucket that exists, and one the check cannot ask about
               ["--output", output, "--storage-options", '{"endpoint_url": "http://127.0.0.1:9"}']):
        res = CliRunner().invoke(vqa.app, ["--input", str(tmp_path / "m.jsonl"), *ok])
        assert res.exit_code == 2 and "--input" in res.stderr and "--output" not in res.stderr, res.output


def test_a_bad_policy_is_refused_before_the_job_lists_its_input(tmp_path):
    from typer.testing import CliRunner

    from pipelines import satellite

    res = CliRunner().invoke(satellite.app, ["--input", str(tmp_path / "absent"), "--output", str(tmp_path / "out"),
                                             "--questions", str(tmp_path / "absent.yaml"), "--policy", '{"budget": 0}'])
    assert res.exit_code == 2 and res.stderr.strip() == "error: --policy: budget must be >= 1 forward pass", res.output


def test_endpoint_options_fields_are_not_overridden_by_flag_defaults():
    """``api_key_env`` and ``concurrency`` given in --endpoint-options were replaced by the defaults of
    --api-key-env / --endpoint-concurrency, so the actors sent OPENAI_API_KEY to a server configured for
    another key. The JSON's fields hold; a flag that sets one of them must agree with it."""
    from pipelines.job import JobOptions

    def config(**kw):
        return JobOptions("in", "out", endpoint="http://127.0.0.1:8000/v1", **kw).endpoint_config()

    given = config(endpoint_options='{"api_key_env": "VLLM_KEY", "concurrency": 2}')
    assert given["api_key_env"] == "VLLM_KEY" and given["concurrency"] == 2
    assert config(endpoint_options='{"api_key_env": "VLLM_KEY"}', api_key_env="VLLM_KEY")["api_key_env"] == "VLLM_KEY"
    assert config(api_key_env="MY_KEY", endpoint_concurrency=3) == {"api_key_env": "MY_KEY", "concurrency": 3}
    with pytest.raises(ValueError, match="--endpoint-options sets api_key_env to 'VLLM_KEY' and --api-key-env sets it "
                                         "to 'OPENAI_API_KEY'; give one"):
        config(endpoint_options='{"api_key_env": "VLLM_KEY"}', api_key_env="OPENAI_API_KEY")


def test_endpoint_flags_are_checked_before_any_work():
    """The job checks its endpoint flags as ``spote ask`` does, before Ray: no model name, an unknown
    option and a URL no request could use are one line each."""
    from pipelines.job import JobOptions

    def kwargs(**kw):
        return JobOptions("in", "out", **{"endpoint": "http://127.0.0.1:8000/v1", "model": "served", **kw}).predictor_kwargs(None)

    assert kwargs()["endpoint_options"] == {}
    for bad, message in ((dict(model=None), "an endpoint needs a model name (--model NAME, model=)"), (dict(model="  "), "needs a model name"),
                         (dict(endpoint_options='{"temprature": 0}'), "unknown endpoint options ['temprature']"),
                         (dict(endpoint="ftp://127.0.0.1/v1"), "ftp"), (dict(revision="main"), "(--revision, revision=) applies")):
        with pytest.raises(ValueError, match=re.escape(message)):
            kwargs(**bad)


def test_spelling_an_endpoint_default_out_is_the_same_run_and_older_settings_resume():
    """A run's settings hold the endpoint's resolved options (not the flags as typed: `--api-key-env
    OPENAI_API_KEY` and `{"timeout_s": 60}` were other runs than no flag at all), less those that leave
    the answers alone; a setting an older version did not record (input_files) does not refuse a resume."""
    from pipelines.job import JobOptions, check_same_settings, run_settings

    def settings(**kw):
        return run_settings(JobOptions("in", "out", model="m", endpoint="http://127.0.0.1:8000/v1", **kw), {})

    plain = settings()
    assert settings(api_key_env="OPENAI_API_KEY") == plain == settings(endpoint_options='{"timeout_s": 60}')
    assert settings(endpoint_concurrency=3) == plain and settings(api_key_env="OTHER_KEY") == plain
    assert settings(endpoint_options='{"view_size": 448}') != plain
    now = {**plain, "input_files": "1 file, 10 bytes, digest 00"}
    check_same_settings("r", plain, now)  # recorded before input_files existed: resumes
    with pytest.raises(ValueError, match=r"input_files '1 file, 10 bytes, digest 00' -> '1 file, 12 bytes"):
        check_same_settings("r", now, {**now, "input_files": "1 file, 12 bytes, digest 01"})


def test_an_empty_run_reads_back_as_an_empty_table_with_its_columns(ray_local, tmp_path):
    """A run with no items committed a results folder with no file: pandas read no columns, DuckDB said
    "No files found", geopandas "Missing geo metadata". It now holds one file of no rows."""
    import duckdb
    import geopandas
    import pandas as pd

    from pipelines import satellite
    from pipelines.runs import RunPaths
    from pipelines.stages import RESULT_COLUMNS
    from pipelines.vqa import plan_manifest
    from pipelines.job import JobOptions, run_job

    (tmp_path / "m.jsonl").write_text("")
    run_job("vqa", JobOptions(str(tmp_path / "m.jsonl"), str(tmp_path / "out"), run_id="nothing"),
            plan_manifest(str(tmp_path / "m.jsonl")))
    (tmp_path / "scenes").mkdir()
    (tmp_path / "q.json").write_text('[{"question": "is there a boat ?", "choices": ["yes", "no"]}]')
    satellite.run(JobOptions(str(tmp_path / "scenes"), str(tmp_path / "sat"), run_id="nothing"), str(tmp_path / "q.json"))
    for out in ("out", "sat"):
        results = RunPaths(str(tmp_path / out), "nothing").results
        df = pd.read_parquet(results)
        assert len(df) == 0 and set(RESULT_COLUMNS) <= set(df.columns), out
        assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{results}/*.parquet')").fetchall() == [(0,)]
    assert len(geopandas.read_parquet(RunPaths(str(tmp_path / "sat"), "nothing").results)) == 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on leaving: nothing listens there


def _vqa(tmp_path, *flags, env=None):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    sample = Path(__file__).parents[2] / "pipelines" / "samples" / "vqa" / "test-7-00000.png"
    (tmp_path / "m.jsonl").write_text(json.dumps({"image_uri": str(sample), "question": "what letter ?"}))
    return subprocess.run([sys.executable, "-m", "pipelines.vqa", "--input", str(tmp_path / "m.jsonl"), "--output",
                           str(tmp_path / "out"), *flags], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_a_cluster_that_cannot_be_reached_is_one_line_at_once(tmp_path):
    """RAY_ADDRESS naming a dead GCS: Ray retried for 858 s, then printed a traceback; a ray:// address took
    55 s and 148 lines. One TCP connection decides first."""
    from pipelines.job import check_reachable

    port = _free_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(JobRefused, match=re.escape(f"cannot reach the Ray cluster at RAY_ADDRESS={address}")):
            check_reachable(address)
    res = _vqa(tmp_path, env={"RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert res.returncode == 2 and res.stderr.strip().startswith("error: cannot reach the Ray cluster"), res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_more_actors_than_a_local_ray_holds_are_refused_at_once(tmp_path):
    """--num-actors 100000 without a cluster sized the local Ray to fit them and started a hundred workers on
    two cores; --cpus-per-actor 0 and a negative GPU count were taken or refused only after Ray started."""
    res = _vqa(tmp_path, "--num-actors", "100000", env={"RAY_ADDRESS": ""})
    assert res.returncode == 2 and "--num-actors 100000 on a local Ray of" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    from pipelines.job import JobOptions

    with pytest.raises(JobRefused, match="--cpus-per-actor must be > 0"):
        JobOptions("in", "out", cpus_per_actor=0)
    with pytest.raises(JobRefused, match="--num-gpus-per-actor must be >= 0"):
        JobOptions("in", "out", num_gpus_per_actor=-1)


def test_relative_paths_in_a_submitted_jobs_unpacked_working_dir_are_refused():
    """Under ray job submit --working-dir, a relative --output landed in Ray's unpacked package, which the
    cluster's stop deleted with the results; a relative input there got new file times per submission."""
    from pipelines.job import check_not_in_job_package

    pkg = "/tmp/spote-ray-x/session_1/runtime_resources/working_dir_files/_ray_pkg_ab12"
    with pytest.raises(JobRefused, match="--output out/cluster is relative to the job's working dir"):
        check_not_in_job_package("--output", "out/cluster", cwd=pkg)
    for fine in ("/data/out", "s3://bucket/out"):
        check_not_in_job_package("--output", fine, cwd=pkg)
    check_not_in_job_package("--output", "out/cluster", cwd="/home/me/project")


@pytest.mark.parametrize("sig, times, code, word", [("SIGINT", 1, 130, "interrupted: the parts staged"),
                                                    ("SIGTERM", 1, 143, "terminated: the parts staged"),
                                                    ("SIGINT", 2, 130, "interrupted: a second stop signal; stopped at once; "
                                                                       "the parts staged")])
def test_ctrl_c_and_sigterm_say_how_to_resume(tmp_path, random_tiny_dir, sig, times, code, word):
    """Ctrl-C on a driver ended with no word, SIGTERM (kill, ray job stop) with Ray's C++ stack dump (exit
    134); both say what is kept and how to go on. A second one ends the job at once (a user who does not
    wait for Ray to shut down), saying the same. Nothing the job started outlives it: a second stop left
    Ray's agents running for about a minute."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import uuid
    from pathlib import Path

    import contextlib

    tag = f"SPOTE_TEST_STOP={uuid.uuid4().hex}"

    def tagged() -> list[int]:  # the job and every process it started, by the environment they inherit
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if tag.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    found.append(int(pid))
            except OSError:
                pass
        return found

    sample = Path(__file__).parents[2] / "pipelines" / "samples" / "vqa" / "test-7-00000.png"
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"image_uri": str(sample), "question": f"what letter {i} ?"})
                                                for i in range(400)))  # more than a loaded machine answers in 3 s
    # SIGINT as a terminal delivers it: a test run in the background of a shell (nohup ... &) inherits it
    # ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.vqa", "--input", str(tmp_path / "m.jsonl"), "--output",
                             str(tmp_path / "out"), "--model", str(random_tiny_dir), "--run-id", "ctrl-c"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_ADDRESS": "", tag.split("=")[0]: tag.split("=")[1]},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    left = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (tmp_path / "out" / "_runs" / "ctrl-c").exists():
            time.sleep(0.5)  # the run is under way once its lease is taken
        time.sleep(3)
        for _ in range(times):
            proc.send_signal(getattr(signal, sig))
            time.sleep(0.5)  # two signals at once are one to Python: its handler runs once per signal number
        _, err = proc.communicate(timeout=120)
        deadline = time.monotonic() + 5  # a process SIGKILLed by the job may take a moment to be reaped
        while (left := tagged()) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        if proc.poll() is None:  # ours: never left running
            proc.kill()
            proc.communicate()
        for pid in tagged():  # ours (they carry this test's tag): never left running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == code and f"{word} so far are kept; run the same command again" in err, err[-3000:]
    assert not left, f"processes the job started still ran after it ended: {left}"
    assert "*** SIGTERM received" not in err


def test_sigterm_while_ray_starts_ends_as_sigterm_at_any_other_time():
    """ray.init's own SIGTERM handler, set while it starts, is sys.exit(15): the job ended with exit 15 and
    no word. In-process it is Terminated (exit 143, how to resume); other exits pass through; once Ray has
    started the stop handlers are back."""
    import signal

    from pipelines.job import Terminated, _on_stop_signal, _ray_starting

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(Terminated):
            with _ray_starting():
                raise SystemExit(signal.SIGTERM)
        with pytest.raises(SystemExit) as exc:
            with _ray_starting():
                raise SystemExit(2)
        assert exc.value.code == 2
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as ray.init leaves it: its own handler
        with _ray_starting():
            pass
        assert signal.getsignal(signal.SIGTERM) is _on_stop_signal and signal.getsignal(signal.SIGINT) is _on_stop_signal
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def test_a_stopped_job_whose_shutdown_hangs_ends_after_the_grace(tmp_path):
    """A job run as a program and stopped once, whose shutdown then never ends (here a thread that holds
    the process, as a hung Ray shutdown or storage call would), ends STOP_GRACE_S later with the same
    word on how to resume, not never."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "hung.py"
    script.write_text(
        "import sys, threading, time\n"
        "from pipelines import job\n"
        "job.STOP_GRACE_S = 1.0\n"
        "job._STOPPING['program'] = True\n"
        "job.install_stop_handlers()\n"
        "threading.Thread(target=time.sleep, args=(600,)).start()  # not a daemon: Python waits for it at exit\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(600)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parents[2], preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # ours: never left running
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.strip() == ("interrupted: shutting down took over 1 s; stopped at once; the parts staged so far are "
                           "kept; run the same command again (the same --run-id, or the same input and settings) to "
                           "resume"), err


def _unreachable_store() -> str:
    import json
    import socket

    with socket.socket() as s:  # a port nothing listens on: every connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return json.dumps({"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
                       "config_kwargs": {"retries": {"max_attempts": 1}}})


def test_a_ray_task_failing_while_the_store_is_down_is_one_line_not_rays_report():
    """A part's write in a Ray task reaches the driver as Ray's error, its cause only text in the task's
    traceback, so it passed through as Ray's whole report. Where the store is down then, one line says so
    and how to go on (exit 1, a passing failure); a task failing while the store is up keeps Ray's report."""
    import typer
    from ray.exceptions import RayTaskError
    from typer.testing import CliRunner

    from pipelines.job import job_command

    def failing(input: str = typer.Option(...), output: str = typer.Option(...), opts=None):
        raise RayTaskError("write", "Traceback ...\nbotocore.exceptions.EndpointConnectionError: ...",
                           RuntimeError("the write failed"))

    app = typer.Typer()
    app.command()(job_command(failing))
    res = CliRunner().invoke(app, ["--input", "s3://bucket/in/", "--output", "s3://bucket/out",
                                   "--storage-options", _unreachable_store()])
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: a Ray task failed and the store is unreachable: "), res.stderr
    assert "whatever was staged is kept" in lines[0]
    res = CliRunner().invoke(app, ["--input", "in/", "--output", "out"])  # a local output: no outage to blame
    assert isinstance(res.exception, RayTaskError)


def test_a_full_disk_mid_run_is_one_line_not_a_traceback(tmp_path):
    """ENOSPC while a run wrote its report ended in 230 lines of traceback; it is not retried (another try meets
    it again), and it says what happened and that the staged parts are kept."""
    import errno

    import typer
    from typer.testing import CliRunner

    from pipelines.job import JobOptions, job_command

    app = typer.Typer()

    @app.command()
    @job_command
    def main(input: str = typer.Option(...), output: str = typer.Option(...), *, opts: JobOptions):
        raise OSError(errno.ENOSPC, "No space left on device", f"{output}/_staging/r/meta/report.html")

    (tmp_path / "in").mkdir()
    res = CliRunner().invoke(app, ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert res.exit_code == 1 and res.stderr.strip() == (
        f"error: No space left on device: {tmp_path}/out/_staging/r/meta/report.html; whatever was staged is kept: "
        "run the same command again once there is room (or give another --output)"), res.output


ROOM = "once there is room (or give another --output)"
WRITABLE = "once --output can be written (or give another --output)"


@pytest.mark.parametrize("cause, says", [
    ("OSError: [Errno 28] No space left on device: '/out/_staging/r/checkpoint/p-0.parquet'",
     f"No space left on device: /out/_staging/r/checkpoint/p-0.parquet; whatever was staged is kept: run the same "
     f"command again {ROOM}"),
    ("OSError: [errno 30] Read-only file system", f"Read-only file system; whatever was staged is kept: run the "
                                                   f"same command again {WRITABLE}"),
    ("OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device",  # pyarrow's
     f"No space left on device; whatever was staged is kept: run the same command again {ROOM}"),
    ("OSError: [Errno 36] File name too long: '/out/_staging/r/x'",
     "File name too long: /out/_staging/r/x; whatever was staged is kept: run the same command with another --output")])
def test_a_full_disk_met_in_a_ray_task_is_one_line_not_rays_report(tmp_path, cause, says):
    """A part's write in a Ray task on a full or read-only disk reached the driver as Ray's error, its cause
    only text in the task's traceback: 560-650 lines, no word of what was kept."""
    import typer
    from ray.exceptions import RayTaskError
    from typer.testing import CliRunner

    from pipelines.job import job_command

    def failing(input: str = typer.Option(...), output: str = typer.Option(...), opts=None):
        raise RayTaskError("write", f"Traceback (most recent call last):\n  ...\n{cause}\n", RuntimeError("write"))

    app = typer.Typer()
    app.command()(job_command(failing))
    (tmp_path / "in").mkdir()
    res = CliRunner().invoke(app, ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert res.exit_code == 1 and res.stderr.strip() == f"error: {says}", res.output


def test_a_store_denying_the_output_names_the_flag_and_the_cause(monkeypatch):
    """Wrong credentials for an s3:// --output said only ``error: Forbidden`` (the input side named both)."""
    import typer
    from typer.testing import CliRunner

    import pipelines.job
    from pipelines.job import job_command

    monkeypatch.setattr(pipelines.job, "check_output_writable", lambda *a: None)  # no store to ask here

    def denied(input: str = typer.Option(...), output: str = typer.Option(...), opts=None):
        raise PermissionError("Forbidden")

    app = typer.Typer()
    app.command()(job_command(denied))
    res = CliRunner().invoke(app, ["--input", "s3://night/in.jsonl", "--output", "s3://night/out"])
    assert res.exit_code == 2 and res.stderr.strip() == ("error: --output s3://night/out: access denied (check the "
                                                         "credentials and their permissions): Forbidden"), res.output


def test_paths_that_are_not_utf8_are_refused_naming_the_flag(tmp_path):
    """A Latin-1 --output or --questions path started Ray, then failed with "'utf-8' codec can't encode
    character '\\udce4'", naming neither the flag nor the path."""
    import os

    from pipelines.job import JobOptions
    from pipelines.questions import load_questions

    odd = os.fsdecode(os.fsencode(tmp_path) + b"/Gr\xe4fe")
    with pytest.raises(JobRefused, match=r"^--output .*/Gr\\xe4fe: the path is not UTF-8 text; rename it$"):
        JobOptions(str(tmp_path / "in"), odd)
    with pytest.raises(JobRefused, match=r"^--input .*/Gr\\xe4fe: the path is not UTF-8 text"):
        JobOptions(odd, str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"^question file .*/Gr\\xe4fe: the path is not UTF-8 text"):
        load_questions(odd)
