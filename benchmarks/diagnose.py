"""Where does the pipeline's per-item time go? The same items and SPOT-E code, four ways, interleaved.

    python -m pipelines.diagnose --n 30 --reps 3

Per round, in turn (this machine's speed drifts by 10-20% between minutes, so every way is timed
in every round and the means are compared, never one run against another):

1. ``loop``: a warm model answering the items in this process, decoding each image inline;
2. ``ray-actor``: the same warm loop inside one Ray actor holding the VLM actor's CPUs;
3. ``ray-data``: the job's own Ray Data stages (``answer_dataset``: loader actors decode on CPU,
   then the SPOT-E actor), rows collected to pandas (no Parquet, no commit);
4. ``ray-data-fused``: the same stages, but the loader only checks the row and the SPOT-E actor
   decodes the image itself, as the plain loop does.

Prints mean ms per item as timed around SPOT-E in the process that runs it (in 3 and 4 the
predictor's ``latency_ms``; in 4 it includes the decode). A benchmark aid, not a test.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import typer

from benchmarks.pipeline_throughput import PlainLoop, make_corpus
from pipelines.job import JobOptions, answer_dataset
from pipelines.stages import RowLoader, SpotePredictor
from pipelines.vqa import read_manifest


class WarmLoop(PlainLoop):
    """``benchmarks.pipeline_throughput``'s plain loop, its model kept between rounds (in this process or as a Ray actor)."""

    def __init__(self, manifest: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        super().__init__(None, {})
        self.rows = read_manifest(manifest)

    def ms_per_item(self) -> float:
        start = len(self.ms)
        self.run(self.rows)
        return float(np.mean(self.ms[start:]))


class CheckOnlyLoader(RowLoader):
    """Loader stage of the fused variant: checks the question, leaves the image unread."""

    def read(self, row: dict):
        return np.zeros((1, 1, 3), np.uint8)


class DecodingPredictor(SpotePredictor):
    """SPOT-E actor that decodes its own images (timed inside ``latency_ms``)."""

    def predict(self, row: dict) -> dict:
        from spote.images import load_image

        t0 = time.perf_counter()
        pixels = np.asarray(load_image(row["source"]))
        decode_ms = (time.perf_counter() - t0) * 1000
        out = super().predict({**row, "pixels": pixels.tobytes(), "height": pixels.shape[0], "width": pixels.shape[1]})
        return {**out, "latency_ms": out["latency_ms"] + decode_ms}


def ray_data_ms(manifest: str, cpus: int, fused: bool) -> float:
    rows = read_manifest(manifest)
    for r in rows:
        r.update(status="", error="")
    opts = JobOptions(manifest, tempfile.gettempdir(), cpus_per_actor=cpus)  # nothing is written: the dataset is read back
    stages = {"loader": (CheckOnlyLoader, {}), "predictor": DecodingPredictor} if fused else {}
    import ray

    return answer_dataset(ray.data.from_items(rows), opts, {}, {}, **stages).to_pandas()["latency_ms"].mean()


def main(n: int = 30, reps: int = 3, seed: int = 11, cpus: int = 2):
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        manifest = str(make_corpus(Path(tmp), n, seed))
        # room for the idle loop actor beside the job's loader and SPOT-E actors
        ray.init(address="local", num_cpus=2 * cpus + 2, include_dashboard=False)
        local = WarmLoop(manifest, cpus)
        actor = ray.remote(num_cpus=cpus)(WarmLoop).remote(manifest, cpus)
        local.ms_per_item(), ray.get(actor.ms_per_item.remote())  # warm both
        ways = {"loop": local.ms_per_item,
                "ray-actor": lambda: ray.get(actor.ms_per_item.remote()),
                "ray-data": lambda: ray_data_ms(manifest, cpus, fused=False),
                "ray-data-fused": lambda: ray_data_ms(manifest, cpus, fused=True)}
        ms: dict[str, list[float]] = {k: [] for k in ways}
        for i in range(reps):
            for name, way in ways.items():
                ms[name].append(way())
            print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in ms.items()), flush=True)
        loop = float(np.mean(ms["loop"]))
        print("mean ms per item: " + ", ".join(f"{k} {np.mean(v):.0f} (loop/this {loop / np.mean(v):.2f})"
                                                for k, v in ms.items()))


if __name__ == "__main__":
    typer.run(main)
