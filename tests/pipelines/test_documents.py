import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from pipelines.job import JobOptions
from pipelines.runs import RunPaths
from pipelines.documents import LEDGER, run


def _pdf(path: Path, pages: int, seed: int):
    rng = np.random.default_rng(seed)
    imgs = []
    for p in range(pages):
        im = Image.new("RGB", (600, 800), "white")
        d = ImageDraw.Draw(im)
        x, y = rng.integers(50, 500, 2)
        d.rectangle([x, y, x + 30, y + 30], outline=(215, 25, 25), width=3)
        d.text((x + 10, y + 8), str(rng.integers(10)), fill="black")
        imgs.append(im)
    imgs[0].save(path, save_all=True, append_images=imgs[1:])


def test_documents_incremental_and_idempotent(ray_local, random_tiny_dir, tmp_path, fast_policy):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    _pdf(inbox / "a.pdf", 2, 0)
    _pdf(inbox / "b.pdf", 1, 1)
    Image.new("RGB", (400, 300), "white").save(inbox / "scan.png")
    (inbox / "broken.pdf").write_bytes(b"%PDF-1.4 truncated nonsense")
    qs = tmp_path / "q.yaml"
    qs.write_text("- question: is the red box ticked ?\n  choices: [yes, no]\n")
    opts = JobOptions(str(inbox), str(out), str(random_tiny_dir), policy=fast_policy)

    night1 = run(opts, str(qs), dpi=50, run_date="2026-11-24")
    assert night1["documents_processed"] == 4 and night1["items_in"] == 2 + 1 + 1 + 1
    df = pq.read_table(RunPaths(str(out), "documents-2026-11-24").results).to_pandas()
    assert df["id"].is_unique and len(df) == 5
    broken = df[df.document == "broken.pdf"].iloc[0]
    assert broken.status == "error" and broken.error.startswith("unreadable PDF: truncated")
    assert sorted(df[df.document == "a.pdf"].page) == [0, 1]

    same_night = run(opts, str(qs), dpi=50, run_date="2026-11-24")          # idempotent
    assert same_night["run_id"] == "documents-2026-11-24"
    assert len(pq.read_table(RunPaths(str(out), "documents-2026-11-24").results)) == 5

    _pdf(inbox / "b.pdf", 3, 2)                                               # changed
    _pdf(inbox / "c.pdf", 1, 3)                                               # new
    night2 = run(opts, str(qs), dpi=50, run_date="2026-11-25")
    assert night2["documents_seen"] == 5 and night2["documents_processed"] == 2
    df2 = pq.read_table(RunPaths(str(out), "documents-2026-11-25").results).to_pandas()
    assert sorted(set(df2.document)) == ["b.pdf", "c.pdf"] and len(df2) == 4
    ledger = json.loads((out / LEDGER).read_text())
    assert ledger[str(inbox / "b.pdf")]["run_id"] == "documents-2026-11-25"
    assert ledger[str(inbox / "a.pdf")]["run_id"] == "documents-2026-11-24"
