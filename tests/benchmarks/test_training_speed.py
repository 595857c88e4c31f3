"""`make bench-train-speed` and `bench-train-speed-code`: seconds per step from a training log, the weights compared bit for bit, and
the claim the Makefile's GOMP_SPINCOUNT=0 rests on (it changes no weight) on a real short run."""

import json

import pytest
import torch
from safetensors.torch import save_file

import typer

from benchmarks.training_speed import (ROOT, SHIPPED, TRAIN_ENV, checkout_state, child_env, commit_of, export_tree,
                                       imported_from, main,
                                       same_weights, seconds_per_step)


def _log(records):
    return [json.dumps(r) for r in records] + [""]


def test_seconds_per_step_leaves_out_the_first_batch_and_keeps_stages_apart():
    lines = _log([{"stage": 1, "step": 0, "seconds": 12.0}, {"stage": 1, "step": 25, "seconds": 32.0},
                  {"stage": 1, "step": 49, "seconds": 51.2},
                  {"stage": 2, "step": 0, "seconds": 3.0}, {"stage": 2, "step": 49, "seconds": 52.0}])
    got = seconds_per_step(lines)
    assert got == {"stage1": pytest.approx((51.2 - 12.0) / 49), "stage2": pytest.approx(1.0)}


def test_seconds_per_step_needs_two_steps_of_a_stage():
    with pytest.raises(ValueError, match="stage 2 logged 1 step"):
        seconds_per_step(_log([{"stage": 1, "step": 0, "seconds": 1.0}, {"stage": 1, "step": 9, "seconds": 9.0},
                               {"stage": 2, "step": 0, "seconds": 1.0}]))


def test_same_weights_compares_bits(tmp_path):
    w = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4),
         "c": torch.tensor([float("nan"), 0.0])}
    paths = {}
    for name, tensors in {"w": w, "copy": {k: v.clone() for k, v in w.items()},
                          "one_value": {**w, "a": w["a"].clone().index_put_((torch.tensor(1), torch.tensor(2)),
                                                                            torch.tensor(5.0 + 1e-6))},
                          "negative_zero": {**w, "c": torch.tensor([float("nan"), -0.0])},
                          "dtype": {**w, "b": w["b"].double()}, "missing": {"a": w["a"], "b": w["b"]}}.items():
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file(tensors, paths[name])
    assert same_weights(paths["w"], paths["copy"])  # the same NaN is the same bits
    assert not same_weights(paths["w"], paths["one_value"])
    assert not same_weights(paths["w"], paths["negative_zero"])  # == would call -0.0 and 0.0 equal
    assert not same_weights(paths["w"], paths["dtype"])
    assert not same_weights(paths["w"], paths["missing"])


