"""A long run's progress, said by its driver: items staged of the plan, the rate and the time left.

Ray Data logs its operators' blocks, and "Total Progress: 0/?" until a dataset ends; a night over a
million tiles wants a line every minute or so that says how far it is and when it will end. The driver
counts the rows of the run's committed checkpoint files: Ray Data commits a part's ids there once the
part is written (``pipelines.runs``), so the count is what a killed run would keep; ``StagedRows``
reads each file's footer once, so a tick costs one listing.
"""
from __future__ import annotations

import contextlib
import threading
import time

from .report import fmt_count, fmt_seconds
from .runs import RunPaths, StagedRows


def progress_line(job: str, run_id: str, staged: int, total: int, new: int, seconds: float) -> str:
    """One line for people: ``staged`` of ``total`` items, and, from the ``new`` items this driver staged
    in ``seconds``, its rate (items/s) and the time left at that rate."""
    head = f"[{job}] run {run_id}: {fmt_count(staged)} of {fmt_count(total)} items staged"
    if total:
        head += f" ({100 * staged / total:.1f}%)"
    if new <= 0 or seconds <= 0:  # the actors still load their model, or the first part is still being answered
        return f"{head}; none yet by this driver in {fmt_seconds(seconds)}"
    rate = new / seconds
    left = max(0, total - staged) / rate
    return f"{head}, {rate:.3g} items/s, about {fmt_seconds(left)} left"


class ProgressReporter:
    """Prints ``progress_line`` every ``every_s`` seconds from a daemon thread until ``stop()``.

    The rate is counted from the first tick that found rows of this driver's once a later tick found more:
    the minutes the actors spend loading their model, and the first part's latency, are spent once, and a
    rate that held them would over-state the time left all night. Until then it is this driver's rate
    since ``start``. A tick that fails (a store that does not answer a listing for a moment) prints
    nothing: progress is said, never needed, and the run's own reads retry and report. ``say`` prints one
    line; ``clock`` gives seconds."""

    def __init__(self, job: str, run_id: str, staged: StagedRows, total: int, every_s: float, say=None,
                 clock=time.monotonic):
        self.job, self.run_id, self.staged, self.total, self.every_s = job, run_id, staged, total, every_s
        self.say = say or (lambda line: print(line, flush=True))
        self.clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="spote-progress", daemon=True)
        self._t0 = clock()
        self._start_rows = 0
        self._first: tuple[float, int] | None = None  # (time, rows) of the first tick with this driver's rows

    def start(self, start_rows: int) -> None:
        self._start_rows, self._t0 = start_rows, self.clock()
        self._thread.start()

    def tick(self) -> str | None:
        """Count once and say it; the line said, or None where the count failed or the reporter stopped."""
        try:
            staged = self.staged.count()
        except Exception:  # noqa: BLE001  a listing that failed: the next tick tries again
            return None
        now = self.clock()
        if self._first is None and staged > self._start_rows:
            self._first = (now, staged)
        if self._first is not None and staged > self._first[1]:  # the steady rate, past loading
            new, seconds = staged - self._first[1], now - self._first[0]
        else:
            new, seconds = staged - self._start_rows, now - self._t0
        line = progress_line(self.job, self.run_id, staged, self.total, new, seconds)
        with self._lock:
            if self._stop.is_set():  # the run went on to its summary: no stale line after it
                return None
            self.say(line)
        return line

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.tick()

    def stop(self) -> None:
        with self._lock:
            self._stop.set()


@contextlib.contextmanager
def reporting_progress(job: str, paths: RunPaths, storage_options: dict | None, total: int, start_rows: int,
                       every_s: float):
    """Say the run's progress every ``every_s`` seconds while the block runs (``every_s`` 0: never)."""
    if not every_s or every_s <= 0:
        yield None
        return
    reporter = ProgressReporter(job, paths.run_id, StagedRows(paths, storage_options), total, every_s)
    reporter.start(start_rows)
    try:
        yield reporter
    finally:
        reporter.stop()
