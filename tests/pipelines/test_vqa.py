import contextlib
import functools
import http.server
import json
import os
import re
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.job import JobOptions, run_job
from pipelines.runs import RunPaths
from pipelines.stages import RESULT_COLUMNS
from pipelines.vqa import MANIFEST_SCHEMA, ManifestError, plan_manifest, read_manifest

SAMPLES = Path(__file__).parents[2] / "pipelines" / "samples" / "vqa"
AS_WRITTEN = ["007", "0070", "1e3", "7", "0.50", "-0", "NaN", "true"]


def _results(output, run_id):
    return pq.read_table(RunPaths(str(output), run_id).results).to_pandas()


def test_manifest_formats(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "m.csv").write_text('image_uri,question,choices,id\na.png,is there a boat ?,"yes,no",x1\nb.png,q ?,,\n')
    rows = read_manifest(str(tmp_path / "m.csv"))
    assert rows[0] == {"id": "x1", "source": f"{tmp_path}/a.png", "question": "is there a boat ?", "choices": '["yes", "no"]',
                       "manifest_fields": ""}
    assert rows[1]["id"] == "row-00000001" and rows[1]["choices"] == ""
    pq.write_table(pa.table({"image_uri": ["a.png"], "question": ["q ?"], "choices": [["a", "b"]]}), tmp_path / "m.parquet")
    assert read_manifest(str(tmp_path / "m.parquet"))[0]["choices"] == '["a", "b"]'
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\n')
    with pytest.raises(ValueError, match="image_uri"):
        read_manifest(str(tmp_path / "bad.jsonl"))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "json"])
def test_manifest_ids_and_fields_kept_exactly_as_written(tmp_path, fmt):
    recs = [{"id": i, "image_uri": f"{i}.png", "question": f"is {i} there ?", "choices": ["01", "1", "1e3"]}
            for i in AS_WRITTEN]
    path = tmp_path / f"m.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in recs))
    elif fmt == "json":
        path.write_text(json.dumps(recs))
    elif fmt == "csv":
        path.write_text("id,image_uri,question,choices\n" + "".join(
            f'{r["id"]},{r["image_uri"]},{r["question"]},"01,1,1e3"\n' for r in recs))
    else:
        pq.write_table(pa.table({"id": AS_WRITTEN, "image_uri": [r["image_uri"] for r in recs],
                                 "question": [r["question"] for r in recs], "choices": [r["choices"] for r in recs]}), path)
    rows = read_manifest(str(path))
    assert [r["id"] for r in rows] == AS_WRITTEN                       # "007" and "7" are two ids
    assert [r["question"] for r in rows] == [f"is {i} there ?" for i in AS_WRITTEN]
    assert [Path(r["source"]).name for r in rows] == [f"{i}.png" for i in AS_WRITTEN]
    assert {r["choices"] for r in rows} == {'["01", "1", "1e3"]'}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "json"])
def test_fields_the_job_does_not_read_are_carried_as_written(tmp_path, fmt):
    """A manifest's own columns (a label, a site, the truth) were dropped: results could be joined back by
    id only. They ride along as one JSON object, in the manifest's order; rows without any carry ""."""
    import datetime

    path = tmp_path / f"m.{fmt}"
    if fmt in ("jsonl", "json"):
        recs = [{"site": "Oslo", "id": "a", "image_uri": "a.png", "question": "q ?", "truth": "K7", "score": 0.50,
                 "tags": ["x", 2], "meta": {"camera": "é"}},
                {"id": "b", "image_uri": "b.png", "question": "q ?"}]
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) if fmt == "jsonl" else json.dumps(recs))
        want = {"site": "Oslo", "truth": "K7", "score": "0.5", "tags": ["x", "2"], "meta": {"camera": "é"}}
    elif fmt == "csv":
        path.write_text("site,id,image_uri,question,truth,score\nOslo,a,a.png,q ?,K7,0.50\n,b,b.png,q ?,,\n")
        want = {"site": "Oslo", "truth": "K7", "score": "0.50"}
    else:
        pq.write_table(pa.table({"site": ["Oslo", None], "id": ["a", "b"], "image_uri": ["a.png", "b.png"],
                                 "question": ["q ?", "q ?"], "score": [0.5, float("nan")], "raw": [b"\xff", b"ok"],
                                 "day": [datetime.date(2026, 12, 6), None]}), path)
        want = {"site": "Oslo", "score": 0.5, "raw": "base64:/w==", "day": "2026-12-06"}
    rows = {r["id"]: r for r in read_manifest(str(path))}
    assert json.loads(rows["a"]["manifest_fields"]) == want
    assert list(json.loads(rows["a"]["manifest_fields"])) == list(want)  # the manifest's order
    b = rows["b"]["manifest_fields"]
    if fmt == "csv":  # a CSV row has every column: its empty cells are empty text
        assert json.loads(b) == {"site": "", "truth": "", "score": ""}
    elif fmt == "parquet":
        assert json.loads(b) == {"site": None, "score": None, "raw": "ok", "day": None}  # NaN is no JSON
    else:
        assert b == ""
    assert MANIFEST_SCHEMA.field("manifest_fields").type == pa.string()


def test_jsonl_numbers_keep_their_literal_text(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"id": 7.50, "image_uri": "a.png", "question": 1e3, "choices": [0.10, 2]}\n'
                                      '{"id": 1e3, "image_uri": "b.png", "question": "q ?"}\n'
                                      'not json at all\n')
    rows = read_manifest(str(tmp_path / "m.jsonl"))
    assert rows[0]["id"] == "7.50" and rows[0]["question"] == "1e3" and rows[0]["choices"] == '["0.10", "2"]'
    assert rows[1]["id"] == "1e3"
    assert rows[2]["id"] == "row-00000002" and rows[2]["status"] == "error" and "line 3 is not JSON" in rows[2]["error"]


def test_manifest_parts_in_a_folder_and_skipped_files(tmp_path):
    parts = tmp_path / "manifest"
    (parts / "2024-01").mkdir(parents=True)
    (parts / "2024-02").mkdir()
    for month in ("2024-01", "2024-02"):
        (parts / month / "part.jsonl").write_text(json.dumps({"image_uri": "x.png", "question": "q ?"}))
    (parts / "README.txt").write_text("not a manifest")
    plan = plan_manifest(str(parts))
    assert [s["rel"] for s in plan.sources] == ["2024-01/part.jsonl", "2024-02/part.jsonl"]
    assert plan.skipped == [{"source": "README.txt", "reason": "not a manifest format this job reads: .txt"}]
    rows = read_manifest(str(parts))
    assert [r["id"] for r in rows] == ["2024-01/part.jsonl/row-00000000", "2024-02/part.jsonl/row-00000000"]
    assert rows[0]["source"] == f"{parts}/2024-01/x.png"


def test_duplicate_ids_refused_before_any_work(ray_local, random_tiny_dir, tmp_path, fast_policy):
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"id": i, "image_uri": "a.png", "question": "q ?"})
                                                for i in ["a", "007", "b", "7", "a"]))
    with pytest.raises(ManifestError, match="duplicate ids"):
        read_manifest(str(tmp_path / "m.jsonl"))
    opts = JobOptions(str(tmp_path / "m.jsonl"), str(tmp_path / "out"), str(random_tiny_dir), policy=fast_policy,
                      run_id="dupes")
    with pytest.raises(ValueError, match=r"duplicate ids in the input: 1 ids appear more than once \('a' x2\)"):
        run_job("vqa", opts, plan_manifest(opts.input))
    paths = RunPaths(str(tmp_path / "out"), "dupes")
    assert not Path(paths.staged).exists() and not Path(paths.marker).exists()   # nothing was answered
    assert not Path(paths.staging).exists() and not Path(paths.meta).exists()    # nor left behind: no plan, no lease folder
    # a given id that repeats one given to a row without an id: the message says where the other came from
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"id": "row-00000001", "image_uri": "a.png", "question": "q ?"}, {"image_uri": "b.png", "question": "q ?"}]))
    with pytest.raises(ValueError, match=r"'row-00000001' x2\); every row needs its own id; a row without an id "
                                         r"is given row-<n> \(its position\)"):
        run_job("vqa", JobOptions(**{**opts.__dict__, "run_id": "auto-dupes"}), plan_manifest(opts.input))


