import json
from pathlib import Path

from typer.testing import CliRunner

from spote.cli import app

SAMPLE = Path(__file__).parents[1] / "pipelines" / "samples" / "vqa" / "test-7-00000.png"
runner = CliRunner()


def test_ask_json_prints_exactly_the_record(random_tiny_dir):
    res = runner.invoke(app, ["ask", str(SAMPLE), "what digit is in the red box ?", "--choices", "0,1,2,3,4,5,6,7,8,9",
                              "--model", str(random_tiny_dir), "--budget", "12", "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(rec) == {"answer", "confidence", "distribution", "entropy_trace", "reward_trace", "anchors", "boxes",
                        "chosen_boxes", "evidence_box", "forward_passes", "seconds", "mode", "policy"}
    assert rec["forward_passes"] <= 12
    # the evidence box is one of the views the run looked at, or null when the whole image answered
    assert rec["evidence_box"] is None or rec["evidence_box"] in rec["boxes"]


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
