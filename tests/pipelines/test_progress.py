"""A run's progress lines: rows counted from the committed checkpoint files (local and S3), the line's
figures, a reporter that says nothing after it stops or when a count fails, and a real vqa run that
says how far it is while it answers."""

import json
import re
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.job import JobOptions, run_job
from pipelines.progress import ProgressReporter, progress_line
from pipelines.runs import PENDING_SUFFIX, RunPaths, StagedRows
from pipelines.storage import filesystem, join, parse_storage_options
from pipelines.vqa import plan_manifest


def _ids(fs, path: str, n: int) -> None:
    with fs.open(path, "wb") as f:
        pq.write_table(pa.table({"id": [f"i{k}" for k in range(n)]}), f)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_staged_rows_counts_committed_checkpoints_only(where, tmp_path, s3):
    output = str(tmp_path / "out") if where == "local" else f"s3://spote/progress-{time.time_ns()}"
    so = parse_storage_options(None)
    paths = RunPaths(output, "night")
    counter = StagedRows(paths, so)
    assert counter.count() == 0                      # no checkpoint folder yet: nothing staged
    fs, ckpt = filesystem(paths.checkpoint, so)
    fs.makedirs(ckpt, exist_ok=True)
    _ids(fs, join(ckpt, "a.parquet"), 3)
    _ids(fs, join(ckpt, "b" + PENDING_SUFFIX), 5)    # a part being written: not staged yet
    assert counter.count() == 3
    _ids(fs, join(ckpt, "c.parquet"), 4)
    fs.mv(join(ckpt, "b" + PENDING_SUFFIX), join(ckpt, "b.parquet"))   # Ray Data's commit of part b
    assert counter.count() == 12


def test_progress_line_says_share_rate_and_time_left():
    line = progress_line("vqa", "night", 2048, 10000, 1024, 512.0)
    assert line == "[vqa] run night: 2,048 of 10,000 items staged (20.5%), 2 items/s, about 1 h 06 min left"
    # a resumed run: the rate is this driver's own items, the share the run's
    assert progress_line("vqa", "r", 60, 100, 10, 5.0).endswith("(60.0%), 2 items/s, about 20.0 s left")
    assert progress_line("vqa", "r", 0, 100, 0, 30.0) == "[vqa] run r: 0 of 100 items staged (0.0%); none yet by this driver in 30.0 s"


class _Counter:
    def __init__(self, values):
        self.values = list(values)

    def count(self) -> int:
        v = self.values.pop(0)
        if isinstance(v, Exception):
            raise v
        return v


def test_reporter_skips_a_failed_count_and_says_nothing_once_stopped():
    said = []
    reporter = ProgressReporter("vqa", "r", _Counter([OSError("store away"), 4, 8]), 8, every_s=3600, say=said.append)
    reporter.start(0)
    assert reporter.tick() is None and said == []    # a listing that failed: no line, no exception
    assert reporter.tick().startswith("[vqa] run r: 4 of 8 items staged (50.0%), ") and len(said) == 1
    reporter.stop()
    assert reporter.tick() is None and len(said) == 1  # after the run's summary: no stale line


def test_the_rate_leaves_out_the_minutes_before_the_first_rows():
    """Actors that load their model for 60 s and then stage 2 items/s: the time left is the steady rate's,
    not one that spreads the loading over the night."""
    said, clock = [], iter([0.0, 0.0, 30.0, 60.0, 70.0, 80.0])  # made, started, four ticks
    reporter = ProgressReporter("vqa", "r", _Counter([0, 10, 30, 30]), 100, every_s=3600, say=said.append,
                                clock=lambda: next(clock))
    reporter.start(0)
    assert reporter.tick().endswith("none yet by this driver in 30.0 s")
    assert reporter.tick().endswith("(10.0%), 0.167 items/s, about 9 min 00 s left")  # one tick of rows: overall
    assert reporter.tick().endswith("(30.0%), 2 items/s, about 35.0 s left")            # 20 rows in 10 s
    assert reporter.tick().endswith("(30.0%), 1 items/s, about 1 min 10 s left")        # 20 rows in 20 s
    reporter.stop()


def test_a_vqa_run_says_how_far_it_is_while_it_answers(ray_local, random_tiny_dir, tmp_path, capsys):
    from benchmarks.pipeline_throughput import make_corpus

    n = 24
    manifest = make_corpus(tmp_path, n, seed=3)
    slow = json.dumps({"budget": 6, "group_size": 2, "steps": 3, "exit_entropy": 0.0, "exit_entropy_per_ln_k": 0.0,
                       "plateau_patience": 99})  # every item costs the same few passes: steady progress
    opts = JobOptions(str(manifest), str(tmp_path / "out"), str(random_tiny_dir), policy=slow, run_id="prog",
                      batch_size=1, rows_per_part=2, progress_seconds=0.2)
    summary = run_job("vqa", opts, plan_manifest(str(manifest)))
    assert summary["items_out"] == n
    said = capsys.readouterr().out
    counts = [int(m.group(1)) for m in re.finditer(rf"^\[vqa\] run prog: (\d+) of {n} items staged", said, re.M)]
    assert counts and counts == sorted(counts) and max(counts) <= n, said[-2000:]
    assert any(0 < c for c in counts), said[-2000:]  # Ray Data's own checkpoint files are counted as parts commit
    assert re.search(r"items staged \(\d+\.\d%\), [\d.]+ items/s, about .+ left$", said, re.M), said[-2000:]
    time.sleep(0.6)
    assert "items staged" not in capsys.readouterr().out  # the reporter ended with the answer pass
