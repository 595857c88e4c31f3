"""A run's statistics from per-block partial statistics, never from the whole result table.

Each Ray Data block of results is reduced in a task to a small ``RunStats`` (counts, sums,
fixed-bin histograms, an id digest and capped samples of rows); the driver merges them one at a
time, so its memory does not grow with the number of rows.
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .planning import MASK64, digest_sum, id_hashes

ENTROPY_EDGES = np.linspace(0.0, 8.0, 81)               # nats; the last bin also takes anything above
CONFIDENCE_EDGES = np.linspace(0.0, 1.0, 21)
LATENCY_EDGES = 0.1 * 1.05 ** np.arange(0, 378)         # ms, 0.1 ms .. ~10^7 ms; p95 within 5 %
LEAST_CONFIDENT_K = 20
RANDOM_SAMPLE_K = 50
ERRORS_PER_REASON = 5
MAX_REASONS = 50
MAX_QUESTIONS = 100        # answer counts are kept for this many questions ...
MAX_ANSWERS = 50           # ... and this many distinct answers each (the rest under OTHER_ANSWERS)
OTHER_ANSWERS = "(other answers)"
OTHER_REASONS = "(other reasons)"


def _hist(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    values = values[np.isfinite(values)]
    return np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0].astype(np.int64)


def error_reason(error: str) -> str:
    """The kind of an error message: its text before the first colon (``missing object``, ...)."""
    return (error or "").split(":")[0].strip()[:120] or "(no message)"


@dataclass
class RunStats:
    """Statistics of a set of result rows; ``merge`` adds another part's.

    Counts: ``items`` (rows), ``by_status`` {status: rows}, ``errors_by_reason`` {reason: rows}
    (at most ``MAX_REASONS`` reasons, the rest under ``OTHER_REASONS``). Over ``ok`` rows: sums for
    the means of ``entropy_initial``/``entropy_final`` (nats), ``forward_passes``, ``latency_ms``;
    ``early_exit`` (rows the whole image answered, no spotlight tried: an ``entropy_trace`` of one value); histograms on fixed edges
    (``ENTROPY_EDGES``, ``CONFIDENCE_EDGES``, ``LATENCY_EDGES``) and ``forward_passes_counts``.
    ``id_digest``: the sum of the ids' 64-bit hashes mod 2**64. Samples, each a list of row dicts
    with every result column: ``least_confident`` (the ``LEAST_CONFIDENT_K`` ok rows of lowest
    confidence), ``random_sample`` (``RANDOM_SAMPLE_K`` rows chosen by id hash, so the same run
    always gives the same sample), ``error_examples`` {reason: up to ``ERRORS_PER_REASON`` rows}.
    """

    items: int = 0
    id_digest: int = 0
    by_status: dict = field(default_factory=dict)
    errors_by_reason: dict = field(default_factory=dict)
    ok: int = 0
    entropy_initial_sum: float = 0.0
    entropy_final_sum: float = 0.0
    forward_passes_sum: float = 0.0
    latency_ms_sum: float = 0.0
    early_exit: int = 0
    entropy_initial_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(ENTROPY_EDGES) - 1, np.int64))
    entropy_final_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(ENTROPY_EDGES) - 1, np.int64))
    confidence_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(CONFIDENCE_EDGES) - 1, np.int64))
    latency_ms_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(LATENCY_EDGES) - 1, np.int64))
    forward_passes_counts: dict = field(default_factory=dict)
    least_confident: list = field(default_factory=list)
    random_sample: list = field(default_factory=list)      # (id hash, row)
    error_examples: dict = field(default_factory=dict)
    skipped_by_reason: dict = field(default_factory=dict)
    skipped_examples: dict = field(default_factory=dict)
    answers: dict = field(default_factory=dict)             # {"field: question" (or question): {answer: ok rows}}, capped
    sources: set | None = None                              # distinct ``source`` values, when asked for

    # ------------------------------------------------------------ building
    @classmethod
    def of_table(cls, table: pa.Table, with_samples: bool = True, with_sources: bool = False) -> "RunStats":
        s = cls(items=table.num_rows)
        if with_sources:
            s.sources = set(table.column("source").to_pylist()) if "source" in table.column_names else set()
        if table.num_rows == 0:
            return s
        hashes = id_hashes(table.column("id"))
        s.id_digest = digest_sum(hashes)
        if "status" not in table.column_names:
            return s
        status = table.column("status").to_numpy(zero_copy_only=False).astype(object)
        values, counts = np.unique(status.astype(str), return_counts=True)
        s.by_status = {str(v): int(c) for v, c in zip(values, counts)}
        err_mask = status == "error"
        if err_mask.any() and "error" in table.column_names:
            errors = np.asarray(table.column("error").to_pylist(), dtype=object)
            for i in np.flatnonzero(err_mask):
                reason = error_reason(errors[i])
                s._count_reason(reason, 1)
                if with_samples:
                    examples = s.error_examples.setdefault(s._reason_key(reason), [])
                    if len(examples) < ERRORS_PER_REASON:
                        examples.append(_row(table, int(i)))
        skip_mask = status == "skipped"
        if skip_mask.any() and "error" in table.column_names:
            errors = np.asarray(table.column("error").to_pylist(), dtype=object)
            for i in np.flatnonzero(skip_mask):
                reason = error_reason(errors[i])
                s.skipped_by_reason[reason] = s.skipped_by_reason.get(reason, 0) + 1
                if with_samples:
                    examples = s.skipped_examples.setdefault(reason, [])
                    if len(examples) < ERRORS_PER_REASON:
                        examples.append(_row(table, int(i)))
        ok_idx = np.flatnonzero(status == "ok")
        if len(ok_idx) and {"question", "answer"} <= set(table.column_names):
            qs, ans = table.column("question").to_pylist(), table.column("answer").to_pylist()
            fields = table.column("field").to_pylist() if "field" in table.column_names else [None] * table.num_rows
            for i in ok_idx:
                s._count_answer(f"{fields[i]}: {qs[i]}" if fields[i] else str(qs[i]), str(ans[i]), 1)
        s.ok = int(len(ok_idx))
        if s.ok and "entropy_initial" in table.column_names:
            ok = table.take(pa.array(ok_idx))
            ei, ef = _floats(ok, "entropy_initial"), _floats(ok, "entropy_final")
            fp, lat, conf = _floats(ok, "forward_passes"), _floats(ok, "latency_ms"), _floats(ok, "confidence")
            s.entropy_initial_sum, s.entropy_final_sum = float(np.nansum(ei)), float(np.nansum(ef))
            s.forward_passes_sum, s.latency_ms_sum = float(np.nansum(fp)), float(np.nansum(lat))
            if "entropy_trace" in ok.column_names:  # the whole image alone: its entropy and no step after it
                # (not ``forward_passes <= 1``: a closed set of multi-token choices costs a pass per choice)
                steps = pc.list_value_length(ok.column("entropy_trace")).to_numpy(zero_copy_only=False)
                s.early_exit = int((steps == 1).sum())
            else:
                s.early_exit = int((fp <= 1).sum())
            s.entropy_initial_hist, s.entropy_final_hist = _hist(ei, ENTROPY_EDGES), _hist(ef, ENTROPY_EDGES)
            s.confidence_hist, s.latency_ms_hist = _hist(conf, CONFIDENCE_EDGES), _hist(lat, LATENCY_EDGES)
            fpv, fpc = np.unique(fp[np.isfinite(fp)].astype(np.int64), return_counts=True)
            s.forward_passes_counts = {int(v): int(c) for v, c in zip(fpv, fpc)}
            if with_samples:
                order = np.argsort(np.where(np.isfinite(conf), conf, np.inf), kind="stable")[:LEAST_CONFIDENT_K]
                s.least_confident = [_row(ok, int(i)) for i in order]
        if with_samples:
            pick = np.argsort(hashes, kind="stable")[:RANDOM_SAMPLE_K]
            s.random_sample = [(int(hashes[i]), _row(table, int(i))) for i in pick]
        return s

    def _reason_key(self, reason: str) -> str:
        if reason in self.errors_by_reason or len(self.errors_by_reason) < MAX_REASONS:
            return reason
        return OTHER_REASONS

    def _count_answer(self, question: str, answer: str, n: int) -> None:
        if question not in self.answers and len(self.answers) >= MAX_QUESTIONS:
            return
        counts = self.answers.setdefault(question, {})
        key = answer if answer in counts or len(counts) < MAX_ANSWERS else OTHER_ANSWERS
        counts[key] = counts.get(key, 0) + n

    def _count_reason(self, reason: str, n: int) -> None:
        key = self._reason_key(reason)
        self.errors_by_reason[key] = self.errors_by_reason.get(key, 0) + n

    # ------------------------------------------------------------ merging
    def merge(self, other: "RunStats") -> "RunStats":
        self.items += other.items
        self.id_digest = (self.id_digest + other.id_digest) & MASK64
        for k, v in other.by_status.items():
            self.by_status[k] = self.by_status.get(k, 0) + v
        for reason, n in other.errors_by_reason.items():
            self._count_reason(reason, n)
        self.ok += other.ok
        self.entropy_initial_sum += other.entropy_initial_sum
        self.entropy_final_sum += other.entropy_final_sum
        self.forward_passes_sum += other.forward_passes_sum
        self.latency_ms_sum += other.latency_ms_sum
        self.early_exit += other.early_exit
        for name in ("entropy_initial_hist", "entropy_final_hist", "confidence_hist", "latency_ms_hist"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.forward_passes_counts.items():
            self.forward_passes_counts[k] = self.forward_passes_counts.get(k, 0) + v
        both = self.least_confident + other.least_confident
        both.sort(key=lambda r: _finite(r.get("confidence")))
        self.least_confident = both[:LEAST_CONFIDENT_K]
        self.random_sample = sorted(self.random_sample + other.random_sample, key=lambda kr: kr[0])[:RANDOM_SAMPLE_K]
        for reason, n in other.skipped_by_reason.items():
            self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + n
        for reason, rows in other.skipped_examples.items():
            mine = self.skipped_examples.setdefault(reason, [])
            mine.extend(rows[:max(0, ERRORS_PER_REASON - len(mine))])
        for question, counts in other.answers.items():
            for answer, n in counts.items():
                self._count_answer(question, answer, n)
        for reason, rows in other.error_examples.items():
            mine = self.error_examples.setdefault(self._reason_key(reason), [])
            mine.extend(rows[:max(0, ERRORS_PER_REASON - len(mine))])
        if other.sources is not None:
            self.sources = (self.sources or set()) | other.sources
        return self

    # ------------------------------------------------------------ reading
    def mean(self, name: str) -> float | None:
        return getattr(self, f"{name}_sum") / self.ok if self.ok else None

    def latency_ms_quantile(self, q: float) -> float | None:
        """Approximate quantile (upper edge of the bin holding it: within 5 %)."""
        total = int(self.latency_ms_hist.sum())
        if not total:
            return None
        i = int(np.searchsorted(np.cumsum(self.latency_ms_hist), q * total))
        return float(LATENCY_EDGES[min(i + 1, len(LATENCY_EDGES) - 1)])

    def sample_rows(self) -> list[dict]:
        """Every sampled row once: least confident, random sample, error examples."""
        seen, out = set(), []
        rows = [*self.least_confident, *(r for _, r in self.random_sample),
                *(r for rows in self.error_examples.values() for r in rows),
                *(r for rows in self.skipped_examples.values() for r in rows)]
        for r in rows:
            if r.get("id") not in seen:
                seen.add(r.get("id"))
                out.append(r)
        return out

    def to_pandas(self):
        """The sampled rows as a DataFrame (not the whole run: see ``sample_rows``)."""
        import pandas as pd

        return pd.DataFrame(self.sample_rows())

    def __len__(self) -> int:
        return self.items


def _floats(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _finite(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("inf")
    return f if np.isfinite(f) else float("inf")


def _row(table: pa.Table, i: int) -> dict:
    return table.slice(i, 1).to_pylist()[0]


def partial_stats(table: pa.Table, *, with_samples: bool = True, with_sources: bool = False) -> pa.Table:
    """Ray Data UDF: one block of rows -> one row holding its pickled ``RunStats``."""
    stats = RunStats.of_table(table, with_samples, with_sources)
    return pa.table({"stats": pa.array([pickle.dumps(stats)], pa.binary())})


def collect_stats(ds, with_samples: bool = True, with_sources: bool = False) -> RunStats:
    """Merge per-block partial statistics of a Ray dataset, one block at a time."""
    total = RunStats(sources=set() if with_sources else None)
    udf = functools.partial(partial_stats, with_samples=with_samples, with_sources=with_sources)
    parts = ds.map_batches(udf, batch_format="pyarrow", batch_size=None)
    for batch in parts.iter_batches(batch_format="pyarrow", batch_size=None):
        for blob in batch.column("stats").to_pylist():
            total.merge(pickle.loads(blob))
    return total
