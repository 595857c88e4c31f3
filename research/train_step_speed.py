"""Can kernels buy the deeper tower its hour? Stage 1's step under torch.compile and bf16 autocast
(docs/experiments/open-items-training.md#kernels-for-the-deeper-tower)

    python -m research.train_step_speed --tower-layers 6 --out results/train-open-2/train-step-speed-run1.json

The eleventh run's stage 1 (``training.train.pretrain_vision``) costs about 1 s a step on 2 cores, most
of it the tower's forward and backward pass over 128 views. This times that work alone, on random
64 px views and a freshly built model of the shipped architecture: the tower and projector forward
with hidden states, the frozen teacher copy's forward on a third of the views (the distillation
term), a loss on the pooled tokens against the embedding table, backward, AdamW. The data stream
runs in a worker process beside it in training and is left out here. Variants (``VARIANTS``): eager
float32 (training's own), bf16 autocast, ``torch.compile`` (inductor), and both, timed in turns in one
process (``time_variants``). Seconds per step are the median of ``steps`` after ``warmup``; the
ratios are to eager, measured in the same run.
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import typer

from training.build import IMAGE_SIZE, build_model, build_processor

app = typer.Typer(add_completion=False)

VARIANTS = {"eager": (False, False), "bf16": (False, True), "compile": (True, False), "compile+bf16": (True, True)}


def make_step(model, compiled: bool, bf16: bool, batch: int, seed: int = 0):
    """One stage-1-like step (module docstring) of ``model``'s tower, as a callable returning its seconds;
    the variant's own optimizer and teacher copy, on fixed random views. Every variant trains the one
    model in place: the work per step is the same whatever its weights."""
    vision, proj = model.model.vision_tower, model.model.multi_modal_projector
    emb = model.model.language_model.embed_tokens
    teacher = (copy.deepcopy(vision).eval(), copy.deepcopy(proj).eval())
    for p in (*teacher[0].parameters(), *teacher[1].parameters()):
        p.requires_grad_(False)
    params = [*vision.parameters(), *proj.parameters(), *emb.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    layer = model.config.vision_feature_layer

    def tokens(v, p, pv):
        return p(v(pv, output_hidden_states=True).hidden_states[layer][:, 1:])

    def loss_of(pv, y, closed):
        t = tokens(vision, proj, pv)
        loss = torch.nn.functional.cross_entropy(t.mean(1) @ emb.weight.T, y)
        with torch.no_grad():
            target = tokens(*teacher, pv[closed])
        return loss + ((t[closed] - target) ** 2).sum() / (target ** 2).sum()

    forward = torch.compile(loss_of) if compiled else loss_of
    g = torch.Generator().manual_seed(seed)
    pv = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, emb.weight.shape[0], (batch,), generator=g)
    closed = torch.arange(batch) % 3 == 0

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = forward(pv, y, closed)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0
    return step


def check_turns(steps: int, rounds: int) -> None:
    """Raises ValueError unless ``steps`` is a positive multiple of ``rounds`` (``time_variants``' turns)."""
    if steps < rounds or steps % rounds:
        raise ValueError(f"steps must be a positive multiple of rounds ({rounds}), got {steps}")


def time_variants(model, names: list[str], batch: int, steps: int, warmup: int, rounds: int = 4) -> dict[str, float]:
    """Median seconds per step of each variant: ``warmup`` steps each (compilation included), then
    ``steps`` timed steps each, in ``rounds`` turns of steps / rounds; each turn starts one variant
    later than the one before, so that a drift in the machine's speed falls on all of them alike.

    Raises:
        ValueError: ``steps`` not a positive multiple of ``rounds``.
    """
    check_turns(steps, rounds)
    runs = {name: make_step(model, *VARIANTS[name], batch) for name in names}
    for step in runs.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(rounds):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            times[name] += [runs[name]() for _ in range(steps // rounds)]
    return {name: statistics.median(t) for name, t in times.items()}


@app.command()
def main(tower_layers: int = 6, batch: int = 128, steps: int = 40, warmup: int = 5, threads: int = 2, rounds: int = 4,
         variants: str = typer.Option(",".join(VARIANTS), help="comma-separated names of VARIANTS; eager first"),
         out: Path = Path("results/train-open-2/train-step-speed.json")):
    """Time stage 1's step under each of ``variants``; seconds and ratios to eager to ``out``."""
    names = variants.split(",")
    if names[0] != "eager" or any(n not in VARIANTS for n in names):
        raise typer.BadParameter(f"variants must start with eager and name only {list(VARIANTS)}, got {variants!r}")
    try:
        check_turns(steps, rounds)  # before the model is built
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    torch.set_num_threads(threads)
    model = build_model(build_processor(open_items=True), seed=0, tower_layers=tower_layers)
    seconds = time_variants(model, names, batch, steps, warmup, rounds)
    result = {"tower_layers": tower_layers, "batch": batch, "steps": steps, "warmup": warmup, "rounds": rounds,
              "threads": threads,
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "seconds_per_step": {k: round(v, 4) for k, v in seconds.items()},
              "ratio_to_eager": {k: round(v / seconds["eager"], 3) for k, v in seconds.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    app()
