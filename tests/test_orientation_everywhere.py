"""Every loader shows the model the upright image a viewer shows, so answers and boxes are in that frame."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spote.cli import app

SAMPLE = Path(__file__).parents[1] / "pipelines" / "samples" / "vqa" / "test-7-00000.png"
# the transpose a camera applies when it stores an upright picture under each orientation
STORE = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}


def _oriented_png(upright: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    upright.transpose(STORE[orientation]).save(buf, "PNG", exif=exif.tobytes())
    return buf.getvalue()


def _upright_sample() -> Image.Image:
    """The digit form, cropped to a portrait so a missed rotation changes the frame."""
    img = Image.open(SAMPLE).convert("RGB")
    return img.resize((img.width * 2 // 3, img.height))


@pytest.mark.parametrize("orientation", [6, 8])
def test_spote_ask_answers_the_upright_image_and_reports_boxes_in_its_frame(orientation, random_tiny_dir, tmp_path):
    upright = _upright_sample()
    upright.save(tmp_path / "upright.png")
    (tmp_path / "phone.png").write_bytes(_oriented_png(upright, orientation))
    runner = CliRunner()
    records = []
    for name in ("upright.png", "phone.png"):
        res = runner.invoke(app, ["ask", str(tmp_path / name), "what digit is in the red box ?", "--choices",
                                  "0,1,2,3,4,5,6,7,8,9", "--model", str(random_tiny_dir), "--budget", "8", "--json"])
        assert res.exit_code == 0, res.output
        rec = json.loads(res.stdout.strip().splitlines()[-1])
        rec.pop("seconds")
        records.append(rec)
    assert records[0] == records[1]
    for box in records[1]["boxes"]:
        assert 0 <= box[0] < box[2] <= upright.width and 0 <= box[1] < box[3] <= upright.height


def test_spote_answer_reads_upright_from_path_and_bytes(tmp_path):
    from spote import _read_image

    upright = _upright_sample()
    data = _oriented_png(upright, 6)
    (tmp_path / "p.png").write_bytes(data)
    for source in (str(tmp_path / "p.png"), f"file://{tmp_path / 'p.png'}", data):
        assert np.array_equal(np.asarray(_read_image(source, None)), np.asarray(upright))


def test_pipeline_loaders_pass_upright_pixels(tmp_path):
    from pipelines.documents import PageLoader
    from pipelines.stages import ImageLoader

    upright = _upright_sample()
    (tmp_path / "scan.png").write_bytes(_oriented_png(upright, 8))
    row = {"id": "a", "source": str(tmp_path / "scan.png"), "question": "what digit ?", "choices": "", "page": 0}
    out = ImageLoader().load(dict(row))
    assert out["status"] == "ok" and (out["height"], out["width"]) == (upright.height, upright.width)
    assert np.frombuffer(out["pixels"], np.uint8).reshape(upright.height, upright.width, 3).tolist() == \
        np.asarray(upright).tolist()
    page = PageLoader().read(dict(row))
    assert np.array_equal(np.asarray(page), np.asarray(upright))
