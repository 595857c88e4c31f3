"""The public API: ``spote.answer`` takes every image form it documents and gives the same record."""

import io

import numpy as np
import pytest
from PIL import Image

import spote
from spote.bench.scenes import make_item

Q, CHOICES = "what digit is in the red box ?", list("0123456789")


@pytest.fixture(scope="module")
def item():
    return make_item(0, "val", 3, kind="digit")


def test_exports():
    assert set(spote.__all__) >= {"answer", "load_adapter", "PolicyConfig", "SpotResult", "BadImage"}
    assert spote.PolicyConfig().budget > 0 and issubclass(spote.BadImage, ValueError)
    with pytest.raises(AttributeError):
        spote.no_such_name


def test_every_image_form_gives_the_same_answer(item, shipped_adapter, tmp_path):
    path = tmp_path / "my scans" / "scene #1.png"  # as_uri() writes file:///.../my%20scans/scene%20%231.png
    path.parent.mkdir()
    item.image.save(path)
    forms = [str(path), path, f"file://{path}", path.as_uri(), path.read_bytes(), item.image, np.asarray(item.image)]
    results = [spote.answer(f, Q, CHOICES, model=shipped_adapter, budget=24) for f in forms]
    first = results[0]
    assert isinstance(first, spote.SpotResult) and first.forward_passes <= 24
    for r in results[1:]:
        assert (r.answer, r.confidence, r.evidence_box) == (first.answer, first.confidence, first.evidence_box)


def test_a_file_uri_on_another_host_is_a_bad_image(shipped_adapter):
    with pytest.raises(spote.BadImage, match="on another host"):
        spote.answer("file://fileserver/share/scene.png", Q, CHOICES, model=shipped_adapter)


def test_evidence_box_is_in_source_pixels(item, shipped_adapter):
    res = spote.answer(item.image, Q, CHOICES, model=shipped_adapter)
    rec = res.to_dict()
    assert "evidence_box" in rec
    if res.evidence_box is None:  # the whole image answered: one pass or every spotlight scored below it
        assert res.answer is not None
    else:
        x0, y0, x1, y1 = res.evidence_box
        w, h = item.image.size
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert res.evidence_box in res.boxes


def test_model_by_folder_is_loaded_once(random_tiny_dir, item):
    a = spote.answer(item.image, Q, CHOICES, model=str(random_tiny_dir), budget=8)
    b = spote.answer(item.image, Q, CHOICES, model=str(random_tiny_dir), budget=8)
    assert a.answer == b.answer
    assert sum(1 for k in spote._ADAPTERS if k[0] == str(random_tiny_dir)) == 1


@pytest.mark.parametrize("bad, error, words", [
    (b"", spote.BadImage, "empty"),
    (b"not an image", spote.BadImage, "not a readable image"),
    ("/no/such/file.png", spote.BadImage, "no such file"),
    (np.zeros((4, 4, 2), np.uint8), spote.BadImage, "array shape"),
])
def test_bad_images_raise_one_clear_error(bad, error, words, shipped_adapter):
    with pytest.raises(error, match=words):
        spote.answer(bad, Q, CHOICES, model=shipped_adapter)


def test_bad_arguments_are_refused_before_any_work(item, shipped_adapter):
    with pytest.raises(ValueError, match="unknown policy fields"):
        spote.answer(item.image, Q, CHOICES, model=shipped_adapter, budgett=3)
    with pytest.raises(ValueError, match="empty question"):
        spote.answer(item.image, "  ", CHOICES, model=shipped_adapter)
    with pytest.raises(ValueError, match="at least two choices"):
        spote.answer(item.image, Q, ["7"], model=shipped_adapter)
    with pytest.raises(ValueError, match="unknown method"):
        spote.answer(item.image, Q, CHOICES, model=shipped_adapter, method="magic")
    with pytest.raises(ValueError, match="unknown method 'oracle'"):  # it needs a ground-truth box: benchmarks only
        spote.answer(item.image, Q, CHOICES, model=shipped_adapter, method="oracle")
    with pytest.raises(ValueError, match="seed must be >= 0"):
        spote.answer(item.image, Q, CHOICES, model=shipped_adapter, seed=-1)
    with pytest.raises(TypeError, match="model must be a folder, URI or hub id .* or an adapter from load_adapter, "
                                        "got int"):
        spote.answer(item.image, Q, CHOICES, model=123)  # it failed inside the search, on a missing attribute


def test_encoded_jpeg_bytes(item, shipped_adapter):
    buf = io.BytesIO()
    item.image.save(buf, "JPEG", quality=95)
    res = spote.answer(buf.getvalue(), Q, CHOICES, model=shipped_adapter, budget=16)
    assert res.answer in CHOICES and 0 <= res.confidence <= 1
    assert Image.open(io.BytesIO(buf.getvalue())).size == item.image.size


def test_the_same_model_uri_on_another_store_is_another_model(item, s3, s3_server, tmp_path, monkeypatch):
    """A loaded model is reused for the same name only with the same storage options: the same s3:// path
    on another store (here one that does not answer) is not the model already loaded from the first."""
    import time

    import spote.loading
    from spote.loading import DEFAULT_MODEL, ModelNotFound

    monkeypatch.setattr(spote.loading, "CACHE_DIR", tmp_path)
    root = f"spote/models/api-{time.time_ns()}"
    for f in DEFAULT_MODEL.iterdir():
        s3.pipe_file(f"{root}/{f.name}", f.read_bytes())
    store_a = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_server}}
    store_b = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
               "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}, "retries": 1}
    res = spote.answer(item.image, Q, CHOICES, model=f"s3://{root}", storage_options=store_a, budget=4)
    assert res.answer in CHOICES
    with pytest.raises(ModelNotFound, match="could not be fetched"):
        spote.answer(item.image, Q, CHOICES, model=f"s3://{root}", storage_options=store_b, budget=4)
    keys = [k for k in spote._ADAPTERS if k[0] == f"s3://{root}"]
    assert len(keys) == 1 and "testing" not in repr(keys)          # the options' secrets are not kept in the key
