"""Training wall time on few cores: OpenMP's spin-waiting threads against sleeping ones, or one
commit's training code against this checkout's; the same weights either way.

    python -m benchmarks.training_speed --steps 75 --rounds 2 --out results/training-speed.json
    python -m benchmarks.training_speed --against f5e540a --steps 40 --rounds 2 --out results/training-speed-code.json

``training.train`` runs its compute in the main process (``--threads`` OpenMP threads) and draws
its scenes in one DataLoader worker process. On 2 cores that is three busy threads on two cores.
libgomp's threads spin for a while before they sleep when they wait for work (``GOMP_SPINCOUNT``,
300,000 spins by default). While they spin, the data worker cannot have their core, between the
model's operators and in the step's single-threaded Python. ``GOMP_SPINCOUNT=0`` makes them sleep
at once. Which thread does an operation, and when, does not change what it computes, so the
weights must be the same to the bit. This benchmark measures both claims.

Each round runs ``make train-open``'s settings, shortened to ``--steps`` stage 1 and ``--steps``
stage 2 steps, once per setting (``--envs``; the order alternates between rounds, because a
machine's speed can drift from minute to minute), each run a fresh process. The base model defaults to the
shipped weights, which have the same shapes as ``make train-open``'s start, so a step costs the
same. A stage's seconds per step come from its own ``train_log.jsonl``: (seconds at its last
logged step - seconds at step 0) / (last step - 0), which leaves out the first batch (the scene pool
is drawn then). ``identical_weights`` compares every run's ``model.safetensors`` with the first
run's, byte for byte.

``--against REV`` compares code instead of settings: the training code of commit REV (its files
written out with ``git archive``) against this checkout's, both under the Makefile's ``TRAIN_ENV``
(``make bench-train-speed-code``: the scene drawing made cheaper, the same batches, so the same weights).
Each run imports ``training`` and ``spote`` from its own tree (``PYTHONPATH``), which is checked
before the first run and reported (``imports``).
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "spote" / "weights" / "spote-tiny"
# make train-open's settings (Makefile), except the step counts, the folders and the final evaluation
TRAIN_OPEN = ["--open-share", "0.5", "--stage1-open-share", "0.7", "--glyph-px", "11", "24", "--order-weight", "0.5",
              "--vision-lr", "1e-3", "--distill-weight", "5.0", "--stage1-start", "100000000", "--lr", "1e-3",
              "--warmup", "100", "--seed", "0", "--tower-layers", "6", "--eval-items", "8", "--open-eval-items", "4"]
DEFAULT_ENVS = {"spinning (libgomp default)": {}, "GOMP_SPINCOUNT=0": {"GOMP_SPINCOUNT": "0"}}
TRAIN_ENV = {"GOMP_SPINCOUNT": "0"}  # the Makefile's TRAIN_ENV: what --against runs both trees with
# how OpenMP threads wait: cleared from every run's environment, so that an exported one does not leak into a run
WAIT_SETTINGS = {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"}


def seconds_per_step(log_lines: list[str]) -> dict[str, float]:
    """Per stage ("stage1", "stage2"), seconds per step between the first and the last logged step of
    a ``train_log.jsonl``. Raises ValueError when a stage logged fewer than two steps."""
    by_stage: dict[int, list[dict]] = {}
    for line in log_lines:
        if line.strip():
            rec = json.loads(line)
            by_stage.setdefault(rec["stage"], []).append(rec)
    out = {}
    for stage, recs in sorted(by_stage.items()):
        if len(recs) < 2:
            raise ValueError(f"stage {stage} logged {len(recs)} step(s); seconds per step needs two")
        first, last = recs[0], recs[-1]
        out[f"stage{stage}"] = (last["seconds"] - first["seconds"]) / (last["step"] - first["step"])
    return out


def same_weights(a: Path, b: Path) -> bool:
    """Whether two safetensors files are the same bytes: the same tensor names, dtypes and shapes in the
    header and the same bits (a NaN equals the same NaN, -0.0 differs from 0.0). ``save_pretrained``
    writes the same header for the same tensors, so equal weights are equal files. Raises OSError for a
    file that cannot be read."""
    return filecmp.cmp(a, b, shallow=False)


def child_env(parent: dict[str, str], env: dict[str, str], unset: set[str]) -> dict[str, str]:
    """A run's environment: ``parent`` less ``unset``, then ``env`` over it."""
    return {**{k: v for k, v in parent.items() if k not in unset}, **env}


