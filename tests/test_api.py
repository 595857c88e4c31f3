"""The public API: ``spote.answer`` takes every image form it documents and gives the same record."""

import io
import os

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
    (np.zeros((4, 4, 5), np.uint8), spote.BadImage, "array shape"),  # HxWx2 is grey + alpha
    (None, spote.BadImage, "not an image: got NoneType"),
    (5, spote.BadImage, "not an image: got int"),
    ([[1, 2], [3, 4]], spote.BadImage, "not an image: got list"),
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
    with pytest.raises(ValueError, match="seed must be 0 to 2\*\*63 - 1"):
        spote.answer(item.image, Q, CHOICES, model=shipped_adapter, seed=-1)
    with pytest.raises(TypeError, match=r"model must be a folder, URI or hub id .* or an adapter \(load_adapter, or an "
                                        r"object with the members of spote.adapters.base.Adapter\), got int$"):
        spote.answer(item.image, Q, CHOICES, model=123)  # it failed inside the search, on a missing attribute
    half = type("HalfAdapter", (), {"forward_passes": 0, "tokenizer": None, "input_size": 64})()
    with pytest.raises(TypeError, match="got HalfAdapter without .*choice_logprobs.*teacher_forced"):
        spote.answer(item.image, Q, CHOICES, model=half)  # taken for an adapter, it failed inside the search


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


def _noise(w=640, h=480, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("method", ["spote", "naive_entropy", "random", "grid", "zoomeye", "scaffold"])
@pytest.mark.parametrize("question, choices", [(Q, CHOICES), ("what is the code ?", None)], ids=["closed", "open"])
def test_a_budget_holds_every_search_method(random_adapter, method, question, choices):
    """``budget`` caps the peers as ``spote ask --budget`` does (grid read all 751 windows of this image,
    zoomeye 22 passes, scaffold 9), an open answer's generation included."""
    res = spote.answer(_noise(), question, choices, model=random_adapter, method=method, budget=4)
    assert 1 <= res.forward_passes <= 4 and res.method == method


def test_without_a_budget_grid_reads_its_whole_grid(random_adapter):
    from spote.core import window_grid

    img = _noise(200, 150, seed=1)
    windows, _ = window_grid(*img.size, random_adapter.input_size, spote.PolicyConfig().min_window)
    res = spote.answer(img, Q, CHOICES, model=random_adapter, method="grid")
    assert res.forward_passes == 1 + len(windows)


@pytest.mark.parametrize("question, choices, words", [
    (b"what digit ?", CHOICES, "question must be a str, got bytes"),
    (["what digit ?"], CHOICES, "question must be a str, got list"),
    (123, CHOICES, "question must be a str, got int"),
    (Q, [None, "x"], r"each choice must be a str, got NoneType at choices\[0\]"),
    (Q, ["1", 2], r"each choice must be a str, got int at choices\[1\]"),
    (Q, [b"yes", b"no"], r"each choice must be a str, got bytes at choices\[0\]"),
    (Q, 123, "choices must be a list or tuple of str, a comma-separated str or None, got int"),
    (Q, {"yes": 1, "no": 0}, "choices must be a list or tuple of str, .* got dict"),
])
def test_arguments_that_are_not_text_are_type_errors(item, random_adapter, question, choices, words):
    """No argument is turned into text with ``str()``: ``b"what"`` would be asked as ``"b'what'"`` and
    ``None`` offered as the choice ``"None"``."""
    with pytest.raises(TypeError, match=words):
        spote.answer(item.image, question, choices, model=random_adapter)


def test_a_question_longer_than_the_model_reads_is_a_value_error(item, random_adapter):
    from spote.adapters.base import PromptTooLong

    with pytest.raises(PromptTooLong, match="question too long") as err:
        spote.answer(item.image, "what is written " * 2000 + "?", model=random_adapter, method="baseline")
    assert isinstance(err.value, ValueError)


def test_the_public_docstrings_cover_what_answer_accepts_and_returns():
    """Every method ``answer`` runs, every error it documents and every SpotResult field is described."""
    import dataclasses
    import re

    from spote.baselines import ANSWER_METHODS

    doc = spote.answer.__doc__
    for name in (*ANSWER_METHODS, "PromptTooLong", "TypeError", "token_confidences", "answer_token_ids",
                 "reward_standout", "answer_cut_off", "32 tokens"):
        assert name in doc, name
    described = set()
    for names in re.findall(r"^ {8}(\w+(?:, \w+)*):", spote.SpotResult.__doc__, re.M):
        described.update(names.split(", "))
    assert {f.name for f in dataclasses.fields(spote.SpotResult)} <= described


def test_answer_refuses_arguments_it_would_ignore(shipped_adapter):
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="^model is an empty name"):
        spote.answer(img, "what ?", ["a", "b"], model="")
    for given in ({"revision": "v1"}, {"trust_remote_code": True}):
        with pytest.raises(ValueError, match="^revision, trust_remote_code, endpoint and endpoint_options choose a "):
            spote.answer(img, "what ?", ["a", "b"], model=shipped_adapter, **given)
    with pytest.raises(ValueError, match="^endpoint_options apply to an endpoint"):
        spote.answer(img, "what ?", ["a", "b"], endpoint_options={"timeout_s": 5})