def test_vqa_local_every_item_once_with_error_rows(ray_local, random_tiny_dir, tmp_path, fast_policy):
    out = tmp_path / "out"
    opts = JobOptions(str(SAMPLES / "manifest.jsonl"), str(out), str(random_tiny_dir), policy=fast_policy, run_id="r1",
                      rows_per_part=4)
    rows = read_manifest(opts.input)
    summary = run_job("vqa", opts, plan_manifest(opts.input))
    df = _results(out, "r1")
    assert sorted(df["id"]) == sorted(r["id"] for r in rows)            # every item exactly once
    assert set(RESULT_COLUMNS) <= set(df.columns)
    errors = df.set_index("id")["error"]
    source = df.set_index("id")["source"]
    # named by its source, as every other reason is
    assert errors["bad-corrupt"].startswith(f"unreadable image: {source['bad-corrupt']}: ")
    assert errors["bad-missing"].startswith("missing object")
    assert errors["bad-question"] == "empty question"
    ok = df[df.status == "ok"]
    assert len(ok) == len(rows) - 3 and (ok.forward_passes <= 4).all() and ok.answer.str.len().gt(0).all()
    truth = {json.loads(line)["id"]: json.loads(line).get("answer") for line in open(opts.input)}
    carried = df.set_index("id")["manifest_fields"]  # the manifest's own "answer" (ground truth) rides along
    assert all(json.loads(carried[i] or "{}").get("answer") == truth[i] for i in truth)
    assert summary["items_in"] == summary["items_out"] == len(rows) and summary["items_error"] == 3
    assert summary["items_resumed"] == 0 and summary["skipped_sources"]["count"] == 0
    assert not (out / "_staging").exists()  # nothing of the run in flight is left once it is committed
    assert summary["errors_by_reason"] == {"unreadable image": 1, "missing object": 1, "empty question": 1}
    assert summary["forward_passes_mean"] == pytest.approx(ok.forward_passes.mean())
    assert summary["entropy_final_mean"] == pytest.approx(ok.entropy_final.mean())
    assert summary["early_exit_rate"] == pytest.approx((ok.entropy_trace.str.len() == 1).mean())
    assert ok.latency_ms.quantile(0.95) <= summary["latency_ms_p95"] <= ok.latency_ms.max() * 1.05 + 1
    meta = Path(RunPaths(str(out), "r1").meta)
    assert (meta / "_SUCCESS").exists() and (meta / "report.html").exists() and (meta / "entropy.png").exists()
    assert json.loads((meta / "summary.json").read_text())["items_ok"] == len(rows) - 3
    assert not Path(RunPaths(str(out), "r1").staging).exists()
    table = pq.read_table(RunPaths(str(out), "r1").results)
    never_answered = df[df.status == "error"]  # loader errors: no pass spent, no time measured
    assert (never_answered.forward_passes == 0).all() and never_answered.latency_ms.isna().all()
    for name in ("confidence", "entropy_initial", "entropy_final"):      # missing numbers are null, never NaN
        col = table.column(name)
        assert col.null_count == 3 and not pc.any(pc.is_nan(col)).as_py(), name

    again = run_job("vqa", opts, plan_manifest(opts.input))               # committed: a no-op
    assert again["run_id"] == "r1" and len(_results(out, "r1")) == len(rows)


def test_rerun_after_crash_does_not_duplicate(ray_local, random_tiny_dir, tmp_path, fast_policy):
    """A staged part that no checkpoint vouches for (what an interrupted write can leave) is not
    counted twice: the restarted run removes it and answers those items again."""
    out = tmp_path / "out"
    rows = read_manifest(str(SAMPLES / "manifest.jsonl"))[:3]
    paths = RunPaths(str(out), "crashed")
    Path(paths.staged).mkdir(parents=True)
    pq.write_table(pa.table({"id": [rows[0]["id"]] * 2, "status": ["ok", "ok"]}), Path(paths.staged) / "part-old.parquet")
    opts = JobOptions(str(SAMPLES / "manifest.jsonl"), str(out), str(random_tiny_dir), policy=fast_policy, run_id="crashed")
    summary = run_job("vqa", opts, [dict(r) for r in rows])
    df = _results(out, "crashed")
    assert sorted(df["id"]) == sorted(r["id"] for r in rows)
    assert summary["items_resumed"] == 0

    forced = run_job("vqa", JobOptions(**{**opts.__dict__, "force": True}), [dict(r) for r in rows])
    assert forced["items_resumed"] == 0 and sorted(_results(out, "crashed")["id"]) == sorted(r["id"] for r in rows)


def test_commit_killed_while_moving_parts_is_finished_by_the_next_start(ray_local, random_tiny_dir, tmp_path,
                                                                        fast_policy, monkeypatch):
    import pipelines.job as job
    from pipelines.runs import _move_tree

    out = tmp_path / "out"
    rows = read_manifest(str(SAMPLES / "manifest.jsonl"))[:4]
    opts = JobOptions(str(SAMPLES / "manifest.jsonl"), str(out), str(random_tiny_dir), policy=fast_policy,
                      run_id="halfway", rows_per_part=2)

    def killed_after_the_move(paths, summary, so=None):
        _move_tree(paths.staged, paths.results, so)
        raise KeyboardInterrupt("driver gone before the marker")

    monkeypatch.setattr(job, "commit", killed_after_the_move)
    with pytest.raises(KeyboardInterrupt):
        run_job("vqa", opts, [dict(r) for r in rows])
    paths = RunPaths(str(out), "halfway")
    assert Path(paths.results).exists() and not Path(paths.marker).exists()
    monkeypatch.undo()
    summary = run_job("vqa", opts, [dict(r) for r in rows])
    assert summary["items_resumed"] == len(rows)                          # nothing answered twice
    assert summary["items_per_second"] == 0  # this driver answered none: resumed rows are not its rate
    assert sorted(_results(out, "halfway")["id"]) == sorted(r["id"] for r in rows)


def test_a_commit_that_cannot_remove_its_staging_is_committed_and_the_next_start_removes_it(
        ray_local, random_tiny_dir, tmp_path, fast_policy, monkeypatch, capsys):
    """A file of the staging area the commit could not remove after its marker: "error: [Errno 1] Operation
    not permitted" (exit 2) for a committed run, then every later start advised a whole --force re-run."""
    import pipelines.runs as runs

    out = tmp_path / "out"
    rows = read_manifest(str(SAMPLES / "manifest.jsonl"))[:2]
    opts = JobOptions(str(SAMPLES / "manifest.jsonl"), str(out), str(random_tiny_dir), policy=fast_policy, run_id="left")
    paths = RunPaths(str(out), "left")

    def locked(paths, so=None):
        raise PermissionError(1, "Operation not permitted", f"{paths.staging}/plan/x.parquet")

    monkeypatch.setattr(runs, "remove_staging", locked)
    summary = run_job("vqa", opts, [dict(r) for r in rows])
    monkeypatch.undo()
    assert summary["items_ok"] + summary["items_error"] == 2 and Path(paths.marker).exists()
    assert Path(paths.staging).exists() and "could not be removed" in capsys.readouterr().out
    run_job("vqa", opts, [dict(r) for r in rows])
    said = capsys.readouterr().out
    assert "already committed" in said and "removed" in said and not Path(paths.staging).exists()
    assert not Path(paths.lease).exists() and len(_results(out, "left")) == 2


def test_a_new_run_names_the_unfinished_runs_it_leaves_behind(ray_local, random_tiny_dir, tmp_path, fast_policy, capsys):
    """A run killed before midnight UTC and retried after it (or after an edit of the input) is another run id:
    the one it was meant to resume stayed behind without a word."""
    out = tmp_path / "out"
    (out / "_staging" / "vqa-20261205-0a1b2c3d" / "plan").mkdir(parents=True)
    rows = read_manifest(str(SAMPLES / "manifest.jsonl"))[:1]
    run_job("vqa", JobOptions(str(SAMPLES / "manifest.jsonl"), str(out), str(random_tiny_dir), policy=fast_policy,
                              run_id="today"), [dict(r) for r in rows])
    said = capsys.readouterr().out
    assert (f"run today starts anew; 1 other unfinished run(s) under {out}/_staging: vqa-20261205-0a1b2c3d (run the "
            "same command with --run-id <id> to resume one, or remove its folder)") in said


