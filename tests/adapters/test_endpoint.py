"""The endpoint adapter against a real OpenAI-compatible server over HTTP on 127.0.0.1.

The server is the test fixture ``openai_server.py`` (the shipped spote-tiny behind the chat-completions
wire format with logprobs / top_logprobs), run in its own process and requiring an API key, so every
test also checks that the key travels in the header and never shows up in what SPOT-E writes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cluster.local import free_port
from openai_server import launch
from spote.adapters.endpoint import (EndpointError, choice_distribution, open_endpoint, safe_url, scrub, topk_entropy)
from spote.bench.scenes import make_open_item, spotbench
from spote.loading import ModelNotFound
from spote.core import PolicyConfig, spote
from spote.spotlight import ViewRenderer

ROOT = Path(__file__).parents[2]
SHIPPED = ROOT / "spote" / "weights" / "spote-tiny"
KEY_ENV, KEY = "SPOTE_TEST_ENDPOINT_KEY", "sk-spote-test-7d1f0c9b2e4a"
INPUT = 64  # spote-tiny's input size: views rendered at it reach the model unresampled on both sides


@pytest.fixture(scope="module")
def server():
    proc, url = launch(str(SHIPPED), "spote-tiny", require_key_env=KEY_ENV, env={KEY_ENV: KEY, "OMP_NUM_THREADS": "1"})
    yield url
    proc.terminate()
    proc.wait(30)


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def _control(url: str, path: str, body: dict | None = None) -> dict:
    base = url.rsplit("/v1", 1)[0]
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _endpoint(url, **options):
    return open_endpoint(url, "spote-tiny", **{"api_key_env": KEY_ENV, "view_size": INPUT, **options})


# ---------------------------------------------------------------------------------------- the estimates
def test_choice_distribution_rules():
    # every choice in the top-k: the distribution renormalised over the choices
    top = [("yes", math.log(0.6)), ("no", math.log(0.2)), ("maybe", math.log(0.1))]
    p = np.exp(choice_distribution(top, ["yes", "no"]))
    assert np.allclose(p, [0.75, 0.25])
    # surface variants of one choice add up; a prefix scores a multi-token choice by its first token
    top = [(" Yes", math.log(0.3)), ("yes", math.log(0.3)), ("scr", math.log(0.2)), ("x", math.log(0.05))]
    p = np.exp(choice_distribution(top, ["yes", "scratch"]))
    assert np.allclose(p, [0.75, 0.25])
    # a choice outside the top-k: at most p_min, and at most its share of the mass outside the top-k
    top = [("a", math.log(0.5)), ("b", math.log(0.3)), ("z", math.log(0.15))]   # 0.05 outside
    p = np.exp(choice_distribution(top, ["a", "b", "c", "d"]))
    assert np.allclose(p, np.array([0.5, 0.3, 0.025, 0.025]) / 0.85)
    top = [("a", math.log(0.6)), ("b", math.log(0.01))]                          # 0.39 outside, p_min 0.01
    assert np.allclose(np.exp(choice_distribution(top, ["a", "c"])), np.array([0.6, 0.01]) / 0.61)
    # a first token shared by two multi-token choices cannot tell them apart: split evenly
    p = np.exp(choice_distribution([("re", math.log(0.8)), ("b", math.log(0.2))], ["red", "rest", "blue"]))
    assert np.allclose(p, [0.4, 0.4, 0.2])
    # a choice present as a token takes only that token: the letter "B" does not count for "blue",
    # nor "no" for "none"; the longest first token wins ("scr" over "s")
    top = [("blue", math.log(0.3)), ("B", math.log(0.3)), ("red", math.log(0.3)), ("x", math.log(0.1))]
    assert np.allclose(np.exp(choice_distribution(top, ["red", "blue"])), [0.5, 0.5])
    top = [("no", math.log(0.5)), ("yes", math.log(0.3)), ("s", math.log(0.05)), ("scr", math.log(0.05))]
    p = np.exp(choice_distribution(top, ["no", "none", "scratch"]))
    assert np.allclose(p, np.array([0.5, 0.05, 0.05]) / 0.6)     # "none" missing: floor min(p_min, leftover)


def test_topk_entropy_is_a_lower_bound_exact_on_the_full_set():
    rng = np.random.default_rng(0)
    for _ in range(20):
        logp = torch.log_softmax(torch.tensor(rng.normal(0, 2, 54)), -1)
        full = float(-(logp.exp() * logp).sum())
        assert topk_entropy(logp.tolist()) == pytest.approx(full, abs=1e-9)
        top = logp.topk(20).values.tolist()
        assert topk_entropy(top) <= full + 1e-9


def test_safe_url_drops_credentials():
    assert safe_url("https://user:sk-secret@api.example.com:8443/v1?api-key=sk-2") == "https://api.example.com:8443/v1"


# ---------------------------------------------------------------------------------------- against the server
def test_whole_image_readings_match_in_process(server, key, shipped_adapter):
    remote = _endpoint(server)
    assert remote.supports_relevance is False and remote.relevance([], "q") is None
    for item in spotbench("test", 6, 0):
        views = [ViewRenderer(item.image, INPUT).global_view]
        a = shipped_adapter.choice_logprobs([views], item.question, item.choices).exp()
        b = remote.choice_logprobs([views], item.question, item.choices).exp()
        assert (a - b).abs().max() < 1e-3, (item.id, a, b)
    # open answers: the same greedy text; entropies from the top-20 never above the full ones
    item = next(i for i in spotbench("test", 10, 0) if "letter" in i.question)
    views = [ViewRenderer(item.image, INPUT).global_view]
    ga, gb = shipped_adapter.generate(views, item.question), remote.generate(views, item.question)
    assert ga.text == gb.text and ga.text and len(ga.entropies) == len(gb.entropies)
    assert all(eb <= ea + 1e-4 for ea, eb in zip(ga.entropies, gb.entropies))
    assert np.allclose(ga.logprobs, gb.logprobs, atol=1e-4)


def test_spote_open_answer_through_the_endpoint(server, key):
    """An open question (a SpotBench code) searched through the server: the answer is one generation on the
    agreed window (a server decodes each request alone), within the budget, with a confidence per token."""
    item = make_open_item(0, "test", 2, variant="large")  # a code the whole view shows: the model spells one
    remote = _endpoint(server)
    assert not remote.joint_decoding
    res = spote(remote, item.image, item.question, None, PolicyConfig(budget=12, group_size=4, use_relevance=False))
    assert res.answer and res.forward_passes <= 12 and res.distribution is None
    assert res.forward_passes == remote.forward_passes
    assert len(res.token_confidences) == len(res.answer_token_ids) > 0


@pytest.mark.slow
def test_spote_answers_agree_with_in_process_on_50_items(server, key, shipped_adapter):
    """The same black-box run in-process and through the endpoint (a 32-pass budget keeps this short;
    benchmarks/endpoint.py measures the default policy). Answers can part only where a spotlight's reading
    differs: a choice outside the top-20 (its probability estimated), or float rounding (the server's
    full-vocabulary log-softmax renormalised over the choices against an in-process log-softmax over the
    choices' logits), which a long search can amplify through near-tied rewards."""
    cfg = PolicyConfig(budget=32, group_size=8, steps=4, use_relevance=False)
    remote = _endpoint(server, concurrency=8)
    items = list(spotbench("test", 50, 0))
    local = [spote(shipped_adapter, i.image, i.question, i.choices, cfg) for i in items]
    served = [spote(remote, i.image, i.question, i.choices, cfg) for i in items]
    agree = sum(a.answer == b.answer for a, b in zip(local, served))
    same_whole = sum(abs(a.entropy_trace[0] - b.entropy_trace[0]) < 1e-3 for a, b in zip(local, served))
    print(f"answers agree on {agree}/50; whole-image entropy equal on {same_whole}/50")
    assert same_whole >= 48 and agree >= 47


def test_429_twice_then_answered(server, key):
    remote = _endpoint(server, max_retries=3)
    view = [Image.new("RGB", (INPUT, INPUT), (200, 30, 30))]
    before = _control(server, "/fixture/stats")
    _control(server, "/fixture/faults", {"status": 429, "times": 2})
    logp = remote.choice_logprobs([view], "is there a boat ?", ["yes", "no"])
    after = _control(server, "/fixture/stats")
    assert logp.shape == (1, 2) and torch.isfinite(logp).all()
    assert after.get("429", 0) - before.get("429", 0) == 2 and after["200"] - before.get("200", 0) == 1
    # 5xx without Retry-After: the client's exponential back-off with jitter
    _control(server, "/fixture/faults", {"status": 503, "times": 2})
    assert remote.choice_logprobs([view], "is there a boat ?", ["yes", "no"]).shape == (1, 2)
    # a wait longer than the client waits is not retried, and the error says so (it said "after 3 retries")
    _control(server, "/fixture/faults", {"status": 429, "times": 1, "retry_after": "100000"})
    before = _control(server, "/fixture/stats")
    with pytest.raises(EndpointError) as err:
        remote.choice_logprobs([view], "is there a boat ?", ["yes", "no"])
    assert _control(server, "/fixture/stats").get("429", 0) - before.get("429", 0) == 1
    assert "HTTP 429 (not retried: the server asked to wait 100000 s (Retry-After), longer than the client " \
           "waits, 120 s)" in str(err.value) and "retries" not in str(err.value)


def test_failures_are_one_line_naming_the_endpoint_never_the_key(server, key):
    view = [Image.new("RGB", (INPUT, INPUT), (0, 0, 200))]
    remote = _endpoint(server, max_retries=1)
    cases = [({"status": 503, "times": 2}, "HTTP 503 after 1 retries"),
             ({"status": 200, "times": 1}, "no logprobs")]
    for fault, expected in cases:
        _control(server, "/fixture/faults", fault)
        with pytest.raises(EndpointError) as err:
            remote.choice_logprobs([view], "is there a boat ?", ["yes", "no"])
        msg = str(err.value)
        assert expected in msg and server in msg and KEY not in msg and "\n" not in msg, msg
    with pytest.raises(EndpointError, match="HTTP 400: .*content policy"):      # refused: not retried
        remote.generate(view, "[reject] what is this ?")
    with pytest.raises(EndpointError, match="HTTP 401"):
        open_endpoint(server, "spote-tiny", api_key_env="SPOTE_TEST_NO_SUCH_KEY", view_size=INPUT,
                      max_retries=0).generate(view, "what is this ?")


def test_server_down_gives_an_error_row(key):
    from pipelines.stages import SpotePredictor

    url = f"http://127.0.0.1:{free_port()}/v1"   # nothing listens there
    predictor = SpotePredictor(model="spote-tiny", endpoint=url, policy={"budget": 4},
                               endpoint_options={"api_key_env": KEY_ENV, "max_retries": 1, "timeout_s": 5})
    image = Image.new("RGB", (80, 60), (10, 120, 10))
    row = {"id": "x", "source": "mem://x", "question": "is there a boat ?", "choices": '["yes", "no"]',
           "status": "ok", "pixels": image.tobytes(), "width": 80, "height": 60}
    out = predictor.predict(row)
    assert out["status"] == "error" and out["model"] == f"spote-tiny @ {url}"
    assert out["error"].startswith(f"endpoint error: endpoint {url} (model 'spote-tiny'): cannot connect")
    assert KEY not in json.dumps({k: v for k, v in out.items() if k != "pixels"}, default=str)


def _cli(args, env_extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_cli_ask_through_the_endpoint(server, tmp_path):
    item = next(iter(spotbench("test", 1, 0)))
    item.image.save(tmp_path / "x.png")
    common = ["--model", "spote-tiny", "--api-key-env", KEY_ENV, "--endpoint-options", json.dumps({"view_size": INPUT})]
    res = _cli(["-m", "spote.cli", "ask", str(tmp_path / "x.png"), item.question, "--choices", ",".join(item.choices),
                "--endpoint", server, *common, "--budget", "8", "--json"], {KEY_ENV: KEY})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["answer"] in item.choices
    assert KEY not in res.stdout + res.stderr

    down = f"http://127.0.0.1:{free_port()}/v1"
    res = _cli(["-m", "spote.cli", "ask", str(tmp_path / "x.png"), item.question, "--endpoint", down, *common,
                "--endpoint-options", json.dumps({"view_size": INPUT, "max_retries": 0})], {KEY_ENV: KEY})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"error: endpoint {down}"), res.stderr
    assert KEY not in res.stdout + res.stderr


def test_a_model_the_server_does_not_serve_is_refused_at_load(server, key, tmp_path):
    """The server's 404 came at the first question, after the image was read, and exited 1 as an outage
    does: a wrong --model is the user's input, named at load with what the server serves, exit 2."""
    from spote.loading import ModelNotFound

    with pytest.raises(ModelNotFound, match=r"does not serve a model 'spote-tiny-7b'; it serves 'spote-tiny': "):
        open_endpoint(server, "spote-tiny-7b", api_key_env=KEY_ENV)
    assert _endpoint(server).name.startswith("spote-tiny @ ")  # the served name opens
    # a listing the server refuses (here 401, no key) is not judged: the completions say why
    assert open_endpoint(server, "spote-tiny-7b", api_key_env="SPOTE_TEST_UNSET_KEY").config.model == "spote-tiny-7b"
    item = next(iter(spotbench("test", 1, 0)))
    item.image.save(tmp_path / "x.png")
    res = _cli(["-m", "spote.cli", "ask", str(tmp_path / "x.png"), item.question, "--endpoint", server,
                "--model", "spote-tiny-7b", "--api-key-env", KEY_ENV], {KEY_ENV: KEY})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "does not serve a model 'spote-tiny-7b'" in lines[0], res.stderr
    from pipelines.job import JobOptions  # a job refuses it before any work, as a model that cannot be found

    with pytest.raises(ModelNotFound, match="does not serve a model 'spote-tiny-7b'"):
        JobOptions("in", "out", endpoint=server, model="spote-tiny-7b", api_key_env=KEY_ENV).predictor_kwargs(None)


@pytest.mark.slow
def test_vqa_pipeline_through_the_endpoint(server, tmp_path, files_holding):
    """A fresh process with its own local Ray, whose actors inherit the key from the environment."""
    rows = []
    for item in spotbench("test", 3, 0):
        item.image.save(tmp_path / f"{item.id}.png")
        rows.append({"id": item.id, "image_uri": f"{item.id}.png", "question": item.question,
                     "choices": list(item.choices)})
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    rows.append({"id": "bad-corrupt", "image_uri": "corrupt.png", "question": "is there a boat ?",
                 "choices": ["yes", "no"]})
    rows.append({"id": "bad-refused", "image_uri": rows[0]["image_uri"], "question": "[reject] is there a boat ?",
                 "choices": ["yes", "no"]})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    out = tmp_path / "out"
    res = _cli(["-m", "pipelines.vqa", "--input", str(tmp_path / "m.jsonl"), "--output", str(out),
                "--endpoint", server, "--model", "spote-tiny", "--api-key-env", KEY_ENV,
                "--endpoint-options", json.dumps({"view_size": INPUT}), "--policy", '{"budget": 8}', "--run-id", "ep"],
               {KEY_ENV: KEY, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp})
    try:
        assert res.returncode == 0, res.stderr[-3000:]
        import pyarrow.parquet as pq

        df = pq.read_table(out / "results" / "run_id=ep").to_pandas().set_index("id")
        assert sorted(df.index) == sorted(r["id"] for r in rows)                  # every item exactly once
        assert (df.drop(["bad-corrupt", "bad-refused"]).status == "ok").all()
        assert df.loc["bad-corrupt", "error"].startswith("unreadable image")
        refused = df.loc["bad-refused", "error"]
        assert refused.startswith(f"endpoint error: endpoint {server}") and "HTTP 400" in refused
        summary = json.loads((out / "_runs" / "ep" / "summary.json").read_text())
        assert summary["items_ok"] == 3 and summary["items_error"] == 2 and server in summary["model"]
        # the key is nowhere: results, summary, report, the job's output, Ray's logs
        assert any(Path(ray_tmp).rglob("*.log"))                                   # Ray logged here
        assert not files_holding(KEY, out, ray_tmp) and KEY not in res.stdout + res.stderr
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------- flags, URLs, broken servers
def _ask(args, env):
    from typer.testing import CliRunner

    from spote.cli import app

    return CliRunner().invoke(app, ["ask", *args], env=env)


def test_cli_endpoint_options_fields_win_over_flag_defaults_and_flags_must_agree(server, tmp_path):
    """api_key_env and concurrency in --endpoint-options are used (the flags' defaults once won, sending
    OPENAI_API_KEY to a server configured for another key); a flag saying otherwise is refused."""
    Image.new("RGB", (INPUT, INPUT), (200, 30, 30)).save(tmp_path / "x.png")
    env = {KEY_ENV: KEY, "OPENAI_API_KEY": "sk-decoy-not-this-server-s-key"}
    common = [str(tmp_path / "x.png"), "is there a boat ?", "--choices", "yes,no", "--endpoint", server,
              "--model", "spote-tiny", "--budget", "4", "--json"]
    opts = json.dumps({"view_size": INPUT, "api_key_env": KEY_ENV, "concurrency": 2, "max_retries": 0})
    res = _ask([*common, "--endpoint-options", opts], env)
    assert res.exit_code == 0, res.output                       # the key from KEY_ENV reached the server
    assert "sk-decoy" not in res.output and KEY not in res.output
    res = _ask([*common, "--endpoint-options", opts, "--api-key-env", KEY_ENV, "--endpoint-concurrency", "2"], env)
    assert res.exit_code == 0, res.output                       # flags that agree are fine
    for flags, named in ((["--api-key-env", "OPENAI_API_KEY"], "api_key_env"),
                         (["--endpoint-concurrency", "3"], "concurrency")):
        res = _ask([*common, "--endpoint-options", opts, *flags], env)
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and named in lines[0] and flags[0] in lines[0], res.output
    for flags in (["--endpoint-concurrency", "0"], ["--endpoint-options", '{"concurrency": 0}'],
                  ["--endpoint-options", '{"concurrency": true}']):
        res = _ask([*common, *flags], env)
        assert res.exit_code == 2 and "concurrency must be an integer >= 1" in res.output, res.output


def test_cli_endpoint_options_merge():
    from spote.adapters.endpoint import endpoint_options

    assert endpoint_options(None, None, '{"api_key_env": "K", "concurrency": 3}') == {"api_key_env": "K", "concurrency": 3}
    assert endpoint_options("K", 4, "{}") == {"api_key_env": "K", "concurrency": 4}
    assert endpoint_options(None, None, "{}") == {}             # EndpointConfig's defaults hold
    with pytest.raises(ValueError, match="--endpoint-options sets api_key_env to 'K' and --api-key-env sets it to 'L'"):
        endpoint_options("L", None, '{"api_key_env": "K"}')


@pytest.mark.parametrize("mode", ["nan-top", "inf-top", "nan-token"])
def test_non_finite_logprobs_are_an_endpoint_error(server, key, mode):
    """NaN read as 0 nats (max(0, nan) is 0): a sure answer that stopped the search after one pass."""
    remote = _endpoint(server, max_retries=0)
    view = [Image.new("RGB", (INPUT, INPUT), (0, 0, 200))]
    item = _spelled()
    for call in (lambda: remote.choice_logprobs([view], "is there a boat ?", ["yes", "no"]),
                 lambda: remote.generate(item[0], item[1])):
        _control(server, "/fixture/faults", {"mode": mode, "times": 1})
        with pytest.raises(EndpointError, match="log-probability that is not one") as err:
            call()
        assert server in str(err.value) and KEY not in str(err.value)


def _spelled():
    """(views, question) that spote-tiny answers with a few tokens: a SpotBench code the whole view shows."""
    item = make_open_item(0, "test", 2, variant="large")
    return [ViewRenderer(item.image, INPUT).global_view], item.question


def test_open_answers_refuse_useless_logprobs(server, key):
    remote = _endpoint(server, max_retries=0)
    view, question = _spelled()
    honest = remote.generate(view, question)
    assert honest.text and honest.token_ids
    # tokens without a top-k: each scored by its own log p (-log p, as the closed set reads a top-1), never 0 nats
    _control(server, "/fixture/faults", {"mode": "empty-top", "times": 1})
    gen = remote.generate(view, question)
    assert gen.entropies == pytest.approx([-lp for lp in gen.logprobs])
    assert all(h > 0 for h in gen.entropies) and gen.text == honest.text
    # an answer without tokens: refused, as the closed set refuses one (it would read 0 nats, confidence 0)
    _control(server, "/fixture/faults", {"mode": "empty-content", "times": 1})
    with pytest.raises(EndpointError, match="no logprobs"):
        remote.generate(view, question)
    _control(server, "/fixture/faults", {"mode": "empty-content", "times": 1})
    with pytest.raises(EndpointError, match="no logprobs"):
        remote.teacher_forced([view], question, honest.token_ids)
    # no text: an empty answer, with no tokens, so its confidence is 0 (no token was read)
    _control(server, "/fixture/faults", {"mode": "null-message", "times": 1})
    gen = remote.generate(view, question)
    assert gen.text == "" and gen.token_ids == [] and gen.logprobs == [] and gen.entropies == []


def test_an_answer_the_token_cap_ended_is_marked_cut_off_from_finish_reason(server, key):
    """The server's ``finish_reason`` says who ended the answer: "stop" (the model) False, "length" (the cap)
    True, none given None, as in-process marks an answer the cap ended."""
    remote = _endpoint(server, max_retries=0)
    view, question = _spelled()
    whole = remote.generate(view, question)
    assert len(whole.token_ids) >= 2 and whole.cut_off is False
    capped = remote.generate(view, question, max_new_tokens=1)
    assert len(capped.token_ids) == 1 and capped.cut_off is True
    _control(server, "/fixture/faults", {"mode": "no-finish", "times": 1})
    assert remote.generate(view, question).cut_off is None
    # a server that ignores the cap (and says the model stopped): cut at the cap, as the cap would have
    _control(server, "/fixture/faults", {"mode": "ignore-cap", "times": 1})
    over = remote.generate(view, question, max_new_tokens=1)
    assert len(over.token_ids) == len(over.logprobs) == len(over.entropies) == 1 and over.cut_off is True
    assert over.text == capped.text
    # ... in tokens that do not spell its text ("Ġthe"): no cut can be trusted, so no garbled answer
    _control(server, "/fixture/faults", {"mode": "ignore-cap-bytes", "times": 1})
    with pytest.raises(EndpointError, match="in tokens that do not spell its text"):
        remote.generate(view, question, max_new_tokens=1)
    item = make_open_item(0, "test", 2, variant="large")
    res = spote(remote, item.image, item.question, None, PolicyConfig(budget=4, group_size=4, use_relevance=False))
    assert res.answer and res.answer_cut_off is False


def test_an_attempt_ends_within_timeout_s_however_slowly_the_server_sends(server, key):
    """httpx's timeout bounds each read alone: a body trickled a byte every 0.5 s (no read waits 2 s) held a
    request for minutes with timeout_s 2, and then answered. Each attempt now ends within timeout_s in all
    ("no answer within 2 s"), and is retried as a timeout (the server saw both attempts)."""
    remote = _endpoint(server, timeout_s=2, max_retries=1)
    view = [Image.new("RGB", (INPUT, INPUT), (0, 0, 200))]
    before = _control(server, "/fixture/stats")
    _control(server, "/fixture/faults", {"mode": "trickle", "times": 2, "interval_s": 0.5})
    with pytest.raises(EndpointError, match="no answer within 2 s") as err:
        remote.choice_logprobs([view], "is there a boat ?", ["yes", "no"])
    assert _control(server, "/fixture/stats")["200"] - before.get("200", 0) == 2
    assert KEY not in str(err.value)
    assert remote.choice_logprobs([view], "is there a boat ?", ["yes", "no"]).shape == (1, 2)  # then served


def test_the_model_listing_ends_within_timeout_s_however_slowly_the_server_lists(server, key):
    """The model check at open used a plain client, whose timeout bounds each read alone: a listing trickled a
    byte every 0.5 s held open_endpoint for a minute with timeout_s 2. It ends within timeout_s in all now, and
    a listing that does not come in time is not judged (the completions say what is wrong): asked for a model
    the listing does not name, the open is not refused, as it is when the listing arrives."""
    opts = {"api_key_env": KEY_ENV, "view_size": INPUT, "timeout_s": 2, "max_retries": 0}
    _control(server, "/fixture/faults", {"mode": "trickle-listing", "times": 1, "interval_s": 0.5})
    assert open_endpoint(server, "a-model-not-listed", **opts).config.model == "a-model-not-listed"
    with pytest.raises(ModelNotFound, match="does not serve a model 'a-model-not-listed'"):
        open_endpoint(server, "a-model-not-listed", **opts)  # listed at once: judged


def test_a_model_that_ends_at_once_is_not_taken_for_a_server_without_logprobs(server, key):
    """A closed question whose answer ends before any token, on a server that leaves the end token out of
    logprobs, was refused as "the server returned no logprobs" (blaming the server): it says what happened."""
    remote = _endpoint(server, max_retries=0)
    view = [Image.new("RGB", (INPUT, INPUT), (0, 0, 200))]
    _control(server, "/fixture/faults", {"mode": "ends-at-once", "times": 1})
    with pytest.raises(EndpointError, match="ended its answer before any token") as err:
        remote.choice_logprobs([view], "is there a boat ?", ["yes", "no"])
    assert "no logprobs" not in str(err.value)
    _control(server, "/fixture/faults", {"mode": "empty-content", "times": 1})  # text without tokens: the server's
    with pytest.raises(EndpointError, match="no logprobs"):
        remote.choice_logprobs([view], "is there a boat ?", ["yes", "no"])


def test_a_401_without_a_key_says_that_no_key_was_sent(server, monkeypatch):
    """A key variable named in Python but unset sent no key, and the 401 did not say why; it says so now,
    without naming the variable (a key pasted in its place would be printed)."""
    monkeypatch.delenv("SPOTE_TEST_UNSET_KEY_VAR", raising=False)
    remote = open_endpoint(server, "spote-tiny", api_key_env="SPOTE_TEST_UNSET_KEY_VAR", view_size=INPUT, max_retries=0)
    view = [Image.new("RGB", (INPUT, INPUT), (0, 0, 200))]
    with pytest.raises(EndpointError, match="HTTP 401") as err:
        remote.choice_logprobs([view], "is there a boat ?", ["yes", "no"])
    assert "no API key was sent: the environment variable api_key_env names is not set" in str(err.value)
    assert "SPOTE_TEST_UNSET_KEY_VAR" not in str(err.value)


@pytest.mark.parametrize("name", ["sk-TESTSECRET-abcdef0123456789xyz", "Bearer abc", "MY KEY", "1KEY"])
def test_an_api_key_env_that_is_no_variable_name_is_refused_without_repeating_it(name):
    """A key pasted into --api-key-env sent every request of a job without a key (ask and bench refused it only
    because no such variable was set); it is no variable's name, and said so without repeating it."""
    from spote.adapters.endpoint import endpoint_config

    with pytest.raises(ValueError, match="takes the name of the environment variable holding the key") as err:
        endpoint_config("http://127.0.0.1:9/v1", "m", api_key_env=name)
    assert name not in str(err.value)
    assert endpoint_config("http://127.0.0.1:9/v1", "m", api_key_env="MY_SERVER_KEY_2").api_key_env == "MY_SERVER_KEY_2"


def test_scrub_hides_pieces_of_the_key():
    k = "sk-SECRET-abcdef1234567890"
    text = f"key sk-SECRE*********7890 is wrong; tail '{k[-8:]}', middle T-abcd-x, head={k[:6]}; nothing else"
    out = scrub(text, [k])
    assert out == "key *** is wrong; tail '***', middle ***, head=***; nothing else", out
    assert scrub("short abc", ["abc"]) == "short ***" and scrub("port 8000", [k]) == "port 8000"


def test_server_echoing_parts_of_the_key_is_scrubbed(server, key):
    remote = _endpoint(server, max_retries=0)
    _control(server, "/fixture/faults", {"mode": "echo-key", "times": 1})
    with pytest.raises(EndpointError, match="HTTP 401") as err:
        remote.generate([Image.new("RGB", (INPUT, INPUT))], "what is this ?")
    msg = str(err.value).replace("'spote-tiny'", "")       # the model name shares "spote-" with this key
    assert "Incorrect API key provided" in msg and not any(KEY[i:i + 6] in msg for i in range(len(KEY) - 5)), msg


@pytest.mark.parametrize("url, says", [
    ("https://user:sk-secret@api.example.com/v1", "user:password"),
    ("https://api.example.com/v1?api-key=sk-secret", "query string"),
    ("ftp://127.0.0.1:8000/v1", "scheme must be http or https"),
    ("http://127.0.0.1:99999/v1", "not a valid URL"),
    ("http://127.0.0.1:0/v1", "port 0"),
    ("http:///v1", "names no host"),
    ("http://[::1/v1", "not a valid URL"),
    ("127.0.0.1:8000/v1", "scheme must be http or https"),
])
def test_bad_endpoint_urls_are_refused_at_once(url, says, tmp_path):
    """Refused before any request (exit 2, a flag at fault), where they were retried 4 times (exit 1)."""
    with pytest.raises(ValueError, match=says) as err:
        open_endpoint(url, "spote-tiny", api_key_env=KEY_ENV)
    assert "sk-secret" not in str(err.value)
    Image.new("RGB", (INPUT, INPUT)).save(tmp_path / "x.png")
    res = _ask([str(tmp_path / "x.png"), "what is this ?", "--endpoint", url, "--model", "spote-tiny"], {})
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and says in lines[0] and "sk-secret" not in res.output, res.output


@pytest.mark.parametrize("options, says", [
    ({"timeout_s": "3"}, "timeout_s must be a number of seconds > 0, got '3'"),
    ({"timeout_s": float("nan")}, "timeout_s must be a number"),
    ({"max_retries": 1.5}, "max_retries must be an integer >= 0"),
    ({"view_size": "448"}, "view_size must be an integer in 16..4096"),
    ({"top_logprobs": 21}, "top_logprobs must be an integer in 1..20"),
    ({"api_key_env": 5}, "api_key_env must be a string"),
    ({"image_format": "gif"}, "image_format must be png or jpeg"),
])
def test_endpoint_option_types_are_checked_by_name(options, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        open_endpoint("http://127.0.0.1:8000/v1", "spote-tiny", **options)


@pytest.mark.parametrize("headers, says", [
    ({"retry-after": "500"}, "not retried: the server asked to wait 500 s (Retry-After)"),
    ({"retry-after-ms": "200000"}, "not retried: the server asked to wait 200 s"),
    ({"retry-after": "120.5"}, "wait 120.5 s (Retry-After), longer than the client waits, 120 s"),
    ({"x-should-retry": "false"}, "not retried: the server said not to"),
    ({"x-should-retry": "False"}, None),        # the client compares the header exactly, and retries
    ({"retry-after": "inf"}, None),             # the client backs off and retries
    ({"retry-after": "30"}, None),
    ({}, None),
])
def test_why_a_retryable_answer_was_not_retried_is_named_as_the_client_decides(headers, says):
    from types import SimpleNamespace

    import openai

    from spote.adapters.endpoint import _not_retried

    client = openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9/v1")
    response = SimpleNamespace(status_code=429, headers=headers)   # the headers, as the client's response has them
    assert _not_retried(client, response) == says if says is None else says in _not_retried(client, response)
