"""A driver SIGKILLed a quarter of the way through a run, then started again with the same run id: the parts
it had staged are kept (``items_resumed``), only the rest is answered, and the committed rows are
exactly the manifest's items, once each. While the first driver runs, a second one of the same run
id is refused; after the kill, the new driver waits out the dead one's lease (its workers may still
be finishing a part) before it touches the staged parts. The run's state lives under ``--output``: a local folder
and an S3 prefix (moto's server) both work."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.job import JobOptions, run_job
from pipelines.runs import PENDING_SUFFIX, RunInUse, RunPaths, checkpoint_files, committed_checkpoint_rows
from pipelines.storage import filesystem, parse_storage_options
from pipelines.vqa import plan_manifest

REPO = Path(__file__).parents[2]
N = 48
# the kill comes once a quarter of the items are staged: the three quarters left take the first driver
# seconds to answer, far more than its actor's tasks in flight when it dies (a kill at half of 24 items
# once met a resume with nothing left to answer)
KILL_AT = N // 4
# every item costs the same few forward passes: no early exit, so the run's progress is steady
SLOW_POLICY = json.dumps({"budget": 6, "group_size": 2, "steps": 3, "exit_entropy": 0.0,
                          "exit_entropy_per_ln_k": 0.0, "plateau_patience": 99})


def _exists(uri: str, so: dict) -> bool:
    fs, path = filesystem(uri, so)
    return fs.exists(path)


def _manifest(folder: Path) -> Path:
    from benchmarks.pipeline_throughput import make_corpus

    return make_corpus(folder, N, seed=3)


def _committed_results(paths: RunPaths, where: str, s3):
    """The run's committed result rows, from the folder or through the moto S3 filesystem."""
    if where == "local":
        return pq.read_table(paths.results).to_pandas()
    return pq.read_table(paths.results.removeprefix("s3://"), filesystem=s3).to_pandas()


