"""Run statistics (pipelines/stats.py) on small generated result tables."""

from __future__ import annotations

from pipelines.report import summarise
from pipelines.stages import typed_table
from pipelines.stats import RunStats


def _rows(traces_and_passes):
    return [{"id": f"r{i}", "question": "which colour ?", "answer": "dark blue", "status": "ok", "error": "",
             "confidence": 0.9, "entropy_initial": trace[0], "entropy_final": min(trace), "entropy_trace": trace,
             "forward_passes": passes, "latency_ms": 5.0} for i, (trace, passes) in enumerate(traces_and_passes)]


def test_early_exit_is_the_whole_image_answering_not_one_pass():
    """A closed set of multi-token choices costs one pass per choice: the whole image answered these rows
    (an entropy trace of one value) at 3 passes each, and the run reported an early-exit rate of 0."""
    rows = _rows([([0.01], 3), ([0.02], 3), ([0.9, 0.3], 11), ([0.01], 1)])
    stats = RunStats.of_table(typed_table({k: [r[k] for r in rows] for k in rows[0]}))
    assert stats.early_exit == 3
    half = RunStats.of_table(typed_table({k: [r[k] for r in rows[:2]] for k in rows[0]}))
    half.merge(RunStats.of_table(typed_table({k: [r[k] for r in rows[2:]] for k in rows[0]})))
    assert half.early_exit == 3
    assert summarise(stats, "r", 4, 1.0, "m", {})["early_exit_rate"] == 0.75
