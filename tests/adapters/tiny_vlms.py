"""Tiny random checkpoints of the VLM families, built offline from each family's config.

Each family gets its own word-level tokenizer with the family's special tokens, a chat template
that emits the family's image placeholder, and a 1-layer model built with the real model class.

``real_processor=True`` gives the family's own processor, as a downloaded checkpoint carries it:
``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` and ``SmolVLMProcessor`` with their video
processors and the torchvision image processors. Those need torchvision (constructing the
processor without a video processor crashes in ``ProcessorMixin.check_argument_for_proper_class``,
and ``AutoProcessor`` silently falls back to the bare tokenizer), and SmolVLM needs ``num2words``.
Without them (``real_processor=False``, transformers' PIL image processors):

* Qwen: ``Qwen2VLProcessor`` minus its video sub-processor (the image path, ``image_grid_thw`` and
  the ``<|image_pad|>`` expansion are the real class's); ``AutoProcessor`` cannot build it from the
  saved files, so tests point ``AutoProcessor.from_pretrained`` at it.
* SmolVLM: an ``Idefics3Processor`` (the same image prompt layout), which ``AutoProcessor`` picks
  up from ``processor_config.json``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

Q, CHOICES = "is there a boat ?", ("yes", "no")

# Qwen: 28 px per token (14 px patches merged 2 x 2); at most 8 x 8 tokens, so the adapter renders 224 px views
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 28 * 28 * 4, 28 * 28 * 64
# Idefics3 / SmolVLM: 32 px tiles of 4 px patches -> 8 x 8 patches -> pixel shuffle x2 -> 4 x 4 = 16 tokens;
# views are upscaled to 64 px, so every view is split into 2 x 2 tiles followed by the global image.
IDEFICS_TILE, IDEFICS_PATCH, IDEFICS_SEQ = 32, 4, 16
ROW_COL = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
NORM = dict(image_mean=[0.5] * 3, image_std=[0.25] * 3)  # pixel p in [0, 1] -> (p - 0.5) / 0.25 in [-2, 2]


def random_image(w=200, h=120, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def tokenizer(specials: list[str], bos: str | None, eos: str, pad: str, image_token: str, extra=None):
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


def chat_template(image: str, prefix: str = "", sep: str = " "):
    return (prefix + "{%- for message in messages -%}" + sep + "{{ message['role'] }} :"
            "{%- for c in message['content'] -%}{%- if c['type'] == 'image' %} " + image +
            "{%- elif c['type'] == 'text' %} {{ c['text'] }}{%- endif -%}{%- endfor -%}"
            " {{ eot }}{%- endfor -%}{%- if add_generation_prompt %}" + sep + "assistant :{% endif -%}")


def qwen_processor_class(family: str, real_processor: bool = False):
    """The family's processor class; without ``real_processor``, a subclass that takes no video processor."""
    if family == "qwen2_vl":
        from transformers import Qwen2VLProcessor as Base
    else:
        from transformers import Qwen2_5_VLProcessor as Base
    if real_processor:
        return Base

    class NoVideoProcessor(Base):
        """The family's processor without its video sub-processor (which needs torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return NoVideoProcessor


def build_qwen(family: str, real_processor: bool = False):
    """(model, processor) of a tiny ``qwen2_vl`` or ``qwen2_5_vl`` checkpoint."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    tok = tokenizer(specials, None, "<|im_end|>", "<|endoftext|>", "<|image_pad|>", {"video_token": "<|video_pad|>"})
    template = chat_template("<|vision_start|><|image_pad|><|vision_end|>", sep="<|im_start|> ").replace(
        "{{ eot }}", "<|im_end|>")
    pixels = dict(min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS)
    cls = qwen_processor_class(family, real_processor)
    if real_processor:
        from transformers import Qwen2VLImageProcessor
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        processor = cls(image_processor=Qwen2VLImageProcessor(**pixels, **NORM), tokenizer=tok,
                        video_processor=Qwen2VLVideoProcessor(**pixels, **NORM), chat_template=template)
    else:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        processor = cls(image_processor=Qwen2VLImageProcessorPil(**pixels, **NORM), tokenizer=tok,
                        chat_template=template)
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


def build_idefics(family: str, real_processor: bool = False):
    """(model, processor) of a tiny ``idefics3`` or ``smolvlm`` checkpoint."""
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, SmolVLMConfig,
                              SmolVLMForConditionalGeneration)

    specials = ["<pad>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>",
                *ROW_COL]
    tok = tokenizer(specials, "<|im_start|>", "<end_of_utterance>", "<pad>", "<image>")
    template = chat_template("<image>", prefix="<|im_start|>").replace("{{ eot }}", "<end_of_utterance>")
    sizes = dict(size={"longest_edge": 2 * IDEFICS_TILE}, max_image_size={"longest_edge": IDEFICS_TILE})
    if real_processor and family == "smolvlm":
        from transformers import SmolVLMImageProcessor, SmolVLMProcessor
        from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

        processor = SmolVLMProcessor(
            image_processor=SmolVLMImageProcessor(**sizes, do_image_splitting=True, **NORM), tokenizer=tok,
            video_processor=SmolVLMVideoProcessor(**sizes, **NORM), image_seq_len=IDEFICS_SEQ, chat_template=template)
    else:
        if real_processor:
            from transformers import Idefics3ImageProcessor as ImageProcessor
        else:
            from transformers.models.idefics3.image_processing_pil_idefics3 import \
                Idefics3ImageProcessorPil as ImageProcessor
        processor = Idefics3Processor(image_processor=ImageProcessor(**sizes, do_image_splitting=True, **NORM),
                                      tokenizer=tok, image_seq_len=IDEFICS_SEQ, chat_template=template)
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


