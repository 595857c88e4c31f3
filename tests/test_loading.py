"""Model resolution: shipped model, local folders, Hugging Face hub ids through a real hub cache (offline).

The hub cache is laid out as ``huggingface_hub`` writes it (``models--ORG--NAME/blobs``, ``snapshots/REV``
with links into the blobs, ``refs/main``), holding the shipped spote-tiny under a made-up id, and read
with ``HF_HUB_OFFLINE=1``: the library's own cache lookup runs, no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spote.loading import DEFAULT_MODEL, ModelNotFound, check_model, fetch_checkpoint, load_adapter, resolve

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "pipelines" / "samples" / "vqa" / "test-7-00000.png"
REPO = "acme/tiny-vlm"
MAIN = "0123456789abcdef0123456789abcdef01234567"
V1 = "fedcba9876543210fedcba9876543210fedcba98"


def lay_out_hub_cache(cache: Path, repo_id: str, files: dict[str, Path], revision: str, refs=("main",)) -> Path:
    """One snapshot of ``repo_id`` in a hub cache (blobs named by content hash, snapshot links), refs -> it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for name, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / name)
    for ref in refs:
        (repo / "refs" / ref).write_text(revision)
    return snap


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hub")
    shipped = {p.name: p for p in DEFAULT_MODEL.iterdir() if p.is_file()}
    lay_out_hub_cache(cache, REPO, shipped, MAIN, refs=("main",))
    lay_out_hub_cache(cache, REPO, shipped, V1, refs=("v1",))
    pickled = {"config.json": DEFAULT_MODEL / "config.json", "pytorch_model.bin": DEFAULT_MODEL / "model.safetensors"}
    lay_out_hub_cache(cache, "acme/pickled-only", pickled, MAIN)
    lay_out_hub_cache(cache, REMOTE_CODE_REPO, _with_its_own_code(tmp_path_factory.mktemp("code"), shipped), MAIN)
    return cache


REMOTE_CODE_REPO = "acme/own-code-vlm"


def _with_its_own_code(folder: Path, shipped: dict[str, Path]) -> dict[str, Path]:
    """The shipped model as a checkpoint whose config's ``auto_map`` names its own classes (modeling_acme.py),
    as models transformers has no class for ship them: a model_type transformers does not know."""
    config = json.loads((DEFAULT_MODEL / "config.json").read_text())
    config.update(model_type="acme_llava", architectures=["AcmeLlava"],
                  auto_map={"AutoConfig": "modeling_acme.AcmeConfig",
                            "AutoModelForImageTextToText": "modeling_acme.AcmeLlava"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_acme.py").write_text(
        "from transformers import LlavaConfig, LlavaForConditionalGeneration\n\n\n"
        "class AcmeConfig(LlavaConfig):\n    model_type = 'acme_llava'\n\n\n"
        "class AcmeLlava(LlavaForConditionalGeneration):\n    config_class = AcmeConfig\n")
    return {**shipped, "config.json": folder / "config.json", "modeling_acme.py": folder / "modeling_acme.py"}


@pytest.fixture
def offline(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


def test_a_folder_that_is_no_vision_language_model_is_refused_before_any_work(offline, s3, s3_server, tmp_path):
    """A text model's config (a type transformers knows, but loads as no image-text model), a folder saved
    without its processor, and a hub snapshot of pickled weights alone passed the job's start check; every
    actor then failed inside Ray, after the plan was staged, with hundreds of lines of traceback."""
    from pipelines.vqa import app

    cases = {
        str(_edited_copy(tmp_path, "bert", lambda f: _set_json(f, "config.json", model_type="bert"))):
            "names model_type 'bert', which transformers does not load as an image-text model",
        str(_edited_copy(tmp_path, "llama", lambda f: _set_json(f, "config.json", model_type="llama"))):
            "SPOT-E needs a vision-language model",
        str(_edited_copy(tmp_path, "noproc", lambda f: (f / "processor_config.json").unlink())): "no image processor in",
        "acme/pickled-only": "cannot be loaded from its cached snapshot (HF_HUB_OFFLINE=1, so no download): no "
                             "safetensors weights in",
    }
    no_processor = {p.name: p for p in DEFAULT_MODEL.iterdir() if p.is_file() and p.name != "processor_config.json"}
    lay_out_hub_cache(offline, "acme/no-processor", no_processor, MAIN)       # offline: what every actor loads
    cases["acme/no-processor"] = "cannot be loaded from its cached snapshot (HF_HUB_OFFLINE=1, so no download): " \
                                 "no image processor in"
    uri = _upload_shipped(s3)
    s3.pipe_file(f"{uri[5:]}/config.json", json.dumps({"model_type": "bert"}).encode())
    cases[uri] = "names model_type 'bert'"
    for model, expected in cases.items():
        so = _s3_options(s3_server) if model.startswith("s3://") else None
        with pytest.raises(ModelNotFound, match=re.escape(expected)):
            check_model(model, so)
    manifest = ROOT / "pipelines" / "samples" / "vqa" / "manifest.jsonl"
    for model in list(cases)[:4]:
        out = tmp_path / f"out-{Path(model).name}"
        res = CliRunner().invoke(app, ["--input", str(manifest), "--output", str(out), "--model", model])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output[-2000:]
        assert res.stderr.startswith("error: model ") and len(res.stderr.strip().splitlines()) == 1
        assert not out.exists()                                   # nothing staged, no Ray job


def test_resolution_order(tmp_path):
    assert resolve(None) == resolve("spote-tiny") == DEFAULT_MODEL
    assert resolve(str(DEFAULT_MODEL)) == resolve(f"file://{DEFAULT_MODEL}") == DEFAULT_MODEL
    spaced = tmp_path / "my models" / "tiny"  # as_uri() percent-encodes the space
    shutil.copytree(DEFAULT_MODEL, spaced)
    assert resolve(spaced.as_uri()) == resolve(f"file:{spaced}") == spaced
    check_model(spaced.as_uri())
    with pytest.raises(ValueError, match="hub ids only"):
        resolve(str(DEFAULT_MODEL), revision="main")


def test_hub_id_from_the_cache_offline(offline):
    snapshots = offline / "models--acme--tiny-vlm" / "snapshots"
    assert resolve(REPO) == snapshots / MAIN                      # refs/main
    assert resolve(REPO, revision=MAIN) == snapshots / MAIN       # a commit
    assert resolve(REPO, revision="v1") == snapshots / V1         # a tag
    check_model(REPO, revision="v1")


def test_hub_model_answers_as_the_shipped_one(offline, shipped_adapter):
    from spote.bench.scenes import spotbench
    from spote.spotlight import ViewRenderer

    adapter = load_adapter(REPO, revision="v1", device="cpu")
    assert adapter.name == f"{REPO}@v1" and type(adapter) is type(shipped_adapter)
    item = next(iter(spotbench("test", 1, 0)))
    views = [ViewRenderer(item.image, adapter.input_size).global_view]
    a = adapter.choice_logprobs([views], item.question, item.choices)
    b = shipped_adapter.choice_logprobs([views], item.question, item.choices)
    assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("name, revision, expected", [
    ("acme/absent", None, ["'acme/absent'", "no folder", "revision 'main'", "not in the cache", "HF_HUB_OFFLINE=1"]),
    (REPO, "v9", ["revision 'v9'", "not in the cache"]),
    (REPO, MAIN.upper(), ["not in the cache", f"commit hashes are lower case ({MAIN})"]),
    ("acme/pickled-only", None, ["no safetensors weights", ".bin"]),
    ("./no/such/folder", None, ["no folder", "not a hub id"]),
])
def test_model_not_found_names_what_was_tried(offline, name, revision, expected):
    with pytest.raises(ModelNotFound) as err:
        resolve(name, revision=revision)
    message = str(err.value)
    assert "\n" not in message and all(e in message for e in expected), message
    if name.startswith("acme/a"):
        assert str(offline) in message                            # the cache that was searched


def test_a_hub_snapshot_whose_config_blob_is_gone_says_so(tmp_path, monkeypatch):
    """A snapshot's config.json linking to a removed blob was reported as a config without a model_type."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = lay_out_hub_cache(tmp_path, "acme/gone-config", {p.name: p for p in DEFAULT_MODEL.iterdir() if p.is_file()},
                             MAIN)
    (snap / "config.json").resolve().unlink()
    with pytest.raises(ModelNotFound, match=r"config\.json in .* is a link to a file that is gone"):
        resolve("acme/gone-config")


@pytest.mark.parametrize("revision", ["", "  "])
def test_an_empty_revision_is_refused_naming_the_flag(offline, revision):
    """``--revision ""`` was looked up as the cache's ``refs/`` folder (IsADirectoryError)."""
    with pytest.raises(ValueError, match="--revision is empty: give a branch, tag or commit"):
        resolve(REPO, revision=revision)


def test_hub_unreachable_is_one_line(hub_cache, monkeypatch, tmp_path):
    # online mode, but this machine cannot reach huggingface.co: the cache is looked at, then a clear line
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "ENDPOINT", "http://127.0.0.1:9")   # nothing listens on the discard port
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)             # read once at import, maybe under an offline test
    with pytest.raises(ModelNotFound, match="hub is unreachable") as err:
        resolve("acme/absent")
    assert "\n" not in str(err.value)


