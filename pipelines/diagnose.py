"""Where does the pipeline's per-item time go? The same items and SPOT-E code, three ways.

    python -m pipelines.diagnose --n 120

1. ``loop``: ``pipelines.bench``'s plain loop in this process;
2. ``ray-task``: the same plain loop inside one Ray worker holding the VLM actor's CPUs;
3. ``ray-data``: the pipeline's own Ray Data stages (``answer_dataset``), rows collected to pandas
   (no Parquet, no commit), so only the streaming path is timed.
Each prints mean ms per item as timed around SPOT-E in the process that runs it. A benchmark aid,
not a test: compare numbers from one run only (this machine's speed drifts between runs).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer


def main(n: int = 120, seed: int = 11, cpus: int = 2):
    import ray

    from .bench import make_corpus, plain_loop
    from .common import JobOptions, answer_dataset, init_ray
    from .vqa import read_manifest

    def mean(ms):
        return sum(ms) / len(ms)

    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_corpus(Path(tmp), n, seed)
        print(f"loop       {mean(plain_loop(manifest, None, {})[1]):7.1f} ms per item")
        init_ray(num_actors=1)
        in_ray = ray.remote(num_cpus=cpus)(plain_loop).remote(manifest, None, {})
        print(f"ray-task   {mean(ray.get(in_ray)[1]):7.1f} ms per item")
        rows = read_manifest(str(manifest))
        for r in rows:
            r.update(status="", error="")
        ds = answer_dataset(rows, JobOptions(str(manifest), "", cpus_per_actor=cpus), {}, {})
        print(f"ray-data   {ds.to_pandas()['latency_ms'].mean():7.1f} ms per item (SpotePredictor's latency_ms)")
        print(f"loop again {mean(plain_loop(manifest, None, {})[1]):7.1f} ms per item")


if __name__ == "__main__":
    typer.run(main)