def tree_env(parent: dict[str, str], code: Path) -> dict[str, str]:
    """``parent`` with the tree at ``code`` first on ``PYTHONPATH``: ``-m training.train`` run in it
    then imports that tree's ``training`` and ``spote``, not the installed (editable) checkout's, even
    where ``PYTHONSAFEPATH`` keeps the working folder off the path."""
    return {**parent, "PYTHONPATH": os.pathsep.join([str(code), *filter(None, [parent.get("PYTHONPATH")])])}


def imported_from(code: Path) -> dict[str, str]:
    """Where a run in the tree at ``code`` imports ``spote`` and ``training`` from (their folders).
    Raises RuntimeError when either comes from outside ``code``."""
    proc = subprocess.run([sys.executable, "-c", "import spote, training; print(spote.__file__); print(training.__file__)"],
                          env=tree_env(dict(os.environ), code), cwd=code, capture_output=True, text=True)
    paths = dict(zip(("spote", "training"), (Path(x).parent for x in proc.stdout.split())))
    if proc.returncode or len(paths) < 2 or not all(p.resolve().is_relative_to(code.resolve()) for p in paths.values()):
        raise RuntimeError(f"a run in {code} would not import its own spote and training: {proc.stdout.split()} "
                           f"{proc.stderr.strip().splitlines()[-1:]}")
    return {name: str(p.resolve()) for name, p in paths.items()}


def run_once(base: Path, steps: int, env: dict[str, str], out: Path, threads: int, unset: set[str],
             code: Path = ROOT) -> dict:
    """One shortened ``make train-open`` in a fresh process, in ``child_env(os.environ, env, unset)``,
    with the ``training`` and ``spote`` packages of the tree at ``code`` (``tree_env``):
    {"stage1", "stage2": seconds per step, "wall_seconds": the process's whole run (loading, the scene
    pool and the final evaluation included)}. Raises RuntimeError when the run fails, ValueError when a
    stage logged fewer than two steps."""
    cmd = [sys.executable, "-m", "training.train", "--tower-from", str(base), "--lm-from", str(base), *TRAIN_OPEN,
           "--vision-steps", str(steps), "--steps", str(steps), "--threads", str(threads), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=tree_env(child_env(dict(os.environ), env, unset), code), capture_output=True,
                          text=True, cwd=code)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"training.train exited with {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    return {**seconds_per_step((out / "train_log.jsonl").read_text().splitlines()), "wall_seconds": wall}


def commit_of(rev: str) -> str:
    """The full hash of the commit ``rev`` names in this repository. Raises typer.BadParameter when it
    names none, git is missing or this is no git checkout."""
    try:
        proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=ROOT,
                              capture_output=True, text=True)
    except FileNotFoundError:
        raise typer.BadParameter("--against needs git, which is not on PATH") from None
    if proc.returncode or not proc.stdout.strip():
        raise typer.BadParameter(f"--against {rev!r} names no commit of {ROOT} (a shallow clone? git fetch --unshallow)")
    return proc.stdout.strip()