def _manifest_ids(manifest: Path) -> list[str]:
    return [json.loads(line)["id"] for line in manifest.read_text().splitlines()]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_driver_resumes_without_redoing_or_duplicating(where, ray_local, s3, random_tiny_dir, tmp_path):
    manifest = _manifest(tmp_path)
    output = str(tmp_path / "out") if where == "local" else "s3://spote/resume-out"
    so = parse_storage_options(None)
    argv = [sys.executable, "-m", "pipelines.vqa", "--input", str(manifest), "--output", output,
            "--model", str(random_tiny_dir), "--policy", SLOW_POLICY, "--run-id", "night", "--batch-size", "1",
            "--rows-per-part", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log_file:   # a file, not a pipe: a full pipe would stall the driver
        driver = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    paths = RunPaths(output, "night")
    opts = JobOptions(str(manifest), output, str(random_tiny_dir), policy=SLOW_POLICY, run_id="night",
                      batch_size=1, rows_per_part=2)
    staged, refused, deadline = 0, False, time.time() + 900
    try:
        while time.time() < deadline and driver.poll() is None:
            if not refused and _exists(paths.lease, so):
                with pytest.raises(RunInUse, match="run night is being written by another driver"):
                    run_job("vqa", opts, plan_manifest(str(manifest)))   # a second driver of the same run
                refused = True
            staged = committed_checkpoint_rows(paths, so)
            if staged >= KILL_AT:
                os.kill(driver.pid, signal.SIGKILL)   # the driver dies mid-run, as on a lost node
                break
            time.sleep(0.2)
    finally:
        if driver.poll() is None and staged < KILL_AT:
            driver.kill()
        driver.wait(timeout=60)
        log = log_path.read_text()
    assert driver.returncode == -signal.SIGKILL, log[-3000:]
    assert KILL_AT <= staged < N and refused, log[-3000:]

    other = dataclasses.replace(opts, policy=json.dumps({**json.loads(SLOW_POLICY), "budget": 5}))
    fs, plan_stats = filesystem(paths.plan_stats, so)
    plan_before = fs.cat_file(plan_stats)
    with pytest.raises(ValueError, match=r"run night was started with other settings \(policy.budget 6 -> 5\)"):
        run_job("vqa", other, plan_manifest(str(manifest)))   # a resume with another policy would mix two runs' rows
    # and keeps the plan and every staged part (the dead driver's workers may still have committed one more)
    assert fs.cat_file(plan_stats) == plan_before and committed_checkpoint_rows(paths, so) >= staged

    # two actors: with the loaders, the read and Ray Data's CheckpointFilter actor, the resume needs the local
    # cluster's full headroom (init_ray(2)); with one CPU less its read waited forever behind the actors
    summary = run_job("vqa", dataclasses.replace(opts, num_actors=2), plan_manifest(str(manifest)))  # waits out the lease
    assert not _exists(paths.lease, so)
    assert staged <= summary["items_resumed"] < N             # every part committed before the kill is kept
    assert summary["items_in"] == summary["items_out"] == N
    df = _committed_results(paths, where, s3)
    want = _manifest_ids(manifest)
    assert sorted(df["id"]) == sorted(want)                  # every item exactly once
    assert (df.status == "ok").all()
    assert summary["settings"]["policy"]["budget"] == 6
    with pytest.raises(ValueError, match="run night is committed with other settings .*policy.budget 6 -> 5"):
        run_job("vqa", other, plan_manifest(str(manifest)))   # not the old rows as if they answered the new policy
    assert run_job("vqa", opts, plan_manifest(str(manifest)))["items_in"] == N   # the same settings: nothing to do


class _StopBeforeCommit(Exception):
    """Raised by a post-commit hook: every part is staged and checkpointed, nothing is committed."""


def _stop_before_commit(results, paths, so):
    raise _StopBeforeCommit


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_checkpoint_commit_killed_inside_its_move_keeps_the_part(where, ray_local, s3, random_tiny_dir, tmp_path,
                                                                   fast_policy):
    """Ray Data commits a part's checkpoint by moving ``X.pending.parquet`` to ``X.parquet`` after the part
    is written; on S3 the move is a copy, then a delete, so a driver killed between the two leaves both.
    The resume keeps that part (it was written in full) and redoes only the part whose commit never began:
    before, Ray Data's restart removed the part with its pending twin while the committed copy still
    marked its ids as done, and they were neither staged nor answered again (the AccountingError seen)."""
    from benchmarks.pipeline_throughput import make_corpus

    n = 8
    manifest = make_corpus(tmp_path, n, seed=5)
    output = str(tmp_path / "out") if where == "local" else f"s3://spote/twin-out-{time.time_ns()}"
    so = parse_storage_options(None)
    opts = JobOptions(str(manifest), output, str(random_tiny_dir), policy=fast_policy, run_id="twin", batch_size=2,
                      rows_per_part=2)
    paths = RunPaths(output, "twin")
    with pytest.raises(_StopBeforeCommit):
        run_job("vqa", opts, plan_manifest(str(manifest)), before_commit=_stop_before_commit)
    committed, pending = checkpoint_files(paths, so)
    assert len(committed) == n // 2 and not pending
    fs, _ = filesystem(paths.checkpoint, so)
    moved_half, not_begun = sorted(committed)[:2]
    fs.copy(moved_half, moved_half[:-len(".parquet")] + PENDING_SUFFIX)  # killed between the move's copy and delete
    fs.mv(not_begun, not_begun[:-len(".parquet")] + PENDING_SUFFIX)      # killed after the write, before the commit

    summary = run_job("vqa", opts, plan_manifest(str(manifest)))
    assert summary["items_resumed"] == n - 2                  # only the part whose commit never began is redone
    assert summary["items_in"] == summary["items_out"] == n
    df = _committed_results(paths, where, s3)
    want = _manifest_ids(manifest)
    assert sorted(df["id"]) == sorted(want)                   # every item exactly once


def _weights_saved_over(folder: Path) -> None:
    """Other weights of the same tensors saved over ``folder`` (a fine-tune written to the same place): the
    file keeps its size and its header, only the tensor data differ."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    size = path.stat().st_size
    tensors = load_file(path)
    save_file({k: v * 1.5 + 0.01 if v.is_floating_point() else v for k, v in tensors.items()}, path,
              metadata={"format": "pt"})
    assert path.stat().st_size == size


def test_weights_saved_over_the_model_folder_before_a_resume_are_another_run(ray_local, random_tiny_dir, tmp_path,
                                                                             fast_policy):
    """A run staged with a local model folder, the folder's weights then overwritten (a fine-tune saved to the
    same place) and the run resumed: the rest of its items were answered by the new weights and committed
    with the old ones' under one model name. The run records what the folder held when it started
    (``model_fingerprint``): the resume is refused, naming it, and each actor checks what it loads."""
    import shutil

    from benchmarks.pipeline_throughput import make_corpus
    from pipelines.job import _model_refused

    model = tmp_path / "model"
    shutil.copytree(random_tiny_dir, model)
    manifest = make_corpus(tmp_path, 4, seed=6)
    opts = JobOptions(str(manifest), str(tmp_path / "out"), str(model), policy=fast_policy, run_id="ft",
                      batch_size=2, rows_per_part=2)
    with pytest.raises(_StopBeforeCommit):
        run_job("vqa", opts, plan_manifest(str(manifest)), before_commit=_stop_before_commit)
    started = opts.predictor_kwargs(None)
    assert started["model_fingerprint"].startswith("sha256:") and started["model_commit"] is None
    _weights_saved_over(model)
    with pytest.raises(ValueError, match=r"run ft was started with other settings \(model_fingerprint 'sha256:"):
        run_job("vqa", opts, plan_manifest(str(manifest)))
    # an actor that loads a folder changed after the driver looked refuses to answer for the run
    with pytest.raises(Exception) as caught:
        run_job("vqa", dataclasses.replace(opts, run_id="ft2"), plan_manifest(str(manifest)),
                model_kwargs=started)
    # Ray passes the actor's error on as text: the job's CLI prints the message found in it, one line
    assert "holds other files than when the run started" in (_model_refused(caught.value) or "")
