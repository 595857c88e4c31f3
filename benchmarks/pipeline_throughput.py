"""Throughput of ``pipelines.vqa`` with one actor against a plain loop over the same items and model.

    python -m benchmarks.pipeline_throughput --n 600 --out results/bench-pipeline.json

Both sides run the same SPOT-E policy on the same SpotBench images written to a local folder. The
plain loop loads the model once and answers the items one after another in this process (torch
uses every core); the actor gets ``--cpus-per-actor`` torch threads (default 2, the same on a 2-core box). The
pipeline starts a local Ray, reads, decodes on CPU tasks and answers on one actor.

Order: the loop answers the first half of the items, then the pipeline runs over all of them, then
the loop answers the second half (A-B-A). This machine's speed drifts by 10-20% within minutes; run
one after the other, whichever side goes second is timed on a differently fast machine, while
split around the pipeline the loop's clock is centred on the same moment as the pipeline's.

What each side's clock covers: the plain loop from loading the model to its last answer (its two
halves added up); the pipeline from job start (Ray already up) to the committed output, i.e. actor
start, model load, decoding, Parquet, summary and report included. The report splits the pipeline's
cost into a per-item part (the actor's mean latency per item against the loop's) and a fixed part
(what is left of its wall time), so the ratio can be read for any corpus size.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

from spote.bench.scenes import spotbench


def make_corpus(folder: Path, n: int, seed: int) -> Path:
    rows = []
    for item in spotbench("test", n, seed):
        name = f"{item.id}.png"
        item.image.save(folder / name)
        rows.append({"id": item.id, "image_uri": name, "question": item.question, "choices": list(item.choices)})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    return manifest


class PlainLoop:
    """The baseline: one model in this process, items answered one after another, decoded inline."""

    def __init__(self, model: str | None, policy: dict, device: str = "cpu"):
        from spote.core import PolicyConfig
        from spote.loading import load_adapter

        t0 = time.perf_counter()
        self.adapter, self.cfg, self.device = load_adapter(model, device=device), PolicyConfig(**policy), device
        self.seconds, self.ms = time.perf_counter() - t0, []

    def run(self, rows: list[dict]) -> None:
        from spote.core import spote
        from spote.images import load_image

        t0 = time.perf_counter()
        for r in rows:
            t1 = time.perf_counter()
            spote(self.adapter, load_image(r["source"]), r["question"], json.loads(r["choices"]), self.cfg)
            self.ms.append((time.perf_counter() - t1) * 1000)
        self.seconds += time.perf_counter() - t0

    @property
    def items_per_s(self) -> float:
        return len(self.ms) / self.seconds

    def park(self, on_host: bool) -> None:
        """On a GPU, weights to host memory (and the cache freed) while the pipeline's actor runs."""
        if self.device.startswith("cuda"):
            import torch

            self.adapter.model.to("cpu" if on_host else self.device)
            torch.cuda.empty_cache()


def by_thirds(ms: list[float]) -> list[float]:
    """Mean ms per item over the first, middle and last third: does either side slow down as it goes?"""
    k = max(1, len(ms) // 3)
    return [round(sum(p) / len(p), 1) for p in (ms[:k], ms[k:2 * k], ms[2 * k:]) if p]


def main(n: int = 48, seed: int = 11, model: Optional[str] = None, out: Path = Path("results/bench-pipeline.json"),
         batch_size: int = 4, policy: str = "{}", cpus_per_actor: float = 2.0,
         device: str = typer.Option("cpu", help="cpu | cuda: the loop's device; cuda gives the actor one GPU")):
    from pipelines.job import JobOptions, init_ray, run_job
    from pipelines.runs import RunPaths
    from spote.bench.gpu import GpuMemoryPeak, torch_peak_mb

    from pipelines.vqa import read_manifest

    overrides = json.loads(policy)
    on_gpu = device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_corpus(Path(tmp), n, seed)
        rows = read_manifest(str(manifest))
        with GpuMemoryPeak() as loop_gpu:
            loop = PlainLoop(model, overrides, device)
            loop.run(rows[: n // 2])
        loop.park(on_host=True)
        init_ray(num_actors=1)
        opts = JobOptions(str(manifest), str(Path(tmp) / "out"), model, num_actors=1, batch_size=batch_size,
                          cpus_per_actor=cpus_per_actor, num_gpus_per_actor=1.0 if on_gpu else 0.0,
                          policy=policy if overrides else None, run_id="bench")
        t0 = time.perf_counter()
        with GpuMemoryPeak() as pipe_gpu:
            summary = run_job("vqa", opts, read_manifest(str(manifest)))
        pipe_seconds = time.perf_counter() - t0
        pipe_ips = n / pipe_seconds
        loop.park(on_host=False)
        with GpuMemoryPeak() as loop_gpu_again:
            loop.run(rows[n // 2:])
        loop_ips, loop_ms = loop.items_per_s, loop.ms
        loop_torch_mb = torch_peak_mb() if on_gpu else None
        loop_smi_mb = max((m.peak_mb for m in (loop_gpu, loop_gpu_again) if m.peak_mb is not None), default=None)
        import pyarrow.parquet as pq

        res = pq.read_table(RunPaths(opts.output, opts.run_id).results, columns=["id", "latency_ms"],
                            partitioning=None).to_pylist()
        actor_ms = [r["latency_ms"] for r in sorted(res, key=lambda r: r["id"])]
    per_item_loop_ms = 1000 / loop_ips
    per_item_actor_ms = summary["latency_ms_mean"]
    fixed_s = pipe_seconds - n * per_item_actor_ms / 1000
    report = {"n_items": n, "device": device, "cpus_per_actor": cpus_per_actor, "torch_threads_plain_loop": __import__("torch").get_num_threads(), "seed": seed, "model": str(model or "spote-tiny"), "policy": overrides,
              "plain_loop_items_per_s": round(loop_ips, 3), "pipeline_items_per_s": round(pipe_ips, 3),
              "ratio": round(pipe_ips / loop_ips, 3), "target_ratio": 0.8, "order": "loop first half, pipeline, loop second half",
              "plain_loop_ms_per_item": round(per_item_loop_ms, 2), "actor_ms_per_item": round(per_item_actor_ms, 2),
              "per_item_ratio": round(per_item_loop_ms / per_item_actor_ms, 3),
              "pipeline_fixed_seconds": round(fixed_s, 2),
              "plain_loop_ms_by_thirds": by_thirds(loop_ms), "actor_ms_by_thirds": by_thirds(actor_ms),
              "gpu_memory_plain_loop_torch_peak_mb": loop_torch_mb, "gpu_memory_plain_loop_smi_peak_mb": loop_smi_mb,
              "gpu_memory_pipeline_smi_peak_mb": pipe_gpu.peak_mb, "gpu_memory_smi_idle_mb": loop_gpu.idle_mb,
              "pipeline_summary": summary}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"plain loop {loop_ips:.3f} items/s | pipeline (1 actor) {pipe_ips:.3f} items/s | ratio {pipe_ips / loop_ips:.2f} "
          f"(target >= 0.8) -> {out}")
    print(f"  per item: loop {per_item_loop_ms:.0f} ms, actor {per_item_actor_ms:.0f} ms "
          f"(ratio {report['per_item_ratio']:.2f}); pipeline fixed cost {fixed_s:.1f} s")
    print(f"  ms per item by thirds of the corpus: loop {report['plain_loop_ms_by_thirds']}, "
          f"actor {report['actor_ms_by_thirds']}")
    return report


if __name__ == "__main__":
    typer.run(main)
