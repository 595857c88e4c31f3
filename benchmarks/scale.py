"""Archive scale: does the driver's memory stay flat as the archive grows?

    python -m benchmarks.scale --sizes 10000,200000 --out results/bench-scale.json

For each size, a synthetic archive: a VQA manifest of that many rows in Parquet parts of
``--rows-per-manifest-part`` rows. ``--answered`` rows (the same number at every size) ask a trivial
question of a small image with ``{"budget": 1}`` and go through the shipped model; every other row is
cheap by design: its question is empty, so the CPU loader turns it into an error row and the model
never sees it. Every row still takes the whole path: listed part -> planned in a task -> plan
Parquet -> checkpoint -> loader actor -> model actor -> staged part -> statistics -> exactly-once
check -> commit. (The model's own per-item cost is ``make bench-pipeline``'s subject, not this one's.)

Each size runs in a fresh driver process with its own local Ray, so ``driver_peak_rss_mb`` (the
driver's ``ru_maxrss``) is that size's alone. Per size, the JSON list holds: ``items``,
``driver_peak_rss_mb``, ``plan_seconds`` (listing the parts in the driver plus the planning tasks,
plan statistics and id-clash check), ``run_seconds`` (``run_job`` from call to commit, Ray already
up), ``items_per_second`` (items / run_seconds) and the run's summary counts.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False)
QUESTION = "is the square red ?"


def make_archive(folder: Path, items: int, answered: int, part_rows: int) -> Path:
    """A manifest folder of Parquet parts; the first ``answered`` rows ask QUESTION of one small PNG."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    manifest = folder / "manifest"
    manifest.mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "red.png")
    for start in range(0, items, part_rows):
        n = min(part_rows, items - start)
        ids = [f"item-{i:09d}" for i in range(start, start + n)]
        questions = [QUESTION if i < answered else "" for i in range(start, start + n)]
        pq.write_table(pa.table({"id": ids, "image_uri": ["../red.png"] * n, "question": questions,
                                 "choices": ["yes,no"] * n}), manifest / f"part-{start // part_rows:05d}.parquet")
    return manifest


def run_one(manifest: str, output: str, batch_size: int, rows_per_part: int, reader: str = "jobs") -> dict:
    """One size, in this process: returns the figures for the JSON list. ``reader="ray-default"``
    swaps the jobs' ``file_based_parquet_reads`` for a no-op, so every read uses Ray Data's default
    (DataSourceV2) Parquet reader: the other arm of ``--compare-readers``."""
    import contextlib

    import pipelines.job
    from pipelines.job import JobOptions, init_ray, run_job
    from pipelines.vqa import plan_manifest

    if reader == "ray-default":
        pipelines.job.file_based_parquet_reads = contextlib.nullcontext

    init_ray(1)
    opts = JobOptions(manifest, output, policy=json.dumps({"budget": 1}), run_id="scale", batch_size=batch_size,
                      rows_per_part=rows_per_part)
    t0 = time.perf_counter()
    plan = plan_manifest(manifest)
    listing = time.perf_counter() - t0
    summary = run_job("vqa", opts, plan)
    run_seconds = time.perf_counter() - t0
    return {"items": summary["items_in"], "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "plan_seconds": round(listing + summary["plan_seconds"], 2), "run_seconds": round(run_seconds, 2),
            "items_per_second": round(summary["items_in"] / run_seconds, 1), "manifest_parts": len(plan.sources),
            "items_ok": summary["items_ok"], "items_error": summary["items_error"],
            "items_out": summary["items_out"], "errors_by_reason": summary["errors_by_reason"]}


@app.command()
def main(
    sizes: str = typer.Option("10000,200000", help="archive sizes (rows), comma-separated"),
    out: Optional[Path] = typer.Option(Path("results/bench-scale.json")),
    answered: int = typer.Option(200, help="rows that go through the model at every size"),
    rows_per_manifest_part: int = typer.Option(20000),
    batch_size: int = typer.Option(512, help="rows per loader/model actor call"),
    rows_per_part: int = typer.Option(4096, help="rows per staged result part"),
    work: Optional[Path] = typer.Option(None, help="scratch folder (default: a temporary one)"),
    compare_readers: int = typer.Option(0, help="instead of one run per size: this many rounds per size of the "
                                        "jobs' Parquet reader, then Ray Data's default one, each in a fresh driver"),
    one: Optional[str] = typer.Option(None, hidden=True, help="internal: run one size: MANIFEST,OUTPUT[,READER]"),
):
    """Run each size in a fresh driver process and write the figures as a JSON list."""
    if one:
        manifest, output, *reader = one.split(",")
        row = run_one(manifest, output, batch_size, rows_per_part, *reader)
        print("SCALE-RESULT " + json.dumps(row), flush=True)
        return
    readers = ["jobs", "ray-default"] * compare_readers or ["jobs"]
    results = []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for size in [int(s) for s in sizes.split(",")]:
            folder = Path(tmp) / f"n{size}"
            manifest = make_archive(folder, size, min(answered, size), rows_per_manifest_part)
            for k, reader in enumerate(readers):
                cmd = [sys.executable, "-m", "benchmarks.scale", "--one", f"{manifest},{folder / f'out{k}'},{reader}",
                       "--batch-size", str(batch_size), "--rows-per-part", str(rows_per_part)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("SCALE-RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
                    raise SystemExit(f"size {size} failed (exit {proc.returncode})")
                row = json.loads(line.removeprefix("SCALE-RESULT "))
                row["answered_by_the_model"] = min(answered, size)
                if compare_readers:
                    row["parquet_reader"] = reader
                print(json.dumps(row))
                results.append(row)
    if len(results) > 1 and not compare_readers:
        base = results[0]["driver_peak_rss_mb"]
        for r in results:
            r["driver_peak_rss_vs_smallest"] = round(r["driver_peak_rss_mb"] / base, 3)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    app()