def test_a_pinned_commit_in_the_cache_is_read_without_asking_the_hub(hub_cache, monkeypatch, tmp_path, caplog):
    """A commit never changes, so its snapshot in the cache is that commit: with the hub unreachable (and
    HF_HUB_OFFLINE unset) a full commit hash took 23-40 s of retries, printed, before the cache was used.
    A short hash says a commit is named in full."""
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hc, "ENDPOINT", "http://127.0.0.1:9")   # nothing listens on the discard port
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    with caplog.at_level("WARNING"):
        assert resolve(REPO, revision=V1).name == V1
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]  # the hub was not asked
    with pytest.raises(ModelNotFound, match="a commit is named by its full 40-character hash"):
        resolve(REPO, revision=V1[:7])


def _run(args, env_extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_cli_ask_by_hub_id_and_revision(hub_cache):
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    res = _run(["-m", "spote.cli", "ask", str(SAMPLE), "what letter is in the red box ?", "--choices", "A,B,C,D,E,F",
                "--model", REPO, "--revision", "v1", "--budget", "4", "--json"], env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["answer"] in list("ABCDEF")

    res = _run(["-m", "spote.cli", "ask", str(SAMPLE), "is there a boat ?", "--model", "acme/absent"], env)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("error: model 'acme/absent' not found") and str(hub_cache) in lines[0]


def test_pipeline_fails_before_any_work(offline, tmp_path):
    from pipelines.vqa import app

    out = tmp_path / "out"
    manifest = ROOT / "pipelines" / "samples" / "vqa" / "manifest.jsonl"
    res = CliRunner().invoke(app, ["--input", str(manifest), "--output", str(out), "--model", "acme/absent"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "error: model 'acme/absent' not found" in res.output and "HF_HUB_OFFLINE=1" in res.output
    assert not out.exists()                                       # nothing staged, no Ray job
    res = CliRunner().invoke(app, ["--input", str(manifest), "--output", str(out), "--model", REPO,
                                   "--revision", "v9"])
    assert res.exit_code == 2 and "revision 'v9'" in res.output and not out.exists()


def _spotbench_manifest(folder: Path) -> Path:
    """Two SpotBench test items as PNGs in ``folder`` and their vqa manifest, ``folder/m.jsonl``."""
    from spote.bench.scenes import spotbench

    rows = []
    for item in spotbench("test", 2, 0):
        item.image.save(folder / f"{item.id}.png")
        rows.append({"id": item.id, "image_uri": f"{item.id}.png", "question": item.question,
                     "choices": list(item.choices)})
    (folder / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return folder / "m.jsonl"


@pytest.mark.slow
def test_pipeline_by_hub_id(hub_cache, tmp_path):
    """A real local Ray in a fresh process, so its actors see this test's hub cache and offline mode."""
    _spotbench_manifest(tmp_path)
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    res = _run(["-m", "pipelines.vqa", "--input", str(tmp_path / "m.jsonl"), "--output", str(tmp_path / "out"),
                "--model", REPO, "--revision", "v1", "--policy", '{"budget": 4, "group_size": 2, "steps": 1}',
                "--run-id", "hub"], env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "_runs" / "hub" / "summary.json").read_text())
    assert summary["items_ok"] == 2 and summary["model"] == f"{REPO}@v1"
    assert summary["settings"]["model_commit"] == V1  # the commit v1 named when the run started, loaded by every actor


def test_a_job_pins_a_hub_revision_to_its_commit_and_a_moved_branch_is_another_run(hub_cache, monkeypatch, tmp_path):
    """A run resumed after the hub's main moved (a new commit) answered its remaining items with the new
    weights and committed both models' answers under one name. The job loads and records the commit the
    revision names when it starts: a moved branch is other settings."""
    import shutil

    from pipelines.job import JobOptions, check_same_settings, run_settings

    cache = tmp_path / "hub"
    shutil.copytree(hub_cache, cache, symlinks=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    opts = JobOptions("in", "out", model=REPO)
    before = opts.predictor_kwargs(None)
    assert before["revision"] == before["model_commit"] == MAIN
    assert JobOptions("in", "out", model=REPO, revision="v1").predictor_kwargs(None)["revision"] == V1
    started = run_settings(opts, {}, None, before["model_commit"])
    spelled = JobOptions("in", "out", model=REPO, revision="main")  # main written out is the same commit, the same run
    assert run_settings(spelled, {}, None, spelled.predictor_kwargs(None)["model_commit"]) == started
    (cache / ("models--" + REPO.replace("/", "--")) / "refs" / "main").write_text(V1)  # main moves on
    after = opts.predictor_kwargs(None)
    assert after["revision"] == V1
    now = run_settings(opts, {}, None, after["model_commit"])
    with pytest.raises(ValueError, match=f"model_commit '{MAIN}' -> '{V1}'"):
        check_same_settings("nightly", started, now)
    # models that are no hub id keep the settings (and so the run ids) they had
    local = JobOptions("in", "out", model=str(DEFAULT_MODEL))
    assert local.predictor_kwargs(None)["model_commit"] is None
    assert "model_commit" not in run_settings(local, {}, None, None)


def _upload_shipped(s3) -> str:
    root = f"spote/models/tiny-{time.time_ns()}"
    for f in DEFAULT_MODEL.iterdir():
        s3.pipe_file(f"{root}/{f.name}", f.read_bytes())
    return f"s3://{root}"


# what loading the shipped model needs of its folder (its model card and training log are not copied)
NEEDED = {"config.json", "generation_config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
          "tokenizer_config.json", "chat_template.jinja", "training_report.json"}


def _copied(local: Path) -> set[str]:
    """The files of a local copy, each checked byte for byte against the shipped folder."""
    names = {p.name for p in local.iterdir() if p.name != ".spote-manifest.json"}
    for name in names:
        assert (local / name).read_bytes() == (DEFAULT_MODEL / name).read_bytes(), name
    return names


def _s3_options(s3_server) -> dict:
    return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_server}}


def test_a_remote_checkpoint_is_copied_once_and_again_when_it_changes(s3, s3_server, tmp_path):
    """Only the folder's own files are copied: a training output folder's intermediate checkpoints below it
    (``checkpoint-100/model.safetensors``, ...) were copied too, several times the model's size."""
    uri, opts = _upload_shipped(s3), _s3_options(s3_server)
    for step in (100, 200):
        s3.pipe_file(f"{uri[5:]}/checkpoint-{step}/model.safetensors", (DEFAULT_MODEL / "model.safetensors").read_bytes())
        s3.pipe_file(f"{uri[5:]}/checkpoint-{step}/config.json", (DEFAULT_MODEL / "config.json").read_bytes())
    local = fetch_checkpoint(uri, opts, cache_dir=tmp_path)
    assert _copied(local) == NEEDED and not list(local.glob("checkpoint-*"))
    s3.pipe_file(f"{uri[5:]}/config.json", b'{"changed": true}')           # changed at the source
    (local / "tokenizer.json").write_bytes(b"{")                            # truncated in the cache
    assert fetch_checkpoint(uri, opts, cache_dir=tmp_path) == local
    assert (local / "config.json").read_bytes() == b'{"changed": true}'
    assert (local / "tokenizer.json").read_bytes() == (DEFAULT_MODEL / "tokenizer.json").read_bytes()


def test_actors_fetching_one_checkpoint_at_once_all_get_it_whole(s3, s3_server, tmp_path):
    uri, opts = _upload_shipped(s3), _s3_options(s3_server)
    code = ("import json, sys; from pathlib import Path; from spote.loading import fetch_checkpoint; "
            "print(fetch_checkpoint(sys.argv[1], json.loads(sys.argv[2]), cache_dir=Path(sys.argv[3])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, json.dumps(opts), str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-500:] for _, err in outs]
    local = Path(outs[0][0].strip())
    assert {Path(out.strip()) for out, _ in outs} == {local}
    assert _copied(local) == NEEDED
    assert json.loads((local / ".spote-manifest.json").read_text()).keys() == NEEDED


def test_a_remote_checkpoint_that_is_not_there_is_one_line(s3, s3_server, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint files under"):
        fetch_checkpoint(f"s3://spote/models/absent-{time.time_ns()}", _s3_options(s3_server), cache_dir=tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]       # no cache folder is made for it
    with pytest.raises(ModelNotFound) as err:
        resolve(f"s3://spote/models/absent-{time.time_ns()}", _s3_options(s3_server))
    message = str(err.value)
    assert "\n" not in message and "could not be fetched" in message and "no checkpoint files under" in message


def test_a_fetch_that_waited_for_another_copies_the_store_as_it_is_then(s3, s3_server, tmp_path):
    """The store is listed once the lock is held: a checkpoint changed while this process waited is
    copied as it now is, its sizes checked against the new listing."""
    from filelock import FileLock

    uri, opts = _upload_shipped(s3), _s3_options(s3_server)
    local = fetch_checkpoint(uri, opts, cache_dir=tmp_path)
    code = ("import json, sys; from pathlib import Path; import filelock; from spote.loading import fetch_checkpoint\n"
            "take = filelock.FileLock.acquire\n"
            "def acquire(self, *a, **k):\n"
            "    print('waiting', flush=True); return take(self, *a, **k)\n"
            "filelock.FileLock.acquire = acquire\n"
            "print(fetch_checkpoint(sys.argv[1], json.loads(sys.argv[2]), cache_dir=Path(sys.argv[3])))")
    holder = FileLock(local.with_name(local.name + ".lock"))
    holder.acquire()
    try:
        proc = subprocess.Popen([sys.executable, "-c", code, uri, json.dumps(opts), str(tmp_path)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "waiting"
        s3.pipe_file(f"{uri[5:]}/config.json", b'{"changed": "while it waited"}')
    finally:
        holder.release()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-1000:]
    assert (local / "config.json").read_bytes() == b'{"changed": "while it waited"}'


def test_a_file_the_store_no_longer_has_is_removed_from_the_copy(s3, s3_server, tmp_path):
    """A checkpoint re-saved in shards: the old single weights file must not be loaded beside them."""
    uri, opts = _upload_shipped(s3), _s3_options(s3_server)
    local = fetch_checkpoint(uri, opts, cache_dir=tmp_path)
    weights = (DEFAULT_MODEL / "model.safetensors").read_bytes()
    s3.rm_file(f"{uri[5:]}/model.safetensors")
    s3.rm_file(f"{uri[5:]}/chat_template.jinja")
    s3.pipe_file(f"{uri[5:]}/model-00001-of-00001.safetensors", weights)
    s3.pipe_file(f"{uri[5:]}/model.safetensors.index.json", b'{"weight_map": {}}')
    assert fetch_checkpoint(uri, opts, cache_dir=tmp_path) == local
    names = {p.name for p in local.iterdir()} - {".spote-manifest.json"}
    assert names == NEEDED - {"model.safetensors", "chat_template.jinja"} | {"model-00001-of-00001.safetensors",
                                                                             "model.safetensors.index.json"}
    assert json.loads((local / ".spote-manifest.json").read_text()).keys() == names


def test_a_trailing_slash_names_the_same_copy(s3, s3_server, tmp_path):
    uri, opts = _upload_shipped(s3), _s3_options(s3_server)
    assert fetch_checkpoint(uri + "/", opts, cache_dir=tmp_path) == fetch_checkpoint(uri, opts, cache_dir=tmp_path)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1


def _store(s3, files: dict[str, bytes]) -> str:
    root = f"spote/models/made-{time.time_ns()}"
    for name, data in files.items():
        s3.pipe_file(f"{root}/{name}", data)
    return f"s3://{root}"


def _shipped(*names: str) -> dict[str, bytes]:
    return {n: (DEFAULT_MODEL / n).read_bytes() for n in names}


@pytest.mark.parametrize("files, suffix, expected", [
    ({**_shipped("config.json", "tokenizer.json"), "pytorch_model.bin": b"pickle"}, "",
     "no safetensors weights under"),
    (_shipped("model.safetensors", "tokenizer.json"), "", "no config.json under"),
    (_shipped("config.json", "model.safetensors"), "/config.json", "is a file; name the checkpoint folder"),
])
def test_a_remote_folder_that_is_not_a_checkpoint_is_one_line_before_any_copy(s3, s3_server, tmp_path, files,
                                                                               suffix, expected):
    uri, opts = _store(s3, files) + suffix, _s3_options(s3_server)
    with pytest.raises(OSError, match=expected):
        fetch_checkpoint(uri, opts, cache_dir=tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_dir() or p.suffix == ".part"]   # nothing copied
    with pytest.raises(ModelNotFound) as err:
        check_model(uri, opts)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_pickled_weights_beside_safetensors_are_never_copied(s3, s3_server, tmp_path):
    uri = _store(s3, {**_shipped(*NEEDED), "pytorch_model.bin": b"pickle", "extra.pt": b"pickle"})
    local = fetch_checkpoint(uri, _s3_options(s3_server), cache_dir=tmp_path)
    assert _copied(local) == NEEDED


DAMAGED_WEIGHTS = [
    (lambda w: w[:-100], "cut short or damaged"),
    (lambda w: w + b"\0" * 8, "cut short or damaged"),
    (lambda w: b"\xff" * 8 + w[8:], "not a safetensors file"),
    (lambda w: w[:5], "not a safetensors file"),
]


@pytest.mark.parametrize("change, expected", DAMAGED_WEIGHTS)
def test_damaged_local_weights_are_one_line_at_the_check_and_at_load(tmp_path, change, expected):
    folder = tmp_path / "m"
    shutil.copytree(DEFAULT_MODEL, folder)
    (folder / "model.safetensors").write_bytes(change((DEFAULT_MODEL / "model.safetensors").read_bytes()))
    for load in (check_model, load_adapter):
        with pytest.raises(ModelNotFound, match=f"model '{folder}' cannot be loaded: model.safetensors .*{expected}"):
            load(str(folder))


def test_weights_linked_to_a_missing_blob_are_one_line(tmp_path):
    """As in a hub snapshot whose blob was deleted: the link is there, its target is not."""
    folder = tmp_path / "m"
    shutil.copytree(DEFAULT_MODEL, folder)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(tmp_path / "blobs" / "0123abcd")
    with pytest.raises(ModelNotFound, match=f"model '{folder}' cannot be loaded: .*No such file"):
        check_model(str(folder))


@pytest.mark.parametrize("change, expected", DAMAGED_WEIGHTS)
def test_damaged_remote_weights_fail_the_start_up_check(s3, s3_server, change, expected):
    weights = change((DEFAULT_MODEL / "model.safetensors").read_bytes())
    uri = _store(s3, {**_shipped(*(NEEDED - {"model.safetensors"})), "model.safetensors": weights})
    with pytest.raises(ModelNotFound, match=expected):
        check_model(uri, _s3_options(s3_server))
    check_model(_upload_shipped(s3), _s3_options(s3_server))      # the whole file passes


def test_a_read_only_cache_is_used_when_its_copy_is_up_to_date(s3, s3_server, tmp_path):
    uri, opts = _upload_shipped(s3), _s3_options(s3_server)
    cache, mount = tmp_path / "cache", tmp_path / "ro"
    local = fetch_checkpoint(uri, opts, cache_dir=cache)
    mount.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(cache), str(mount)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount a read-only folder here")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(mount)], capture_output=True).returncode:
            pytest.skip("cannot remount read-only here")
        assert fetch_checkpoint(uri, opts, cache_dir=mount) == mount / local.name
        s3.rm_file(f"{uri[5:]}/chat_template.jinja")                # the copy now holds a file the store has not
        with pytest.raises(OSError, match="cannot be written .* holds no up-to-date copy"):
            fetch_checkpoint(uri, opts, cache_dir=mount)
        fetch_checkpoint(uri, opts, cache_dir=cache)                 # brought up to date where it can be written
        assert fetch_checkpoint(uri, opts, cache_dir=mount) == mount / local.name
        s3.pipe_file(f"{uri[5:]}/config.json", b'{"changed": true}')
        with pytest.raises(OSError, match="cannot be written .* holds no up-to-date copy"):
            fetch_checkpoint(uri, opts, cache_dir=mount)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_nested_file_is_not_copied_and_one_an_old_copy_holds_goes_with_its_empty_folder(s3, s3_server, tmp_path):
    """transformers reads a checkpoint's top level: a subfolder of the store is not copied, and one a copy
    made before holds (copies used to take subfolders too) is removed with its folders."""
    uri, opts = _store(s3, {**_shipped(*NEEDED), "sub/nested/extra.json": b"{}"}), _s3_options(s3_server)
    local = fetch_checkpoint(uri, opts, cache_dir=tmp_path)
    assert not (local / "sub").exists()
    assert "sub/nested/extra.json" not in json.loads((local / ".spote-manifest.json").read_text())
    (local / "sub" / "nested").mkdir(parents=True)
    (local / "sub" / "nested" / "extra.json").write_bytes(b"{}")
    fetch_checkpoint(uri, opts, cache_dir=tmp_path)
    assert not (local / "sub").exists()


@pytest.mark.parametrize("files, expected", [
    ({**_shipped("config.json"), "sub/model.safetensors": (DEFAULT_MODEL / "model.safetensors").read_bytes()},
     "no safetensors weights under"),
    ({**_shipped("config.json"), "model-00001-of-00002.safetensors": (DEFAULT_MODEL / "model.safetensors").read_bytes(),
      "model.safetensors.index.json": json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                                                 "b": "model-00002-of-00002.safetensors"}}).encode()},
     "names shards it does not hold: model-00002-of-00002.safetensors"),
    ({**_shipped("config.json", "model.safetensors"), "model.safetensors.index.json": b"[]"}, "no readable weight_map"),
])
def test_weights_transformers_could_not_load_fail_the_start_up_check(s3, s3_server, files, expected):
    with pytest.raises(ModelNotFound, match=expected):
        check_model(_store(s3, files), _s3_options(s3_server))


def test_a_safetensors_header_with_offsets_that_are_not_integers_is_not_safetensors(s3, s3_server):
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]}}).encode()
    weights = len(header).to_bytes(8, "little") + header + b"\0" * 4
    with pytest.raises(ModelNotFound, match="not a safetensors file"):
        check_model(_store(s3, {**_shipped("config.json"), "model.safetensors": weights}), _s3_options(s3_server))


