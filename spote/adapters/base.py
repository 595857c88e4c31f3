"""The adapter interface between SPOT-E and a frozen image-text-to-text model.

SPOT-E needs only four things from a VLM: (1) a distribution over given choices for a
batch of views, (2) open-ended generation with per-token entropies, (3) teacher-forced
entropies of a fixed answer on other views, and, optionally, (4) a question-to-image
relevance map from its attention. ``HFAdapter`` does (1)-(3) for any transformers model
with a chat template (black-box mode); family adapters add (4) with their grid layout. ``Adapter``
lists the members the search uses.
An adapter with ``joint_decoding`` also decodes one answer from several view sets at once
(``generate_agreed``); one without it (an endpoint) answers from one view set.

Every model call counts in ``forward_passes``: one per sequence run through the model.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from ..prompt import format_question

GENERIC_QUESTION = "what is in the image ?"
# an open answer's length cap, in tokens: codes, words and short phrases, the answers SPOT-E reads, fit well within it
MAX_NEW_TOKENS = 32


class ViewBatchTooLarge(RuntimeError):
    """A single view set does not fit in accelerator memory, even at batch size 1."""


class PromptTooLong(ValueError):
    """A prompt, images included, longer than the language model's ``max_position_embeddings``.

    ``tokens`` is the prompt's length and ``limit`` the model's; the message names what to shorten.
    """

    def __init__(self, tokens: int, limit: int, what: str = "question"):
        self.tokens, self.limit = tokens, limit
        shorten = "the question or its choices" if what == "choices" else "the question"
        with_ = "its choices and images" if what == "choices" else "its images"
        super().__init__(f"question too long: with {with_} the prompt takes {tokens} tokens, and the model "
                         f"reads at most {limit}; shorten {shorten}")


class UnreadableText(ValueError):
    """A question or choices this model cannot read as asked: one of its markers in the text, choices it
    reads as the same tokens, a question every token of which is unknown to it. The message says which
    and what to do; it starts ``"unreadable question: "``, the reason a job's error row carries."""

    def __init__(self, why: str):
        super().__init__(f"unreadable question: {why}")


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    entropies: list[float]  # nats, one per generated token
    logprobs: list[float]   # log p of each generated token
    end_entropy: float | None = None  # nats, at the step that ended the answer (None: not known, or cut off)
    end_logp: float | None = None     # log p of that end-of-answer token
    cut_off: bool | None = None       # True: the cap on new tokens ended the answer, not the model (None: not known)
    end_token_id: int | None = None   # the token that ended the answer (one of the model's end tokens; None: not known)


