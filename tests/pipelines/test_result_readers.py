"""Committed results read back with the default readers of pandas, pyarrow and DuckDB, for every job."""

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from pipelines import documents, satellite
from pipelines.job import JobOptions, check_run_id, run_job
from pipelines.vqa import read_manifest

SAMPLES = Path(__file__).parents[2] / "pipelines" / "samples" / "vqa"


def read_back(out: Path) -> dict[str, pd.DataFrame]:
    """OUT/results with each reader's defaults (DuckDB with and without hive partitioning)."""
    root = out / "results"
    glob = f"{root}/**/*.parquet"
    return {
        "pandas": pd.read_parquet(root),
        "pyarrow.read_table": pq.read_table(root).to_pandas(),
        "pyarrow.ParquetDataset": pq.ParquetDataset(root).read().to_pandas(),
        "duckdb": duckdb.sql(f"SELECT * FROM read_parquet('{glob}')").df(),
        "duckdb hive": duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning=true)").df(),
        "duckdb no hive": duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning=false)").df(),
    }


def check_readers(out: Path, want: dict[str, int]) -> None:
    """Every reader: every row once, run_id as text equal to its partition, for runs ``want`` (id -> rows)."""
    for reader, df in read_back(out).items():
        assert len(df) == sum(want.values()), reader
        runs = df["run_id"].astype(str)
        assert runs.value_counts().to_dict() == want, reader
        assert df.groupby(runs)["id"].apply(lambda s: s.is_unique).all(), reader
    for run_id in want:  # one partition read alone still says which run it is
        alone = pq.read_table(out / "results" / f"run_id={run_id}")
        assert set(alone.column("run_id").to_pylist()) == {run_id}


def test_vqa_results_two_runs(ray_local, random_tiny_dir, tmp_path, fast_policy):
    rows = read_manifest(str(SAMPLES / "manifest.jsonl"))[:3]
    for run_id in ("vqa-a", "vqa-b.2"):
        opts = JobOptions(str(SAMPLES / "manifest.jsonl"), str(tmp_path), str(random_tiny_dir), policy=fast_policy,
                          run_id=run_id)
        run_job("vqa", opts, [dict(r) for r in rows])
    check_readers(tmp_path, {"vqa-a": 3, "vqa-b.2": 3})


def test_documents_results_two_nights(ray_local, random_tiny_dir, tmp_path, fast_policy):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    Image.new("RGB", (300, 400), "white").save(inbox / "a.pdf")
    (inbox / "broken.pdf").write_bytes(b"%PDF-1.4 cut")
    qs = tmp_path / "q.yaml"
    qs.write_text("- field: reference_code\n  question: what is the reference code ?\n"
                  "- field: signed\n  question: is the form signed ?\n  choices: [yes, no]\n")
    opts = JobOptions(str(inbox), str(out), str(random_tiny_dir), policy=fast_policy)
    documents.run(opts, str(qs), dpi=36, run_date="2026-11-24")
    Image.new("RGB", (300, 400), "white").save(inbox / "b.png")
    documents.run(opts, str(qs), dpi=36, run_date="2026-11-25")
    check_readers(out, {"documents-2026-11-24": 4, "documents-2026-11-25": 2})
    for reader, df in read_back(out).items():  # field names, and open answers' token confidences as lists of floats
        assert sorted(df.field) == ["reference_code"] * 3 + ["signed"] * 3, reader
        answered = df.status == "ok"
        assert answered.sum() == 4, reader  # a.pdf and b.png; broken.pdf's two rows are errors
        for conf, total in zip(df[answered & (df.field == "reference_code")].token_confidences,
                               df[answered & (df.field == "reference_code")].confidence):
            p = np.asarray(list(conf), dtype=float)
            assert ((p > 0) & (p <= 1)).all() and np.isclose(p.min() if len(p) else 0.0, total, rtol=1e-5), reader
        assert df[~answered | (df.field == "signed")].token_confidences.isna().all(), reader


def test_satellite_results(ray_local, random_tiny_dir, tmp_path, fast_policy):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    data = np.random.default_rng(0).integers(0, 4000, (3, 200, 300), dtype=np.uint16)
    with rasterio.open(scenes / "s1.tif", "w", driver="GTiff", width=300, height=200, count=3, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(500000, 4600000, 0.5, 0.5)) as ds:
        ds.write(data)
    (tmp_path / "q.json").write_text(json.dumps([{"question": "is there a boat ?", "choices": ["yes", "no"]}]))
    opts = JobOptions(str(scenes), str(tmp_path / "out"), str(random_tiny_dir), policy=fast_policy, run_id="sat-1")
    summary = satellite.run(opts, str(tmp_path / "q.json"), tile_size=200, overlap=100, bands="1,2,3")
    check_readers(tmp_path / "out", {"sat-1": summary["items_in"]})


@pytest.mark.parametrize("bad", ["42", "2026-11-24", "inf", "NaN", "epoch", "a/b", "a b", "a%20b", "x=1", "", "-x"])
def test_run_ids_that_readers_would_read_back_differently_are_refused(bad):
    with pytest.raises(ValueError, match="run id"):
        check_run_id(bad)


@pytest.mark.parametrize("good", ["r1", "documents-2026-11-24", "vqa-20260101-0a1b2c3d", "sat_1.v2", "nightly"])
def test_ordinary_run_ids_pass(good):
    assert check_run_id(good) == good
