import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.job import JobOptions, run_job
from pipelines.runs import RunPaths
from pipelines.stages import RESULT_COLUMNS
from pipelines.vqa import read_manifest

SAMPLES = Path(__file__).parents[2] / "pipelines" / "samples" / "vqa"


def _results(output, run_id):
    return pq.read_table(RunPaths(str(output), run_id).results).to_pandas()


def test_manifest_formats(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "m.csv").write_text('image_uri,question,choices,id\na.png,is there a boat ?,"yes,no",x1\nb.png,q ?,,\n')
    rows = read_manifest(str(tmp_path / "m.csv"))
    assert rows[0] == {"id": "x1", "source": f"{tmp_path}/a.png", "question": "is there a boat ?", "choices": '["yes", "no"]'}
    assert rows[1]["id"] == "row-00000001" and rows[1]["choices"] == ""
    pq.write_table(pa.table({"image_uri": ["a.png"], "question": ["q ?"], "choices": [["a", "b"]]}), tmp_path / "m.parquet")
    assert read_manifest(str(tmp_path / "m.parquet"))[0]["choices"] == '["a", "b"]'
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\n')
    with pytest.raises(ValueError, match="image_uri"):
        read_manifest(str(tmp_path / "bad.jsonl"))


def test_vqa_local_every_item_once_with_error_rows(ray_local, random_tiny_dir, tmp_path, fast_policy):
    out = tmp_path / "out"
    opts = JobOptions(str(SAMPLES / "manifest.jsonl"), str(out), str(random_tiny_dir), policy=fast_policy, run_id="r1")
    rows = read_manifest(opts.input)
    summary = run_job("vqa", opts, [dict(r) for r in rows])
    df = _results(out, "r1")
    assert sorted(df["id"]) == sorted(r["id"] for r in rows)            # every item exactly once
    assert set(RESULT_COLUMNS) <= set(df.columns)
    errors = df.set_index("id")["error"]
    assert errors["bad-corrupt"].startswith("unreadable image")
    assert errors["bad-missing"].startswith("missing object")
    assert errors["bad-question"] == "empty question"
    ok = df[df.status == "ok"]
    assert len(ok) == len(rows) - 3 and (ok.forward_passes <= 4).all() and ok.answer.str.len().gt(0).all()
    assert summary["items_in"] == summary["items_out"] == len(rows) and summary["items_error"] == 3
    meta = Path(RunPaths(str(out), "r1").meta)
    assert (meta / "_SUCCESS").exists() and (meta / "report.html").exists() and (meta / "entropy.png").exists()
    assert json.loads((meta / "summary.json").read_text())["items_ok"] == len(rows) - 3

    again = run_job("vqa", opts, [dict(r) for r in rows])                 # committed: a no-op
    assert again["run_id"] == "r1" and len(_results(out, "r1")) == len(rows)


def test_rerun_after_crash_does_not_duplicate(ray_local, random_tiny_dir, tmp_path, fast_policy):
    out = tmp_path / "out"
    rows = read_manifest(str(SAMPLES / "manifest.jsonl"))[:3]
    paths = RunPaths(str(out), "crashed")
    Path(paths.staging).mkdir(parents=True)                               # what a crashed attempt leaves
    pq.write_table(pa.table({"id": [rows[0]["id"]] * 2, "status": ["ok", "ok"]}), Path(paths.staging) / "part-old.parquet")
    opts = JobOptions(str(SAMPLES / "manifest.jsonl"), str(out), str(random_tiny_dir), policy=fast_policy, run_id="crashed")
    run_job("vqa", opts, [dict(r) for r in rows])
    df = _results(out, "crashed")
    assert sorted(df["id"]) == sorted(r["id"] for r in rows)


def test_vqa_on_s3(ray_local, s3, random_tiny_dir, fast_policy):
    for name in ("test-7-00000.png", "test-7-00002.jpg"):
        s3.put(str(SAMPLES / name), f"spote/in/{name}")
    s3.pipe("spote/in/broken.png", b"garbage")
    lines = [{"id": "a", "image_uri": "test-7-00000.png", "question": "what digit is in the red box ?", "choices": list("0123456789")},
             {"id": "b", "image_uri": "s3://spote/in/test-7-00002.jpg", "question": "is there a defect ?", "choices": ["yes", "no"]},
             {"id": "c", "image_uri": "gone.png", "question": "is there a boat ?"},
             {"id": "d", "image_uri": "broken.png", "question": "is there a boat ?", "choices": "yes,no"}]
    s3.pipe("spote/in/manifest.jsonl", "\n".join(json.dumps(x) for x in lines).encode())
    opts = JobOptions("s3://spote/in/manifest.jsonl", "s3://spote/out", str(random_tiny_dir), policy=fast_policy, run_id="s3run")
    rows = read_manifest(opts.input, {"client_kwargs": {"endpoint_url": s3.client_kwargs.get("endpoint_url") or s3.endpoint_url}})
    summary = run_job("vqa", opts, rows)
    assert summary["items_in"] == 4 and summary["items_ok"] == 2 and summary["items_error"] == 2
    files = s3.find("spote/out/results/run_id=s3run")
    assert files and all(f.endswith(".parquet") for f in files)
    assert s3.exists("spote/out/_runs/s3run/_SUCCESS") and not s3.exists("spote/out/_staging/s3run")
    with s3.open(files[0], "rb") as f:
        assert "answer" in pq.read_table(f).column_names


def test_error_only_batches_keep_the_result_schema(random_tiny_dir, tmp_path):
    """A block of error rows alone (empty traces, no choices) must not infer null types that an ok
    block cannot be cast to: the staged Parquet files have to read back as one table."""
    from pipelines.stages import SpotePredictor

    predictor = SpotePredictor(model=str(random_tiny_dir), policy={"budget": 3, "group_size": 2})
    image = Image.new("RGB", (96, 80), (40, 90, 160))
    ok = predictor({"id": ["a"], "source": ["a.png"], "question": ["is there a boat ?"], "choices": ['["yes", "no"]'],
                    "status": ["ok"], "error": [""], "pixels": [image.tobytes()], "height": [80], "width": [96]})
    bad = predictor({"id": ["b"], "source": ["b.png"], "question": ["is there a boat ?"], "choices": [None],
                     "status": ["error"], "error": ["missing object: b.png"], "pixels": [b""], "height": [0], "width": [0]})
    pq.write_table(ok, tmp_path / "part-1.parquet")
    pq.write_table(bad, tmp_path / "part-0.parquet")  # read first: its schema leads
    table = pq.read_table(tmp_path)
    assert table.num_rows == 2 and set(table.column("status").to_pylist()) == {"ok", "error"}
    assert table.schema.field("entropy_trace").type == pa.list_(pa.float64())


def test_pipeline_bench_splits_latencies_in_thirds():
    from benchmarks.pipeline_throughput import by_thirds

    assert by_thirds([1, 1, 2, 2, 3, 3, 4]) == [1.0, 2.0, 3.3]   # the remainder goes to the last third
    assert by_thirds([5.0]) == [5.0]