# --- weights that do not cover the model are refused, not filled with random values ----------------------------

def _shipped_tensors() -> dict:
    from safetensors.torch import load_file

    return load_file(DEFAULT_MODEL / "model.safetensors")


def _checkpoint_with(folder: Path, weights: dict[str, dict], extra: dict[str, str] | None = None) -> Path:
    """The shipped model's files with ``weights`` ({file name: tensors}) in place of its model.safetensors."""
    from safetensors.torch import save_file

    shutil.copytree(DEFAULT_MODEL, folder)
    (folder / "model.safetensors").unlink()
    for name, tensors in weights.items():
        save_file(tensors, folder / name, metadata={"format": "pt"})
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
    return folder


def _dummy(sd):
    import torch

    return {"model.safetensors": {"dummy": torch.zeros(1)}}, None


def _one_layer_dropped(sd):
    return {"model.safetensors": {k: v for k, v in sd.items() if ".model.layers.0." not in k}}, None


def _sharded_two_dropped(sd):
    keys = sorted(sd)
    first, second = keys[:len(keys) // 2], keys[len(keys) // 2:]
    shards = {"model-00001-of-00002.safetensors": {k: sd[k] for k in first[2:]},     # 2 tensors left out
              "model-00002-of-00002.safetensors": {k: sd[k] for k in second}}
    index = {"metadata": {}, "weight_map": {k: name for name, part in (("model-00001-of-00002.safetensors", first),
                                                                         ("model-00002-of-00002.safetensors", second))
                                            for k in part}}
    return shards, {"model.safetensors.index.json": json.dumps(index)}


@pytest.mark.parametrize("make, expected", [
    (_dummy, r"miss 13\d tensors the model needs: "),
    (_one_layer_dropped, r"miss 9 tensors the model needs: model\.language_model\.layers\.0\.input_layernorm"),
    (_sharded_two_dropped, r"miss \d tensors the model needs: "),
])
def test_weights_that_miss_tensors_the_model_needs_are_refused(tmp_path, capfd, make, expected):
    weights, extra = make(_shipped_tensors())
    folder = _checkpoint_with(tmp_path / "m", weights, extra)
    with pytest.raises(ModelNotFound, match=f"model '{folder}' cannot be loaded: the weights in {folder} {expected}"
                       ) as err:
        load_adapter(str(folder), device="cpu")
    assert "\n" not in str(err.value)
    assert "LOAD REPORT" not in capfd.readouterr().err                # the one line, not transformers' table


def test_a_tensor_of_the_wrong_shape_is_one_line(tmp_path, capfd):
    import torch

    sd = _shipped_tensors()
    sd["language_model.model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    folder = _checkpoint_with(tmp_path / "m", {"model.safetensors": sd})
    with pytest.raises(ModelNotFound, match=r"1 tensor of the wrong shape: model\.language_model\.layers\.1\.mlp"
                                            r"\.up_proj\.weight is \[3, 3\], the model needs \[320, 128\]"):
        load_adapter(str(folder), device="cpu")
    assert "LOAD REPORT" not in capfd.readouterr().err


def test_weights_missing_tensors_are_refused_from_the_hub_cache_and_s3(tmp_path, monkeypatch, s3, s3_server):
    import spote.loading

    folder = _checkpoint_with(tmp_path / "m", _one_layer_dropped(_shipped_tensors())[0])
    files = {p.name: p for p in folder.iterdir()}
    lay_out_hub_cache(tmp_path / "hub", "acme/holed", files, MAIN)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="miss 9 tensors the model needs"):
        load_adapter("acme/holed", device="cpu")
    monkeypatch.setattr(spote.loading, "CACHE_DIR", tmp_path / "cache")
    uri = _store(s3, {name: p.read_bytes() for name, p in files.items()})
    with pytest.raises(ModelNotFound, match=f"model '{uri}' cannot be loaded: .* miss 9 tensors the model needs"):
        load_adapter(uri, device="cpu", storage_options=_s3_options(s3_server))


@pytest.mark.parametrize("dtype, expected", [("bf16", "bfloat16"), ("torch.float16", "float16"), ("FP32", "float32"),
                                             ("auto", "float32")])                  # auto: the checkpoint's own
def test_dtype_takes_the_spellings_of_torch_float_dtypes(dtype, expected):
    adapter = load_adapter(None, device="cpu", dtype=dtype)
    assert str(next(adapter.model.parameters()).dtype) == f"torch.{expected}"


@pytest.mark.parametrize("kwargs, says", [
    ({"dtype": "float31"}, "dtype 'float31': expected one of float32, "),
    ({"dtype": "int8"}, "dtype 'int8': expected one of"),
    ({"dtype": __import__("torch").int8}, "dtype torch.int8: expected one of"),
    ({"device": "gpu"}, "device 'gpu': expected one of cpu, cuda, cuda:N, mps"),
    ({"device": "meta"}, "device 'meta': expected one of"),
])
def test_a_bad_dtype_or_device_is_refused_before_the_model_is_looked_for(kwargs, says):
    with pytest.raises(ValueError, match=f"^{re.escape(says)}"):
        load_adapter("/no/such/model", **kwargs)


def _broken_folder(tmp: Path, case: str) -> tuple[Path, str]:
    """The shipped model's files, broken as ``case`` says -> (folder, what the one line says)."""
    folder = tmp / case
    shutil.copytree(DEFAULT_MODEL, folder)
    if case in ("pickled", "pickled+empty index"):
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
        if case == "pickled+empty index":
            (folder / "model.safetensors.index.json").write_text("")
        return folder, f"no safetensors weights in {folder} (pickled .bin weights are never loaded)"
    if case == "unknown model_type":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "no-such-arch"}))
        return folder, f"config.json in {folder} names no model_type this transformers knows ('no-such-arch')"
    if case == "index names a missing shard":
        (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
        index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        return folder, (f"model.safetensors.index.json in {folder} names shards it does not hold: "
                        "model-00002-of-00002.safetensors")
    if case == "no tokenizer":
        (folder / "tokenizer.json").unlink()
        return folder, f"no tokenizer in {folder}"
    if case == "no chat template":
        (folder / "chat_template.jinja").unlink()
        return folder, f"no chat template in {folder}"
    if case == "tokenizer not JSON":
        (folder / "tokenizer.json").write_text("<html>rate limited</html>")
        return folder, f"tokenizer.json in {folder} is not valid JSON"
    if case == "config link dangling":  # a hub snapshot whose blob was removed ("Should have a model_type key")
        (folder / "config.json").unlink()
        (folder / "config.json").symlink_to(folder / "gone-blob")
        return folder, f"model folder {folder} has no config.json (a link to a file that is gone"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["pickled", "pickled+empty index", "unknown model_type", "index names a missing shard",
                                  "no tokenizer", "no chat template", "tokenizer not JSON", "config link dangling"])
