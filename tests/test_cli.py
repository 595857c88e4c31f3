import contextlib
import json
import os
import socket
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spote.cli import app

SAMPLE = Path(__file__).parents[1] / "pipelines" / "samples" / "vqa" / "test-7-00000.png"
runner = CliRunner()


def test_ask_json_prints_exactly_the_record(random_tiny_dir):
    res = runner.invoke(app, ["ask", str(SAMPLE), "what digit is in the red box ?", "--choices", "0,1,2,3,4,5,6,7,8,9",
                              "--model", str(random_tiny_dir), "--budget", "12", "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    from spote.core import SpotResult

    assert set(rec) == set(SpotResult.RECORD_KEYS) and rec["method"] == "spote"
    assert {"answer", "confidence", "entropy_trace", "evidence_box", "forward_passes", "answer_cut_off"} <= set(rec)
    assert rec["forward_passes"] <= 12
    # the evidence box is one of the views the run looked at, or null when the whole image answered
    assert rec["evidence_box"] is None or rec["evidence_box"] in rec["boxes"]


@pytest.mark.parametrize("method", ["grid", "random", "zoomeye", "scaffold", "naive_entropy", "spote"])
@pytest.mark.parametrize("choices", [["--choices", "0,1,2,3,4,5,6,7,8,9"], []], ids=["closed", "open"])
def test_ask_holds_every_method_to_the_budget(random_tiny_dir, method, choices):
    res = runner.invoke(app, ["ask", str(SAMPLE), "what digit is in the red box ?", *choices, "--method", method,
                              "--model", str(random_tiny_dir), "--budget", "7", "--json"])
    assert res.exit_code == 0, res.output
    assert 1 <= json.loads(res.stdout.strip().splitlines()[-1])["forward_passes"] <= 7


def test_ask_without_a_budget_runs_the_scaffold_at_its_two_steps(random_tiny_dir):
    res = runner.invoke(app, ["ask", str(SAMPLE), "what digit is in the red box ?", "--choices", "0,1,2,3,4,5,6,7,8,9",
                              "--method", "scaffold", "--model", str(random_tiny_dir), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["forward_passes"] == 1 + 2 * 4


def test_ask_text_and_trace_picture(random_tiny_dir, tmp_path):
    png = tmp_path / "trace.png"
    res = runner.invoke(app, ["ask", str(SAMPLE), "is the red box ticked ?", "--choices", "yes,no", "--model",
                              str(random_tiny_dir), "--budget", "12", "--trace", str(png), "--mode", "zoom+context"])
    assert res.exit_code == 0, res.output
    assert "answer:" in res.stdout and "entropy:" in res.stdout
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000


def test_ask_bad_inputs_exit_2_with_a_reason(random_tiny_dir, tmp_path):
    res = runner.invoke(app, ["ask", str(SAMPLE), "  ", "--model", str(random_tiny_dir)])
    assert res.exit_code == 2 and "empty question" in res.output
    bad = tmp_path / "x.png"
    bad.write_bytes(b"nope")
    res = runner.invoke(app, ["ask", str(bad), "is there a boat ?", "--model", str(random_tiny_dir)])
    assert res.exit_code == 2 and "not a readable image" in res.output


PASTED_KEY = "sk-TESTSECRET-abcdef0123456789xyz"


def _malformed_cases(tmp: Path) -> dict:
    """name -> (argv after 'ask', what the one error line must say)."""
    (tmp / "garbage.png").write_bytes(b"this is not a png")
    (tmp / "truncated.png").write_bytes(SAMPLE.read_bytes()[:200])
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "photo.png").write_bytes(SAMPLE.read_bytes())
    (tmp / "a-folder").mkdir()
    (tmp / "not-a-model").mkdir()
    (tmp / "dangling.png").symlink_to(tmp / "gone.png")
    (tmp / "settings.yaml").write_text("budget: 3\n")
    from PIL import Image

    Image.new("RGB", (40, 30), "white").save(tmp / "page.pdf")
    (tmp / "scan.png").write_bytes((tmp / "page.pdf").read_bytes())
    (tmp / "page.html").write_text("<!doctype html><html><body><img src='page.png'></body></html>")
    q = "is there a boat ?"
    cases = {}
    if os.geteuid() != 0:  # root reads any file: a permission-less file is unreadable only to others
        (tmp / "locked.png").write_bytes(SAMPLE.read_bytes())
        (tmp / "locked.png").chmod(0)
        cases["no read permission"] = ([str(tmp / "locked.png"), q], "cannot read")
    return cases | {
        "garbage image": ([str(tmp / "garbage.png"), q], "garbage.png: not a readable image"),
        "truncated image": ([str(tmp / "truncated.png"), q], "truncated.png: corrupt or truncated image"),
        "empty file": ([str(tmp / "empty.png"), q], "empty"),
        "missing file": ([str(tmp / "nope.png"), q], "no such file"),
        "dangling link": ([str(tmp / "dangling.png"), q], "no such file"),
        "directory": ([str(tmp / "a-folder"), q], "is a directory"),
        "one choice": ([str(SAMPLE), q, "--choices", "yes"], "need at least two choices"),
        "duplicate choices": ([str(SAMPLE), q, "--choices", "yes,no,yes"], "duplicate choices"),
        "empty question": ([str(SAMPLE), " "], "empty question"),
        "policy not JSON": ([str(SAMPLE), q, "--policy", "{budget: 3"], "--policy is not valid JSON"),
        "policy not an object": ([str(SAMPLE), q, "--policy", "[3]"], "--policy must be a JSON object"),
        "policy unknown field": ([str(SAMPLE), q, "--policy", '{"budgett": 3}'], "unknown fields ['budgett']"),
        "policy bad value": ([str(SAMPLE), q, "--policy", '{"budget": 0}'], "budget must be >= 1"),
        "policy bad type": ([str(SAMPLE), q, "--policy", '{"budget": "many"}'], "--policy"),
        "bad mode": ([str(SAMPLE), q, "--mode", "closeup"], "mode must be one of"),
        "unknown method": ([str(SAMPLE), q, "--method", "oracle"], "unknown method 'oracle'"),
        "trace is a folder": ([str(SAMPLE), q, "--trace", str(tmp / "a-folder")], "is a directory"),
        "trace is empty": ([str(SAMPLE), q, "--trace", ""], "--trace is empty; give the name of a picture"),
        "trace cannot be written": ([str(SAMPLE), q, "--trace", "/proc/no-such-folder/t.png"], "--trace"),
        # refused before the model loads (a missing one would be named first), not after the search; the file
        # types are matplotlib's
        "trace not a picture": ([str(SAMPLE), q, "--trace", str(tmp / "t.txt"), "--model", str(tmp / "no-model")],
                                "--trace " + str(tmp / "t.txt") + ": cannot write a '.txt' file; end the name with "
                                "one of: "),
        "trace without a file type": ([str(SAMPLE), q, "--trace", str(tmp / "trace"), "--model", str(tmp / "no-model")],
                                      "no file type in the name; end it with one of: "),
        "trace where no file can be made": ([str(SAMPLE), q, "--trace", "/proc/t.png", "--model", str(tmp / "no-model")],
                                            "--trace /proc/t.png: cannot write it: /proc takes no new files"),
        "trace under a file": ([str(SAMPLE), q, "--trace", str(tmp / "settings.yaml" / "t.png")],
                               f"--trace {tmp / 'settings.yaml' / 't.png'}: {tmp / 'settings.yaml'} is a file, not a folder"),
        # a PDF: what spote ask reads, and what reads PDFs; under an image's name, the name pipelines.documents needs
        "pdf": ([str(tmp / "page.pdf"), q], f"error: {tmp / 'page.pdf'} is a PDF: spote ask reads images; render the "
                                            "page as an image first, or run pipelines.documents, which reads PDFs"),
        "pdf named as an image": ([str(tmp / "scan.png"), q], f"{tmp / 'scan.png'} is a PDF: spote ask reads images; "
                                                              "render the page as an image first, or run "
                                                              "pipelines.documents, which reads PDFs named .pdf"),
        "web page": ([str(tmp / "page.html"), q], f"{tmp / 'page.html'} is an HTML page: spote ask reads images; "
                                                  "save the image itself"),
        "negative seed": ([str(SAMPLE), q, "--seed", "-1"], "seed must be 0 to 2**63 - 1, got -1"),
        "seed past 64 bits": ([str(SAMPLE), q, "--seed", str(2**64)], f"seed must be 0 to 2**63 - 1, got {2**64}"),
        # the trace would have overwritten the user's image
        "trace is the image": ([str(tmp / "photo.png"), q, "--trace", str(tmp / "photo.png")],
                               f"--trace {tmp / 'photo.png'} is the input image, which it would overwrite"),
        # a path would have folded it into a local folder "s3:" and written the trace there
        "trace to a store": ([str(SAMPLE), q, "--trace", "s3://bucket/t.png"],
                             "--trace s3://bucket/t.png: the trace is written to a local file; give a local path"),
        "api key variable unset": ([str(SAMPLE), q, "--endpoint", "http://127.0.0.1:9/v1", "--model", "m",
                                    "--api-key-env", "SPOTE_TEST_NO_SUCH_KEY"],
                                   "--api-key-env names an environment variable that is not set"),
        # the key pasted where its variable's name goes, or into another option: said, never printed
        "api key pasted for its variable": ([str(SAMPLE), q, "--endpoint", "http://127.0.0.1:9/v1", "--model", "m",
                                             "--api-key-env", PASTED_KEY], "never the key itself"),
        "api key pasted as a timeout": ([str(SAMPLE), q, "--endpoint", "http://127.0.0.1:9/v1", "--model", "m",
                                         "--endpoint-options", f'{{"timeout_s": "{PASTED_KEY}"}}'],
                                        "timeout_s must be a number of seconds > 0, got a string of 33 characters"),
        "endpoint flags without an endpoint": ([str(SAMPLE), q, "--endpoint-options", '{"timeout_s": 5}'],
                                               "apply to --endpoint, which is not given (they set ['timeout_s'])"),
        "empty choice": ([str(SAMPLE), q, "--choices", "yes,,no"], "empty choice"),
        "policy and flag disagree": ([str(SAMPLE), q, "--policy", '{"mode": "zoom"}', "--mode", "highlight"],
                                     "--policy sets mode to 'zoom' and a flag sets it to 'highlight'"),
        "missing model": ([str(SAMPLE), q, "--model", str(tmp / "no-such-model")], "not found"),
        "folder without a model": ([str(SAMPLE), q, "--model", str(tmp / "not-a-model")], "has no config.json"),
    }


def _one_error_line(stderr: str, says: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], stderr
    assert "Traceback" not in stderr and "TESTSECRET" not in stderr


def test_a_trace_of_a_question_no_font_draws_prints_no_warnings(random_tiny_dir, tmp_path):
    """A Japanese question printed matplotlib's UserWarning, with its source line, for each missing glyph. As a
    real process: pytest would catch the warnings before they reached stderr."""
    png = tmp_path / "t.png"
    proc = _python_m("spote.cli", "ask", str(SAMPLE), "what letter is 日本語の質問は何ですか？", "--choices", "yes,no", "--model",
                     str(random_tiny_dir), "--budget", "4", "--trace", str(png))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Warning" not in proc.stderr and "missing from font" not in proc.stderr, proc.stderr[-2000:]
    assert png.read_bytes()[:4] == b"\x89PNG" and f"trace:       {png}" in proc.stdout


def test_ask_malformed_inputs_print_one_line_and_exit_2(tmp_path):
    for name, (argv, says) in _malformed_cases(tmp_path).items():
        res = runner.invoke(app, ["ask", *argv])
        assert res.exit_code == 2, (name, res.output)
        _one_error_line(res.stderr, says)
        assert res.stdout == "", name


def test_ask_trace_types_are_what_matplotlib_writes_and_the_check_leaves_no_file(tmp_path):
    """The early check makes the trace file to see that it can, and removes it; an existing file is kept as it was."""
    from matplotlib.figure import Figure

    types = Figure().canvas.get_supported_filetypes()
    res = runner.invoke(app, ["ask", str(SAMPLE), "q ?", "--trace", str(tmp_path / "t.txt")])
    _one_error_line(res.stderr, "end the name with one of: " + ", ".join(sorted(types)))
    for name in ("new/deeper/t.png", "T.PDF"):  # matplotlib reads the extension in any case
        res = runner.invoke(app, ["ask", str(SAMPLE), "q ?", "--trace", str(tmp_path / name),
                                  "--model", str(tmp_path / "no-model")])
        _one_error_line(res.stderr, "not found")  # past the trace check, refused at the model
        assert not (tmp_path / name).exists()
    assert not (tmp_path / "new").exists()  # nor the folders made to try it
    (tmp_path / "old.png").write_bytes(b"an older trace")
    res = runner.invoke(app, ["ask", str(SAMPLE), "q ?", "--trace", str(tmp_path / "old.png"),
                              "--model", str(tmp_path / "no-model")])
    _one_error_line(res.stderr, "not found")
    assert (tmp_path / "old.png").read_bytes() == b"an older trace"
    (tmp_path / "link.png").symlink_to(tmp_path / "elsewhere" / "t.png")  # a link to nowhere: its target is
    (tmp_path / "elsewhere").mkdir()                                      # made by the check, then removed
    res = runner.invoke(app, ["ask", str(SAMPLE), "q ?", "--trace", str(tmp_path / "link.png"),
                              "--model", str(tmp_path / "no-model")])
    _one_error_line(res.stderr, "not found")
    assert (tmp_path / "link.png").is_symlink() and not (tmp_path / "elsewhere" / "t.png").exists()
    os.mkfifo(tmp_path / "pipe.png")                                      # opening it would wait for a reader
    res = runner.invoke(app, ["ask", str(SAMPLE), "q ?", "--trace", str(tmp_path / "pipe.png")])
    _one_error_line(res.stderr, "pipe.png: not a regular file")


@pytest.mark.skipif(__import__("shutil").which("xelatex") is not None, reason="xelatex writes .pgf here")
def test_a_trace_that_fails_when_written_is_one_line_after_the_answer(random_tiny_dir, tmp_path):
    """matplotlib lists .pgf but needs LaTeX to write it: a failure the early check cannot see. The answer the
    search paid for is still printed, then one line, exit 2. As a real process: no traceback box."""
    proc = _python_m("spote.cli", "ask", str(SAMPLE), "is the red box ticked ?", "--choices", "yes,no", "--model",
                     str(random_tiny_dir), "--budget", "4", "--trace", str(tmp_path / "t.pgf"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    _one_error_line(proc.stderr, f"error: cannot write the trace {tmp_path / 't.pgf'}: 'xelatex' not found")
    assert "answer:" in proc.stdout and "trace:" not in proc.stdout


def _python_m(module: str, *argv: str):
    """``python -m module argv...`` as a real process from the checkout (stdout and stderr as text)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, env=env, timeout=300)


def test_ask_malformed_inputs_as_a_real_process(tmp_path):
    cases = _malformed_cases(tmp_path)
    for name in ("garbage image", "directory", "policy not JSON", "missing model", "trace not a picture"):
        argv, says = cases[name]
        proc = _python_m("spote.cli", "ask", *argv)
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        _one_error_line(proc.stderr, says)


def test_bench_open_items_flag(random_tiny_dir, tmp_path):
    out = tmp_path / "b.json"
    res = runner.invoke(app, ["bench", "--n", "1", "--open-items", "2", "--methods", "baseline,oracle", "--model",
                              str(random_tiny_dir), "--no-plot", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["n_open_items"] == 2 and data["methods"]["oracle"]["open"]["n"] == 2
    assert sum(data["methods"]["oracle"]["n_by_evidence_size"].values()) == 1
    assert "SpotBench test n=1" in res.output and "open items n=2" in res.output
    res = runner.invoke(app, ["bench", "--n", "0", "--open-items", "1", "--methods", "baseline", "--model",
                              str(random_tiny_dir), "--no-plot", "--out", str(out)])
    assert res.exit_code == 0 and "open items n=1" in res.output, res.output
    assert "SpotBench test n=0" not in res.output  # no closed-set table of dashes
    res = runner.invoke(app, ["bench", "--open-items", "-1", "--model", str(random_tiny_dir)])
    assert res.exit_code == 2


def test_an_empty_open_answer_is_printed_as_nothing_read(tmp_path):
    """The shipped model asked in words it was not trained on ends val page 1's answer at once: the text
    output says "(nothing read)", the JSON keeps the empty string and confidence 0."""
    from spote.bench.scenes import make_open_item

    page = tmp_path / "page.png"
    make_open_item(0, "val", 1).image.save(page)
    res = runner.invoke(app, ["ask", str(page), "what is the reference code ?"])
    assert res.exit_code == 0, res.output
    assert "answer:      (nothing read)\n" in res.stdout and "confidence:  0.000" in res.stdout
    res = runner.invoke(app, ["ask", str(page), "what is the reference code ?", "--json"])
    record = json.loads(res.stdout)
    assert record["answer"] == "" and record["confidence"] == 0.0


def test_max_pixels_refuses_a_larger_image_in_one_line_and_raising_it_reads_it(random_tiny_dir):
    """The decompression-bomb guard's message names the flag that raises it; the sample page is 702 x 823 px."""
    res = runner.invoke(app, ["ask", str(SAMPLE), "is the red box ticked ?", "--choices", "yes,no", "--model",
                              str(random_tiny_dir), "--max-pixels", "1000"])
    assert res.exit_code == 2, res.output
    _one_error_line(res.stderr, "exceeds the limit of 1,000 (decompression-bomb guard); downscale or tile it first, "
                                "or raise --max-pixels")
    res = runner.invoke(app, ["ask", str(SAMPLE), "is the red box ticked ?", "--choices", "yes,no", "--model",
                              str(random_tiny_dir), "--max-pixels", "1000000", "--budget", "4"])
    assert res.exit_code == 0, res.output


def test_a_question_longer_than_the_model_reads_is_one_line(random_tiny_dir):
    """spote-tiny's language model has 512 positions: a longer prompt is refused, not read as noise. As a real
    process: stderr is that one line, without the tokenizer's own warning or a loading bar above it."""
    long_question = "is the box in the corner of the form, " * 120 + "ticked ?"
    many_choices = ",".join(f"digit {i}" for i in range(300))
    # the many choices on the shipped model, whose vocabulary tells "choice 10" from "choice 11" (the untrained
    # tokenizer reads both as <unk> <unk>, which is refused first)
    for question, choices, model in ((long_question, ["--choices", "yes,no"], str(random_tiny_dir)),
                                     (long_question, [], str(random_tiny_dir)),
                                     ("what is in the box ?", ["--choices", many_choices], "spote-tiny")):
        names = "its choices and images" if choices else "its images"
        proc = _python_m("spote.cli", "ask", str(SAMPLE), question, *choices, "--model", model)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
        _one_error_line(proc.stderr, f"error: question too long: with {names} the prompt takes")
        assert "the model reads at most 512" in proc.stderr
        assert ("shorten the question or its choices" in proc.stderr) == bool(choices)


def test_ask_takes_mode_seed_and_relevance_from_the_policy_unless_a_flag_gives_them(random_tiny_dir):
    """``--policy`` fields that flags also set (``--mode``, ``--seed``, ``--black-box``) apply when the flags are
    left out; a flag that agrees with the policy is accepted."""
    policy = '{"mode": "zoom", "seed": 5, "use_relevance": false, "budget": 4}'
    for extra in ([], ["--mode", "zoom", "--seed", "5", "--black-box"]):
        res = runner.invoke(app, ["ask", str(SAMPLE), "is the red box ticked ?", "--choices", "yes,no", "--model",
                                  str(random_tiny_dir), "--policy", policy, "--json", *extra])
        assert res.exit_code == 0, res.output
        used = json.loads(res.stdout)["policy"]
        assert (used["mode"], used["seed"], used["use_relevance"], used["budget"]) == ("zoom", 5, False, 4)


@pytest.mark.parametrize("argv, says", [
    (["--n", "0", "--open-items", "0"], "nothing to run"),
    (["--methods", ""], "--methods names no method"),
    (["--methods", " , "], "--methods names no method"),
    (["--split", "nope"], "--split 'nope': expected one of"),
    (["--corrupt", "nope"], "--corrupt 'nope': expected one of"),
    (["--out", "/proc/no-such-folder/b.json"], "--out /proc/no-such-folder/b.json: cannot make its folder "
                                               "/proc/no-such-folder: /proc takes no new files or folders"),
    (["--out", "/proc/b.json"], "--out /proc/b.json: cannot write it: /proc takes no new files or folders"),
    (["--policy", '{"mode": "zoom"}', "--mode", "highlight"], "--policy sets mode"),
    (["--methods", "foo,spote"], "--methods: unknown method 'foo'; expected some of baseline, "),
    (["--methods", "baseline,foo, bar"], "--methods: unknown methods 'foo', 'bar'; expected some of "),
    (["--budget", "0"], "--budget 0: budget must be >= 1"),
])
def test_bench_refuses_a_run_it_cannot_do_in_one_line_before_loading_a_model(argv, says, tmp_path):
    res = runner.invoke(app, ["bench", "--model", str(tmp_path / "no-such-model"), "--no-plot", *argv])
    assert res.exit_code == 2, res.output
    _one_error_line(res.stderr, says)


def test_bench_out_named_like_its_chart_is_refused(tmp_path):
    """The chart is written to ``--out`` with the suffix .png: an --out ending .png lost the JSON to it."""
    out = tmp_path / "bench.png"
    res = runner.invoke(app, ["bench", "--model", str(tmp_path / "no-such-model"), "--out", str(out)])
    assert res.exit_code == 2, res.output
    _one_error_line(res.stderr, f"--out {out}: names the results JSON, and the chart is written beside it as .png")
    assert not out.exists()


def test_bench_out_under_a_file_says_it_is_a_file(tmp_path):
    (tmp_path / "settings.yaml").write_text("budget: 3\n")
    out = tmp_path / "settings.yaml" / "b.json"
    res = runner.invoke(app, ["bench", "--model", str(tmp_path / "no-such-model"), "--no-plot", "--out", str(out)])
    assert res.exit_code == 2, res.output
    _one_error_line(res.stderr, f"--out {out}: {tmp_path / 'settings.yaml'} is a file, not a folder")


@pytest.mark.parametrize("argv", [
    ["--methods", "foo,spote"], ["--split", "nope"], ["--budget", "0"], ["--n", "0"],
    ["--model", "/no/such/model"],  # refused at the model, after every flag
], ids=["methods", "split", "budget", "nothing to run", "model"])
def test_a_refused_bench_run_makes_no_folder(argv, tmp_path):
    """A run refused for its flags (or its model) made the --out folders first."""
    out = tmp_path / "new" / "deeper" / "b.json"
    res = runner.invoke(app, ["bench", "--no-plot", "--out", str(out), *argv])
    assert res.exit_code == 2, res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is there to use")
def test_bench_on_cuda_without_one_is_one_line(random_tiny_dir, tmp_path):
    res = runner.invoke(app, ["bench", "--n", "1", "--methods", "baseline", "--model", str(random_tiny_dir),
                              "--device", "cuda", "--no-plot", "--out", str(tmp_path / "b.json")])
    assert res.exit_code == 2, res.output
    _one_error_line(res.stderr, "sees no CUDA device")


@pytest.mark.parametrize("policy, says", [
    ("{budget: 3", "--policy is not valid JSON"),
    ("[3]", "--policy must be a JSON object"),
    ('{"budgett": 3}', "unknown fields ['budgett']"),
    ('{"scale_step": 1.0}', "scale_step must be 1.1-4"),
    ('{"scale_step": ' + "9" * 400 + "}", "scale_step must be a finite number"),
])
def test_bench_refuses_a_bad_policy_in_one_line_as_ask_does(policy, says):
    res = runner.invoke(app, ["bench", "--split", "val", "--n", "1", "--policy", policy])
    assert res.exit_code == 2, res.output
    _one_error_line(res.stderr, says)


@pytest.mark.parametrize("module,argv,says", [
    ("spote.cli", ["ask", str(SAMPLE), "what digit is in the red box ?", "--budget", "abc"],
     "error: Invalid value for '--budget'"),
    ("spote.cli", ["ask", str(SAMPLE)], "error: Missing argument 'question'"),
    ("spote.cli", ["ask", "--bogus", "1", str(SAMPLE), "q ?"], "error: No such option: --bogus"),
    ("spote.cli", ["bogus"], "error: No such command 'bogus'"),
    ("spote.cli", ["bench", "--n", "-5"], "error: Invalid value for '--n'"),
    ("pipelines.documents", ["--input", "in", "--output", "out", "--dpi", "abc"], "error: Invalid value for '--dpi'"),
])
def test_usage_errors_print_one_line_and_exit_2_as_a_real_process(module, argv, says):
    """A mistyped flag gets one line, as bad input does, not click's framed box (batch logs grep one line)."""
    proc = _python_m(module, *argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    _one_error_line(proc.stderr, says)
    assert "--help" in proc.stderr and proc.stdout == ""


def test_help_still_prints_the_help_as_a_real_process():
    proc = _python_m("spote.cli", "ask", "--help")
    assert proc.returncode == 0 and "--budget" in proc.stdout


def test_an_empty_command_line_prints_the_help_alone_as_a_real_process():
    proc = _python_m("spote.cli")
    assert proc.returncode == 2 and "ask" in proc.stdout and "bench" in proc.stdout
    assert proc.stderr == ""  # not even a blank line: a wrapper that treats any stderr as failure stays quiet


def _with_nan_weights(folder: Path) -> Path:
    """The shipped model with one tensor all NaN (a checkpoint broken in training or on disk)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from spote.loading import DEFAULT_MODEL

    shutil.copytree(DEFAULT_MODEL, folder)
    sd = load_file(DEFAULT_MODEL / "model.safetensors")
    sd["language_model.model.norm.weight"] = torch.full_like(sd["language_model.model.norm.weight"], float("nan"))
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("choices", [["--choices", "0,1,2,3,4,5,6,7,8,9"], []], ids=["closed", "open"])
def test_a_model_that_gives_nan_scores_is_one_line_not_an_answer_of_confidence_nan(tmp_path, choices):
    folder = _with_nan_weights(tmp_path / "nan")
    res = runner.invoke(app, ["ask", str(SAMPLE), "what digit is in the red box ?", *choices, "--model", str(folder),
                              "--budget", "4", "--json"])
    assert res.exit_code == 2, res.output
    assert "NaN" not in res.stdout and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]  # beside the load's progress bar
    assert len(errors) == 1 and "its scores on a blank image are not finite (NaN or infinity)" in errors[0], res.stderr


def test_a_model_that_gives_nan_scores_is_refused_as_it_loads(tmp_path):
    """docs/models.md: such a model "is refused too", at load (ModelNotFound naming it), not at its first
    question as a ValueError that names no model."""
    from spote.loading import ModelNotFound, load_adapter

    folder = _with_nan_weights(tmp_path / "nan")
    with pytest.raises(ModelNotFound, match=r"cannot be loaded .*scores on a blank image are not finite .*float32"):
        load_adapter(str(folder))


def _bench_model_cases(tmp: Path) -> dict:
    import shutil

    from spote.loading import DEFAULT_MODEL

    not_json, pickled, bad_tokenizer = tmp / "not-json", tmp / "pickled", tmp / "bad-tokenizer"
    for folder in (not_json, pickled, bad_tokenizer):
        shutil.copytree(DEFAULT_MODEL, folder)
    (not_json / "config.json").write_text("model_type: llava")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    (bad_tokenizer / "tokenizer.json").write_text('{"model": {"type": "NoSuchModel"}}')   # JSON, not a tokenizer
    return {
        "dtype float31": (["--dtype", "float31"], "dtype 'float31': expected one of float32"),
        "device gpu": (["--device", "gpu"], "device 'gpu': expected one of cpu, cuda"),
        "config not JSON": (["--model", str(not_json)], f"config.json in {not_json} is not valid JSON"),
        "pickled weights": (["--model", str(pickled)], f"no safetensors weights in {pickled} (pickled .bin weights"),
        "tokenizer transformers refuses": (["--model", str(bad_tokenizer)],
                                           f"cannot be loaded: its processor does not load ({bad_tokenizer}): "),
    }


def test_bench_refuses_a_model_it_cannot_load_in_one_line_as_ask_does(tmp_path):
    for name, (argv, says) in _bench_model_cases(tmp_path).items():
        res = runner.invoke(app, ["bench", "--n", "1", "--methods", "baseline", "--no-plot",
                                  "--out", str(tmp_path / "b.json"), *argv])
        assert res.exit_code == 2, (name, res.output)
        errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and says in errors[0] and "Traceback" not in res.stderr, (name, res.stderr)


def test_a_trace_named_as_the_input_leaves_the_image_as_it_was(tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(SAMPLE.read_bytes())
    link = tmp_path / "link.png"
    link.symlink_to(photo)
    res = runner.invoke(app, ["ask", str(photo), "what letter ?", "--choices", "A,B", "--trace", str(link)])
    assert res.exit_code == 2 and "is the input image, which it would overwrite" in res.output
    assert photo.read_bytes() == SAMPLE.read_bytes()


@pytest.mark.parametrize("name", ["/dev/stdin", "-"])
def test_an_image_through_a_pipe_is_read_once_whole(random_tiny_dir, name):
    """``spote ask <(cat x.png)`` and ``/dev/stdin``: the first byte was read to check the file, then the
    image reopened without it: "not a readable image". ``-`` is standard input, as for cat."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "spote.cli", "ask", name, "what letter ?", "--choices",
                           "A,B", "--model", str(random_tiny_dir), "--budget", "2", "--json"],
                          input=SAMPLE.read_bytes(), capture_output=True, env=env, timeout=300)  # stdin a pipe
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout.decode().strip().splitlines()[-1])["answer"] in ("A", "B")


@pytest.mark.parametrize("data, says", [(b"", "empty standard input (0 bytes)"),
                                         (b"%PDF-1.7\n", "standard input is a PDF"),
                                         (b"not an image", "standard input: ")])
def test_standard_input_that_is_no_image_is_one_line(data, says):
    res = runner.invoke(app, ["ask", "-", "what letter ?", "--choices", "A,B"], input=data)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and says in errors[0], res.stderr


def test_bench_refuses_a_method_named_twice(tmp_path):
    res = runner.invoke(app, ["bench", "--n", "1", "--methods", "baseline,spote,baseline", "--out",
                              str(tmp_path / "b.json")])
    assert res.exit_code == 2 and "--methods names 'baseline' more than once" in res.output


def test_ask_reads_an_image_uri_and_names_one_it_cannot_read(s3, random_tiny_dir):
    """``spote ask s3://b/k.png`` was "no such file: s3:/b/k.png": the argument was a path, which folds
    the URI's double slash."""
    s3.pipe("spote/ask/page.png", SAMPLE.read_bytes())
    res = runner.invoke(app, ["ask", "s3://spote/ask/page.png", "what letter ?", "--choices", "A,B", "--model",
                              str(random_tiny_dir), "--budget", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["answer"] in ("A", "B")
    res = runner.invoke(app, ["ask", "s3://spote/ask/none.png", "what letter ?", "--choices", "A,B"])
    assert res.exit_code == 2 and "no such object: s3://spote/ask/none.png" in res.output


def test_a_trace_name_through_a_folder_to_be_made_and_back_is_written(random_tiny_dir, tmp_path, monkeypatch):
    """``--trace sub/../t.png`` with no ``sub``: the check made ``sub``, then ``sub/..``, which exists, and
    refused the run with "cannot make its folder sub/..: File exists"."""
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["ask", str(SAMPLE), "what letter ?", "--choices", "A,B", "--model", str(random_tiny_dir),
                              "--budget", "2", "--trace", "sub/../t.png"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_names_longer_than_the_file_system_allows_are_one_line(tmp_path):
    """ENAMETOOLONG from Path.exists / is_dir was a traceback, exit 1, for the image, --trace and bench --out."""
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    long = str(tmp_path / ("a" * 300))
    for argv, flag in ([["ask", f"{long}.png", "q ?", "--choices", "a,b"], f"cannot read {long}.png: File name too long"],
                       [["ask", str(tmp_path / "ok.png"), "q ?", "--trace", f"{long}.png"], f"--trace {long}.png: File name too long"],
                       [["bench", "--n", "1", "--methods", "baseline", "--out", f"{long}.json"], f"--out {long}.json: File name too long"]):
        res = runner.invoke(app, argv)
        assert res.exit_code == 2 and res.stderr.strip() == f"error: {flag}", res.output


def test_an_endless_device_is_refused_past_the_stream_limit(monkeypatch):
    """/dev/zero (or `yes | spote ask -`) was read without limit until the kernel killed the process."""
    import spote.images  # noqa: F401 (monkeypatched below)

    monkeypatch.setattr(spote.images, "MAX_STREAM_BYTES", 1 << 16)
    res = runner.invoke(app, ["ask", "/dev/zero", "q ?", "--choices", "a,b"])
    assert res.exit_code == 2 and res.stderr.strip() == ("error: /dev/zero: more than 65,536 bytes without an end; not an image "
                                                         "spote ask reads (save a large image to a file)"), res.output


def test_a_key_given_twice_in_a_flags_json_is_refused():
    """``{"budget": 2, "budget": 96}`` ran with budget 96 without a word; a question file refuses the same."""
    from pipelines.job import JobOptions, JobRefused
    from pipelines.storage import parse_storage_options
    from spote.adapters.endpoint import endpoint_options
    from spote.cli import AskError, parse_policy

    twice = '{"budget": 2, "budget": 96}'
    with pytest.raises(AskError, match=r"^--policy: 'budget' is given twice$"):
        parse_policy(twice)
    with pytest.raises(JobRefused, match=r"^--policy: 'budget' is given twice$"):
        JobOptions("in", "out", policy=twice).policy_overrides()
    with pytest.raises(ValueError, match=r"^--storage-options: 'anon' is given twice$"):
        parse_storage_options('{"anon": true, "client_kwargs": {}, "anon": false}')
    with pytest.raises(ValueError, match=r"^--endpoint-options: 'max_images' is given twice$"):
        endpoint_options(None, None, '{"max_images": 1, "max_images": 2}')
    assert parse_policy('{"budget": 2, "group_size": 4}') == {"budget": 2, "group_size": 4}


@contextlib.contextmanager
def _raw_http_server(respond):
    """A server on a free local port that reads each request, then hands the connection to ``respond(conn,
    stop)`` in a thread of its own (``stop``: set when the block ends); yields an image URL on it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def answer(conn):
        with conn:
            conn.recv(65536)
            try:
                respond(conn, stop)
            except OSError:   # the client gave up
                pass

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:   # closed at the end of the block
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/photo.png"
    finally:
        stop.set()
        listener.close()


@pytest.mark.parametrize("sends", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n\x89PNG"],
                         ids=["nothing", "headers then stalls"])
def test_a_server_that_stops_sending_fails_in_one_line(monkeypatch, sends):
    """A server that accepts the connection and sends nothing (or stops mid-body) held ``spote ask`` for
    aiohttp's 5 minutes; reads now give up after ``HTTP_READ_SECONDS`` without bytes, and say so."""
    import spote

    def silent(conn, stop):
        conn.sendall(sends)
        stop.wait()   # kept open, silent

    monkeypatch.setattr(spote, "HTTP_READ_SECONDS", 1.0)
    with _raw_http_server(silent) as url:
        res = runner.invoke(app, ["ask", url, "q ?", "--choices", "a,b"])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == f"error: cannot read {url}: the server sent nothing for 1 s", res.output


@pytest.mark.parametrize("kind", ["drips", "never ends"])
def test_a_server_that_drips_or_never_ends_its_body_is_cut_off(monkeypatch, kind):
    """A byte every few seconds never tripped the wait between bytes (held for ever); a body without an end
    was read into memory until it filled it. Reads end at ``HTTP_TOTAL_SECONDS`` and ``MAX_STREAM_BYTES``."""
    import spote
    import spote.images

    def drips(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not stop.is_set():
            conn.sendall(b"x")
            stop.wait(0.2)

    def never_ends(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        while not stop.is_set():
            conn.sendall(b"\0" * 65536)

    monkeypatch.setattr(spote, "HTTP_TOTAL_SECONDS", 2.0)
    monkeypatch.setattr(spote.images, "MAX_STREAM_BYTES", 1 << 16)
    with _raw_http_server(drips if kind == "drips" else never_ends) as url:
        res = runner.invoke(app, ["ask", url, "q ?", "--choices", "a,b"])
    says = ("no whole image within 2 s (the server sends too slowly)" if kind == "drips"
            else "more than 65,536 bytes; not an image to read")
    assert res.exit_code == 2 and says in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.output


def test_an_http_timeout_of_ones_own_is_kept():
    import aiohttp

    from spote import HTTP_READ_SECONDS, _http_timeouts

    mine = aiohttp.ClientTimeout(total=5)
    assert _http_timeouts("https://h/p.png", {"client_kwargs": {"timeout": mine}})["client_kwargs"]["timeout"] is mine
    given = _http_timeouts("HTTPS://h/p.png", {"client_kwargs": {"trust_env": True}})["client_kwargs"]
    assert given["trust_env"] is True and given["timeout"].sock_read == HTTP_READ_SECONDS
    assert _http_timeouts("s3://b/k.png", {"anon": True}) == {"anon": True}


def test_a_url_that_cannot_be_reached_is_not_called_missing(tmp_path):
    """fsspec's HTTP filesystem raises FileNotFoundError for a refused connection too: it read "no such object",
    as a 404 does."""
    import functools
    import http.server
    import socket
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):   # its request lines would land in the command's captured stderr
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    try:
        missing = f"http://127.0.0.1:{server.server_address[1]}/none.png"
        res = runner.invoke(app, ["ask", missing, "q ?", "--choices", "a,b"])
        assert res.exit_code == 2 and res.stderr.strip() == f"error: no such object: {missing}", res.output
        down = f"http://127.0.0.1:{closed}/ok.png"
        res = runner.invoke(app, ["ask", down, "q ?", "--choices", "a,b"])
        assert res.exit_code == 2 and res.stderr.startswith(f"error: cannot read {down}: ClientConnectorError: "), res.output
        for signed in (f"{missing}?X-Amz-Signature=SECRET", missing.replace("http://", "http://u:SECRET@"),
                       f"{down}?token=SECRET"):   # a credential in the URL is not shown
            res = runner.invoke(app, ["ask", signed, "q ?", "--choices", "a,b"])
            assert res.exit_code == 2 and "SECRET" not in res.output and "127.0.0.1" in res.output, res.output
    finally:
        server.shutdown()
        server.server_close()
