"""Limits: a request the cluster cannot hold fails before any work; a slow item becomes a timeout row."""

import io
import json
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipelines import documents, vqa
from pipelines.job import InsufficientResources, JobOptions, check_resources, run_job
from pipelines.runs import RunPaths
from pipelines.stages import SpotePredictor
from pipelines.timelimit import TimedLoader

SAMPLES = Path(__file__).parents[2] / "pipelines" / "samples" / "vqa"
# never clear, never a plateau, a huge budget: an item SPOT-E would search for minutes
ENDLESS = {"exit_entropy_per_ln_k": 0.0, "exit_entropy": 0.0, "plateau_patience": 10_000, "steps": 10_000,
           "budget": 100_000, "group_size": 2, "glance_side": 0.0, "probe_side": 0.0, "settle_after": 0}


def slow_pdf(curves: int) -> bytes:
    """A one-page PDF (600 x 800 pt) of ``curves`` Bezier curves, each across the whole page.

    A few hundred KB that PDFium takes seconds to tens of seconds to render (~0.35 ms a curve at 100 dpi
    on one Xeon core): the kind of page that stalls a documents run.
    """
    ops = b"0.5 w " + b"".join(
        b"%d %d m %d %d l 1 1 599 799 %d %d c S " % (i % 590, (i * 7) % 790, (i * 13) % 600, (i * 17) % 800,
                                                    (i * 3) % 600, (i * 5) % 800) for i in range(curves))
    content = zlib.compress(ops, 9)
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 600 800] /Contents 4 0 R >>",
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content) + content + b"\nendstream"]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objs):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % (i + 1) + obj + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref))
    return out.getvalue()


def _opts(tmp_path, **kw):
    return JobOptions(str(SAMPLES / "manifest.jsonl"), str(tmp_path / "out"), **kw)


def test_more_gpus_than_the_cluster_has_fails_at_once_naming_both(ray_local, tmp_path):
    with pytest.raises(InsufficientResources) as err:
        check_resources(_opts(tmp_path, num_gpus_per_actor=1))
    msg = str(err.value)
    assert "1 actor(s) x (1 CPU + 1 GPU)" in msg and "0 GPUs" in msg and "--num-gpus-per-actor" in msg
    with pytest.raises(InsufficientResources, match=r"x \(1000 CPUs\)"):
        check_resources(_opts(tmp_path, cpus_per_actor=1000))
    cpus = ray_local.cluster_resources()["CPU"]
    with pytest.raises(InsufficientResources, match=r"room for \d+ such actor"):
        check_resources(_opts(tmp_path, num_actors=int(cpus) + 1))
    assert check_resources(_opts(tmp_path, num_actors=1)).actors == 1