def test_a_folder_that_cannot_load_fails_the_start_up_check_and_the_load_in_one_line(tmp_path, case):
    folder, says = _broken_folder(tmp_path, case)
    for load in (check_model, load_adapter):
        with pytest.raises(ModelNotFound) as err:
            load(str(folder))
        expected = says if says.startswith("model folder") else f"model '{folder}' cannot be loaded: {says}"
        assert str(err.value).startswith(expected), str(err.value)
        assert "\n" not in str(err.value)


def _edited_copy(tmp_path, name: str, edit) -> Path:
    folder = tmp_path / name
    shutil.copytree(DEFAULT_MODEL, folder)
    edit(folder)
    return folder


def _set_json(folder: Path, file: str, **values) -> None:
    data = json.loads((folder / file).read_text())
    data.update(values)
    (folder / file).write_text(json.dumps(data))


@pytest.mark.parametrize("name, edit, says", [
    ("template", lambda f: (f / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content "),
     "its chat template does not render: TemplateSyntaxError"),
    ("no-placeholder", lambda f: (f / "chat_template.jinja").write_text("{% for m in messages %}user: question"
                                                                         "{% endfor %}assistant:"),
     "one pass on a blank image fails, so its config.json, processor files and chat template disagree"),
    ("token-index", lambda f: _set_json(f, "config.json", image_token_index=5),
     "one pass on a blank image fails, so its config.json, processor files and chat template disagree"),
    ("patch-size", lambda f: _set_json(f, "processor_config.json", patch_size=4),
     "one pass on a blank image fails, so its config.json, processor files and chat template disagree"),
])
def test_files_that_load_but_disagree_are_refused_at_load_naming_the_model(tmp_path, name, edit, says):
    """A chat template with a syntax error was a 210-line traceback at the first question; an image token
    index, patch size or template that does not match the model failed every question with transformers'
    words ("Image features and image tokens do not match") naming no file."""
    folder = _edited_copy(tmp_path, name, edit)
    with pytest.raises(ModelNotFound) as err:
        load_adapter(str(folder), device="cpu")
    assert str(err.value).startswith(f"model {str(folder)!r} cannot be loaded ({folder}): {says}"), str(err.value)
    assert "\n" not in str(err.value)


def test_the_load_probe_is_not_counted_and_batch_size_is_checked():
    adapter = load_adapter(None, device="cpu", batch_size=3)
    assert adapter.forward_passes == 0 and adapter.batch_size == 3
    for bad in (0, -1, 2.5, "8", True):
        with pytest.raises(ValueError, match="^batch_size must be a whole number of view sets >= 1"):
            load_adapter(None, device="cpu", batch_size=bad)


def test_an_empty_spote_cache_is_the_default_not_the_working_folder(tmp_path):
    env = {**os.environ, "SPOTE_CACHE": "", "HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", "from spote.loading import CACHE_DIR; print(CACHE_DIR)"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.stdout.strip() == str(tmp_path / ".cache" / "spote" / "models"), out.stderr


def test_a_checkpoint_fingerprint_sees_weights_saved_over_a_folder_and_nothing_else(tmp_path):
    """What a folder holds, read cheaply: a copy elsewhere (new paths and times) is the same; weights saved over
    it (same size and header, other data), a changed template, or a file added beside the weights are not;
    what loading never reads (a model card, a training run's checkpoint-N/ below) changes nothing."""
    from safetensors.torch import load_file, save_file

    from spote.loading import checkpoint_fingerprint

    model = tmp_path / "a" / "model"
    shutil.copytree(DEFAULT_MODEL, model)
    first = checkpoint_fingerprint(str(model))
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first)
    assert checkpoint_fingerprint(None) == checkpoint_fingerprint("spote-tiny") == checkpoint_fingerprint(DEFAULT_MODEL)
    assert checkpoint_fingerprint(REPO) is None                       # a hub id: its commit names it
    time.sleep(0.01)
    shutil.copytree(model, tmp_path / "b", copy_function=shutil.copyfile)   # new paths, new times
    assert checkpoint_fingerprint(str(tmp_path / "b")) == first
    (model / "README.md").write_text("notes")
    (model / "checkpoint-100").mkdir()
    shutil.copy(model / "model.safetensors", model / "checkpoint-100")
    assert checkpoint_fingerprint(f"file://{model}/") == first
    weights = model / "model.safetensors"
    size, tensors = weights.stat().st_size, load_file(weights)
    save_file({k: v + 0.001 for k, v in tensors.items()}, weights, metadata={"format": "pt"})  # a fine-tune saved over it
    assert weights.stat().st_size == size and checkpoint_fingerprint(str(model)) not in (first, None)
    save_file(tensors, weights, metadata={"format": "pt"})
    assert checkpoint_fingerprint(str(model)) == first                 # the same bytes back: the same
    for name in sorted(tensors):                                       # any one tensor trained alone
        save_file({**tensors, name: tensors[name] + 0.001}, weights, metadata={"format": "pt"})
        assert checkpoint_fingerprint(str(model)) != first, name
    save_file(tensors, weights, metadata={"format": "pt"})
    (model / "chat_template.jinja").write_text((model / "chat_template.jinja").read_text() + " ")
    assert checkpoint_fingerprint(str(model)) != first
    with pytest.raises(ModelNotFound, match="cannot be read"):
        checkpoint_fingerprint(str(tmp_path / "a"))                   # a folder that holds no checkpoint


def test_a_remote_checkpoint_fingerprint_follows_the_store(s3, s3_server):
    """On S3 the weights are known by their ETags (no ranged reads): a re-upload of other weights is another
    fingerprint, the same bytes uploaded again the same one."""
    from spote.loading import checkpoint_fingerprint

    uri, opts = _upload_shipped(s3), _s3_options(s3_server)
    first = checkpoint_fingerprint(uri, opts)
    assert first.startswith("sha256:") and checkpoint_fingerprint(uri + "/", opts) == first
    data = (DEFAULT_MODEL / "model.safetensors").read_bytes()
    s3.pipe_file(f"{uri[5:]}/model.safetensors", data[:-8] + bytes(8))      # the last values changed
    assert checkpoint_fingerprint(uri, opts) != first
    s3.pipe_file(f"{uri[5:]}/model.safetensors", data)
    assert checkpoint_fingerprint(uri, opts) == first


def test_an_empty_model_name_is_refused_not_taken_for_the_shipped_model():
    """``--model ""`` (an unset variable in a script) loaded spote-tiny without a word."""
    with pytest.raises(ValueError, match="the model is an empty name"):
        load_adapter("  ")


def test_endpoint_options_given_as_a_json_string_are_refused_naming_them():
    with pytest.raises(ValueError, match="endpoint_options must be a dict of EndpointConfig fields.*got str"):
        load_adapter("m", endpoint="http://127.0.0.1:9/v1", endpoint_options='{"timeout_s": 5}')


def test_a_folder_named_as_a_hub_id_says_it_is_read_before_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acme" / "tiny").mkdir(parents=True)
    with pytest.raises(ModelNotFound, match="the folder acme/tiny here is read before the hub id 'acme/tiny'"):
        load_adapter("acme/tiny")


def test_a_checkpoint_with_its_own_code_loads_only_when_asked(offline, tmp_path):
    """Its code runs only with trust_remote_code; without it the one line says how to ask (--trust-remote-code,
    which ask, bench and the jobs take), and ask answers with it."""
    import spote

    with pytest.raises(ModelNotFound, match=r"auto_map names the checkpoint's own code.*--trust-remote-code"):
        load_adapter(REMOTE_CODE_REPO)
    adapter = load_adapter(REMOTE_CODE_REPO, trust_remote_code=True)
    assert type(adapter.model).__name__ == "AcmeLlava" and not adapter.model.training
    res = spote.answer(SAMPLE, "what letter is in the red box ?", list("ABCDEF"), model=REMOTE_CODE_REPO,
                       trust_remote_code=True, budget=4)
    assert res.answer in list("ABCDEF")
    env = {"HF_HUB_CACHE": str(offline), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    ask = ["-m", "spote.cli", "ask", str(SAMPLE), "what letter is in the red box ?", "--choices", "A,B,C,D,E,F",
           "--model", REMOTE_CODE_REPO, "--budget", "4", "--json"]
    res = _run(ask, env)
    assert res.returncode == 2 and "--trust-remote-code" in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = _run([*ask, "--trust-remote-code"], env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["answer"] in list("ABCDEF")


def test_a_job_refuses_a_checkpoints_own_code_unless_asked_before_any_work(offline, tmp_path):
    from pipelines.vqa import app

    out, manifest = tmp_path / "out", ROOT / "pipelines" / "samples" / "vqa" / "manifest.jsonl"
    res = CliRunner().invoke(app, ["--input", str(manifest), "--output", str(out), "--model", REMOTE_CODE_REPO])
    assert res.exit_code == 2 and "--trust-remote-code" in res.output and "Traceback" not in res.output
    assert not out.exists()
    res = CliRunner().invoke(app, ["--input", str(manifest), "--output", str(out), "--endpoint",
                                   "http://127.0.0.1:9/v1", "--model", "m", "--trust-remote-code"])
    assert res.exit_code == 2 and "--trust-remote-code applies to a model the actors load" in res.output


@pytest.mark.slow
def test_a_job_runs_a_checkpoints_own_code_when_asked(hub_cache, tmp_path):
    """A real local Ray in a fresh process: every actor loads the checkpoint's own classes."""
    _spotbench_manifest(tmp_path)
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    res = _run(["-m", "pipelines.vqa", "--input", str(tmp_path / "m.jsonl"), "--output", str(tmp_path / "out"),
                "--model", REMOTE_CODE_REPO, "--trust-remote-code", "--policy", '{"budget": 4}', "--run-id", "own"],
               env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "_runs" / "own" / "summary.json").read_text())
    assert summary["items_ok"] == 2 and summary["items_error"] == 0


@pytest.mark.parametrize("value", ["false", "no", 1, None])
def test_trust_remote_code_must_be_a_bool(value):
    """``"false"`` is a true value: the checkpoint's own code ran."""
    import spote

    with pytest.raises(TypeError, match="trust_remote_code must be True or False"):
        load_adapter(REMOTE_CODE_REPO, trust_remote_code=value)
    with pytest.raises(TypeError, match="trust_remote_code must be True or False"):
        spote.answer(SAMPLE, "is it ?", ["yes", "no"], model=REMOTE_CODE_REPO, trust_remote_code=value)
