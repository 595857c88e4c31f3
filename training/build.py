"""Build ``spote-tiny``: a real ``LlavaForConditionalGeneration`` with its own tokenizer and processor.

A small CLIP vision tower (64 px input, 8 px patches: an 8 x 8 token grid) feeds a small
Llama-style language model. The word-level tokenizer covers SpotBench's questions and
answers. Everything is saved with ``save_pretrained`` (safetensors) and loads back through
``AutoProcessor`` / ``AutoModelForImageTextToText`` like any Hugging Face VLM.

With ``open_items`` the tokenizer also reads SpotBench's open questions and spells codes one
character per token: a WordPiece vocabulary whose words are the closed vocabulary's (same ids,
same order) plus the open questions' words, every code character as a word ("K") and as a
continuation ("##7"), so "K7" is ["K", "##7"] and decodes back to "K7".
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from spote.bench.scenes import CODE_ALPHABET, FIELD_NAMES, OPEN_QUESTION, TASKS
from spote.prompt import format_question

IMAGE_SIZE = 64
PATCH_SIZE = 8
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
TEMPLATE_WORDS = ["USER", "ASSISTANT", ":", "?", ",", ".", "Choices", "the", "is", "what", "a", "there", "in", "of"]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}USER :"
    "{%- for c in message['content'] -%}{%- if c['type'] == 'image' %} <image>{%- elif c['type'] == 'text' %} {{ c['text'] }}{%- endif -%}{%- endfor -%}"
    "{%- elif message['role'] == 'assistant' %} ASSISTANT : "
    "{{ message['content'] if message['content'] is string else message['content'][0]['text'] }}</s>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %} ASSISTANT :{% endif -%}"
)


def _pretokenizer():
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])


CONTINUATION = "##"  # WordPiece's prefix of a token inside a word


def build_vocab(open_items: bool = False) -> list[str]:
    """The closed vocabulary; with ``open_items`` the open questions' words and the code characters after it."""
    words = list(SPECIALS) + list(TEMPLATE_WORDS)
    pre = _pretokenizer()
    texts = [t for _, _, question, choices in TASKS for t in (format_question(question, choices), *choices)]
    if open_items:
        texts += [OPEN_QUESTION.format(name) for name in FIELD_NAMES] + list(CODE_ALPHABET)
    for text in texts:
        for w, _ in pre.pre_tokenize_str(text):
            if w not in words:
                words.append(w)
    if open_items:
        words += [CONTINUATION + c for c in CODE_ALPHABET]
    return words


def code_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Ids of the code characters (CODE_ALPHABET order) as a code's first token and as a continuation."""
    first = tokenizer.convert_tokens_to_ids(list(CODE_ALPHABET))
    rest = tokenizer.convert_tokens_to_ids([CONTINUATION + c for c in CODE_ALPHABET])
    if tokenizer.unk_token_id in first + rest:
        raise ValueError("this tokenizer does not spell codes (built without open_items)")
    return first, rest


def build_processor(open_items: bool = False) -> LlavaProcessor:
    vocab = {w: i for i, w in enumerate(build_vocab(open_items))}
    if open_items:
        tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", continuing_subword_prefix=CONTINUATION,
                                         max_input_chars_per_word=100))
        tok.decoder = decoders.WordPiece(prefix=CONTINUATION, cleanup=False)
    else:
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = _pretokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left", model_max_length=512,
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25],
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )


TOWER_LAYERS = 4  # the vision tower's encoder layers of a spote-tiny built from scratch (the recipe's)


def build_model(processor: LlavaProcessor, seed: int = 0, tower_layers: int = TOWER_LAYERS) -> LlavaForConditionalGeneration:
    """A fresh spote-tiny (random weights, ``seed``) for ``processor``'s vocabulary; ``tower_layers`` is the
    CLIP tower's depth (``TOWER_LAYERS`` for the recipe)."""
    import torch

    torch.manual_seed(seed)
    tok = processor.tokenizer
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=128, intermediate_size=256, num_hidden_layers=tower_layers, num_attention_heads=4,
            image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=128,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tok), hidden_size=128, intermediate_size=320, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            tie_word_embeddings=True,
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        pad_token_id=tok.pad_token_id,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model