def test_a_resume_asks_for_ray_datas_read_and_checkpoint_filter_too():
    """A resume on a joined cluster of 3 CPUs (1 actor of 1 CPU) waited forever: the check counted the actor
    and the loader (1.5 CPUs), but Ray Data's read task and, on a resume, its CheckpointFilter actor hold a
    CPU each beside them (3.5 asked of 3)."""
    from pipelines.job import LOADER_CPUS, READ_CPUS, ResourceRequest

    nodes = [{"CPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}]
    first = ResourceRequest(1, 1.0, 1.0, LOADER_CPUS, READ_CPUS)
    resume = ResourceRequest(1, 1.0, 1.0, LOADER_CPUS, 2 * READ_CPUS)
    assert first.shortfall(nodes) is None
    assert "room for 1 such actor" in resume.shortfall(nodes)
    assert resume.describe().endswith("plus 0.5 CPUs for the loader and 2 CPUs for Ray Data's read and checkpoint "
                                      "filter")
    assert resume.shortfall([*nodes, {"CPU": 1.0}]) is None


def test_a_resume_the_cluster_cannot_hold_is_refused_before_any_work(ray_local, tmp_path):
    cpus = ray_local.cluster_resources()["CPU"]
    actors = int(cpus - 0.5 - 2 * 1.0) + 1             # fits a first run, not a resume
    assert check_resources(_opts(tmp_path, num_actors=actors), fixed=True).actors == actors
    with pytest.raises(InsufficientResources, match="checkpoint filter"):
        check_resources(_opts(tmp_path, num_actors=actors), fixed=True, resuming=True)


def test_a_cluster_that_may_autoscale_is_waited_for_boundedly(ray_local, tmp_path, capsys):
    with pytest.raises(InsufficientResources, match="after waiting 1 s"):
        check_resources(_opts(tmp_path, num_gpus_per_actor=2, resource_wait_seconds=1), fixed=False, poll_seconds=0.2)
    assert "waiting up to 1 s for the cluster to grow: asked for 1 actor(s) x (1 CPU + 2 GPUs)" in capsys.readouterr().out


def test_run_job_refuses_before_any_work(ray_local, random_tiny_dir, tmp_path):
    opts = _opts(tmp_path, model=str(random_tiny_dir), num_gpus_per_actor=1, run_id="gpu")
    with pytest.raises(InsufficientResources):
        run_job("vqa", opts, vqa.read_manifest(opts.input))
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(vqa.app, ["--input", opts.input, "--output", opts.output, "--num-gpus-per-actor", "1",
                                       "--model", str(random_tiny_dir)])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: not enough resources") and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_reading_a_page_over_the_limit_is_a_timeout_row_and_the_next_row_reads(tmp_path):
    (tmp_path / "slow.pdf").write_bytes(slow_pdf(60_000))
    Image.new("RGB", (300, 400), "white").save(tmp_path / "ok.pdf")
    loader = TimedLoader(documents.PageLoader, {"dpi": 100}, timeout_s=3)
    rows = [{"id": name, "source": str(tmp_path / name), "page": 0, "question": "q ?", "status": "", "error": ""}
            for name in ("ok.pdf", "slow.pdf", "ok.pdf")]
    out = [loader.load(r) for r in rows]
    assert [o["status"] for o in out] == ["ok", "error", "ok"]
    assert out[1]["error"] == (f"timeout: reading {tmp_path / 'slow.pdf'} took longer than 3 s "
                               "(--item-timeout-seconds); the reader was stopped")
    assert out[2]["height"] == out[0]["height"] > 0


def test_answering_over_the_limit_stops_between_forward_passes(random_tiny_dir):
    pred = SpotePredictor(str(random_tiny_dir), ENDLESS, device="cpu", timeout_s=1.0)
    img = Image.open(SAMPLES / "test-7-00000.png").convert("RGB")
    row = {"id": "a", "source": "a.png", "question": "what letter is in the red box ?",
           "choices": json.dumps(list("ABCDEF")), "status": "ok", "error": "", "pixels": img.tobytes(),
           "height": img.height, "width": img.width}
    out = pred.predict(row)
    assert out["status"] == "error" and out["error"].startswith("timeout: answering took longer than 1 s")
    passes = int(out["error"].split("stopped after ")[1].split()[0])
    assert 1 <= passes < ENDLESS["budget"]
    assert out["forward_passes"] == passes and out["latency_ms"] >= 1000  # what the row cost before it stopped
    assert pred.predict({**row, "id": "b"})["error"].startswith("timeout: ")  # the actor goes on


def test_documents_job_with_a_slow_page_commits_every_item(ray_local, random_tiny_dir, tmp_path, fast_policy):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "slow.pdf").write_bytes(slow_pdf(60_000))
    Image.new("RGB", (300, 400), "white").save(inbox / "ok.pdf")
    (tmp_path / "q.yaml").write_text("- question: is the red box ticked ?\n  choices: [yes, no]\n")
    opts = JobOptions(str(inbox), str(tmp_path / "out"), str(random_tiny_dir), policy=fast_policy,
                      item_timeout_seconds=5)
    summary = documents.run(opts, str(tmp_path / "q.yaml"), dpi=100, run_date="2026-11-24")
    df = pq.read_table(RunPaths(opts.output, "documents-2026-11-24").results).to_pandas().set_index("document")
    assert summary["items_in"] == summary["items_out"] == 2
    assert df.loc["slow.pdf", "error"].startswith("timeout: reading ") and df.loc["ok.pdf", "status"] == "ok"
    assert summary["errors_by_reason"] == {"timeout": 1}


def test_every_model_call_of_an_adapter_is_checked_against_the_deadline(random_adapter):
    """A past deadline stops each of the adapter's model calls, the joint decoding of an open answer too."""
    import time

    from pipelines.timelimit import DeadlineAdapter, ItemTimeout

    late = DeadlineAdapter(random_adapter, deadline=time.monotonic() - 1, limit_s=1.0)
    view = [Image.new("RGB", (64, 64))]
    calls = {"choice_logprobs": lambda: late.choice_logprobs([view], "q ?", ["a", "b"]),
             "generate": lambda: late.generate(view, "q ?"),
             "generate_agreed": lambda: late.generate_agreed([view, view], "q ?"),
             "teacher_forced": lambda: late.teacher_forced([view], "q ?", [1]),
             "relevance": lambda: late.relevance(view, "q ?")}
    assert set(calls) == set(DeadlineAdapter.MODEL_CALLS)
    passes = random_adapter.forward_passes
    for name, call in calls.items():
        with pytest.raises(ItemTimeout):
            call()
    assert random_adapter.forward_passes == passes  # nothing ran
    assert late.joint_decoding is random_adapter.joint_decoding  # the rest is the wrapped adapter's