@runtime_checkable
class Adapter(Protocol):
    """What SPOT-E's search and its peers use of a model: ``HFAdapter`` (and its family subclasses) and
    ``EndpointAdapter`` have it, and any object with these members can be given as ``model=`` (a model
    outside transformers, a server of another API). Views are PIL images of ``input_size`` x ``input_size``
    pixels; a view set is the images of one prompt (1 to ``max_images``); log p and entropies in nats. An
    adapter with ``joint_decoding`` True also has ``generate_agreed(views_batch, question, max_new_tokens)``:
    one greedy ``Generation`` decoded jointly from several view sets."""

    name: str                 # recorded in results ("spote-tiny", "<model> @ <url>")
    input_size: int           # side, in pixels, of the square views the model is shown
    batch_size: int           # view sets per batched pass
    max_images: int           # images per prompt (1: zoom+context falls back to zoom)
    supports_relevance: bool  # relevance() can return a map (attention is read)
    joint_decoding: bool      # generate_agreed decodes one answer from several view sets at once
    forward_passes: int       # sequences run through the model so far: the unit of cost, never reset
    tokenizer: object         # with eos_token_id and decode(ids) (open answers' tokens)

    def prompt_text(self, n_images: int, question: str, choices=None) -> str:
        """The prompt for ``n_images`` images and the question (raises UnreadableText as ``check_text``)."""

    def continuation_ids(self, prompt: str, answer: str) -> list[int]:
        """The token ids ``answer`` (a choice) adds after ``prompt``."""

    def choice_logprobs(self, views_batch: list[list[Image.Image]], question: str, choices) -> torch.Tensor:
        """log p of each choice given each view set, normalised over the choices: [B, C]."""

    def generate(self, views: list[Image.Image], question: str, max_new_tokens: int = MAX_NEW_TOKENS) -> "Generation":
        """A greedy open answer on one view set, with each token's entropy and log p."""

    def teacher_forced(self, views_batch, prompt: str, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p, entropy) of the fixed span ``ids`` after ``prompt`` on each view set: [B, L] each."""

    def relevance(self, views: list[Image.Image], question: str, choices=None) -> np.ndarray | None:
        """A [rows, cols] map over the first view (sums to 1) of where the question looks; None: none read."""


def entropy_nats(logp: torch.Tensor) -> torch.Tensor:
    """H = -sum p log p (nats) over the last axis of log-probabilities ``logp``; a probability of 0 (log p
    -inf, which a model can give) adds 0, as p log p -> 0, not the NaN of 0 * -inf."""
    terms = logp.exp() * logp
    return -torch.where(torch.isneginf(logp), torch.zeros_like(terms), terms).sum(-1)


def one_token_apart(continuations: list[list[int]]) -> tuple[list[int], list[int]] | None:
    """``(shared, last)`` where every choice's tokens are the same ``shared`` prefix and then one token of its
    own, all different (``[[29871, 29896], [29871, 29906]]``: a Llama tokenizer's ``"▁"`` then ``"1"``, ``"2"``):
    one pass reads them all, the next-token log p after the shared prefix. None where the choices part
    earlier or run longer: each is then teacher-forced, one pass per choice."""
    if not continuations or not all(continuations):
        return None
    shared = continuations[0][:-1]
    if any(len(ids) != len(shared) + 1 or ids[:-1] != shared for ids in continuations):
        return None
    last = [ids[-1] for ids in continuations]
    return (shared, last) if len(set(last)) == len(last) else None


WORDPIECE_PREFIX = "##"  # a WordPiece continuation token's prefix
_UNSET = object()  # an attribute an object did not have


def drop_continuation_prefix(text: str, first_token: str | None, prefix: str | None = WORDPIECE_PREFIX) -> str:
    """An answer starts a word, but a WordPiece detokeniser keeps the continuation prefix of a first
    token that continues one (tokens "##T", "##Q" decode to "##TQ"): drop it ("TQ"). Other text as is."""
    if prefix and first_token and first_token.startswith(prefix) and text.startswith(prefix):
        return text[len(prefix):]
    return text


class MeanOverViews:
    """A ``generate`` logits processor: scores ``[B, V]`` in, ``B`` identical rows out, each the batch's
    mean log p (nats) over the vocabulary, so that greedy decoding picks one token for all rows: the rows
    are views of one question, and the answer is what they agree on."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mean = torch.log_softmax(scores.float(), dim=-1).mean(0, keepdim=True)  # (1/B) sum_b log p_b(token)
        return mean.expand_as(scores).to(scores.dtype)


def size_field(size, key: str):
    """``size[key]`` for a processor size given as a dict or as a ``SizeDict`` (transformers 5)."""
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def uses_eager_attention(model) -> bool:
    """True when the language model runs eager attention, the only kind that returns attention weights."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None) or config
    impl = getattr(text_config, "_attn_implementation", None) or getattr(config, "_attn_implementation", None)
    return impl == "eager"


def attention_to_grid(attn_row: torch.Tensor, positions: torch.Tensor, rows: int, cols: int) -> np.ndarray:
    """Lay the attention one query pays to the image tokens at ``positions`` out on their token grid.

    ``attn_row`` is over the whole sequence; ``positions`` are the image's token positions in
    row-major order, so the k-th image token lands in cell ``(k // cols, k % cols)``.
    """
    positions = torch.as_tensor(positions).flatten()[: rows * cols]
    if positions.numel() != rows * cols:
        raise ValueError(f"expected {rows * cols} image tokens for a {rows} x {cols} grid, found {positions.numel()}")
    att = attn_row.float()[positions.to(attn_row.device)]
    return att.cpu().numpy().reshape(rows, cols)


def with_continuation(batch: dict, ids: torch.Tensor, model=None) -> dict:
    """``batch`` (processor outputs, left-padded prompts) with the token ids ``ids`` ([L]) appended to every
    prompt, as ``model.generate`` would have them after generating ``ids``: ``input_ids`` [B, T] -> [B, T + L],
    and the other per-token inputs grown by the model's own generation bookkeeping
    (``_update_model_kwargs_for_generation``, one token at a time: ``attention_mask`` with ones, Qwen's
    ``mm_token_type_ids`` with text, PaliGemma's ``token_type_ids`` with its causal suffix, Mllama's
    ``cross_attention_mask`` with its last position). Without a model that has it (or where it fails),
    every tensor of shape [B, T, ...] grows by its last position, ``attention_mask`` by ones."""
    n, t = batch["input_ids"].shape
    kwargs = {k: v for k, v in batch.items() if k != "input_ids"}
    update = getattr(model, "_update_model_kwargs_for_generation", None)
    grown = None
    if update is not None:
        try:
            grown = dict(kwargs)
            for _ in range(len(ids)):
                grown = update({}, grown, is_encoder_decoder=False, num_new_tokens=1)
            grown.pop("cache", None)
        except Exception:  # noqa: BLE001 - transformers' private bookkeeping changed: the generic growth below
            grown = None
    if grown is None:
        grown = dict(kwargs)
        for key, value in kwargs.items():
            if isinstance(value, torch.Tensor) and value.dim() >= 2 and tuple(value.shape[:2]) == (n, t):
                tail = (torch.ones_like(value[:, -1:]) if key == "attention_mask" else value[:, -1:])
                grown[key] = torch.cat([value, tail.expand(n, len(ids), *value.shape[2:])], dim=1)
    grown["input_ids"] = torch.cat([batch["input_ids"], ids.to(batch["input_ids"].device,
                                                                 batch["input_ids"].dtype).expand(n, -1)], dim=1)
    return grown


class TextRules:
    """What a model can read as text, from its processor alone (no weights): its markers and its
    vocabulary. ``HFAdapter`` checks every question with it; a job checks its question file with it before
    planning (``spote.loading.text_rules``), so that a choice the model cannot read is one line, not an
    error row per tile or page."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)

    def markers(self) -> tuple[str, ...]:
        """The texts this model reads as its own markers, not words: the tokenizer's special tokens and the
        processor's image placeholders (``<image>``, ``<|image_pad|>``, ...), longest first."""
        if getattr(self, "_markers", None) is None:
            found = set(getattr(self.tokenizer, "all_special_tokens", None) or [])
            found.update(getattr(self.tokenizer, "additional_special_tokens", None) or [])
            for name in ("image_token", "fake_image_token", "global_image_token", "video_token"):
                value = getattr(self.processor, name, None)
                if isinstance(value, str):
                    found.add(value)
            self._markers = tuple(sorted((m for m in found if m and m.strip()), key=len, reverse=True))
        return self._markers

    def check_text(self, question: str, choices=None) -> None:
        """Raise UnreadableText (a ValueError) where the question or a choice holds one of the model's markers
        (``markers``): ``<image>`` in a question asks the processor for an image that is not there, and a
        special token ends or restructures the prompt; or where the model reads the question as unknown tokens
        only, or a choice with any unknown token (it would be scored as any word the model lacks).
        Checked once per question: a search builds its prompt at every step."""
        key = (question, tuple(choices or ()))
        if key == getattr(self, "_text_checked", None):
            return
        for what, text in (("the question", question), *((f"choice {c!r}", c) for c in (choices or ()))):
            for marker in self.markers():
                if marker in text:
                    raise UnreadableText(f"{what} holds {marker!r}, which this model reads as a marker of its own "
                                         "(a special token), not as text; reword it")
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if unk is not None:  # a word-piece vocabulary folds what it lacks (a long word, an emoji) into one <unk>
            def unknown(text: str) -> tuple[int, int]:
                """(tokens, how many of them are <unk>)"""
                ids = self.tokenizer(text, add_special_tokens=False, verbose=False).input_ids
                return len(ids), sum(i == unk for i in ids)

            outside = "words or characters outside its vocabulary"
            n, lacking = unknown(question)
            if n and lacking == n:
                raise UnreadableText(f"the question reads as nothing this model knows: every token of it is "
                                     f"{self.tokenizer.unk_token!r} ({outside}); reword it")
            # a choice is scored as written: one with an <unk> in it scores as any word the model lacks in that
            # place, not as itself ('No.' against 'yes' lost on every page at 0.99999, whatever the page showed)
            for choice in choices or ():
                n, lacking = unknown(choice)
                if lacking:
                    hint = (f" ({choice.lower()!r} it reads)" if choice.lower() != choice and not unknown(choice.lower())[1]
                            else "")
                    what = "every token of it is" if lacking == n else f"{lacking} of its {n} tokens are"
                    raise UnreadableText(f"choice {choice!r} is not read as written: {what} "
                                         f"{self.tokenizer.unk_token!r} ({outside}); reword it{hint}")
        self._text_checked = key


class HFAdapter(TextRules):
    """Black-box adapter for any ``AutoModelForImageTextToText`` with a chat template.

    ``supports_relevance`` is a class default; an instance whose model was not loaded with eager
    attention (``attn_implementation="eager"``) is switched to black-box mode, since other
    attention kernels return no attention weights.
    """

    family = "generic"
    supports_relevance = False
    joint_decoding = True  # generate_agreed: one answer decoded from several view sets at once
    default_input_size = 384

    def __init__(self, model, processor, batch_size: int = 16, input_size: int | None = None, max_images: int = 2):
        if getattr(processor, "image_processor", None) is None:
            raise TypeError(
                f"{type(processor).__name__} is not an image-text processor (no image_processor). AutoProcessor falls "
                "back to the bare tokenizer when the family's processor cannot be built, e.g. Qwen2-VL or SmolVLM "
                "without torchvision (their video processor needs it) or SmolVLM without num2words: "
                "pip install torchvision num2words (the project's models extra).")
        self.model, self.processor = model.eval(), processor
        # what results record as the model; load_adapter names it as it was asked for (a folder, a hub id)
        self.name = getattr(model, "name_or_path", "") or self.family
        if self.supports_relevance and not uses_eager_attention(self.model):
            self.supports_relevance = False  # black-box mode: no attention weights to read
        # Loaded eager for the relevance passes; every other pass runs the faster SDPA kernel.
        self._switch_attention = False
        if self.supports_relevance and hasattr(self.model, "set_attn_implementation"):
            try:
                self.model.set_attn_implementation("sdpa")
                self._switch_attention = True
            except (ValueError, ImportError, NotImplementedError):
                pass  # this family has no SDPA kernel: every pass stays eager (slower, same answers)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            # Llama's tokenizers ship without a pad token; a batch of prompts needs one, and the attention
            # mask keeps the model from reading it, so the end token serves (the tokenizer's, else the id
            # the model's configs name)
            pad = self.tokenizer.eos_token or self._configured_token("pad_token_id", "eos_token_id")
            if pad is not None:
                self.tokenizer.pad_token = pad
        self.batch_size = batch_size
        self.input_size = input_size or self._guess_input_size()
        self.max_images = max_images
        self.forward_passes = 0
        # Only the last positions' logits are read; computing all of them costs batch x sequence x vocabulary
        # (32 x 550 x 152k in bf16 = 5.3 GB for Qwen2.5-VL), more than a 3B model's activations otherwise. On a
        # GPU that memory decides the batch size, so only the positions read are computed there. On the CPU
        # the full logits are small, and computing them keeps answers bit-identical to the CPU benchmark
        # tables (the one-position matmul rounds differently, ~2e-6, which can end a long search elsewhere).
        self._keeps_logits = ("logits_to_keep" in inspect.signature(self.model.forward).parameters
                              and self.device.type == "cuda")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _guess_input_size(self) -> int:
        ip = getattr(self.processor, "image_processor", None)
        size = getattr(ip, "crop_size", None) or getattr(ip, "size", None) or {}
        for key in ("height", "shortest_edge", "longest_edge"):
            value = size_field(size, key)
            if value and 16 <= int(value) <= 2048:  # a side in pixels (Qwen-style processors give pixel counts)
                return int(value)
        return self.default_input_size

    # ------------------------------------------------------------------ prompts
    def prompt_text(self, n_images: int, question: str, choices=None) -> str:
        self.check_text(question, choices)
        content = [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": format_question(question, choices)})
        return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True, tokenize=False)

    def encode(self, views_batch: list[list[Image.Image]], texts: list[str]) -> dict:
        """Processor inputs for ``texts[i]`` with the views ``views_batch[i]`` (one list of images per prompt).

        The images go in nested, one list per prompt: every processor takes that form, while a flat list
        is split across prompts only by some (``SmolVLMProcessor`` reads it as one prompt's images and
        rejects any batch of more than one prompt).

        Raises:
            PromptTooLong: a prompt, images included, longer than the language model's
                ``max_position_embeddings`` ("question too long").
        """
        images = [list(views) for views in views_batch]
        # verbose=False: the length is checked below against the model's positions, in one clear error, not
        # warned about by the tokenizer against its model_max_length
        batch = self.processor(text=texts, images=images, return_tensors="pt", padding=True, verbose=False)
        # PaliGemma's processor returns training labels with every prompt: a frozen model reads, it is not
        # scored against them (the loss would be computed on every pass)
        batch.pop("labels", None)
        return self._check_length({k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch.items()})

    def _check_length(self, batch: dict) -> dict:
        """``batch``; PromptTooLong where its sequences are longer than the language model's positions (past
        the positions it was trained on it reads noise)."""
        text_config = getattr(self.model.config, "text_config", None) or self.model.config
        limit = getattr(text_config, "max_position_embeddings", None)
        if limit and batch["input_ids"].shape[1] > limit:
            raise PromptTooLong(int(batch["input_ids"].shape[1]), int(limit))
        return batch

    def answer_lead(self) -> str:
        """The space the chat template writes between its generation prompt and an assistant's answer: ``" "``
        where the prompt ends ``"ASSISTANT:"`` and the answer turn reads ``"ASSISTANT: Yes"`` (LLaVA-1.5,
        Idefics3), else ``""`` (ChatML's ``"assistant\n"``, or a template that renders no answer turn).
        A tokenizer that marks word starts (SentencePiece's ``▁``, byte-level BPE's ``Ġ``) gives the answer
        other tokens with and without it, and the model answers with it."""
        if getattr(self, "_answer_lead", None) is None:
            lead, mark = "", "zqxwvk"
            for content in ([{"type": "text", "text": mark}], mark):
                try:
                    user = [{"role": "user", "content": [{"type": "text", "text": "q"}]}]
                    prompt = self.processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
                    full = self.processor.apply_chat_template([*user, {"role": "assistant", "content": content}],
                                                              tokenize=False)
                except Exception:  # noqa: BLE001 - a template that cannot render an answer turn: no lead
                    continue
                if full.startswith(prompt) and mark in full[len(prompt):]:
                    lead = full[len(prompt):full.index(mark, len(prompt))]
                    break
            self._answer_lead = " " if lead == " " else ""
        return self._answer_lead

    def continuation_ids(self, prompt: str, answer: str) -> list[int]:
        """The token ids ``answer`` (a choice) adds after ``prompt``, written as the chat template writes an
        answer (after ``answer_lead``).

        Raises:
            ValueError: the answer tokenises to nothing."""
        answer = self.answer_lead() + answer
        full = self.tokenizer(prompt + answer, add_special_tokens=False, verbose=False).input_ids
        base = self.tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids
        ids = (full[len(base):] if full[: len(base)] == base
               else self.tokenizer(answer, add_special_tokens=False, verbose=False).input_ids)
        if not ids:
            raise ValueError(f"choice {answer!r} tokenises to nothing")
        return ids

    # ------------------------------------------------------------------ batching
    def _chunked(self, n: int, fn):
        """Run ``fn(start, stop)`` over chunks of ``batch_size``, halving it on out-of-memory."""
        outs, start = [], 0
        while start < n:
            stop = min(n, start + self.batch_size)
            try:
                outs.append(fn(start, stop))
                start = stop
            except torch.OutOfMemoryError as err:
                if self.batch_size == 1:
                    raise ViewBatchTooLarge(
                        "one view set does not fit in accelerator memory; lower input_size or use a smaller model") from err
                self.batch_size = max(1, self.batch_size // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        return outs

    @torch.inference_mode()
    def _forward(self, batch: dict, last: int | None = None, **kwargs):
        """One batched pass; ``last``: logits only for the last ``last`` positions (where the model allows)."""
        self.forward_passes += int(batch["input_ids"].shape[0])
        if last is not None and self._keeps_logits:
            kwargs["logits_to_keep"] = last
        return self.model(**batch, **kwargs)

    # ------------------------------------------------------------------ closed set
    @torch.inference_mode()
    def choice_logprobs(self, views_batch: list[list[Image.Image]], question: str, choices) -> torch.Tensor:
        """log p(choice | views, question), normalised over the choices: [B, C].

        Single-token choices, or choices that share their tokens but the last (a Llama tokenizer's ``"▁"``
        before each digit): one pass, the next-token logits restricted to the choices (``one_token_apart``).
        Other multi-token choices: teacher-forced, length-normalised log-likelihood of each choice.

        Raises:
            PromptTooLong: the prompt, its choices listed in it (and, teacher-forced, one choice after it)
                and its images, is longer than the model reads; the message names the choices.
        """
        try:
            return self._choice_logprobs(views_batch, question, list(choices))
        except PromptTooLong as err:  # the choices are in the prompt: the user may have to shorten those
            raise PromptTooLong(err.tokens, err.limit, what="choices") from None

    def _choice_logprobs(self, views_batch, question: str, choices: list[str]) -> torch.Tensor:
        n_img = len(views_batch[0])
        prompt = self.prompt_text(n_img, question, choices)
        self._check_distinct(choices)
        cont = [self.continuation_ids(prompt, c) for c in choices]
        if (apart := one_token_apart(cont)) is not None:
            shared, last = apart
            idx = torch.tensor(last)

            def run(a, b):
                batch = self.encode(views_batch[a:b], [prompt] * (b - a))
                if shared:  # the tokens every choice starts with, as the model would have written them
                    batch = self._check_length(with_continuation(batch, torch.tensor(shared), self.model))
                logits = self._forward(batch, last=1).logits[:, -1].float().cpu()
                return torch.log_softmax(logits[:, idx], dim=-1)

            return torch.cat(self._chunked(len(views_batch), run))
        scores = torch.stack([self._sequence_logprob(views_batch, prompt, ids) / len(ids) for ids in cont], dim=1)
        return torch.log_softmax(scores, dim=-1)

    def _check_distinct(self, choices: list[str]) -> None:
        """Raise ValueError for choices the model reads as the same tokens (words its vocabulary lacks all
        read ``<unk>``): they would score the same, and the first of them would always be the answer.
        Checked once per set of choices, not at every batch of views."""
        if tuple(choices) == getattr(self, "_distinct_checked", None):
            return
        seen: dict[tuple, str] = {}
        for choice in choices:
            ids = self.tokenizer(choice, add_special_tokens=False, verbose=False).input_ids
            if (twin := seen.setdefault(tuple(ids), choice)) != choice:
                unk = getattr(self.tokenizer, "unk_token_id", None)
                why = (f" (both read {self.tokenizer.unk_token!r}: words its vocabulary lacks)"
                       if unk is not None and unk in ids else "")
                raise UnreadableText(f"choices {twin!r} and {choice!r} are the same tokens to this model{why}, so "
                                     "it cannot tell them apart; reword one of them")
        self._distinct_checked = tuple(choices)

    def _sequence_logprob(self, views_batch, prompt: str, ids: list[int]) -> torch.Tensor:
        lp, _ = self.teacher_forced(views_batch, prompt, ids)
        return lp.sum(-1)

    # ------------------------------------------------------------------ open ended
    @torch.inference_mode()
    def teacher_forced(self, views_batch, prompt: str, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log p and entropy (nats) of the fixed continuation ``ids`` on each view set: [B, L] each.

        The ids follow the encoded prompt as they followed it in ``generate``: text decoded and encoded
        again is not the same tokens for every tokenizer (a SentencePiece ``"▁Paris"`` decodes to
        ``"Paris"``, which after ``"ASSISTANT:"`` encodes as other pieces), and the positions would no
        longer be the answer's.

        Raises:
            PromptTooLong: the prompt, its images and ``ids`` are longer than the model reads.
        """
        target = torch.tensor(ids)
        L = len(ids)

        def run(a, b):
            batch = self._check_length(with_continuation(self.encode(views_batch[a:b], [prompt] * (b - a)), target,
                                                         self.model))
            logits = self._forward(batch, last=L + 1).logits[:, -L - 1:-1].float().cpu()
            logp = torch.log_softmax(logits, dim=-1)
            tok_lp = logp.gather(-1, target.view(1, L, 1).expand(logp.shape[0], L, 1)).squeeze(-1)
            return tok_lp, entropy_nats(logp)

        parts = self._chunked(len(views_batch), run)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @torch.inference_mode()
    def generate(self, views: list[Image.Image], question: str, max_new_tokens: int = MAX_NEW_TOKENS) -> Generation:
        """Greedy answer on one view set, at most ``max_new_tokens`` tokens, with each token's entropy (nats)
        and log p."""
        return self.generate_agreed([views], question, max_new_tokens)

    @torch.inference_mode()
    def generate_agreed(self, views_batch: list[list[Image.Image]], question: str,
                        max_new_tokens: int = MAX_NEW_TOKENS) -> Generation:
        """One greedy answer read jointly off several view sets (e.g. one window shifted by a few pixels).

        At each step the next token is the argmax of the mean log p over the ``B`` view sets (a product of
        experts, renormalised): a token every view finds likely beats one a single view is sure of. The
        returned entropies (nats) and log p are those of that mean distribution; with ``B = 1`` it is plain
        greedy decoding. Costs ``B`` forward passes (one generation per view set, sharing each step's token).
        The answer stops at any of the model's end tokens (``end_token_ids``; ``end_token_id`` says which) or
        after ``max_new_tokens`` tokens (then ``cut_off`` is True). Decoded under ``_greedy_config``: the
        checkpoint's own decoding settings are set aside.
        The ``B`` view sets run as one batch, whatever ``batch_size`` is: rows of one decoding cannot be split.

        Raises:
            ValueError: no view sets, or view sets with different numbers of images, or none, or more
                than ``max_images``.
            ViewBatchTooLarge: the ``B`` view sets do not fit in accelerator memory together.
        """
        from transformers import LogitsProcessorList

        if not views_batch or len({len(v) for v in views_batch}) != 1 or not 1 <= len(views_batch[0]) <= self.max_images:
            raise ValueError(f"generate_agreed needs one or more view sets, each with the same number of images "
                             f"(1 to {self.max_images})")
        prompt = self.prompt_text(len(views_batch[0]), question)
        batch = self.encode(views_batch, [prompt] * len(views_batch))
        ends = self.end_token_ids()
        self.forward_passes += len(views_batch)
        greedy, own = self._greedy_config(max_new_tokens, ends), self.model.__dict__.get("generation_config", _UNSET)
        try:
            # generate() fills every field left at its default from the model's own config: it reads the
            # greedy one for the call (searches on one adapter run one at a time: baselines.adapter_lock)
            self.model.generation_config = greedy
            out = self.model.generate(**batch, generation_config=greedy,
                                      logits_processor=LogitsProcessorList([MeanOverViews()] if len(views_batch) > 1 else []))
        except torch.OutOfMemoryError as err:
            raise ViewBatchTooLarge(f"{len(views_batch)} view sets decoded jointly do not fit in accelerator memory; "
                                    "lower answer_grid (1: one view set) or input_size") from err
        finally:  # the model's own, whatever it was (None, or none of its own)
            if own is _UNSET:
                del self.model.generation_config
            else:
                self.model.generation_config = own
        ids, ents, lps, end = [], [], [], (None, None, None)
        placeholders = self._image_placeholder_ids()
        for step, logits in enumerate(out.logits):  # the model's own scores, as teacher forcing reads them
            tok = int(out.sequences[0, batch["input_ids"].shape[1] + step])
            logp = torch.log_softmax(torch.log_softmax(logits.float(), -1).mean(0), -1)  # one view set: its own
            entropy = float(entropy_nats(logp))
            if tok in ends:
                end = (entropy, float(logp[tok]), tok)
                break
            if tok in placeholders:  # it stands for image features: no other view can be read with it in the answer
                raise ValueError(f"the model wrote its image placeholder {self.tokenizer.convert_ids_to_tokens(tok)!r} "
                                 "into its answer, which cannot be read on other views; is the tokenizer the model's own?")
            ids.append(tok)
            ents.append(entropy)
            lps.append(float(logp[tok]))
        cut_off = end[0] is None and len(out.logits) >= max_new_tokens
        return Generation(self.decode_answer(ids), ids, ents, lps, end[0], end[1], cut_off=cut_off, end_token_id=end[2])

    def _greedy_config(self, max_new_tokens: int, ends: list[int]):
        """A generation config of plain greedy decoding and nothing else: a checkpoint's
        ``generation_config.json`` may set a repetition penalty (Qwen2-VL-Instruct: 1.05), a minimum length,
        banned tokens, beams, a time limit, guidance, which would make the answer other than the argmax of
        the model's own log p, the log p teacher forcing scores every view by. Only its token ids are kept."""
        from transformers import GenerationConfig

        own = getattr(self.model, "generation_config", None)
        pad = getattr(own, "pad_token_id", None)
        pad = pad if pad is not None else (self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                                           else ends[0])
        return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=ends,
                                pad_token_id=pad, bos_token_id=getattr(own, "bos_token_id", None),
                                output_logits=True, return_dict_in_generate=True)

    def _configured_token(self, *keys: str) -> str | None:
        """The first token the model's generation config or config (or its text config) names under ``keys``
        (an id, or the first of a list), as text; None where none does."""
        config = self.model.config
        for source in (getattr(self.model, "generation_config", None), config, getattr(config, "text_config", None)):
            for key in keys:
                value = getattr(source, key, None)
                value = value[0] if isinstance(value, (list, tuple)) and value else value
                if isinstance(value, int) and 0 <= value < len(self.tokenizer):
                    return self.tokenizer.convert_ids_to_tokens(value)
        return None

    def _image_placeholder_ids(self) -> set[int]:
        """The token ids that stand for image features in a prompt (``<image>``, ``<|image_pad|>``)."""
        config = self.model.config
        found = {getattr(config, "image_token_id", None), getattr(config, "image_token_index", None),
                 getattr(self.processor, "image_token_id", None)}
        return {int(i) for i in found if isinstance(i, int)}

    def end_token_ids(self) -> list[int]:
        """The ids that end an answer: the tokenizer's end token and every one the model's generation config
        names (an int or a list: Llama 3's ``<|eot_id|>`` beside ``<|end_of_text|>``, Qwen's ``<|im_end|>``
        beside ``<|endoftext|>``), tokenizer's first."""
        found = [self.tokenizer.eos_token_id]
        config = getattr(self.model, "generation_config", None)
        extra = getattr(config, "eos_token_id", None)
        found += list(extra) if isinstance(extra, (list, tuple)) else [extra]
        return list(dict.fromkeys(int(i) for i in found if i is not None))

    def decode_answer(self, ids: list[int]) -> str:
        """The answer's text, without a WordPiece decoder's prefix on its first token ("##T", "##Q" -> "TQ")."""
        from tokenizers import decoders

        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        decoder = getattr(getattr(self.tokenizer, "backend_tokenizer", None), "decoder", None)
        if not ids or not isinstance(decoder, decoders.WordPiece):
            return text
        return drop_continuation_prefix(text, self.tokenizer.convert_ids_to_tokens(ids[0]), decoder.prefix)

    # ------------------------------------------------------------------ relevance
    def image_grid(self, batch: dict) -> list[tuple[int, int]]:
        """(rows, cols) of each image's token grid in the batch, in order; family adapters override this.

        Raises:
            RuntimeError: this adapter reads no attention (black-box mode)."""
        raise RuntimeError(f"{self.family} adapter runs in black-box mode (no relevance map)")

    def image_token_positions(self, batch: dict) -> torch.Tensor:
        image_token_id = getattr(self.model.config, "image_token_id", None)
        if image_token_id is None:
            image_token_id = self.model.config.image_token_index
        return (batch["input_ids"][0] == image_token_id).nonzero().flatten()

    @contextmanager
    def _attention_weights(self):
        """Eager attention for the duration of a relevance pass (only eager returns the weights)."""
        if not self._switch_attention:
            yield
            return
        self.model.set_attn_implementation("eager")
        try:
            yield
        finally:
            self.model.set_attn_implementation("sdpa")

    @torch.inference_mode()
    def attention_map(self, views: list[Image.Image], question: str, choices=None) -> np.ndarray:
        """Answer-position attention to the first image's tokens, mean over heads and the later layers."""
        batch = self.encode([views], [self.prompt_text(len(views), question, choices)])
        with self._attention_weights():
            out = self._forward(batch, output_attentions=True)
        if not out.attentions or out.attentions[0] is None:
            raise RuntimeError("the model returned no attention weights; load it with attn_implementation='eager'")
        rows, cols = self.image_grid(batch)[0]
        layers = out.attentions[len(out.attentions) // 2:]
        attn_row = torch.stack([a[0, :, -1, :].float() for a in layers]).mean((0, 1))
        return attention_to_grid(attn_row, self.image_token_positions(batch), rows, cols)

    def relevance(self, views: list[Image.Image], question: str, choices=None) -> np.ndarray | None:
        """Relative attention (ViCrop): the question's map over a generic question's, so sinks cancel."""
        if not self.supports_relevance:
            return None
        a_q = self.attention_map(views, question, choices)
        a_g = self.attention_map(views, GENERIC_QUESTION)
        rel = a_q / (a_g + 1e-6)
        return rel / rel.sum()