def save_checkpoint(family: str, folder, real_processor: bool = False, seed: int = 0):
    """Build the family's tiny model and processor and save both to ``folder`` (safetensors)."""
    import torch

    torch.manual_seed(seed)
    model, processor = (build_qwen if family.startswith("qwen") else build_idefics)(family, real_processor)
    assert model.config.model_type == family
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def trained_bpe(pre_tokenizer, decoder, vocab_size: int, specials: list[str], unk: str | None = None, **trainer_kw):
    """A BPE tokenizer with ``pre_tokenizer`` and ``decoder``, trained on SpotBench's words, left-padded, with
    ``<s>``, ``</s>``, ``<pad>`` and the ``<image>`` placeholder."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    from training.build import build_vocab

    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer, tok.decoder = pre_tokenizer, decoder
    words = build_vocab(True)
    tok.train_from_iterator([" ".join(words[i:i + 8]) for i in range(0, len(words), 8)],
                            trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, **trainer_kw))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token=unk, extra_special_tokens={"image_token": "<image>"}, padding_side="left",
                                   model_max_length=512)


def save_llava_sentencepiece(folder, seed: int = 0, split_digits: bool = False):
    """spote-tiny's architecture (random weights) with a LLaVA-1.5-style tokenizer: BPE pieces over
    SentencePiece's ``▁`` word marker (``Metaspace``, as Llama's), whose decoder drops the first piece's
    marker, so an answer decoded to text and encoded again after the prompt is other tokens.
    ``split_digits``: every digit its own token, as Llama's (``" 1"`` is ``"▁"``, ``"1"``)."""
    from tokenizers import decoders, pre_tokenizers

    from training.build import CHAT_TEMPLATE, build_model, build_processor

    words_first = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    if split_digits:
        words_first = pre_tokenizers.Sequence([words_first, pre_tokenizers.Digits(individual_digits=True)])
    tokenizer = trained_bpe(words_first, decoders.Metaspace(replacement="▁", prepend_scheme="first"), 400,
                            ["<unk>", "<s>", "</s>", "<pad>", "<image>"], unk="<unk>")
    base = build_processor()
    processor = type(base)(image_processor=base.image_processor, tokenizer=tokenizer, patch_size=base.patch_size,
                           vision_feature_select_strategy="default", num_additional_image_tokens=1,
                           chat_template=CHAT_TEMPLATE)
    model = build_model(processor, seed=seed)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def byte_level_tokenizer():
    """A GPT-2-style byte-level BPE tokenizer (word starts marked ``Ġ``) over SpotBench's words."""
    from tokenizers import decoders, pre_tokenizers

    return trained_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(), 600,
                       ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<|image|>"],
                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet())


def save_paligemma(folder, seed: int = 0):
    """A tiny PaliGemma (its processor marks the prompt ``token_type_ids`` 0, the bidirectional prefix; generated
    tokens are 1, the causal suffix) with a chat template added, as a user adds one; weights scaled up from the
    near-uniform default so that where a token may look changes its log p."""
    import torch
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tok = byte_level_tokenizer()
    template = ("{% for message in messages %}{% for c in message['content'] %}{% if c['type'] == 'image' %}"
                "{{ '<image>' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endfor %}")
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32}, **NORM)
    image_processor.image_seq_length = 16
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=template)
    torch.manual_seed(seed)
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32),
        text_config=dict(model_type="gemma", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        image_token_index=processor.image_token_id, projection_dim=32)
    model = PaliGemmaForConditionalGeneration(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape) * 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def save_mllama(folder, seed: int = 0):
    """A tiny Llama-3.2-Vision (Mllama): its processor gives a ``cross_attention_mask`` [B, T, images, tiles]
    that grows with every generated token."""
    import torch
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    tok = byte_level_tokenizer()
    tok.image_token = "<|image|>"
    template = ("{% for message in messages %}{{ message['role'] + ':' }}{% for c in message['content'] %}"
                "{% if c['type'] == 'image' %}{{ '<|image|>' }}{% else %}{{ ' ' + c['text'] }}{% endif %}{% endfor %}"
                "{{ '</s>' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")
    image_processor = MllamaImageProcessorPil(size={"height": 32, "width": 32}, max_image_tiles=1, **NORM)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=template)
    torch.manual_seed(seed)
    config = MllamaConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_global_layers=1, attention_heads=2,
                           intermediate_size=64, vision_output_dim=64, image_size=32, patch_size=8, max_num_tiles=1,
                           intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1]]),
        text_config=dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, cross_attention_layers=[1],
                         max_position_embeddings=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<|image|>"))
    MllamaForConditionalGeneration(config).save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder
