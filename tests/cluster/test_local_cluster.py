"""A real multi-node Ray cluster on this machine, driven through the real `ray job submit` client.

The cluster has its own temp dir and free ports, and its teardown ends only the processes it
started (test_local_isolation.py proves an unrelated Ray head survives it), so these tests can
run beside any other Ray on this machine, the pipelines' session Ray included.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.local import LocalCluster

REPO = Path(__file__).parents[2]
SAMPLES = REPO / "pipelines" / "samples" / "vqa"


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(head_cpus=2, workers=2, cpus_per_worker=1, gpus_per_worker=1).start()  # free ports, own temp dir
    try:
        c.wait_for_job_server()
        yield c
    finally:
        c.stop()
    assert not c.processes(), "the local cluster left processes behind"


def _ray(*args, cluster, timeout=600):
    ray_bin = str(Path(sys.executable).with_name("ray"))
    return subprocess.run([ray_bin, *args], env=cluster.env(), capture_output=True, text=True, timeout=timeout)


def _submit(cluster, sid, argv, wait=True, python=sys.executable):
    cmd = ["job", "submit", "--address", cluster.dashboard, "--working-dir", str(REPO), "--submission-id", sid]
    if not wait:
        cmd.append("--no-wait")
    return _ray(*cmd, "--", python, *argv, cluster=cluster)


def _status(cluster, sid) -> str:
    from ray.job_submission import JobSubmissionClient

    os.environ["RAY_AUTH_MODE"] = "disabled"
    return str(JobSubmissionClient(cluster.dashboard).get_job_status(sid).value)


def test_nodes_have_fake_gpus(cluster, tmp_path):
    """... and the cluster says it never grows: a job asking for more than it holds fails at once, without
    the wait a joined cluster that may autoscale gets."""
    import ray

    from pipelines.job import InsufficientResources, JobOptions, check_resources, cluster_is_fixed

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        total = ray.cluster_resources()
        assert total.get("GPU") == 2 and total.get("fake_accel") == 2 and len(ray.nodes()) == 3
        assert cluster_is_fixed()
        opts = JobOptions(str(tmp_path / "in"), str(tmp_path / "out"), num_actors=3, num_gpus_per_actor=1)
        with pytest.raises(InsufficientResources, match=r"^not enough resources: asked for 3 actor\(s\)"):
            check_resources(opts)  # resource_wait_seconds is 300: a wait would say "after waiting"
    finally:
        ray.shutdown()


def test_job_submit_end_to_end_on_gpu_actors(cluster, random_tiny_dir, tmp_path):
    """Submitted as the docs show it, ``-- python -m pipelines.vqa``: the entrypoint's ``python`` is the one of
    the environment the cluster was started from (it was the first on the caller's PATH: without the venv
    activated, "No module named 'typer'")."""
    out = tmp_path / "out"
    proc = _submit(cluster, "spote-e2e", python="python", argv=["-m", "pipelines.vqa", "--input", str(SAMPLES / "manifest.jsonl"),
                                          "--output", str(out), "--model", str(random_tiny_dir), "--num-actors", "2",
                                          "--num-gpus-per-actor", "1", "--policy", '{"budget": 4, "group_size": 2}',
                                          "--run-id", "e2e"])
    logs = _ray("job", "logs", "--address", cluster.dashboard, "spote-e2e", cluster=cluster).stdout
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs[-3000:]
    assert _status(cluster, "spote-e2e") == "SUCCEEDED", logs[-3000:]
    df = pq.read_table(out / "results" / "run_id=e2e").to_pandas()
    n_in = len((SAMPLES / "manifest.jsonl").read_text().splitlines())
    assert len(df) == n_in and df["id"].is_unique
    assert json.loads((out / "_runs" / "e2e" / "summary.json").read_text())["items_in"] == n_in


def test_killed_actor_mid_job_loses_nothing(cluster, random_tiny_dir, tmp_path):
    from benchmarks.pipeline_throughput import make_corpus

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    manifest = make_corpus(corpus, 32, seed=5)
    out = tmp_path / "out"
    proc = _submit(cluster, "spote-fault", ["-m", "pipelines.vqa", "--input", str(manifest), "--output", str(out),
                                            "--model", str(random_tiny_dir), "--num-actors", "2", "--num-gpus-per-actor",
                                            "1", "--batch-size", "1", "--policy", '{"budget": 40, "exit_entropy": 0.0, "exit_entropy_per_ln_k": 0.0, "plateau_patience": 99, "settle_after": 0}',
                                            "--run-id", "fault"], wait=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import ray
    from ray.util.state import list_actors

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address=cluster.address, log_to_driver=False)
    killed = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and killed is None:
            actors = list_actors(address=cluster.dashboard, filters=[("state", "=", "ALIVE")])  # not any other Ray's
            alive = [a for a in actors if "SpotePredictor" in a.class_name]
            if alive and _status(cluster, "spote-fault") == "RUNNING":
                time.sleep(3)  # let it get some items done
                try:
                    os.kill(alive[0].pid, signal.SIGKILL)
                    killed = alive[0].pid
                except ProcessLookupError:  # that actor already left; look again
                    pass
            time.sleep(0.5)
    finally:
        ray.shutdown()
    assert killed, "no predictor actor to kill"
    deadline = time.time() + 600
    while _status(cluster, "spote-fault") in ("RUNNING", "PENDING") and time.time() < deadline:
        time.sleep(3)
    logs = _ray("job", "logs", "--address", cluster.dashboard, "spote-fault", cluster=cluster).stdout
    print(logs[-4000:])
    assert _status(cluster, "spote-fault") == "SUCCEEDED", logs[-3000:]
    df = pq.read_table(out / "results" / "run_id=fault").to_pandas()
    assert len(df) == 32 and df["id"].is_unique and (df.status == "ok").all()