def test_a_forced_run_that_fails_leaves_the_committed_run_as_it_was(ray_local, random_tiny_dir, tmp_path, fast_policy,
                                                                    monkeypatch, capsys):
    import pipelines.job as job

    out = tmp_path / "out"
    rows = read_manifest(str(SAMPLES / "manifest.jsonl"))[:3]
    opts = JobOptions(str(SAMPLES / "manifest.jsonl"), str(out), str(random_tiny_dir), policy=fast_policy, run_id="kept")
    run_job("vqa", opts, [dict(r) for r in rows])
    paths = RunPaths(str(out), "kept")
    before = _results(out, "kept").sort_values("id").reset_index(drop=True)
    summary_before = (Path(paths.meta) / "summary.json").read_text()
    report_before = (Path(paths.meta) / "report.html").read_text()

    def storage_gone(paths, summary, so=None):
        raise OSError("the store went away before the commit")

    monkeypatch.setattr(job, "commit", storage_gone)
    forced = JobOptions(**{**opts.__dict__, "force": True})
    with pytest.raises(OSError, match="went away"):
        run_job("vqa", forced, [dict(r) for r in rows])
    monkeypatch.undo()
    assert Path(paths.marker).exists() and (Path(paths.meta) / "summary.json").read_text() == summary_before
    assert (Path(paths.meta) / "report.html").read_text() == report_before  # the new one waits in staging
    assert (Path(paths.staged_meta) / "report.html").read_text() != report_before
    after = _results(out, "kept").sort_values("id").reset_index(drop=True)
    assert after[["id", "answer", "status"]].equals(before[["id", "answer", "status"]])
    capsys.readouterr()
    again = run_job("vqa", opts, [dict(r) for r in rows])                 # a plain re-run: still committed
    assert again["items_in"] == len(rows)
    said = capsys.readouterr().out
    assert "already committed" in said and f"removed {paths.staging}, which no driver writes" in said
    assert not Path(paths.staging).exists()     # what the failed --force staged: a new --force would clear it
    redone = run_job("vqa", forced, [dict(r) for r in rows])              # --force again: redone from scratch
    assert redone["items_resumed"] == 0 and sorted(_results(out, "kept")["id"]) == sorted(r["id"] for r in rows)
    assert not Path(paths.staging).exists()
    assert (Path(paths.meta) / "report.html").read_text() != report_before


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
    summary = run_job("vqa", opts, plan_manifest(opts.input))
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


def test_job_columns_conform_to_the_plan_schema():
    """A block whose job columns are all empty lists (an unreadable scene's ``bounds``) is cast to
    the plan's types, so every staged part has one schema."""
    from pipelines.job import conform, result_schema
    from pipelines.satellite import TILE_SCHEMA

    block = pa.table({"id": ["x"], "bounds": pa.array([[]]), "entropy_trace": pa.array([[]])})
    assert block.schema.field("bounds").type == pa.list_(pa.null())
    fixed = conform(block, schema=result_schema(TILE_SCHEMA))
    assert fixed.schema.field("bounds").type == pa.list_(pa.float64())
    assert fixed.schema.field("entropy_trace").type == pa.list_(pa.float64())
    scored = conform(pa.table({"confidence": [0.5, float("nan")], "answer": ["a", ""]}), schema=result_schema(TILE_SCHEMA))
    assert scored.column("confidence").to_pylist() == [0.5, None]       # SQL's avg() skips a null, not a NaN


def test_pipeline_bench_splits_latencies_in_thirds():
    from benchmarks.pipeline_throughput import by_thirds

    assert by_thirds([1, 1, 2, 2, 3, 3, 4]) == [1.0, 2.0, 3.3]   # the remainder goes to the last third
    assert by_thirds([5.0]) == [5.0]


def test_force_after_a_forced_commit_killed_half_way_starts_over(ray_local, random_tiny_dir, tmp_path, fast_policy,
                                                                 monkeypatch):
    """A forced commit killed after it dropped the old run leaves the new rows staged and nothing
    committed; --force again redoes the run from its own input, not from what the killed run staged."""
    import pipelines.job as job
    from pipelines.runs import _drop_replaced
    from pipelines.storage import write_text

    out = tmp_path / "out"
    rows = read_manifest(str(SAMPLES / "manifest.jsonl"))[:3]
    opts = JobOptions(str(SAMPLES / "manifest.jsonl"), str(out), str(random_tiny_dir), policy=fast_policy, run_id="half")
    run_job("vqa", opts, [dict(r) for r in rows])
    forced = JobOptions(**{**opts.__dict__, "force": True})

    def killed_after_the_drop(paths, summary, so=None):
        write_text(paths.replacing, "now", so)
        _drop_replaced(paths, so)
        raise OSError("killed half way through the commit")

    monkeypatch.setattr(job, "commit", killed_after_the_drop)
    with pytest.raises(OSError, match="half way"):
        run_job("vqa", forced, [dict(r) for r in rows[:2]])   # another input under the same run id
    monkeypatch.undo()
    paths = RunPaths(str(out), "half")
    assert not Path(paths.marker).exists() and Path(paths.staged).exists()
    redone = run_job("vqa", forced, [dict(r) for r in rows])
    assert redone["items_resumed"] == 0 and redone["items_in"] == len(rows)
    assert sorted(_results(out, "half")["id"]) == sorted(r["id"] for r in rows)


