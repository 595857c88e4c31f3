import json

import pytest

from spote.bench.run import auroc, evidence_hit, run_bench


def test_auroc_and_hit():
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.5, 0.5], [True, True]) is None
    assert evidence_hit([0, 0, 100, 100], [10, 10, 20, 20], (1000, 1000))
    assert not evidence_hit([0, 0, 1000, 1000], [10, 10, 20, 20], (1000, 1000))  # the whole image is no spotlight
    assert not evidence_hit(None, [10, 10, 20, 20], (1000, 1000))


def test_bench_writes_the_documented_json(random_tiny_dir, tmp_path):
    out = tmp_path / "b.json"
    from spote.core import PolicyConfig

    report = run_bench(n=4, seed=0, methods=["baseline", "oracle", "spote", "random", "api", "vicrop"], out=out,
                       model=str(random_tiny_dir), cfg=PolicyConfig(budget=10), plot=True, progress=False)
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(report))
    assert {"n_items", "seed", "split", "model", "methods"} <= set(data) and data["n_items"] == 4
    import torch
    assert data["environment"]["torch"] == torch.__version__ and data["environment"]["cpu"]  # what a re-run must match
    for m in ("baseline", "oracle", "spote", "random", "api", "vicrop"):
        s = data["methods"][m]
        assert {"accuracy", "forward_passes_mean", "seconds_per_item", "evidence_hit_rate", "accuracy_by_evidence_size",
                "accuracy_collapse_items", "auroc"} <= set(s)
        assert 0 <= s["accuracy"] <= 1
    assert data["methods"]["baseline"]["forward_passes_mean"] == 1
    assert data["methods"]["spote"]["forward_passes_mean"] <= 10
    assert out.with_suffix(".png").exists()


def test_gpu_memory_is_none_without_a_gpu():
    import shutil

    import torch

    from spote.bench.gpu import GpuMemoryPeak, torch_peak_mb

    if torch.cuda.is_available() or shutil.which("nvidia-smi"):
        pytest.skip("this machine has a GPU")
    with GpuMemoryPeak() as gpu:
        pass
    assert gpu.peak_mb is None and gpu.idle_mb is None and torch_peak_mb() is None
