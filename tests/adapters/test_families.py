"""Family adapters (LLaVA, Qwen2-VL, Qwen2.5-VL, Idefics3, SmolVLM) on tiny random models built offline.

The checkpoints come from ``tiny_vlms`` and load back through ``spote.loading.load_adapter``. Here the
processors are the torchvision-free ones (``tiny_vlms`` says which); ``test_processors.py`` runs the
families' real processors where torchvision is installed.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spote.adapters.base import HFAdapter, attention_to_grid
from spote.adapters.idefics3 import Idefics3Adapter
from spote.adapters.llava import LlavaAdapter
from spote.adapters.qwen2vl import Qwen2VLAdapter
from spote.core import PolicyConfig, spote
from tiny_vlms import (CHOICES, IDEFICS_SEQ, IDEFICS_TILE, ROW_COL, Q, qwen_processor_class, random_image,
                       save_checkpoint, save_llava_sentencepiece, save_mllama, save_paligemma)

FAMILIES = ["llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm"]
EXPECTED = {"llava": LlavaAdapter, "qwen2_vl": Qwen2VLAdapter, "qwen2_5_vl": Qwen2VLAdapter,
            "idefics3": Idefics3Adapter, "smolvlm": Idefics3Adapter}
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, random_tiny_dir):
    dirs = {"llava": random_tiny_dir}
    for family in FAMILIES[1:]:
        d = save_checkpoint(family, tmp_path_factory.mktemp(family))
        assert (d / "model.safetensors").exists()
        dirs[family] = d
    return dirs


def _load(family: str, path, **kwargs) -> HFAdapter:
    from spote.loading import load_adapter

    if not family.startswith("qwen"):
        return load_adapter(path, device="cpu", **kwargs)
    import transformers

    cls = qwen_processor_class(family)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transformers.AutoProcessor, "from_pretrained", lambda p, **kw: cls.from_pretrained(p))
        return load_adapter(path, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def adapters(family_dirs):
    return {family: _load(family, path) for family, path in family_dirs.items()}


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("family", FAMILIES)
def test_load_adapter_picks_the_family_adapter(adapters, family):
    adapter = adapters[family]
    assert type(adapter) is EXPECTED[family]
    assert adapter.model.config.model_type == family
    assert adapter.supports_relevance  # load_adapter asks for eager attention
    assert type(adapter.processor).__name__ != "TokenizersBackend"


@pytest.mark.parametrize("family", FAMILIES)
def test_choice_logprobs_and_spote_end_to_end(adapters, family):
    adapter = adapters[family]
    view = random_image().resize((adapter.input_size, adapter.input_size))
    lp = adapter.choice_logprobs([[view]] * 2, Q, list(CHOICES))
    assert lp.shape == (2, 2) and torch.isfinite(lp).all()
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(lp[0], lp[1], atol=1e-4, rtol=1e-4)  # same view, same answer

    rel = adapter.relevance([view], Q, list(CHOICES))  # real eager attention of the real model
    batch = adapter.encode([[view]], [adapter.prompt_text(1, Q, CHOICES)])
    assert rel.shape == adapter.image_grid(batch)[0] and np.isfinite(rel).all() and abs(rel.sum() - 1) < 1e-4

    res = spote(adapter, random_image(), Q, CHOICES, PolicyConfig(budget=8, exit_entropy_per_ln_k=0.0))
    assert 1 <= res.forward_passes <= 8
    assert res.answer in CHOICES and abs(sum(res.distribution.values()) - 1) < 1e-4

    gen = adapter.generate([view], Q, max_new_tokens=2)  # open-ended path: model.generate with the cache
    assert len(gen.token_ids) == len(gen.entropies) == len(gen.logprobs) <= 2


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_agreed_decodes_the_views_mean_log_p(adapters, family):
    """Each step's token is the argmax of the mean log p over the views, and its reported log p is that of
    the mean distribution; with the views identical it is plain greedy decoding."""
    adapter = adapters[family]
    views = [[random_image(seed=seed).resize((adapter.input_size, adapter.input_size))] for seed in (1, 2, 3)]
    prompt = adapter.prompt_text(1, Q)
    batch = adapter.encode(views, [prompt] * 3)
    first = torch.log_softmax(adapter.model(**batch).logits[:, -1].float(), -1)  # [3, V], one row per view
    mean = torch.log_softmax(first.mean(0), -1)
    assert len({int(t) for t in first.argmax(-1)}) > 1 or not torch.allclose(first[0], first[1])  # views differ

    passes = adapter.forward_passes
    gen = adapter.generate_agreed(views, Q, max_new_tokens=3)
    assert adapter.forward_passes - passes == 3  # one generation per view set
    tok = gen.token_ids[0] if gen.token_ids else adapter.tokenizer.eos_token_id
    assert tok == int(mean.argmax())
    reported = gen.logprobs[0] if gen.token_ids else gen.end_logp
    assert reported == pytest.approx(float(mean[tok]), abs=1e-4)
    assert reported != pytest.approx(float(first[0, tok]), abs=1e-4)  # not one view's own log p

    with pytest.raises(ValueError, match="same number of images"):
        adapter.generate_agreed([views[0], views[0] * 2], Q)
    with pytest.raises(ValueError, match="one or more view sets"):
        adapter.generate_agreed([], Q)
    with pytest.raises(ValueError, match="one or more view sets"):
        adapter.generate_agreed([[], []], Q)

    same = adapter.generate_agreed([views[0]] * 2, Q, max_new_tokens=3)
    one = adapter.generate(views[0], Q, max_new_tokens=3)
    assert same.token_ids == one.token_ids
    np.testing.assert_allclose(same.logprobs, one.logprobs, atol=1e-4)


@pytest.fixture(scope="module")
def sentencepiece_adapter(tmp_path_factory):
    from spote.loading import load_adapter

    return load_adapter(save_llava_sentencepiece(tmp_path_factory.mktemp("llava-sp")), device="cpu")


@pytest.fixture(scope="module")
def more_adapters(tmp_path_factory):
    """Families whose processors give per-token inputs beside ``input_ids`` that generation grows its own way."""
    from spote.loading import load_adapter

    return {"paligemma": load_adapter(save_paligemma(tmp_path_factory.mktemp("paligemma")), device="cpu"),
            "mllama": load_adapter(save_mllama(tmp_path_factory.mktemp("mllama")), device="cpu")}


@pytest.mark.parametrize("family", [*FAMILIES, "llava, SentencePiece-style tokenizer", "paligemma", "mllama"])
def test_teacher_forcing_scores_the_generated_tokens_where_they_were_generated(adapters, sentencepiece_adapter,
                                                                                more_adapters, family):
    """A view's teacher-forced span on the view it was generated on is the generation's own entropies and
    log p. The span was decoded to text and encoded again after the prompt: a Llama-style tokenizer's
    ``"▁:"`` decodes to ``":"``, which encodes as another token, so every open answer was scored at the
    wrong tokens without a word. The span's other inputs grow as generation grows them: PaliGemma's
    token types (a span marked as prefix sees its own future), Mllama's cross-attention mask (a shape
    error on every open question)."""
    adapter = (sentencepiece_adapter if "SentencePiece" in family else more_adapters[family] if family in more_adapters
               else adapters[family])
    prompt, first_marked = adapter.prompt_text(1, Q), []
    for seed in range(4):
        views = [random_image(seed=seed).resize((adapter.input_size, adapter.input_size))]
        gen = adapter.generate(views, Q, max_new_tokens=4)
        if not gen.token_ids:
            continue
        first_marked.append(adapter.tokenizer.convert_ids_to_tokens(gen.token_ids[0]).startswith("▁"))
        lp, ent = adapter.teacher_forced([views, views], prompt, gen.token_ids)
        assert lp.shape == ent.shape == (2, len(gen.token_ids))
        np.testing.assert_allclose(ent[0].numpy(), gen.entropies, atol=1e-4)
        np.testing.assert_allclose(lp[1].numpy(), gen.logprobs, atol=1e-4)
    assert first_marked
    if "SentencePiece" in family:
        assert any(first_marked)  # the case that went wrong is among those checked


def _expected_positions(adapter, family, batch) -> torch.Tensor:
    """The first image's grid tokens (and any image tokens glued right after them), found from the
    token strings alone, independently of the adapter."""
    toks = adapter.tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    image_tok = {"llava": "<image>", "qwen2_vl": "<|image_pad|>", "qwen2_5_vl": "<|image_pad|>"}.get(family, "<image>")
    start = toks.index("<global-img>") + 1 if family in ("idefics3", "smolvlm") else toks.index(image_tok)
    end = start
    while end < len(toks) and toks[end] == image_tok:
        end += 1
    return torch.arange(start, end)


@pytest.mark.parametrize("family", FAMILIES)
def test_image_grid_and_token_positions(adapters, family):
    adapter = adapters[family]
    if family.startswith("qwen"):
        # a non-square view: 200 x 120 px -> smart_resize to 196 x 112 -> 14 x 8 patches -> 7 x 4 tokens
        view = random_image(200, 120)
    else:
        view = random_image().resize((adapter.input_size, adapter.input_size))
    batch = adapter.encode([[view]], [adapter.prompt_text(1, Q, CHOICES)])
    ids = batch["input_ids"][0]
    n_image_tokens = int((ids == adapter.model.config.image_token_id).sum())
    rows, cols = adapter.image_grid(batch)[0]
    pos = adapter.image_token_positions(batch)
    if family == "llava":
        assert (rows, cols) == (8, 8) and n_image_tokens == 64
    elif family.startswith("qwen"):
        assert batch["image_grid_thw"].tolist() == [[1, 8, 14]]
        assert (rows, cols) == (4, 7) and n_image_tokens == 28
        assert adapter.input_size == 224  # sqrt(max_pixels), not the pixel count the processor's size holds
    else:
        assert adapter.input_size == IDEFICS_TILE
        assert (rows, cols) == (4, 4)
        toks = adapter.tokenizer.convert_ids_to_tokens(ids.tolist())
        assert [t for t in toks if t in ROW_COL] == ["<row_1_col_1>", "<row_1_col_2>", "<row_2_col_1>", "<row_2_col_2>"]
        assert n_image_tokens == 5 * IDEFICS_SEQ  # 2 x 2 tiles, then the global image
        assert pos.min() > toks.index("<global-img>")  # the global block, after every tile
        assert int((ids[: pos.min()] == adapter.model.config.image_token_id).sum()) == 4 * IDEFICS_SEQ
    assert torch.equal(pos[: rows * cols].cpu(), _expected_positions(adapter, family, batch))


@pytest.mark.parametrize("family", FAMILIES)
def test_two_images_map_the_first_one(adapters, family):
    """zoom+context prompts carry two images; the relevance grid is the first image's (its global block)."""
    adapter = adapters[family]
    views = [random_image(seed=1).resize((adapter.input_size,) * 2), random_image(seed=2).resize((adapter.input_size,) * 2)]
    batch = adapter.encode([views], [adapter.prompt_text(2, Q, CHOICES)])
    grids = adapter.image_grid(batch)
    assert len(grids) == 2 and grids[0] == grids[1]
    rows, cols = grids[0]
    pos = adapter.image_token_positions(batch)
    assert torch.equal(pos[: rows * cols].cpu(), _expected_positions(adapter, family, batch)[: rows * cols])
    is_image = batch["input_ids"][0] == adapter.model.config.image_token_id
    n_image_tokens = int(is_image.sum())
    assert int(pos[: rows * cols].max()) < int(is_image.nonzero().max())  # not the second image's tokens
    assert n_image_tokens == 2 * rows * cols * (5 if family in ("idefics3", "smolvlm") else 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_peak_lands_in_its_grid_cell(adapters, family, monkeypatch):
    """Fabricated attentions through ``attention_map``: a peak on the k-th grid token -> cell (k // cols, k % cols)."""
    adapter = adapters[family]
    view = random_image(200, 120) if family.startswith("qwen") else random_image().resize((adapter.input_size,) * 2)
    state = {}

    def fake_forward(batch, **kwargs):
        assert kwargs.get("output_attentions")
        seq = batch["input_ids"].shape[1]
        target = int(_expected_positions(adapter, family, batch)[state["k"]])
        att = torch.full((1, 2, seq, seq), 1e-3)
        att[0, :, -1, target] = 1.0
        return SimpleNamespace(attentions=(att,) * 4)

    monkeypatch.setattr(adapter, "_forward", fake_forward)
    batch = adapter.encode([[view]], [adapter.prompt_text(1, Q, CHOICES)])
    rows, cols = adapter.image_grid(batch)[0]
    for k in sorted({0, cols - 1, cols + 2, rows * cols - 1}):
        state["k"] = k
        grid = adapter.attention_map([view], Q, CHOICES)
        assert grid.shape == (rows, cols)
        assert np.unravel_index(grid.argmax(), grid.shape) == (k // cols, k % cols)


def test_attention_to_grid_is_row_major():
    positions = torch.tensor([5, 6, 7, 9, 10, 11])  # 2 x 3 grid, not contiguous in the sequence
    for k in range(6):
        row = torch.zeros(16)
        row[positions[k]] = 1.0
        grid = attention_to_grid(row, positions, 2, 3)
        assert grid.shape == (2, 3) and np.unravel_index(grid.argmax(), grid.shape) == (k // 3, k % 3)
    with pytest.raises(ValueError):
        attention_to_grid(torch.zeros(16), positions[:5], 2, 3)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
def test_black_box_mode_without_eager_attention(family_dirs, family):
    from transformers import AutoModelForImageTextToText

    adapter = _load(family, family_dirs[family], relevance=False)
    assert type(adapter) is EXPECTED[family] and adapter.supports_relevance is False
    # the adapter itself checks: a model built without eager attention gives no attention weights
    model = AutoModelForImageTextToText.from_pretrained(family_dirs[family], attn_implementation="sdpa")
    direct = EXPECTED[family](model, adapter.processor)
    assert direct.supports_relevance is False and type(direct).supports_relevance is True
    assert direct.relevance([random_image().resize((direct.input_size,) * 2)], Q, CHOICES) is None


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision installed: the real Qwen2VLProcessor can be built")
def test_processor_fallback_to_tokenizer_is_a_clear_error(family_dirs):
    """Without torchvision AutoProcessor returns the bare tokenizer for Qwen2-VL; the adapter says why."""
    from spote.loading import load_adapter

    with pytest.raises(TypeError, match="not an image-text processor"):
        load_adapter(family_dirs["qwen2_vl"], device="cpu")


def test_every_adapter_has_the_members_the_search_uses(adapters):
    """``spote.adapters.base.Adapter`` lists what the search and its peers call; each family adapter and the
    endpoint adapter have it, and an object without one of them is not taken for an adapter."""
    from spote.adapters.base import Adapter
    from spote.adapters.endpoint import EndpointAdapter, EndpointConfig

    assert all(isinstance(a, Adapter) for a in adapters.values())
    assert isinstance(EndpointAdapter(EndpointConfig(url="http://127.0.0.1:9/v1", model="m")), Adapter)
    blind = SimpleNamespace(**{k: getattr(adapters["llava"], k) for k in ("name", "input_size", "batch_size",
                                                                           "max_images", "forward_passes")})
    assert not isinstance(blind, Adapter)


@pytest.mark.parametrize("family", [*FAMILIES, "llava, SentencePiece-style tokenizer"])
def test_choices_are_scored_as_the_chat_template_writes_an_answer(adapters, sentencepiece_adapter, family):
    """A choice's tokens are those the template's answer turn puts after the generation prompt: LLaVA-1.5's
    ``"ASSISTANT:"`` is answered ``"ASSISTANT: Yes"``, and a SentencePiece tokenizer reads ``"yes"`` glued
    to the colon as other pieces than the ``"▁yes"`` the model answers with."""
    adapter = sentencepiece_adapter if "SentencePiece" in family else adapters[family]
    tok = adapter.tokenizer
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": Q}]}]
    prompt = adapter.processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    for choice in ("yes", "no"):
        full = adapter.processor.apply_chat_template(
            [*user, {"role": "assistant", "content": [{"type": "text", "text": choice}]}], tokenize=False)
        if not full.startswith(prompt):  # an answer turn that does not continue the generation prompt: no lead
            assert adapter.answer_lead() == ""
            continue
        prompt_ids = tok(prompt, add_special_tokens=False).input_ids
        full_ids = tok(full, add_special_tokens=False).input_ids
        assert full_ids[:len(prompt_ids)] == prompt_ids
        ids = adapter.continuation_ids(prompt, choice)
        assert full_ids[len(prompt_ids):len(prompt_ids) + len(ids)] == ids, tok.convert_ids_to_tokens(ids)
    if "SentencePiece" in family:
        assert tok.convert_ids_to_tokens(adapter.continuation_ids(prompt, "yes")) == ["▁yes"]


def test_any_end_token_of_the_model_ends_the_answer(sentencepiece_adapter, monkeypatch):
    """A generation config may name several end tokens (Llama 3's ``<|eot_id|>`` beside the tokenizer's
    ``<|end_of_text|>``): the one the model stopped on was kept as the answer's last token, its text and
    confidence included. Here the token this random model writes first is made an end token: the answer is
    empty, ended on it, and its end step is the span views are scored on."""
    adapter = sentencepiece_adapter
    view = [random_image(seed=0).resize((adapter.input_size, adapter.input_size))]
    first = adapter.generate(view, Q, max_new_tokens=2).token_ids[0]
    assert first != adapter.tokenizer.eos_token_id
    monkeypatch.setattr(adapter.model.generation_config, "eos_token_id", [adapter.tokenizer.eos_token_id, first])
    gen = adapter.generate(view, Q, max_new_tokens=4)
    assert gen.token_ids == [] and gen.text == "" and gen.end_token_id == first and gen.end_entropy is not None
    res = spote(adapter, random_image(seed=0), Q, None, PolicyConfig(budget=6, exit_entropy=0.0,
                                                                      exit_entropy_per_ln_k=0.0))
    assert res.answer == "" and res.confidence == 0.0


@pytest.mark.parametrize("setting", [{"repetition_penalty": 1.3}, {"no_repeat_ngram_size": 1}, {"min_new_tokens": 3},
                                     {"num_beams": 3}, {"suppress_tokens": "first"}, {"begin_suppress_tokens": "first"},
                                     {"max_time": 1e-6},
                                     {"guidance_scale": 3.0}, {"num_beams": 4, "num_return_sequences": 4},
                                     {"penalty_alpha": 0.6, "top_k": 4}])
def test_a_checkpoints_decoding_settings_do_not_change_what_greedy_reading_reports(sentencepiece_adapter, monkeypatch,
                                                                                    setting):
    """A checkpoint's ``generation_config.json`` may set a repetition penalty (Qwen2-VL-Instruct: 1.05), an
    n-gram ban, a minimum length or beams: the answer was decoded and its log p read through them, while
    teacher forcing reads the model's own log p, so on its own view the answer disagreed with itself. The
    answer is read greedily off the model's own log p whatever the checkpoint sets."""
    adapter = sentencepiece_adapter
    view = [random_image(seed=1).resize((adapter.input_size, adapter.input_size))]
    plain = adapter.generate(view, Q, max_new_tokens=5)
    for key, value in setting.items():  # "first": the token plain greedy decoding writes first, banned
        monkeypatch.setattr(adapter.model.generation_config, key, [plain.token_ids[0]] if value == "first" else value)
    gen = adapter.generate(view, Q, max_new_tokens=5)
    assert gen.token_ids == plain.token_ids and gen.text == plain.text
    np.testing.assert_allclose(gen.logprobs, plain.logprobs, atol=1e-5)
    if gen.token_ids:
        lp, ent = adapter.teacher_forced([view], adapter.prompt_text(1, Q), gen.token_ids)
        np.testing.assert_allclose(lp[0].numpy(), gen.logprobs, atol=1e-4)
        np.testing.assert_allclose(ent[0].numpy(), gen.entropies, atol=1e-4)


def test_an_answer_holding_the_image_placeholder_is_one_clear_error(tmp_path):
    """A model that writes its own ``<image>`` token into an answer (a mis-trained or mismatched checkpoint): the
    views could not be scored with it (the processor's image features no longer matched) and the search failed
    deep in transformers; it is refused by name."""
    from spote.loading import load_adapter

    adapter = load_adapter(save_llava_sentencepiece(tmp_path / "m"), device="cpu")
    view = [random_image(seed=0).resize((adapter.input_size, adapter.input_size))]
    first = adapter.generate(view, Q, max_new_tokens=1).token_ids[0]
    head = adapter.model.get_output_embeddings().weight
    with torch.no_grad():  # the placeholder's output row wins wherever the model's first token would
        head[adapter.model.config.image_token_id] = head[first] * 1.5
    with pytest.raises(ValueError, match="the model wrote its image placeholder '<image>' into its answer"):
        adapter.generate(view, Q, max_new_tokens=4)


def test_choices_one_token_apart_are_read_in_one_pass_after_their_shared_tokens(tmp_path):
    """A Llama tokenizer writes ``" 1"`` as ``"▁"`` then ``"1"``: numeric choices share their first token, and
    were teacher-forced one pass per choice. They are read in one pass, the next-token log p after the shared
    ``"▁"``, which is what teacher forcing each choice gives at its last token."""
    from spote.core import Reader
    from spote.loading import load_adapter

    adapter = load_adapter(save_llava_sentencepiece(tmp_path / "m", split_digits=True), device="cpu")
    choices, question = ["1", "2", "3", "4"], "how many boats ?"
    prompt = adapter.prompt_text(1, question, choices)
    cont = [adapter.continuation_ids(prompt, c) for c in choices]
    assert [adapter.tokenizer.convert_ids_to_tokens(ids) for ids in cont] == [["▁", c] for c in choices]
    assert Reader(adapter, question, choices).cost_per_view() == 1
    views = [[random_image(seed=s).resize((adapter.input_size, adapter.input_size))] for s in (0, 1)]
    before = adapter.forward_passes
    lp = adapter.choice_logprobs(views, question, choices)
    assert adapter.forward_passes - before == 2  # one pass per view set, not one per choice
    last = torch.stack([adapter.teacher_forced(views, prompt, ids)[0][:, -1] for ids in cont], dim=1)
    torch.testing.assert_close(lp, torch.log_softmax(last, -1), atol=1e-4, rtol=0)


def test_a_tokenizer_without_a_pad_token_is_padded_with_its_end_token(tmp_path):
    """Llama's tokenizers ship with ``pad_token: null``: every batch of prompts failed ("Asking to pad but the
    tokenizer does not have a padding token"), and load_adapter blamed the checkpoint's files."""
    import json

    from spote.loading import load_adapter

    folder = save_llava_sentencepiece(tmp_path / "m")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["pad_token"] = None
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    adapter = load_adapter(folder, device="cpu")
    assert adapter.tokenizer.pad_token == adapter.tokenizer.eos_token
    views = [[random_image(seed=s).resize((adapter.input_size, adapter.input_size))] for s in (0, 1)]
    assert adapter.choice_logprobs(views, Q, list(CHOICES)).shape == (2, 2)
    assert spote(adapter, random_image(seed=2), Q, None, PolicyConfig(budget=6)).forward_passes <= 6
    # no end token in the tokenizer either: the pad (else end) id the model's configs name pads
    config["eos_token"] = None
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    bare = load_adapter(folder, device="cpu")
    assert bare.tokenizer.pad_token_id == bare.model.generation_config.pad_token_id is not None
    assert bare.choice_logprobs(views, Q, list(CHOICES)).shape == (2, 2)


def test_generation_leaves_the_models_own_generation_config_as_it_was(sentencepiece_adapter, monkeypatch):
    """Greedy decoding swaps its own config in for the call; a model whose ``generation_config`` was None was
    left holding it (every later ``model.generate`` of the user's capped at a few tokens)."""
    adapter = sentencepiece_adapter
    view = [random_image(seed=0).resize((adapter.input_size, adapter.input_size))]
    own = adapter.model.generation_config
    adapter.generate(view, Q, max_new_tokens=3)
    assert adapter.model.generation_config is own
    monkeypatch.setattr(adapter.model, "generation_config", None)
    adapter.generate(view, Q, max_new_tokens=3)
    assert adapter.model.generation_config is None