def export_tree(commit: str, dest: Path) -> Path:
    """The ``spote`` and ``training`` folders of ``commit`` written to ``dest`` (``git archive``): what
    a training run imports. Raises FileExistsError if ``dest`` exists, CalledProcessError if git or
    tar fails."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit, "spote", "training"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def checkout_state() -> dict:
    """This checkout's commit and whether the code a run imports (``spote``, ``training``,
    ``benchmarks``) differs from it, untracked files included; None where git cannot tell."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "spote", "training", "benchmarks"], cwd=ROOT,
                               capture_output=True, text=True)
    except FileNotFoundError:  # no git
        return {"commit": None, "modified": None}
    return {"commit": head.stdout.strip() or None if head.returncode == 0 else None,
            "modified": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def main(steps: int = typer.Option(75, help="stage 1 and stage 2 steps per run (at least 2)"),
         rounds: int = typer.Option(2, help="rounds; each runs every setting once"),
         base: Path = typer.Option(SHIPPED, help="the model train-open starts from (shapes as make train-open's base)"),
         threads: int = typer.Option(2, help="training.train --threads"),
         envs: str = typer.Option("", help='JSON {"name": {"ENV": "value"}}; default: libgomp\'s spinning, and GOMP_SPINCOUNT=0'),
         against: str = typer.Option("", help="a commit: its training code against this checkout's, both with "
                                              "the Makefile's TRAIN_ENV (instead of --envs)"),
         out: Path = typer.Option(Path("results/training-speed.json"), help="the report")):
    """Time short train-open runs under each setting (or each tree's code, ``--against``) and check that
    they train the same weights."""
    from spote.bench.run import environment

    try:
        named = json.loads(envs) if envs else DEFAULT_ENVS
    except json.JSONDecodeError as err:
        raise typer.BadParameter(f"--envs is not JSON: {err}") from None
    if steps < 2 or rounds < 1:
        raise typer.BadParameter(f"--steps must be >= 2 and --rounds >= 1, got {steps} and {rounds}")
    strings = all(isinstance(e, dict) and all(isinstance(v, str) for v in e.values()) for e in named.values()) \
        if isinstance(named, dict) else False
    if not named or not strings:
        raise typer.BadParameter(f'--envs must map names to {{"ENV": "value"}} objects of strings, got {envs!r}')
    if out.is_dir():
        raise typer.BadParameter(f"--out {out} is a folder; give the report's file name")
    commit = None
    if against:
        if envs:
            raise typer.BadParameter("--against runs both trees with the Makefile's TRAIN_ENV; give it without --envs")
        commit = commit_of(against)
        named = {f"{against} ({commit[:7]})": dict(TRAIN_ENV), "this checkout": dict(TRAIN_ENV)}
    base = base.resolve()  # the runs start in the repository's root
    names = list(named)
    unset = WAIT_SETTINGS | {k for env in named.values() for k in env}  # each run: its own, or libgomp's default
    runs = {name: [] for name in named}
    first_model = None
    compared = 0
    identical = True
    with tempfile.TemporaryDirectory() as tmp:
        code = {name: ROOT for name in names}
        if commit:
            code[names[0]] = export_tree(commit, Path(tmp) / "against")
        trees = {tree: imported_from(tree) for tree in set(code.values())}  # one check per tree, not per setting
        imports = {name: trees[code[name]] for name in names}
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                folder = Path(tmp) / f"round{r}-setting{names.index(name)}"
                res = run_once(base, steps, named[name], folder, threads, unset, code[name])
                model = folder / "model.safetensors"  # every run has its own folder until the end
                if first_model is None:
                    first_model = model
                else:
                    identical = identical and same_weights(first_model, model)
                    compared += 1
                runs[name].append(res)
                print(f"round {r + 1}/{rounds} {name}: stage 1 {res['stage1']:.3f} s/step, "
                      f"stage 2 {res['stage2']:.3f} s/step", flush=True)
    mean = {name: {k: sum(x[k] for x in v) / len(v) for k in ("stage1", "stage2")} for name, v in runs.items()}
    report = {"steps": steps, "rounds": rounds, "threads": threads, "base": str(base), "settings": named,
              "code": {name: commit if commit and name == names[0] else "this checkout" for name in names},
              "checkout": checkout_state(), "imports": imports,
              "seconds_per_step": mean, "per_run": runs,
              "wall_seconds": {name: sum(x["wall_seconds"] for x in v) / len(v) for name, v in runs.items()},
              "identical_weights": identical if compared else None, "runs_compared": compared,
              # the first setting's seconds per step over each other's (> 1: that one is faster)
              "speedup": {name: {k: mean[names[0]][k] / mean[name][k] if mean[name][k] > 0 else None
                                 for k in ("stage1", "stage2")} for name in names[1:]},
              "environment": environment(), "usable_cpus": len(os.sched_getaffinity(0)),
              "inherited_wait_settings": {k: os.environ[k] for k in sorted(WAIT_SETTINGS) if k in os.environ}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for name in names:
        print(f"{name}: stage 1 {mean[name]['stage1']:.3f} s/step, stage 2 {mean[name]['stage2']:.3f} s/step")
    print(f"identical weights: {report['identical_weights']} ({compared} runs compared with the first)")


if __name__ == "__main__":
    typer.run(main)