def test_manifest_rows_name_a_missing_image_uri_and_choices_that_are_not_a_list(tmp_path):
    """A row without ``image_uri`` (null or absent) and one whose choices are a mapping are error rows that say
    so, not a read of the manifest's own folder or a mapping's keys taken as choices; a bad line's row says
    "bad manifest line", so that every error groups under a fixed reason."""
    from pipelines.stats import error_reason

    lines = [{"id": "no-uri", "image_uri": None, "question": "q ?"},
             {"id": "map", "image_uri": "a.png", "question": "q ?", "choices": {"a": 1, "b": 2}},
             {"id": "blank", "image_uri": "a.png", "question": "q ?", "choices": "yes,,no"},
             {"id": "fine", "image_uri": "a.png", "question": "q ?", "choices": ["yes", "no"]}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n{not json\n")
    rows = {r["id"]: r for r in read_manifest(str(tmp_path / "m.jsonl"))}
    assert rows["no-uri"]["status"] == "error" and rows["no-uri"]["error"].startswith("missing image_uri: row 0 of ")
    assert rows["map"]["error"] == "unreadable choices: choices must be a list or a comma-separated string, got a dict"
    assert rows["blank"]["choices"] == '["yes", "", "no"]'  # kept for the predictor to name ("bad choices: empty choice")
    assert "status" not in rows["fine"]
    bad = [r for r in rows.values() if r["id"].startswith("row-")]
    assert len(bad) == 1 and bad[0]["error"].startswith("bad manifest line: ") and "line 5 is not JSON" in bad[0]["error"]
    assert {error_reason(r["error"]) for r in rows.values() if r.get("status") == "error"} == {
        "missing image_uri", "unreadable choices", "bad manifest line"}


def test_predictor_errors_group_under_fixed_reasons(random_tiny_dir):
    """Bad choices reach the model stage as "bad choices: ..."; a failure inside the model as "model error: ...",
    the exception's class after it: ``errors_by_reason`` counts kinds, not class names or paths."""
    from pipelines.stages import PASSING_FAILURES, SpotePredictor
    from pipelines.stats import error_reason

    predictor = SpotePredictor(model=str(random_tiny_dir), policy={"budget": 3, "group_size": 2})
    image = Image.new("RGB", (96, 80), (40, 90, 160))
    row = {"id": "a", "source": "a.png", "question": "is there a boat ?", "status": "ok", "error": "",
           "pixels": image.tobytes(), "height": 80, "width": 96}
    blank = predictor.predict({**row, "choices": '["yes", "", "no"]'})
    assert blank["status"] == "error" and blank["error"] == "bad choices: empty choice in ['yes', '', 'no']"
    broken = predictor.predict({**row, "choices": "", "height": 0, "width": 96})  # no pixels to make an image of
    assert broken["status"] == "error" and broken["error"].startswith("model error: ")
    assert {error_reason(blank["error"]), error_reason(broken["error"])} == {"bad choices", "model error"}
    # a question the model cannot read whole is the input's fault, lasting: its own reason, not a passing one
    long = predictor.predict({**row, "choices": "", "question": "what is the code in the account field ? " * 80})
    assert long["status"] == "error" and error_reason(long["error"]) == "question too long", long["error"]
    assert "shorten the question" in long["error"] and error_reason(long["error"]) not in PASSING_FAILURES
    for question in ("what is in the <image> box ?", "x" * 5000):  # a marker of the model's own; <unk> alone
        unread = predictor.predict({**row, "choices": "", "question": question})
        assert error_reason(unread["error"]) == "unreadable question" not in PASSING_FAILURES, unread["error"]


@pytest.mark.slow
def test_storage_secrets_from_the_environment_reach_the_actors_but_no_log(s3, tmp_path, files_holding):
    """A fresh process reading its manifest and images from S3 with credentials in the environment only:
    the local Ray it starts inherits them (every item is answered), and the secret is in no file Ray
    writes. Handing them to Ray as ``runtime_env`` env_vars wrote them, in plain text, to the
    world-readable ``runtime_env_agent.log``."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    secret = "spote-test-secret-4f1d2c"
    for name in ("a.png", "b.png"):
        s3.put(str(SAMPLES / "test-7-00000.png"), f"spote/env-secret/{name}")
    s3.pipe("spote/env-secret/m.jsonl", b'{"id": "a", "image_uri": "a.png", "question": "what letter ?", '
                                        b'"choices": "A,B,C"}\n{"id": "b", "image_uri": "b.png", "question": "is it ?"}\n')
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "PYTHONPATH": str(SAMPLES.parents[2]), "OMP_NUM_THREADS": "1", "RAY_TMPDIR": ray_tmp,
           "RAY_USAGE_STATS_ENABLED": "0", "AWS_SECRET_ACCESS_KEY": secret}
    out = tmp_path / "out"
    try:
        res = subprocess.run([sys.executable, "-m", "pipelines.vqa", "--input", "s3://spote/env-secret/m.jsonl",
                              "--output", str(out), "--run-id", "env", "--policy", '{"budget": 4}'],
                             capture_output=True, text=True, env=env, cwd=SAMPLES.parents[2], timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        df = _results(out, "env").set_index("id")
        assert sorted(df.index) == ["a", "b"] and (df.status == "ok").all(), df.error.tolist()
        assert any(Path(ray_tmp).rglob("*.log"))  # Ray logged here
        assert not files_holding(secret, out, ray_tmp) and secret not in res.stdout + res.stderr
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_an_edited_manifest_is_a_new_run_not_the_committed_one(ray_local, random_tiny_dir, tmp_path, fast_policy):
    """The default run id hashed the input's path, not what it holds: a manifest edited, or given a new
    row, and run again the same day got "already committed; nothing to do" and the old answers. The
    input's listing (size, mtime, ETag of each file) is now part of the run's settings: the default run id
    changes with it, and a run id given again (committed, or killed and resumed) refuses the edited input,
    naming it, instead of answering the old one."""
    import os

    image = SAMPLES / "test-7-00000.png"
    manifest = tmp_path / "m.jsonl"
    first = [{"id": "a", "image_uri": str(image), "question": "what letter ?", "choices": "A,B,C"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in first))
    out = tmp_path / "out"
    opts = JobOptions(str(manifest), str(out), str(random_tiny_dir), policy=fast_policy)
    one = run_job("vqa", opts, plan_manifest(opts.input))
    assert one["items_in"] == 1 and one["settings"]["input_files"].startswith("1 file, ")
    assert run_job("vqa", opts, plan_manifest(opts.input))["run_id"] == one["run_id"]  # unchanged: the same run
    with manifest.open("a") as f:
        f.write(json.dumps({"id": "b", "image_uri": str(image), "question": "is it ?"}) + "\n")
    os.utime(manifest, (1e9, 1e9))  # a second edit within the file system's mtime resolution still shows
    two = run_job("vqa", opts, plan_manifest(opts.input))
    assert two["run_id"] != one["run_id"] and two["items_in"] == 2
    assert sorted(_results(out, two["run_id"])["id"]) == ["a", "b"]
    pinned = JobOptions(**{**opts.__dict__, "run_id": one["run_id"]})
    with pytest.raises(ValueError, match=rf"run {one['run_id']} is committed with other settings \(input_files "
                                         r"'1 file, .* -> '1 file, .*\): ask for it with the same ones"):
        run_job("vqa", pinned, plan_manifest(opts.input))


@pytest.mark.parametrize("name, content, says", [
    ("obj.json", b'{"id": "o", "image_uri": "a.png", "question": "q ?"}', "must be a list of objects, got a JSON object"),
    ("empty.json", b"", "must be a list of objects, got an empty file"),
    ("image.json", None, "must be a list of objects, got no JSON array"),
    ("image.jsonl", None, "line 1 is not UTF-8 text"),
    ("image.parquet", None, "cannot be read as a PARQUET manifest"),
    ("image.csv", None, "the header line is not UTF-8 text; is it a CSV manifest?"),
])
def test_a_part_that_is_no_manifest_is_one_error_naming_it_before_any_work(tmp_path, name, content, says):
    """An object or an empty file named .json, or an image named as a manifest, stopped the job inside a
    Ray task with four tracebacks (or one line naming no file); it is refused while the driver plans."""
    path = tmp_path / name
    path.write_bytes((SAMPLES / "test-7-00000.png").read_bytes() if content is None else content)
    with pytest.raises(ManifestError) as err:
        plan_manifest(str(path))
    assert str(err.value).startswith(str(path)) and says in str(err.value) and "\n" not in str(err.value)


def test_a_bad_line_or_field_deep_in_a_manifest_is_that_rows_error(tmp_path):
    """Problems of one line or one field are that row's error row, wherever they are: a byte that is not
    UTF-8 past the first 8 KB (it stopped the whole file), a line nested past the decoder's recursion
    limit (it killed the job), an element of a .json array that is no object, a CSV row split into more
    fields than the header (its extra text was dropped and the row answered), a field that is not text
    (its Python form was asked: ``{'text': 'what ?'}``), Parquet binary (decoded, not ``b'...'``)."""
    good = [json.dumps({"id": f"g{i}", "image_uri": "a.png", "question": "what letter ?"}) for i in range(200)]
    lines = [g.encode() for g in good[:150]] + [
        b'{"id": "latin1", "image_uri": "a.png", "question": "caf\xe9 ?"}',
        b'{"id": "deep", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        json.dumps({"id": "nested-question", "image_uri": "a.png", "question": {"text": "what ?"}}).encode(),
        json.dumps({"id": "listed-uri", "image_uri": ["a.png"], "question": "q ?"}).encode(),
        json.dumps({"id": "nested-choices", "image_uri": "a.png", "question": "q ?", "choices": [["A", "B"], "C"]}).encode(),
    ] + [g.encode() for g in good[150:]]
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    rows = read_manifest(str(tmp_path / "m.jsonl"))
    assert len(rows) == 205 and sum("status" not in r for r in rows) == 200
    errors = [r["error"] for r in rows if r.get("status") == "error"]
    assert errors[0].startswith("bad manifest line: ") and "line 151 is not UTF-8 text" in errors[0]
    assert "line 152 is nested too deeply to read" in errors[1]
    by_id = {r["id"]: r for r in rows}
    assert by_id["nested-question"]["error"].endswith("question must be text, got a dict")
    assert by_id["listed-uri"]["error"].startswith("bad manifest field: row 153 of ")
    assert by_id["listed-uri"]["error"].endswith("image_uri must be text, got a list")
    assert by_id["nested-choices"]["error"] == "unreadable choices: choice 1 must be text, got a list"

    (tmp_path / "a.json").write_text(json.dumps([{"id": "x", "image_uri": "a.png", "question": "q ?"}, 5]))
    rows = read_manifest(str(tmp_path / "a.json"))
    assert rows[0]["id"] == "x" and "status" not in rows[0]
    assert rows[1]["status"] == "error" and rows[1]["error"].endswith("element 1 is a string or a number, not an object")

    long_question = "is it " + "very " * 40_000 + "red ?"  # 200,000 characters: over the csv module's own limit
    (tmp_path / "m.csv").write_text(f"id,image_uri,question\nlong,a.png,{long_question}\n"
                                    "split,a.png,what letter, if any, is in the red box ?\nfine,a.png,q ?\n")
    rows = {r["id"]: r for r in read_manifest(str(tmp_path / "m.csv"))}
    assert rows["long"]["question"] == long_question and "status" not in rows["long"]
    split = next(r for r in rows.values() if r.get("status") == "error")
    assert "line 3 has 5 fields, the header 3" in split["error"] and "fine" in rows

    pq.write_table(pa.table({"id": pa.array([b"b1", b"b2"], pa.binary()),
                             "image_uri": pa.array([b"a.png", b"\xff.png"], pa.binary()),
                             "question": pa.array([b"what ?", b"q ?"], pa.binary())}), tmp_path / "m.parquet")
    rows = read_manifest(str(tmp_path / "m.parquet"))
    assert (rows[0]["id"], Path(rows[0]["source"]).name, rows[0]["question"]) == ("b1", "a.png", "what ?")
    assert rows[1]["error"].endswith("image_uri is bytes that are not UTF-8 text")


def test_a_part_that_stops_reading_part_way_keeps_its_rows_and_says_where(tmp_path):
    """A .json array cut short fails only when read whole, in its task: one error row names the part and
    why, instead of a failed job; the other parts' rows stand."""
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"id": "a1", "image_uri": "a.png", "question": "q ?"}) + "\n")
    (folder / "b.json").write_text(json.dumps([{"id": "b1", "image_uri": "a.png", "question": "q ?"}] * 3)[:60])
    rows = read_manifest(str(folder))
    assert [r["id"] for r in rows] == ["a1", "b.json/unreadable"]
    assert rows[1]["status"] == "error" and rows[1]["error"].startswith(f"bad manifest: {folder}/b.json: ")
    assert rows[1]["manifest_fields"] == ""  # as every other row without such fields, not null


