"""A transient object-storage failure mid-run: the S3 endpoint (moto's server) goes away and comes
back while result parts (and their checkpoints) are being written; the run is retried through it and
nothing is lost or duplicated."""

import threading
import time

import pyarrow.parquet as pq

from pipelines.job import JobOptions, run_job
from pipelines.vqa import plan_manifest


def test_moto_restart_mid_write_loses_nothing(ray_local, s3, moto_server, random_tiny_dir, tmp_path, fast_policy):
    from benchmarks.pipeline_throughput import make_corpus

    manifest = make_corpus(tmp_path, 12, seed=9)
    opts = JobOptions(str(manifest), "s3://spote/fault-out", str(random_tiny_dir), batch_size=1, policy=fast_policy,
                      run_id="blip", rows_per_part=2)
    result = {}

    def job():
        try:
            result["summary"] = run_job("vqa", opts, plan_manifest(str(manifest)))
        except Exception as err:  # surfaced by the assertion below
            result["error"] = err

    t = threading.Thread(target=job)
    t.start()
    deadline = time.time() + 300
    while time.time() < deadline and not s3.find("spote/fault-out/_staging/blip/results"):
        time.sleep(0.2)
    assert s3.find("spote/fault-out/_staging/blip/results"), "the job never started writing"
    moto_server.stop()                 # the endpoint goes away mid-write ...
    time.sleep(1.5)
    moto_server.start()                # ... and comes back with its state (moto keeps it in-process)
    t.join(timeout=600)
    assert "error" not in result, result.get("error")
    df = pq.read_table("spote/fault-out/results/run_id=blip", filesystem=s3).to_pandas()
    assert len(df) == 12 and df["id"].is_unique and result["summary"]["items_in"] == 12