def test_a_relative_model_folder_is_the_folder_in_the_working_folder_of_each_call(tmp_path, monkeypatch):
    """The loaded models were keyed by the name as written: ``model="m"`` in another working folder
    answered with the first folder's model."""
    import shutil

    from spote.loading import DEFAULT_MODEL

    for name in ("a", "b"):
        shutil.copytree(DEFAULT_MODEL, tmp_path / name / "m")
    img = np.zeros((32, 32, 3), np.uint8)
    loaded = []
    for name in ("a", "b", "a"):
        monkeypatch.chdir(tmp_path / name)
        spote.answer(img, "what ?", ["A", "B"], model="m", budget=1)
        loaded.append(next(a for k, a in spote._ADAPTERS.items() if k[0] == os.path.realpath(tmp_path / name / "m")))
    assert loaded[0] is not loaded[1] and loaded[0] is loaded[2]


def test_a_remote_image_that_cannot_be_read_is_a_bad_image(s3):
    s3.pipe("spote/imgs/a.png", b"")
    s3.pipe("spote/imgs/sub/b.png", b"x")
    with pytest.raises(spote.BadImage, match="^s3://spote/imgs/sub is a folder \\(a prefix\\), not an image object$"):
        spote.answer("s3://spote/imgs/sub", "what ?", ["a", "b"])
    with pytest.raises(spote.BadImage, match="^cannot read s3://spote/imgs/sub/b.png: TypeError"):
        spote.answer("s3://spote/imgs/sub/b.png", "what ?", ["a", "b"], storage_options={"nope": 1})
    with pytest.raises(spote.BadImage, match="^no such object: s3://spote/imgs/none.png$"):
        spote.answer("s3://spote/imgs/none.png", "what ?", ["a", "b"])


def test_a_file_uri_of_percent_escaped_bytes_names_the_file_the_os_holds(tmp_path):
    """``file:///.../M%FCller.png`` names a Latin-1 file that exists: its escapes were decoded as UTF-8 with
    replacement ("M\\ufffdller.png"), and the file was "no such file"."""
    import os

    from spote.uris import local_path

    name = os.fsencode(tmp_path) + b"/M\xfcller.png"
    Image.new("RGB", (8, 8)).save(name, format="PNG")
    assert os.path.exists(local_path(f"file://{tmp_path}/M%FCller.png"))
    assert local_path(f"file://{tmp_path}/a%20b.png") == f"{tmp_path}/a b.png"


def test_a_failed_write_leaves_the_file_as_it_was_and_no_part(tmp_path):
    """A full disk left a 0-byte bench JSON or trace PNG where the old one was."""
    from spote.uris import replacing

    out = tmp_path / "bench.json"
    out.write_text("old")
    with pytest.raises(OSError):
        with replacing(out) as part:
            part.write_text("half")
            raise OSError(28, "No space left on device")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]
    with replacing(out) as part:
        assert part.suffix == ".json" and part.parent == tmp_path
        part.write_text("new")
    assert out.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]