def test_spreadsheet_exports_read_as_the_spreadsheet_shows_them(tmp_path):
    """Excel's trailing empty columns (``id,image_uri,question,,``) stopped the job as a header naming ''
    twice, one of them gave every row ``{"": ""}`` fields, its ``,,,`` rows became error rows; a
    semicolon-separated export was refused as one column. Blank header cells are named by position and
    kept only where a row fills them; rows of empty cells are blank lines; ``;`` or tab is the delimiter
    where the header splits into the needed columns only there."""
    from pipelines.vqa import read_manifest

    (tmp_path / "excel.csv").write_text("id,image_uri,question,,\r\na,a.png,what ?,,\r\n,,,,\r\nb,b.png,q ?,,note\r\n"
                                        ",,,,\r\n")
    rows = read_manifest(str(tmp_path / "excel.csv"))
    assert [(r["id"], r["question"], r["manifest_fields"], r.get("status")) for r in rows] == [
        ("a", "what ?", "", None), ("b", "q ?", '{"column_5": "note"}', None)]
    for sep in (";", "\t"):
        (tmp_path / "eu.csv").write_text(sep.join(["id", "image_uri", "question", "choices"]) + "\n"
                                         + sep.join(["a", "a.png", "how much, in euros ?", "1,5"]) + "\n")
        rows = read_manifest(str(tmp_path / "eu.csv"))
        assert [(r["id"], r["question"], json.loads(r["choices"])) for r in rows] == [
            ("a", "how much, in euros ?", ["1", "5"])], sep
    (tmp_path / "quoted.csv").write_text('id;"name, full";image_uri;question\na;"Doe, J";a.png;what ?\n')
    (tmp_path / "spaced.csv").write_text('id, image_uri, question\na, a.png, "what, if any ?"\n')
    for name in ("quoted.csv", "spaced.csv"):   # a comma inside a quoted name; a space after each comma
        rows = read_manifest(str(tmp_path / name))
        assert [(r["id"], Path(r["source"]).name, r.get("status")) for r in rows] == [("a", "a.png", None)], name
    assert rows[0]["question"] == "what, if any ?"
    (tmp_path / "one.csv").write_text("id;image_uri;q\na;a.png;x\n")   # splits, but not into the needed columns
    with pytest.raises(ManifestError, match="manifest needs columns image_uri and question"):
        plan_manifest(str(tmp_path / "one.csv"))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_column_named_twice_is_refused_naming_it(tmp_path, fmt):
    """A header ``image_uri,question,x,x``: a record keeps one value per name, so the first ``x`` column
    was lost from ``manifest_fields`` without a word."""
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        path.write_text("image_uri,question,x,x,id\na.png,q ?,first,second,a\n")
    else:
        pq.write_table(pa.Table.from_arrays([pa.array(["a.png"]), pa.array(["q ?"]), pa.array(["first"]),
                                             pa.array(["second"])], names=["image_uri", "question", "x", "x"]), path)
    with pytest.raises(ManifestError, match=f"^{path}: the header names 'x' more than once"):
        plan_manifest(str(path))


def _write_manifest(path: Path, rec: dict) -> Path:
    """One record as a .jsonl, .csv or .parquet manifest (by ``path``'s suffix)."""
    if path.suffix == ".jsonl":
        path.write_text(json.dumps(rec) + "\n")
    elif path.suffix == ".csv":
        path.write_text(",".join(rec) + "\n" + ",".join(f'"{v}"' for v in rec.values()) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist([rec]), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("column,field", [("Choices", "choices"), ("choice", "choices"), ("options", "choices"),
                                          ("ID", "id")])
def test_a_column_that_spells_a_read_field_otherwise_is_refused_naming_both(tmp_path, fmt, column, field):
    """``Choices`` (or ``choice``, ``options``) beside no ``choices`` was carried in manifest_fields without a
    word, and every yes/no question answered as an open one ("" at confidence 0, status ok)."""
    rec = {"image_uri": "a.png", "question": "is the red box ticked ?", column: "yes,no"}
    path = _write_manifest(tmp_path / f"m.{fmt}", rec)
    with pytest.raises(ManifestError, match=f"^{path}: '{column}' is not read: the job reads '{field}' .*rename it"):
        plan_manifest(str(path))
    rec[field] = rec.pop(column)   # the field itself is read, and a column that is only data is carried
    row = read_manifest(str(_write_manifest(path, {**rec, "notes": "options seen"})))[0]
    assert row["manifest_fields"] == '{"notes": "options seen"}'
    assert (json.loads(row["choices"]) if field == "choices" else row["id"]) == (["yes", "no"] if field == "choices"
                                                                               else "yes,no")


def test_a_record_past_the_checked_ones_that_spells_choices_otherwise_is_its_own_error_row(tmp_path):
    """The part's check reads its first records; a ``Choices`` record after them was carried as data and its
    closed question answered as an open one. It is that row's error, naming the column."""
    good = [{"id": f"r{i}", "image_uri": "a.png", "question": "q ?", "choices": ["yes", "no"]} for i in range(150)]
    late = {"id": "late", "image_uri": "a.png", "question": "is it ticked ?", "Choices": ["yes", "no"]}
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*good, late]) + "\n")
    plan_manifest(str(path))  # the first records are right: the part is planned
    rows = {r["id"]: r for r in read_manifest(str(path))}
    assert rows["late"]["status"] == "error" and rows["late"]["error"] == (
        f"bad manifest field: row 150 of {path}: 'Choices' is not read: the job reads 'choices' (column names are "
        "lower case): rename it")
    assert all(rows[f"r{i}"].get("status") is None for i in range(150))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):   # its request lines would land in the test's captured stderr
        pass


