"""Scaling test: items/s and per-actor balance for 1, 2, 4 actors over the same corpus, on a local
multi-node Ray cluster (head + 2 workers), every item exactly once at every size.

    python -m cluster.scaling --n 32 --out results/scaling.json      # also writes results/scaling.png

On a 2-core machine the actors share two cores, so items/s cannot grow with actors there;
the test still proves the scheduling, the balance and the accounting. Run it on a bigger
machine (or a real cluster, ``--address``) for speed-up figures.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer


def main(n: int = 32, sizes: str = "1,2,4", seed: int = 21, model: Optional[str] = None,
         out: Path = Path("results/scaling.json"), policy: str = '{"budget": 24}', address: Optional[str] = None):
    import pyarrow.parquet as pq
    import ray

    from benchmarks.pipeline_throughput import make_corpus
    from pipelines.job import JobOptions, run_job
    from pipelines.runs import RunPaths
    from pipelines.vqa import read_manifest

    from cluster.local import LocalCluster

    cluster = None
    if address is None:
        cluster = LocalCluster(workers=2, cpus_per_worker=3, head_cpus=2).start()
        address = cluster.address
    os.environ["RAY_AUTH_MODE"] = "disabled"
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = make_corpus(Path(tmp), n, seed)
            ray.init(address=address, log_to_driver=False)
            for size in [int(s) for s in sizes.split(",")]:
                opts = JobOptions(str(manifest), str(Path(tmp) / "out"), model, num_actors=size, batch_size=2,
                                  policy=policy, run_id=f"scale-{size}")
                t0 = time.perf_counter()
                summary = run_job("vqa", opts, read_manifest(str(manifest)))
                wall = time.perf_counter() - t0
                df = pq.read_table(RunPaths(opts.output, opts.run_id).results).to_pandas()
                per_actor = df.groupby("actor").size().sort_values(ascending=False).tolist()
                results.append({"actors": size, "items": int(len(df)), "unique_ids": int(df["id"].nunique()),
                                "exactly_once": bool(len(df) == n and df["id"].is_unique),
                                "items_per_s": round(n / wall, 3), "wall_s": round(wall, 1),
                                "items_per_actor": per_actor,
                                "balance_min_over_max": round(min(per_actor) / max(per_actor), 3) if per_actor else None,
                                "items_error": summary["items_error"]})
                print(json.dumps(results[-1]))
            ray.shutdown()
    finally:
        if cluster is not None:
            cluster.stop()
    report = {"n_items": n, "policy": json.loads(policy), "model": str(model or "spote-tiny"),
              "cpus": os.cpu_count(), "runs": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    _plot(report, out.with_suffix(".png"))
    print(f"-> {out} and {out.with_suffix('.png')}")
    return report


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot([r["actors"] for r in runs], [r["items_per_s"] for r in runs], "o-")
    a.set_xlabel("actors")
    a.set_ylabel("items/s")
    a.set_title(f"throughput ({report['cpus']} CPUs)")
    for i, r in enumerate(runs):
        b.bar([i + k * 0.8 / max(1, len(r["items_per_actor"])) for k in range(len(r["items_per_actor"]))],
              r["items_per_actor"], width=0.8 / max(1, len(r["items_per_actor"])), label=f"{r['actors']} actors")
    b.set_xticks(range(len(runs)), [f"{r['actors']}" for r in runs])
    b.set_xlabel("actors")
    b.set_ylabel("items per actor")
    b.set_title("balance")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    typer.run(main)
