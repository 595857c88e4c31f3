"""Every cluster manifest parses and names what matters: entrypoint module, resources, pinned images."""

import importlib.util
import re
import shlex
from pathlib import Path

import yaml

CLUSTER = Path(__file__).parents[2] / "cluster"


def _load(name):
    return list(yaml.safe_load_all((CLUSTER / name).read_text()))


def _images(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "image":
                yield v
            else:
                yield from _images(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _images(v)


def _pinned(image: str) -> bool:
    return bool(re.fullmatch(r"[\w./-]+:(?!latest$)[\w.-]+", image))


def _check_cluster_spec(spec):
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["resources"]["limits"]["cpu"]
    gpu = spec["workerGroupSpecs"][0]
    worker = gpu["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    assert spec["rayVersion"] == "2.60.0"


def test_raycluster():
    (doc,) = _load("kuberay/raycluster.yaml")
    assert doc["kind"] == "RayCluster" and doc["apiVersion"] == "ray.io/v1"
    _check_cluster_spec(doc["spec"])
    assert all(_pinned(i) for i in _images(doc))


def test_rayjobs_entrypoints_exist_and_are_complete():
    for name, module in (("kuberay/rayjob-satellite.yaml", "pipelines.satellite"),
                         ("kuberay/rayjob-documents.yaml", "pipelines.documents")):
        (doc,) = _load(name)
        assert doc["kind"] == "RayJob"
        argv = shlex.split(doc["spec"]["entrypoint"])
        assert argv[:3] == ["python", "-m", module]
        assert importlib.util.find_spec(module) is not None
        assert "--input" in argv and "--output" in argv and "--num-gpus-per-actor" in argv
        _check_cluster_spec(doc["spec"]["rayClusterSpec"])
        assert all(_pinned(i) for i in _images(doc))
        assert doc["spec"]["shutdownAfterJobFinishes"] is True


def test_nightly_cronjob_creates_the_documents_rayjob():
    (doc,) = _load("kuberay/cronjob-documents.yaml")
    assert doc["kind"] == "CronJob" and doc["spec"]["schedule"] == "0 2 * * *"
    assert doc["spec"]["concurrencyPolicy"] == "Forbid"
    assert "rayjob-documents.yaml" in " ".join(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert all(_pinned(i) for i in _images(doc))


def test_launcher_and_runtime_env():
    (doc,) = _load("launcher/aws-gpu.yaml")
    assert doc["head_node_type"] in doc["available_node_types"]
    assert _pinned(doc["docker"]["image"])
    assert doc["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"].startswith("g")
    (env,) = _load("runtime_env.yaml")
    assert "pip" in env and "env_vars" in env


def test_the_runtime_env_and_the_launcher_install_every_package_the_project_imports():
    """On a stock Ray image (the launcher's) these lists are all there is: a package the `pipelines` extra
    gained but they lacked failed a job only after its tiles were answered (antimeridian, in the GeoParquet
    rewrite), and they never held torch, matplotlib, scipy or the other core dependencies."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((CLUSTER.parent / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["pipelines"] + project["optional-dependencies"]["endpoint"]
    needed = {Requirement(r).name.lower() for r in wanted} - {"ray"}  # the image is Ray's
    (env,) = _load("runtime_env.yaml")
    in_env = {Requirement(r).name.lower() for r in env["pip"]["packages"]}
    (launcher,) = _load("launcher/aws-gpu.yaml")
    pip_lines = [shlex.split(c) for c in launcher["setup_commands"] if c.startswith("pip install")]
    in_launcher = {Requirement(a).name.lower() for line in pip_lines for a in line[2:] if not a.startswith("-")}
    assert needed <= in_env, needed - in_env
    assert needed <= in_launcher, needed - in_launcher


def test_the_nightly_pod_waits_for_its_rayjob_to_end(tmp_path):
    """concurrencyPolicy Forbid covers the CronJob's pod only: a pod that ended right after `kubectl apply`
    let the next night start beside a slow one. The pod's script (run here with sh, a stand-in kubectl
    that reports Running, Running, then the end state, and a sleep that returns at once) ends with the
    RayJob, and fails where it failed."""
    import os
    import subprocess

    (doc,) = _load("kuberay/cronjob-documents.yaml")
    container = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0].replace("/manifests/", f"{tmp_path}/manifests/")
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "rayjob-documents.yaml").write_text((CLUSTER / "kuberay" / "rayjob-documents.yaml").read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sleep").write_text("#!/bin/sh\nexit 0\n")
    for end, code in (("Complete", 0), ("Failed", 1)):
        calls = tmp_path / f"calls-{end}"
        (bin_dir / "kubectl").write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = apply ]; then cat > {tmp_path}/applied.yaml; exit 0; fi\n'
            f'echo "$@" >> {calls}; n=$(wc -l < {calls})\n'
            f'if [ "$n" -lt 3 ]; then printf Running; else printf {end}; fi\n')
        for f in ("sleep", "kubectl"):
            (bin_dir / f).chmod(0o755)
        res = subprocess.run(["/bin/sh", "-c", script], env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == code, (end, res.stderr)
        asked = calls.read_text().splitlines()
        assert len(asked) == 3 and all(a.startswith("get rayjob spote-documents-") for a in asked), asked
        assert "name: spote-documents-" in (tmp_path / "applied.yaml").read_text()