@contextlib.contextmanager
def _http_folder(folder: Path, handler: type = _Quiet):
    """``folder`` served over HTTP on a free local port by ``handler`` (a quiet ``SimpleHTTPRequestHandler``
    unless given); yields the base URL, ``http://127.0.0.1:<port>``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_manifest_behind_a_signed_url_is_read_and_its_signature_not_recorded(ray_local, random_tiny_dir, tmp_path,
                                                                               fast_policy, files_holding):
    """An http(s) manifest URL with a query (a presigned URL's signature, ``?token=``) was taken for an
    unknown format (its name ended ``.jsonl?token=...``: an empty run) and recorded whole in the summary.
    It is read, and the summary and report hold the URL without its query."""
    secret = "SECRETTOKEN42"
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "m.jsonl").write_text(json.dumps({"id": "h1", "image_uri": str(SAMPLES / "test-7-00000.png"),
                                                          "question": "what letter ?", "choices": "A,B,C"}) + "\n")
    out = tmp_path / "out"
    with _http_folder(tmp_path / "www") as base:
        url = f"{base}/m.jsonl?token={secret}"
        summary = run_job("vqa", JobOptions(url, str(out), str(random_tiny_dir), policy=fast_policy, run_id="signed"),
                          plan_manifest(url))
    assert summary["items_in"] == summary["items_ok"] == 1
    assert summary["settings"]["input"] == url.split("?")[0]
    assert not files_holding(secret, out)


def test_credentials_in_image_urls_reach_no_report_or_error_text(ray_local, random_tiny_dir, tmp_path, fast_policy):
    """A presigned image URL's signature and a URL's user:password were printed in report.html (cards, links,
    the errors table) and stored in the error column; a ``file:/a`` source was linked as a path under the
    driver's folder. The report and error texts name the URL without them; ``source`` keeps it whole, to read
    it again."""
    import glob

    www = tmp_path / "www"
    www.mkdir()
    (www / "a.png").write_bytes((SAMPLES / "test-7-00000.png").read_bytes())
    out = tmp_path / "out"
    with _http_folder(www) as base:
        host = base.removeprefix("http://")
        sources = {"signed": f"http://{host}/a.png?X-Amz-Signature=SECRETSIG1", "password": f"http://alice:SECRETPW@{host}/a.png",
                   "gone": f"http://{host}/gone.png?X-Amz-Signature=SECRETSIG2", "fileuri": f"file:{www}/a.png"}
        (tmp_path / "m.jsonl").write_text("".join(json.dumps({"id": k, "image_uri": v, "question": "what letter ?",
                                                              "choices": "A,B"}) + "\n" for k, v in sources.items()))
        run_job("vqa", JobOptions(str(tmp_path / "m.jsonl"), str(out), str(random_tiny_dir), policy=fast_policy,
                                  run_id="urls"), plan_manifest(str(tmp_path / "m.jsonl")))
    rows = {r["id"]: r for r in pq.read_table(out / "results").to_pylist()}
    assert {k: r["status"] for k, r in rows.items()} == {"signed": "ok", "password": "ok", "gone": "error", "fileuri": "ok"}
    assert rows["gone"]["error"] == f"missing object: http://{host}/gone.png"
    assert [rows[k]["source"] for k in sources] == list(sources.values())
    page = Path(glob.glob(str(out / "_runs" / "urls" / "report.html"))[0]).read_text()
    assert not re.findall(r"SECRET\w+", page)
    assert f"http://{host}/a.png" in page and f"href='file:{www}/a.png'" in page


def test_an_http_input_the_server_refuses_is_one_line_without_its_credential(tmp_path):
    """A 403 on an http(s) --input ended in 150 lines of traceback ending with the URL's signature; a 404
    on a named manifest committed an empty run (exit 0); an image URL written ``HTTP://`` was "Protocol not
    known"."""
    from typer.testing import CliRunner

    from pipelines import vqa
    from pipelines.stages import ImageLoader

    class Refusing(_Quiet):
        def do_GET(self):
            if self.path.startswith("/403/"):
                self.send_error(403)
            else:
                super().do_GET()

        do_HEAD = do_GET

    (tmp_path / "a.png").write_bytes((SAMPLES / "test-7-00000.png").read_bytes())
    with _http_folder(tmp_path, Refusing) as base:
        host = base.removeprefix("http://")
        for path, says in (("403/m.jsonl?X-Amz-Signature=SECRET", f"error: --input http://{host}/403/m.jsonl: access "
                                                                   "denied HTTP 403"),
                           ("none/m.jsonl?token=SECRET", f"error: --input http://{host}/none/m.jsonl: no such object, "
                                                         "and no objects under it")):
            res = CliRunner().invoke(vqa.app, ["--input", f"http://{host}/{path}", "--output", str(tmp_path / "out")])
            assert res.exit_code == 2 and res.stderr.strip() == says and "SECRET" not in res.output, res.output
        row = ImageLoader().load({"id": "x", "source": f"HTTP://{host}/a.png", "question": "q ?", "choices": ""})
        assert row["status"] == "ok", row.get("error")
    assert not (tmp_path / "out").exists()


def test_file_uris_are_percent_decoded_as_rfc_8089_says(tmp_path):
    """``Path.as_uri()`` writes ``file:///.../sp%20ace.png``; it was looked up with the ``%20`` kept and
    became a "missing object" row. File URIs are decoded (``file://localhost/`` is local too); written
    unencoded they still read."""
    from pipelines.stages import ImageLoader

    image = tmp_path / "sp ace" / "a b#1.png"
    image.parent.mkdir()
    image.write_bytes((SAMPLES / "test-7-00000.png").read_bytes())
    uris = [image.as_uri(), image.as_uri().replace("file://", "file://localhost"), f"file://{image}",
            image.as_uri().replace("file://", "file:")]  # file:/a, RFC 8089's form without an authority
    assert "%20" in uris[0] and "%23" in uris[0]
    for uri in uris:
        out = ImageLoader().load({"id": "x", "source": uri, "question": "what letter ?", "choices": ""})
        assert out["status"] == "ok", (uri, out.get("error"))
    # in a manifest elsewhere, each is the file it names (file:/a was joined to the manifest's folder)
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"id": str(i), "image_uri": u, "question": "q ?"})
                                                for i, u in enumerate(uris)))
    assert [r["source"] for r in read_manifest(str(tmp_path / "m.jsonl"))] == uris
    other_host = ImageLoader().load({"id": "x", "source": f"file://fileserver{image}", "question": "q ?", "choices": ""})
    assert other_host["status"] == "error" and "on another host (fileserver)" in other_host["error"]
    literal = tmp_path / "saved%20as%20is.png"  # a download kept under its encoded name, written unencoded
    literal.write_bytes(image.read_bytes())
    out = ImageLoader().load({"id": "x", "source": f"file://{literal}", "question": "q ?", "choices": ""})
    assert out["status"] == "ok", out.get("error")


def test_gzipped_manifests_are_read_and_an_empty_csv_is_an_empty_part(tmp_path):
    """``m.jsonl.gz`` was skipped as an unknown format (an empty run, exit 0); gzipped JSONL, JSON and CSV
    are read as they are. A file named .gz that is not gzip is refused naming it. An empty CSV has no
    rows, as an empty JSONL part (it was refused for its missing header)."""
    import gzip

    recs = [{"id": "g1", "image_uri": "a.png", "question": "what ?"}, {"id": "g2", "image_uri": "b.png", "question": "q ?"}]
    (tmp_path / "m.jsonl.gz").write_bytes(gzip.compress("\n".join(json.dumps(r) for r in recs).encode()))
    (tmp_path / "m.json.gz").write_bytes(gzip.compress(json.dumps(recs).encode()))
    (tmp_path / "m.csv.gz").write_bytes(gzip.compress(b"id,image_uri,question\ng1,a.png,what ?\ng2,b.png,q ?\n"))
    for name in ("m.jsonl.gz", "m.json.gz", "m.csv.gz"):
        rows = read_manifest(str(tmp_path / name))
        assert [(r["id"], Path(r["source"]).name, r["question"]) for r in rows] == [
            ("g1", "a.png", "what ?"), ("g2", "b.png", "q ?")], name
    (tmp_path / "plain.jsonl.gz").write_text(json.dumps(recs[0]))
    with pytest.raises(ManifestError, match=r"plain\.jsonl\.gz: cannot be read as a GZ manifest: Not a gzipped file"):
        plan_manifest(str(tmp_path / "plain.jsonl.gz"))
    (tmp_path / "empty.csv").write_text("")
    assert read_manifest(str(tmp_path / "empty.csv")) == []


def test_a_uri_naming_a_bucket_is_a_missing_object_not_a_passing_failure(s3):
    """``s3://bucket`` (no key) was ``could not read: ParamValidationError``, a passing failure a nightly job
    retries for ever; it names no object."""
    from pipelines.stages import ImageLoader

    so = {"key": "testing", "secret": "testing"}
    for uri in ("s3://spote", "s3://spote/"):
        out = ImageLoader(storage_options=so).load({"id": "x", "source": uri, "question": "what ?", "choices": ""})
        assert out["status"] == "error" and out["error"] == f"missing object: {uri}", out["error"]


