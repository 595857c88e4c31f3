"""`make bench-train-speed`: seconds per step from a training log, the weights compared bit for bit, and
the claim the Makefile's GOMP_SPINCOUNT=0 rests on (it changes no weight) on a real short run."""

import json

import pytest
import torch
from safetensors.torch import save_file

from benchmarks.training_speed import main, same_weights, seconds_per_step


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


def test_same_weights_sees_one_changed_value_a_dtype_and_a_missing_tensor(tmp_path):
    w = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4)}
    paths = {}
    for name, tensors in {"w": w, "copy": {k: v.clone() for k, v in w.items()},
                          "one_value": {**w, "a": w["a"].clone().index_put_((torch.tensor(1), torch.tensor(2)),
                                                                            torch.tensor(5.0 + 1e-6))},
                          "dtype": {**w, "b": w["b"].double()}, "missing": {"a": w["a"]}}.items():
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file(tensors, paths[name])
    assert same_weights(paths["w"], paths["copy"])
    assert not same_weights(paths["w"], paths["one_value"])
    assert not same_weights(paths["w"], paths["dtype"])
    assert not same_weights(paths["w"], paths["missing"])


def test_the_spin_setting_changes_no_weight(tmp_path):
    """Two real 2-step train-open runs from the shipped weights, libgomp spinning and not."""
    out = tmp_path / "speed.json"
    main(steps=2, rounds=1, threads=2, envs="", out=out)
    report = json.loads(out.read_text())
    assert report["identical_weights"] is True
    assert set(report["seconds_per_step"]) == {"spinning (libgomp default)", "GOMP_SPINCOUNT=0"}
    for per in report["seconds_per_step"].values():
        assert per["stage1"] > 0 and per["stage2"] > 0