@pytest.mark.parametrize("relevance", [True, False], ids=["attention", "black box"])
def test_threads_sharing_a_model_get_what_one_call_at_a_time_gets(shipped_adapter, relevance):
    """Two threads on one cached model (a web service) spent each other's budget (9-17 views read of 25),
    flipped answers, and a relevance pass failed when the other thread switched the attention back."""
    from concurrent.futures import ThreadPoolExecutor

    items = [make_item(11, "test", i) for i in range(4)]

    def run(item):
        d = spote.answer(item.image, item.question, item.choices, model=shipped_adapter, budget=12,
                         use_relevance=relevance).to_dict()
        d.pop("seconds")
        return d

    serial = [run(it) for it in items]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(run, items))
    assert together == serial


def test_a_search_leaves_torchs_random_state_as_it_was(item, shipped_adapter, random_adapter):
    """``torch.manual_seed(cfg.seed)`` in the search reset the caller's generator: its draws repeated after
    every call; saved and restored around each search instead, two threads on two adapters left it at one
    search's seed. The search draws from its own generator only."""
    import threading

    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    spote.answer(item.image, Q, CHOICES, model=shipped_adapter, budget=4)
    threads = [threading.Thread(target=spote.answer, args=(item.image, Q, CHOICES), kwargs={"model": m, "budget": 6})
               for m in (shipped_adapter, random_adapter)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert torch.equal(torch.rand(3), expected)
    first = spote.answer(item.image, Q, CHOICES, model=shipped_adapter, budget=8)
    torch.rand(5)   # the caller's draws do not change the search's
    assert spote.answer(item.image, Q, CHOICES, model=shipped_adapter, budget=8).answer == first.answer


def test_an_image_path_under_the_home_folder_is_expanded(tmp_path, monkeypatch, shipped_adapter):
    """``"~/x.png"`` was "no such file" while ``model=`` and the jobs' manifests expand ``~``."""
    monkeypatch.setenv("HOME", str(tmp_path))
    Image.new("RGB", (64, 48), "white").save(tmp_path / "x.png")
    assert spote.answer("~/x.png", Q, CHOICES, model=shipped_adapter, budget=2).answer in CHOICES
    from pathlib import Path

    assert spote.answer(Path("~/x.png"), Q, CHOICES, model=shipped_adapter, budget=2).answer in CHOICES
    with pytest.raises(spote.BadImage, match=r"^empty path"):
        spote.answer("", Q, CHOICES, model=shipped_adapter)


def test_the_pixel_guard_can_be_raised_from_python(shipped_adapter):
    """``spote ask --max-pixels`` and the jobs' flag had no ``spote.answer`` counterpart: a 42-megapixel array
    was refused with advice to downscale it."""
    big = np.full((7000, 6000), 200, np.uint8)
    with pytest.raises(spote.BadImage, match="40,000,000.*, or raise max_pixels=$"):
        spote.answer(big, Q, CHOICES, model=shipped_adapter, budget=1)
    assert spote.answer(big, Q, CHOICES, model=shipped_adapter, budget=1, max_pixels=50_000_000).answer in CHOICES
    assert spote.answer(big, Q, CHOICES, model=shipped_adapter, budget=1, max_pixels=np.int64(50_000_000)).answer
    for bad in (0, 2.5, True, "50000000"):
        with pytest.raises(ValueError, match="max_pixels must be a whole number of pixels >= 1"):
            spote.answer(big, Q, CHOICES, model=shipped_adapter, max_pixels=bad)


def test_the_recorded_policy_says_whether_attention_was_read(item, random_tiny_dir):
    """An adapter loaded black-box ran the black-box search while ``policy['use_relevance']`` said True; api
    and vicrop read attention even with ``use_relevance=False``."""
    from spote.loading import load_adapter

    blind = load_adapter(random_tiny_dir, device="cpu", relevance=False)
    seeing = load_adapter(random_tiny_dir, device="cpu")
    for method in ("spote", "vicrop", "api"):
        assert spote.answer(item.image, Q, CHOICES, model=blind, method=method, budget=6).policy["use_relevance"] is False
    off = spote.answer(item.image, Q, CHOICES, model=seeing, method="vicrop", use_relevance=False)
    on = spote.answer(item.image, Q, CHOICES, model=seeing, method="vicrop")
    as_blind = spote.answer(item.image, Q, CHOICES, model=blind, method="vicrop")
    assert off.policy["use_relevance"] is False and on.policy["use_relevance"] is True
    assert off.evidence_box == as_blind.evidence_box   # the uniform map's crop, as in black-box mode
    # what was read, not what was asked: a budget with no room for the relevance pass, a method that reads none
    calls = []
    seeing.relevance, real = (lambda *a, **k: calls.append(1) or real(*a, **k)), seeing.relevance
    try:
        for method, budget in (("spote", 3), ("grid", 8), ("zoomeye", 8), ("spote", 96)):
            calls.clear()
            res = spote.answer(item.image, Q, CHOICES, model=seeing, method=method, budget=budget)
            assert res.policy["use_relevance"] is bool(calls), (method, budget, calls)
    finally:
        del seeing.relevance
    assert calls   # the full budget read it


def test_first_calls_from_several_threads_load_one_model(item, random_tiny_dir, tmp_path, monkeypatch):
    """Four threads' first calls each loaded the model (four copies of a 7B model), racing transformers' lazy
    imports (ImportError: cannot import name 'AutoConfig')."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    import spote.loading

    folder = tmp_path / "fresh-model"   # a model no earlier test cached
    shutil.copytree(random_tiny_dir, folder)
    loads, real = [], spote.loading.load_adapter
    monkeypatch.setattr(spote.loading, "load_adapter", lambda *a, **k: loads.append(1) or real(*a, **k))
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: spote.answer(item.image, Q, CHOICES, model=str(folder), method="baseline")
                                .answer, range(4)))
    assert len(loads) == 1 and len(set(answers)) == 1


class _Wrapped:
    """A hand-written adapter: every member of spote.adapters.base.Adapter, by delegation."""

    def __init__(self, inner, **override):
        self._inner, self._override = inner, override

    def __getattr__(self, name):
        if name in self._override:
            return self._override[name]
        return getattr(self._inner, name)


def test_one_lazily_opened_image_shared_by_threads_is_decoded_once(tmp_path, shipped_adapter):
    """Four threads given one ``Image.open`` not yet decoded: each decoded it at once and most read a "broken
    PNG file"; the caller's image is decoded by one thread at a time."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "page.png"
    make_item(0, "test", 3).image.save(path)
    shared = Image.open(path)  # lazy: decoded on first use
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: spote.answer(shared, Q, CHOICES, model=shipped_adapter, budget=2).answer,
                                range(4)))
    assert len(answers) == 4 and all(a in CHOICES for a in answers)


