"""What a job's own Parquet reads and id group-bys cost: Ray Data's two Parquet readers, and the
group-by's hash partitions, on the same parts folder in the same local Ray, interleaved.

    python -m benchmarks.reads --rows 20000,200000 --rounds 3 --out results/bench-reads.json

A job reads its plan and its staged parts several times (plan statistics, the id-clash check, the
answer pass and its checkpoint filter, the run statistics, the report). This times one such read
(``columns=["id"]``, every row through a no-op ``map_batches``, then counted) with the DataSourceV2
reader (Ray 2.60's default) and the file-based one the jobs use (``pipelines.job.file_based_parquet_reads``),
and the id-clash group-by with Ray Data's default 200 hash partitions and with
``pipelines.job.group_partitions(rows)``. The two sides of each pair run one after the other in every
round, so machine drift hits both; per size the JSON records each variant's seconds per round, their
medians and the ratio of medians (default / ours).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False)


def write_parts(folder: Path, rows: int, part_rows: int) -> Path:
    """A folder of Parquet parts holding ``rows`` ids, ``part_rows`` a part (as a run's staged parts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    for start in range(0, rows, part_rows):
        ids = [f"item-{i:09d}" for i in range(start, min(rows, start + part_rows))]
        pq.write_table(pa.table({"id": ids, "status": ["ok"] * len(ids)}), folder / f"part-{start // part_rows:05d}.parquet")
    return folder


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return round(time.perf_counter() - t0, 3)


def measure(folder: Path, rows: int, rounds: int) -> dict:
    import ray

    from pipelines.job import file_based_parquet_reads, group_partitions

    path = str(folder)

    def read_ids(v2: bool):
        with contextlib.nullcontext() if v2 else file_based_parquet_reads():
            return ray.data.read_parquet(path, columns=["id"], partitioning=None)

    def read(v2: bool):
        def go():
            assert read_ids(v2).map_batches(lambda b: b, batch_format="pyarrow").count() == rows
        return go

    def group(partitions: Optional[int]):
        def go():
            ds = read_ids(v2=False)
            groups = ds.groupby("id", num_partitions=partitions) if partitions else ds.groupby("id")
            assert groups.count().count() == rows
        return go

    variants = {"read_v2_default": read(True), "read_file_based": read(False),
                "groupby_200_partitions": group(None), "groupby_sized": group(group_partitions(rows))}
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm the workers once, untimed
        fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            seconds[name].append(_timed(fn))
    med = {k: round(statistics.median(v), 3) for k, v in seconds.items()}
    return {"rows": rows, "parts": len(list(folder.glob("*.parquet"))), "sized_partitions": group_partitions(rows),
            "seconds": seconds, "median_seconds": med,
            "read_ratio_v2_over_file_based": round(med["read_v2_default"] / med["read_file_based"], 1),
            "groupby_ratio_200_over_sized": round(med["groupby_200_partitions"] / med["groupby_sized"], 1)}


@app.command()
def main(rows: str = typer.Option("20000,200000", help="ids in the parts folder, comma-separated sizes"),
         part_rows: int = typer.Option(20000, help="ids per Parquet part"),
         rounds: int = typer.Option(3, min=1),
         out: Optional[Path] = typer.Option(Path("results/bench-reads.json"))):
    from pipelines.job import init_ray

    init_ray(2)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in rows.split(",")):
            r = measure(write_parts(Path(tmp) / f"rows-{n}", n, part_rows), n, rounds)
            print(json.dumps({k: r[k] for k in ("rows", "median_seconds", "read_ratio_v2_over_file_based",
                                                "groupby_ratio_200_over_sized")}))
            results.append(r)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    app()
