"""Family adapters (LLaVA, Qwen2-VL, Qwen2.5-VL, Idefics3, SmolVLM) on tiny random models built offline.

Each family gets its own word-level tokenizer with the family's special tokens, a chat template
that emits the family's image placeholder, and a 1-layer model from its config; both are saved
with ``save_pretrained`` and loaded back through ``spote.models.load_adapter``.

Two processors cannot be built as-is in a torchvision-free environment (transformers 5.24):
``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` and ``SmolVLMProcessor`` take a video processor,
and the video processors need torchvision (constructing the processor without one crashes in
``ProcessorMixin.check_argument_for_proper_class``; ``AutoProcessor`` silently falls back to the
bare tokenizer). SmolVLMProcessor also needs ``num2words``. So:

* Qwen: the processor is ``Qwen2VLProcessor`` minus its video sub-processor (the image path,
  ``image_grid_thw`` and the ``<|image_pad|>`` expansion are the real class's), and
  ``AutoProcessor.from_pretrained`` is pointed at it while ``load_adapter`` runs.
* SmolVLM: the checkpoint carries an ``Idefics3Processor`` (the same image prompt layout), which
  ``AutoProcessor`` picks up from ``processor_config.json`` unpatched.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from spote.adapters.base import HFAdapter, attention_to_grid
from spote.adapters.idefics3 import Idefics3Adapter
from spote.adapters.llava import LlavaAdapter
from spote.adapters.qwen2vl import Qwen2VLAdapter
from spote.core import PolicyConfig, spote

Q, CHOICES = "is there a boat ?", ("yes", "no")
FAMILIES = ["llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm"]
EXPECTED = {"llava": LlavaAdapter, "qwen2_vl": Qwen2VLAdapter, "qwen2_5_vl": Qwen2VLAdapter,
            "idefics3": Idefics3Adapter, "smolvlm": Idefics3Adapter}
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None

# Idefics3 / SmolVLM: 32 px tiles of 4 px patches -> 8 x 8 patches -> pixel shuffle x2 -> 4 x 4 = 16 tokens;
# views are upscaled to 64 px, so every view is split into 2 x 2 tiles followed by the global image.
IDEFICS_TILE, IDEFICS_PATCH, IDEFICS_SEQ = 32, 4, 16
ROW_COL = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]


def _image(w=200, h=120, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------- builders
def _tokenizer(specials: list[str], bos: str | None, eos: str, pad: str, image_token: str, extra=None):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from training.build import _pretokenizer, build_vocab

    words = list(dict.fromkeys(specials + ["<unk>"] + build_vocab() + ["user", "assistant", "User", "Assistant"]))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = _pretokenizer()
    tok.add_special_tokens(specials)  # matched before pre-tokenisation: placeholders come glued together
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token="<unk>",
        extra_special_tokens={"image_token": image_token, **(extra or {})}, padding_side="left", model_max_length=4096)


def _template(image: str, prefix: str = "", sep: str = " "):
    return (prefix + "{%- for message in messages -%}" + sep + "{{ message['role'] }} :"
            "{%- for c in message['content'] -%}{%- if c['type'] == 'image' %} " + image +
            "{%- elif c['type'] == 'text' %} {{ c['text'] }}{%- endif -%}{%- endfor -%}"
            " {{ eot }}{%- endfor -%}{%- if add_generation_prompt %}" + sep + "assistant :{% endif -%}")


def _qwen_processor_class(family: str):
    if family == "qwen2_vl":
        from transformers import Qwen2VLProcessor as Base
    else:
        from transformers import Qwen2_5_VLProcessor as Base

    class NoVideoProcessor(Base):
        """The family's processor without its video sub-processor (which needs torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return NoVideoProcessor


def _build_qwen(family: str):
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    tok = _tokenizer(specials, None, "<|im_end|>", "<|endoftext|>", "<|image_pad|>", {"video_token": "<|video_pad|>"})
    template = _template("<|vision_start|><|image_pad|><|vision_end|>", sep="<|im_start|> ").replace(
        "{{ eot }}", "<|im_end|>")
    # 28 px per token (14 px patches merged 2 x 2); at most 8 x 8 tokens, so the adapter renders 224 px views
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64,
                                               image_mean=[0.5] * 3, image_std=[0.25] * 3)
    processor = _qwen_processor_class(family)(image_processor=image_processor, tokenizer=tok, chat_template=template)
    ids = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
           "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}
    ids = {key: tok.convert_tokens_to_ids(token) for key, token in ids.items()}
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=None, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0})
    if family == "qwen2_vl":
        vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2)
        return Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision, **ids)), processor
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                  fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    return Qwen2_5_VLForConditionalGeneration(config), processor