def test_a_signed_manifest_url_is_named_without_its_query_in_rows_and_messages(tmp_path):
    """Error rows and messages named the manifest by its full URL, signature included; a .json part whose
    first element lacks the needed columns committed a run of one error row where a .jsonl was refused; a
    corrupt gzip stream (zlib.error) escaped every handler."""
    import gzip

    secret = "SECRETSIG"
    www = tmp_path / "www"
    www.mkdir()
    (www / "m.jsonl").write_text(json.dumps({"id": "a", "image_uri": None, "question": "q ?"}) + "\n" +
                                 json.dumps({"id": "b", "image_uri": "x.png", "question": {"k": 1}}) + "\n")
    (www / "cols.json").write_text(json.dumps([{"img": "x.png", "q": "q ?"}]))
    with _http_folder(www) as base:
        rows = read_manifest(f"{base}/m.jsonl?X-Amz-Signature={secret}")
        with pytest.raises(ManifestError) as err:
            plan_manifest(f"{base}/cols.json?X-Amz-Signature={secret}")
    assert [r["status"] for r in rows] == ["error", "error"]
    assert rows[0]["error"] == f"missing image_uri: row 0 of {base}/m.jsonl has none"
    assert all(secret not in json.dumps(r) for r in rows)
    assert str(err.value) == f"manifest needs columns image_uri and question; {base}/cols.json has ['img', 'q']"

    raw = bytearray(gzip.compress("\n".join(json.dumps({"id": f"r{i}", "image_uri": "a.png", "question": "q ?"})
                                            for i in range(2000)).encode()))
    raw[10:50] = bytes(40)  # the deflate stream's start garbled: zlib.error, not a gzip header error
    (tmp_path / "bad.jsonl.gz").write_bytes(bytes(raw))
    with pytest.raises(ManifestError, match=r"bad\.jsonl\.gz: cannot be read as a GZ manifest"):
        plan_manifest(str(tmp_path / "bad.jsonl.gz"))


def test_manifest_choices_are_stored_as_the_model_is_asked_them(tmp_path):
    """``["A ", " B"]`` was asked as A, B (the answer ``B``) but stored with its spaces: the answer was not one
    of the row's own choices, and the report showed two questions for one."""
    from pipelines.vqa import read_manifest

    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"id": str(i), "image_uri": "a.png", "question": "which ?",
                                                            "choices": c})
                                                for i, c in enumerate([["A ", " B"], '["A ", "\\tB"]', "A , B"])))
    assert [json.loads(r["choices"]) for r in read_manifest(str(tmp_path / "m.jsonl"))] == [["A", "B"]] * 3
    (tmp_path / "pandas.csv").write_text("id,image_uri,question,choices\na,a.png,which ?,\"['A', 'B']\"\n")
    row = read_manifest(str(tmp_path / "pandas.csv"))[0]   # pandas' to_csv of a list column
    assert row["status"] == "error" and row["error"].startswith("unreadable choices: \"['A', 'B']\" is not a JSON list")
    assert row["error"].endswith('write it as JSON, ["A", "B"] (double quotes), or as A,B')


def test_manifest_choices_are_stored_as_written(tmp_path):
    """No ``\\u`` escapes in the ``choices`` column: a query for the text the user wrote finds the row."""
    from pipelines.vqa import read_manifest

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image_uri": "a.png", "question": "which ?", "choices": ["日本", "ελλάδα"]},
                                   ensure_ascii=True) + "\n" + json.dumps({"id": "b", "image_uri": "b.png",
                                                                          "question": "which ?", "choices": "日本,x"}) + "\n")
    rows = read_manifest(str(manifest))
    assert ["日本" in r["choices"] and "\\u" not in r["choices"] for r in rows] == [True, True]
    assert [json.loads(r["choices"]) for r in rows] == [["日本", "ελλάδα"], ["日本", "x"]]


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_a_first_record_lacking_a_field_is_that_rows_error_and_wrong_names_refuse_the_part(tmp_path, fmt):
    """JSON records each carry their own keys: a first record without ``question`` (or ``image_uri``) is that
    row's error and the rows after it are read; a part none of whose first records has both fields names
    them otherwise and is refused before any work, in one line."""
    def write(name, recs):
        path = tmp_path / f"{name}.{fmt}"
        path.write_text("\n".join(json.dumps(r) for r in recs) if fmt == "jsonl" else json.dumps(recs))
        return str(path)

    good = [{"id": f"r{i}", "image_uri": "a.png", "question": "q ?"} for i in range(3)]
    rows = read_manifest(write("m", [{"id": "nq", "image_uri": "a.png"}, {"id": "nu", "question": "q ?"}, *good]))
    by_id = {r["id"]: r for r in rows}
    assert len(rows) == 5 and all("status" not in by_id[f"r{i}"] for i in range(3))
    assert by_id["nq"]["error"] == f"missing question: row 0 of {tmp_path}/m.{fmt} has none"
    assert by_id["nu"]["error"] == f"missing image_uri: row 1 of {tmp_path}/m.{fmt} has none"
    with pytest.raises(ManifestError, match=r"needs columns image_uri and question; .* has \['img', 'q'\]"):
        plan_manifest(write("cols", [{"img": "a.png", "q": "q ?"}] * 5))


def test_a_home_relative_image_path_is_read_from_the_home_folder(tmp_path, monkeypatch):
    """``~/x.png`` in a manifest is the home folder's x.png, as a shell reads it (not a folder named ``~``
    beside the manifest)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "image_uri": "~/x.png", "question": "q ?"}))
    assert read_manifest(str(tmp_path / "m.jsonl"))[0]["source"] == f"{tmp_path}/home/x.png"


@pytest.mark.parametrize("gz", [False, True])
def test_a_csv_line_in_another_encoding_is_that_rows_error_and_every_other_row_is_read(tmp_path, gz):
    """One Latin-1 byte (an Excel export) in row 150 of a CSV: the strict decoder failed the chunk around it,
    so the rows from 139 on were one `bad manifest` row naming row 138; in a small file the whole job was
    refused. Only that line is an error row (its id kept); a header that is not UTF-8 refuses the part."""
    import gzip

    lines = [b"id,image_uri,question"] + [f"r{i},a.png,what is {i} ?".encode() for i in range(300)]
    lines[151] = b"r150,a.png,caf\xe9 ?"
    data = b"\n".join(lines) + b"\n"
    name = tmp_path / ("m.csv.gz" if gz else "m.csv")
    name.write_bytes(gzip.compress(data) if gz else data)
    rows = read_manifest(str(name))
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(300)]
    bad = [r for r in rows if r.get("status") == "error"]
    assert [r["id"] for r in bad] == ["r150"]
    assert bad[0]["error"] == f"bad manifest line: {name}: line 152 is not UTF-8 text (saved in another encoding?)"
    (tmp_path / "h.csv").write_bytes(b"id,image_\xe9uri,question\nr0,a.png,q ?\n")
    with pytest.raises(ManifestError, match="the header line is not UTF-8 text"):
        plan_manifest(str(tmp_path / "h.csv"))


def test_a_folder_or_a_path_through_a_file_is_a_lasting_error_not_a_passing_one(tmp_path):
    """A folder as ``image_uri`` was "could not read: ... IsADirectoryError", a passing failure that a nightly
    job reads again every night; a path through a file ("a.png/b.png") likewise. They are an unreadable
    image, which lasts, and a missing object (nothing is there: the documents ledger reads again a document
    listed and then gone, which may come back)."""
    from pipelines.stages import PASSING_FAILURES, ImageLoader
    from pipelines.stats import error_reason

    image = tmp_path / "a.png"
    image.write_bytes((SAMPLES / "test-7-00000.png").read_bytes())
    said = {src: ImageLoader().load({"id": "x", "source": src, "question": "q ?", "choices": ""})["error"]
            for src in (str(tmp_path), f"{tmp_path}/", f"{image}/b.png")}
    assert said[str(tmp_path)] == f"unreadable image: {tmp_path} is a folder, not an image file"
    assert said[f"{tmp_path}/"].startswith("unreadable image: ")
    assert said[f"{image}/b.png"] == f"missing object: {image}/b.png"
    assert not {error_reason(said[src]) for src in (str(tmp_path), f"{tmp_path}/")} & set(PASSING_FAILURES)


def test_an_escaped_lone_surrogate_is_that_fields_error(tmp_path):
    """``"\\ud800"`` in a JSON manifest is half a UTF-16 pair, no character: Arrow refused the planned rows
    and the whole job failed with a traceback; it is that row's field error."""
    lines = ['{"id": "a", "image_uri": "x.png", "question": "q\\ud800 ?"}',
             '{"id": "b", "image_uri": "x.png", "question": "q ?", "choices": ["a", "b\\udfff"]}',
             '{"id": "c", "image_uri": "x.png", "question": "q ?"}']
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    rows = {r["id"]: r for r in read_manifest(str(tmp_path / "m.jsonl"))}
    assert rows["a"]["error"].endswith("question holds \\ud800, an escaped lone surrogate, which is no character")
    assert rows["b"]["error"] == "unreadable choices: choice 2 holds \\udfff, an escaped lone surrogate, which is no character"
    assert "status" not in rows["c"]
    from pipelines.planning import rows_table
    from pipelines.vqa import MANIFEST_SCHEMA
    assert rows_table([{**r, "run_id": "r"} for r in rows.values()], MANIFEST_SCHEMA).num_rows == 3


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("name", ["m.csv", "m.jsonl", "m.json", "m.csv.gz"])
def test_a_utf16_manifest_is_refused_in_one_line_naming_its_encoding(tmp_path, encoding, name):
    """Excel's and PowerShell's "Unicode" CSV is UTF-16: without a byte-order mark it decoded as UTF-8
    with a NUL after every character, so the part was refused for columns ``['i\\x00m\\x00...']``."""
    import gzip

    if name.startswith("m.csv"):
        text = "id,image_uri,question\na,x.png,what ?\n"
    elif name == "m.jsonl":
        text = json.dumps({"id": "a", "image_uri": "x.png", "question": "what ?"}) + "\n"
    else:
        text = json.dumps([{"id": "a", "image_uri": "x.png", "question": "what ?"}])
    data = text.encode(encoding)
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(ManifestError) as err:
        plan_manifest(str(tmp_path / name))
    assert str(err.value).startswith(f"{tmp_path / name}: is UTF-16"), str(err.value)
    assert str(err.value).endswith("not UTF-8; save it as UTF-8") and "\\x00" not in str(err.value)
    (tmp_path / name).write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    assert [r["id"] for r in read_manifest(str(tmp_path / name))] == ["a"]  # the same text as UTF-8 reads