def test_a_run_gets_its_own_wait_setting_and_no_inherited_one():
    parent = {"PATH": "/bin", "GOMP_SPINCOUNT": "0", "OMP_WAIT_POLICY": "PASSIVE"}
    unset = {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"}
    assert child_env(parent, {}, unset) == {"PATH": "/bin"}  # the default run spins as libgomp does by default
    assert child_env(parent, {"GOMP_SPINCOUNT": "100"}, unset) == {"PATH": "/bin", "GOMP_SPINCOUNT": "100"}


@pytest.mark.parametrize("steps, rounds, envs", [(1, 1, ""), (2, 0, ""), (2, 1, '{"a": {"GOMP_SPINCOUNT": 0}}'),
                                                 (2, 1, "{}"), (2, 1, "not json"), (2, 1, "[1]")])
def test_bad_settings_are_refused_before_any_run(tmp_path, steps, rounds, envs):
    with pytest.raises(typer.BadParameter):
        main(steps=steps, rounds=rounds, base=SHIPPED, threads=2, envs=envs, against="", out=tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_the_spin_setting_changes_no_weight(tmp_path):
    """Two real 2-step train-open runs from the shipped weights, libgomp spinning and not."""
    out = tmp_path / "speed.json"
    main(steps=2, rounds=1, base=SHIPPED, threads=2, envs="", against="", out=out)
    report = json.loads(out.read_text())
    assert report["identical_weights"] is True and report["runs_compared"] == 1
    assert set(report["seconds_per_step"]) == {"spinning (libgomp default)", "GOMP_SPINCOUNT=0"}
    for per in report["seconds_per_step"].values():
        assert per["stage1"] > 0 and per["stage2"] > 0


def test_the_benchmark_trains_with_make_train_opens_settings():
    """TRAIN_OPEN copies the Makefile's train-open flags (a step then costs what it costs there): they must agree,
    but for what the benchmark sets itself (steps, folders, the final evaluation's size)."""
    from benchmarks.training_speed import ROOT, TRAIN_OPEN

    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    recipe = next(line for line in text.splitlines() if "training.train --tower-from $(BASE)" in line).split()
    own = {"--tower-from", "--lm-from", "--vision-steps", "--steps", "--out"}

    def flags(args):
        got, i = {}, 0
        while i < len(args):
            j = i + 1
            while j < len(args) and not args[j].startswith("--"):
                j += 1
            got[args[i]] = args[i + 1:j]
            i = j
        return got

    make = flags(recipe[recipe.index("training.train") + 1:])
    bench = flags(TRAIN_OPEN)
    assert {k: v for k, v in make.items() if k not in own} == {k: v for k, v in bench.items()
                                                                if k not in {"--eval-items", "--open-eval-items"}}


needs_git = pytest.mark.skipif(checkout_state()["commit"] is None, reason="--against needs a git checkout (this is a source tree)")


@pytest.mark.parametrize("against, envs", [("no-such-commit-0000", ""), ("HEAD", '{"a": {}}')])
def test_against_refuses_what_names_no_commit_and_settings_beside_it(tmp_path, against, envs):
    with pytest.raises(typer.BadParameter, match="--against"):
        main(steps=2, rounds=1, base=SHIPPED, threads=2, envs=envs, against=against, out=tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


@needs_git
def test_export_tree_writes_the_commits_own_files_and_a_run_there_imports_them(tmp_path):
    import subprocess

    commit = commit_of("HEAD")
    assert len(commit) == 40 and commit_of(commit[:10]) == commit
    tree = export_tree(commit, tmp_path / "tree")
    shown = subprocess.run(["git", "show", f"{commit}:training/train.py"], cwd=ROOT, capture_output=True, check=True)
    assert (tree / "training" / "train.py").read_bytes() == shown.stdout
    assert (tree / "spote" / "bench" / "scenes.py").is_file() and not (tree / ".git").exists()
    assert imported_from(tree) == {name: str((tree / name).resolve()) for name in ("spote", "training")}
    with pytest.raises(RuntimeError, match="would not import its own"):
        imported_from(tmp_path)  # no spote or training there: the installed checkout's would be used


def test_against_runs_both_trees_with_the_makefiles_train_env():
    line = next(x for x in (ROOT / "Makefile").read_text().splitlines() if x.startswith("TRAIN_ENV ="))
    assert dict(kv.split("=", 1) for kv in line.split("=", 1)[1].split()) == TRAIN_ENV


@needs_git
def test_a_commits_code_against_this_checkouts_trains_the_same_weights(tmp_path):
    """Two real 2-step train-open runs: this commit's code written out, and the checkout itself."""
    out = tmp_path / "code.json"
    main(steps=2, rounds=1, base=SHIPPED, threads=2, envs="", against="HEAD", out=out)
    report = json.loads(out.read_text())
    assert report["identical_weights"] is True and report["runs_compared"] == 1
    head = commit_of("HEAD")
    assert report["code"] == {f"HEAD ({head[:7]})": head, "this checkout": "this checkout"}
    assert report["checkout"]["commit"] == head and all(v == TRAIN_ENV for v in report["settings"].values())
    exported, own = report["imports"][f"HEAD ({head[:7]})"], report["imports"]["this checkout"]
    assert own == {name: str(ROOT / name) for name in ("spote", "training")}
    assert all(not p.startswith(str(ROOT)) and p.endswith(name) for name, p in exported.items())