def _build_idefics(family: str):
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, SmolVLMConfig,
                              SmolVLMForConditionalGeneration)
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    specials = ["<pad>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>",
                *ROW_COL]
    tok = _tokenizer(specials, "<|im_start|>", "<end_of_utterance>", "<pad>", "<image>")
    template = _template("<image>", prefix="<|im_start|>").replace("{{ eot }}", "<end_of_utterance>")
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * IDEFICS_TILE}, max_image_size={"longest_edge": IDEFICS_TILE}, do_image_splitting=True,
        image_mean=[0.5] * 3, image_std=[0.25] * 3)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=IDEFICS_SEQ,
                                  chat_template=template)
    kwargs = dict(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=IDEFICS_TILE, patch_size=IDEFICS_PATCH),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    if family == "idefics3":
        return Idefics3ForConditionalGeneration(Idefics3Config(**kwargs)), processor
    return SmolVLMForConditionalGeneration(SmolVLMConfig(**kwargs)), processor


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, random_tiny_dir):
    dirs = {"llava": random_tiny_dir}
    for family in FAMILIES[1:]:
        torch.manual_seed(0)
        model, processor = (_build_qwen if family.startswith("qwen") else _build_idefics)(family)
        assert model.config.model_type == family
        d = tmp_path_factory.mktemp(family)
        model.save_pretrained(d, safe_serialization=True)
        processor.save_pretrained(d)
        assert (d / "model.safetensors").exists()
        dirs[family] = d
    return dirs


def _load(family: str, path, **kwargs) -> HFAdapter:
    from spote.loading import load_adapter

    if not family.startswith("qwen"):
        return load_adapter(path, device="cpu", **kwargs)
    import transformers

    cls = _qwen_processor_class(family)
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
    view = _image().resize((adapter.input_size, adapter.input_size))
    lp = adapter.choice_logprobs([[view]] * 2, Q, list(CHOICES))
    assert lp.shape == (2, 2) and torch.isfinite(lp).all()
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(lp[0], lp[1], atol=1e-4, rtol=1e-4)  # same view, same answer

    rel = adapter.relevance([view], Q, list(CHOICES))  # real eager attention of the real model
    batch = adapter.encode([[view]], [adapter.prompt_text(1, Q, CHOICES)])
    assert rel.shape == adapter.image_grid(batch)[0] and np.isfinite(rel).all() and abs(rel.sum() - 1) < 1e-4

    res = spote(adapter, _image(), Q, CHOICES, PolicyConfig(budget=8, exit_entropy_per_ln_k=0.0))
    assert 1 <= res.forward_passes <= 8
    assert res.answer in CHOICES and abs(sum(res.distribution.values()) - 1) < 1e-4

    gen = adapter.generate([view], Q, max_new_tokens=2)  # open-ended path: model.generate with the cache
    assert len(gen.token_ids) == len(gen.entropies) == len(gen.logprobs) <= 2


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
        view = _image(200, 120)
    else:
        view = _image().resize((adapter.input_size, adapter.input_size))
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
    views = [_image(seed=1).resize((adapter.input_size,) * 2), _image(seed=2).resize((adapter.input_size,) * 2)]
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
    view = _image(200, 120) if family.startswith("qwen") else _image().resize((adapter.input_size,) * 2)
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
    assert direct.relevance([_image().resize((direct.input_size,) * 2)], Q, CHOICES) is None


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision installed: the real Qwen2VLProcessor can be built")
def test_processor_fallback_to_tokenizer_is_a_clear_error(family_dirs):
    """Without torchvision AutoProcessor returns the bare tokenizer for Qwen2-VL; the adapter says why."""
    from spote.loading import load_adapter

    with pytest.raises(TypeError, match="not an image-text processor"):
        load_adapter(family_dirs["qwen2_vl"], device="cpu")
