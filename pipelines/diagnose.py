"""Where does the pipeline's per-item time go? The same items and SPOT-E code, three ways.

    python -m pipelines.diagnose --n 120

1. ``loop``: in this process (as ``pipelines.bench``'s plain loop);
2. ``ray-actor``: the same loop inside one plain Ray actor with the VLM actor's CPUs;
3. ``ray-data``: Ray Data with the pipeline's loader and predictor, rows collected to pandas
   (no Parquet, no commit), so only the streaming path is timed.
Each prints mean ms per item as timed around SPOT-E in the process that runs it. A benchmark aid,
not a test: compare numbers from one run only (this machine's speed drifts between runs).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import typer


class LoopRunner:
    """Load the model once; answer every manifest row from its file; return mean ms per item."""

    def __init__(self, threads: int):
        import gc

        import torch

        from spote.models import load_adapter

        torch.set_num_threads(threads)
        self.adapter = load_adapter(None, device="cpu")
        gc.collect()
        gc.freeze()

    def run(self, rows: list[dict]) -> float:
        from spote.core import PolicyConfig, spote
        from spote.images import load_image

        cfg, t0 = PolicyConfig(), time.perf_counter()
        for r in rows:
            spote(self.adapter, load_image(r["source"]), r["question"], json.loads(r["choices"]), cfg)
        return (time.perf_counter() - t0) * 1000 / len(rows)


def main(n: int = 120, seed: int = 11, threads: int = 2):
    import ray

    from .bench import make_corpus
    from .common import ImageLoader, SpotePredictor, init_ray
    from .vqa import read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        rows = read_manifest(str(make_corpus(Path(tmp), n, seed)))
        for r in rows:
            r.setdefault("status", "")
            r.setdefault("error", "")
        print(f"loop       {LoopRunner(threads).run(rows):7.1f} ms per item")
        init_ray(num_actors=1)
        actor = ray.remote(num_cpus=threads)(LoopRunner).remote(threads)
        print(f"ray-actor  {ray.get(actor.run.remote(rows)):7.1f} ms per item")
        ray.kill(actor)
        ds = ray.data.from_items(rows, override_num_blocks=16)
        ds = ds.map_batches(ImageLoader, batch_size=4, num_cpus=0.5,
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2))
        ds = ds.map_batches(SpotePredictor, fn_constructor_kwargs={"threads": threads}, batch_size=4,
                            num_cpus=threads, compute=ray.data.ActorPoolStrategy(size=1))
        ms = ds.to_pandas()["latency_ms"].mean()
        print(f"ray-data   {ms:7.1f} ms per item (SpotePredictor's latency_ms)")
        print(f"loop again {LoopRunner(threads).run(rows):7.1f} ms per item")


if __name__ == "__main__":
    typer.run(main)