def test_an_input_or_output_that_would_commit_an_empty_run_is_refused(tmp_path):
    """A manifest named `--input` whose extension the job does not read (JSONL saved as .txt), and an
    `--output` holding a '?' (Ray Data's Parquet reader globs it, and found none of the run's parts),
    each committed an empty run and exited 0: a night's items lost without a word."""
    from typer.testing import CliRunner

    from pipelines.vqa import app

    sample = Path(__file__).parents[2] / "pipelines" / "samples" / "vqa" / "manifest.jsonl"
    (tmp_path / "manifest.txt").write_text(sample.read_text())
    res = CliRunner().invoke(app, ["--input", str(tmp_path / "manifest.txt"), "--output", str(tmp_path / "out")])
    assert res.exit_code == 2 and res.stderr.startswith(f"error: --input {tmp_path / 'manifest.txt'}: the job does "
                                                         "not read this file (") and "Traceback" not in res.output
    (tmp_path / ".hidden.jsonl").write_text(sample.read_text())   # named on purpose: read, not skipped as hidden
    assert len(plan_manifest(str(tmp_path / ".hidden.jsonl")).sources) == 1
    res = CliRunner().invoke(app, ["--input", str(sample), "--output", str(tmp_path / "out?q")])
    assert res.exit_code == 2 and "a '?' in the path is a wildcard" in res.stderr
    res = CliRunner().invoke(app, ["--input", str(sample), "--output", "s3://spote/odd/br[1]"])
    assert res.exit_code == 2 and "'[' and ']' in an object store path" in res.stderr
    os.mkfifo(tmp_path / "piped.jsonl")                           # what --input <(zcat m.jsonl.gz) names
    res = CliRunner().invoke(app, ["--input", str(tmp_path / "piped.jsonl"), "--output", str(tmp_path / "out")])
    assert res.exit_code == 2 and "not a regular file or folder (a pipe or a device)" in res.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out?q").exists()


def test_max_pixels_names_itself_in_the_rows_and_raising_it_reads_the_image(ray_local, random_tiny_dir, tmp_path,
                                                                            fast_policy):
    """A 48-megapixel phone photo was an error row under the 40-megapixel guard, which no job flag could raise."""
    from typer.testing import CliRunner

    from pipelines import vqa

    Image.new("RGB", (64, 48), (90, 90, 90)).save(tmp_path / "photo.jpg")
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "p", "image_uri": "photo.jpg", "question": "is there a boat ?",
                                                  "choices": ["yes", "no"]}) + "\n")
    (tmp_path / "notes.txt").write_text("not a manifest")   # a folder's stray file: said at the end, not only counted
    common = ["--input", str(tmp_path), "--output", str(tmp_path.parent / f"{tmp_path.name}-out"), "--model",
              str(random_tiny_dir), "--policy", fast_policy]
    rows = {}
    for limit in (3000, 4000):
        res = CliRunner().invoke(vqa.app, [*common, "--max-pixels", str(limit), "--run-id", f"m{limit}"])
        assert res.exit_code == 0, res.output
        assert f"run m{limit}: 2 file(s) under the input not read (skipped_sources in " in res.output, res.output
        rows[limit] = pq.read_table(tmp_path.parent / f"{tmp_path.name}-out" / "results" / f"run_id=m{limit}").to_pylist()[0]
    assert rows[3000]["status"] == "error" and rows[3000]["error"].endswith(
        "64 x 48 = 3,072 pixels exceeds the limit of 3,000 (decompression-bomb guard); downscale or tile it first, "
        "or raise --max-pixels")
    assert rows[4000]["status"] == "ok"
    res = CliRunner().invoke(vqa.app, [*common, "--max-pixels", "0"])
    assert res.exit_code == 2 and res.stderr.strip() == "error: --max-pixels must be >= 1 (pixels an image may hold), got 0"


def test_the_docs_recipe_redoes_only_the_failed_rows_with_their_ids_and_fields(ray_local, random_tiny_dir, tmp_path,
                                                                               fast_policy):
    """docs/pipelines.md, "Redoing the rows that failed": the recipe's manifest of a run's error rows, run again,
    answers them under their own ids with the fields the first manifest carried."""
    import duckdb
    import pandas as pd

    Image.new("RGB", (64, 48), (90, 90, 90)).save(tmp_path / "a.png")
    lines = [{"id": "a", "image_uri": "a.png", "question": "is there a boat ?", "choices": ["yes", "no"], "site": 1},
             {"id": "b", "image_uri": "b.png", "question": "what is the code ?", "label": "K7"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out"
    run_job("vqa", JobOptions(str(tmp_path / "m.jsonl"), str(out), str(random_tiny_dir), policy=fast_policy,
                              run_id="first"), plan_manifest(str(tmp_path / "m.jsonl")))
    Image.new("RGB", (64, 48), (20, 20, 20)).save(tmp_path / "b.png")   # the store is back
    rows = pd.read_parquet(out / "results" / "run_id=first")             # the recipe, as the docs write it
    with open(tmp_path / "redo.jsonl", "w") as f:
        for r in rows[rows.status == "error"].itertuples():
            f.write(json.dumps({"id": r.id, "image_uri": r.source, "question": r.question,
                                **({"choices": json.loads(r.choices)} if r.choices else {}),
                                **json.loads(r.manifest_fields or "{}")}) + "\n")
    run_job("vqa", JobOptions(str(tmp_path / "redo.jsonl"), str(out), str(random_tiny_dir), policy=fast_policy,
                              run_id="redo"), plan_manifest(str(tmp_path / "redo.jsonl")))
    redo = pd.read_parquet(out / "results" / "run_id=redo")
    assert list(redo.id) == ["b"] and list(redo.status) == ["ok"] and json.loads(redo.manifest_fields[0]) == {"label": "K7"}
    latest = duckdb.sql(f"SELECT id, status, run_id FROM read_parquet('{out}/results/**/*.parquet') WHERE run_id IN "
                        "('first', 'redo') QUALIFY row_number() OVER (PARTITION BY id ORDER BY run_id = 'redo' DESC) = 1 "
                        "ORDER BY id").fetchall()
    assert latest == [("a", "ok", "first"), ("b", "ok", "redo")]