def test_a_hand_written_adapter_is_taken_and_a_broken_one_refused_by_name(item, random_tiny_dir):
    """Any object with the Adapter members answers: a dataclass (unhashable) was refused deep in the
    threads' lock; ``relevance`` returning None (allowed) crashed spote; ``joint_decoding`` without
    ``generate_agreed`` failed after the search's passes; a NaN map steered the search to a corner."""
    from dataclasses import dataclass

    from spote.adapters.base import Adapter
    from spote.loading import load_adapter

    inner = load_adapter(random_tiny_dir, device="cpu")

    @dataclass
    class Delegating:  # a dataclass: __hash__ is None
        inner: object

        def __getattr__(self, name):
            return getattr(self.__dict__["inner"], name)

    held = Delegating(inner)
    assert isinstance(held, Adapter)
    assert spote.answer(item.image, Q, CHOICES, model=held, budget=8).answer in CHOICES
    blind = _Wrapped(inner, relevance=lambda *a, **k: None)
    res = spote.answer(item.image, Q, CHOICES, model=blind, budget=32, exit_entropy=0.0, exit_entropy_per_ln_k=0.0)
    assert res.policy["use_relevance"] is False and res.forward_passes > 3
    broken = _Wrapped(inner, relevance=lambda *a, **k: np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="relevance map must be a 2-D array of finite non-negative numbers"):
        spote.answer(item.image, Q, CHOICES, model=broken, budget=32, exit_entropy=0.0, exit_entropy_per_ln_k=0.0)

    zero = _Wrapped(inner, relevance=lambda *a, **k: np.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"got one of shape \(8, 8\) summing to 0"):
        spote.answer(item.image, Q, CHOICES, model=zero, budget=32, exit_entropy=0.0, exit_entropy_per_ln_k=0.0)
    import torch

    def as_tensor(*a, **k):  # a map straight from a model: bfloat16, still holding its graph
        return torch.rand(8, 8, requires_grad=True).to(torch.bfloat16)

    tensor_map = _Wrapped(inner, relevance=as_tensor)
    assert spote.answer(item.image, Q, CHOICES, model=tensor_map, budget=32, exit_entropy=0.0,
                        exit_entropy_per_ln_k=0.0).policy["use_relevance"] is True
    # closed-set scores that are not log-probabilities over the choices: a confidence above 1 was reported
    probs = _Wrapped(inner, choice_logprobs=lambda *a, **k: inner.choice_logprobs(*a, **k).exp())
    with pytest.raises(ValueError, match="choice_logprobs must return log-probabilities normalised over the choices"):
        spote.answer(item.image, Q, CHOICES, model=probs, budget=8)
    as_numpy = _Wrapped(inner, choice_logprobs=lambda *a, **k: inner.choice_logprobs(*a, **k).numpy())
    assert spote.answer(item.image, Q, CHOICES, model=as_numpy, budget=8).confidence <= 1

    # a choice of probability exactly 0 (log p -inf) made every entropy NaN and skipped the search
    def with_zero(*a, **k):
        lp = inner.choice_logprobs(*a, **k).clone()
        lp[:, -1] = -float("inf")
        return torch.log_softmax(lp, -1)

    def with_tiny(*a, **k):
        lp = inner.choice_logprobs(*a, **k).clone()
        lp[:, -1] = -1e4
        return torch.log_softmax(lp, -1)

    search = dict(budget=16, exit_entropy=0.0, exit_entropy_per_ln_k=0.0)
    zero_res = spote.answer(item.image, Q, CHOICES, model=_Wrapped(inner, choice_logprobs=with_zero), **search)
    tiny_res = spote.answer(item.image, Q, CHOICES, model=_Wrapped(inner, choice_logprobs=with_tiny), **search)
    assert all(np.isfinite(zero_res.entropy_trace)) and zero_res.forward_passes > 1
    assert (zero_res.answer, zero_res.entropy_trace) == (tiny_res.answer, tiny_res.entropy_trace)
    # bfloat16 log p (a model on a GPU) sums to 1 only within its precision: read, not refused
    bf16 = _Wrapped(inner, choice_logprobs=lambda *a, **k: inner.choice_logprobs(*a, **k).to(torch.bfloat16))
    assert spote.answer(item.image, Q, CHOICES, model=bf16, budget=8).answer in CHOICES
    masked = _Wrapped(inner, relevance=lambda *a, **k: np.ma.masked_array(np.full((8, 8), 1e6),
                                                                          mask=np.arange(64).reshape(8, 8) % 8 < 4))
    assert spote.answer(item.image, Q, CHOICES, model=masked, **search).policy["use_relevance"] is True
    ragged = _Wrapped(inner, relevance=lambda *a, **k: [[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match="relevance map must be a 2-D array of numbers, got list numpy cannot read"):
        spote.answer(item.image, Q, CHOICES, model=ragged, **search)

    class NoJoint(_Wrapped):
        generate_agreed = None

    with pytest.raises(TypeError, match="says joint_decoding but has no generate_agreed"):
        spote.answer(item.image, "what is the code ?", model=NoJoint(inner), budget=16)
    with pytest.raises(TypeError, match="got LlavaForConditionalGeneration; a transformers model in memory is "
                                        "wrapped with spote.adapters.base.HFAdapter"):
        spote.answer(item.image, Q, CHOICES, model=inner.model)


def test_the_package_version_is_the_one_pyproject_declares():
    import tomllib
    from pathlib import Path

    import spote

    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert spote.__version__ == declared
