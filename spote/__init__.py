"""SPOT-E: test-time visual spotlights for frozen vision-language models (arXiv 2606.20244).

    import spote
    result = spote.answer("harbour.jpg", "Is there a boat?", choices=["yes", "no"])
    print(result.answer, result.confidence, result.evidence_box)

The public API is what this module exports; everything else is an implementation detail.
Heavy modules (torch, transformers) load on first use, so ``import spote`` stays cheap.
"""

from __future__ import annotations

import importlib
import numbers
import os
import threading
import time
from typing import TYPE_CHECKING, Any

__version__ = "0.3.0.dev0"  # as pyproject.toml: the changes since the 0.2.0 release (CHANGELOG.md, Unreleased)
__all__ = ["answer", "load_adapter", "PolicyConfig", "SpotResult", "BadImage", "__version__"]

# public name -> the module that defines it
_EXPORTS = {
    "load_adapter": "spote.loading",
    "PolicyConfig": "spote.core",
    "SpotResult": "spote.core",
    "BadImage": "spote.images",
}

if TYPE_CHECKING:
    from .core import PolicyConfig, SpotResult
    from .images import BadImage
    from .loading import load_adapter

_ADAPTERS: dict[tuple, Any] = {}  # models loaded by ``answer``, kept so that a second call does not reload
_ADAPTERS_LOCK = threading.Lock()  # first calls from several threads load one model, one at a time


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'spote' has no attribute {name!r}")


def _read_image(image, storage_options: dict | None, max_pixels: int | None = None):
    """A path, fsspec URI (``s3://``, ``https://``, ...), bytes, PIL image or HxWxC array as an RGB image.

    Raises:
        BadImage: what ``load_image`` refuses; a URI naming no object, or a folder (a prefix); a store that
            cannot be read (no credentials, unreachable, options its filesystem does not take), in one line.
    """
    from .images import MAX_STREAM_BYTES, BadImage, load_image, read_at_most
    from .uris import is_remote, local_path, lower_scheme, redact_uri, redact_urls

    if isinstance(image, str) and is_remote(image):
        import fsspec

        image = lower_scheme(image)
        uri = redact_uri(image)  # as messages name it: a presigned URL's signature, a password, are not shown
        t0 = time.monotonic()
        try:
            fs, path = fsspec.core.url_to_fs(image, **_http_timeouts(image, storage_options))
            with fs.open(path, "rb") as f:
                image = read_at_most(f)  # a body without an end is no image: not into memory
            if len(image) > MAX_STREAM_BYTES:
                raise BadImage(f"{uri}: more than {MAX_STREAM_BYTES:,} bytes; not an image to read (save a large "
                               "image to a file)")
            if not image and fs.isdir(path):  # S3 keeps a "folder" as a zero-byte object or as keys under it
                raise IsADirectoryError(path)
        except FileNotFoundError as err:
            cause = err.__cause__  # fsspec's HTTP filesystem says "not found" for a host it cannot reach too
            if cause is None or isinstance(cause, FileNotFoundError) or getattr(cause, "status", None) in (404, 410):
                raise BadImage(f"no such object: {uri}") from err
            if isinstance(cause, TimeoutError):
                raise BadImage(f"cannot read {uri}: {_timed_out(time.monotonic() - t0)}") from err
            first = redact_urls((str(cause).strip().splitlines() or [""])[0])
            raise BadImage(f"cannot read {uri}: {type(cause).__name__}: {first}".rstrip(": ")) from err
        except IsADirectoryError as err:
            raise BadImage(f"{uri} is a folder (a prefix), not an image object") from err
        except TimeoutError as err:  # asyncio's and fsspec's (FSTimeoutError) timeouts, which say nothing themselves
            raise BadImage(f"cannot read {uri}: {_timed_out(time.monotonic() - t0)}") from err
        except BadImage:
            raise
        except Exception as err:  # no credentials, an unreachable store, options its filesystem does not take
            first = redact_urls((str(err).strip().splitlines() or [""])[0])
            raise BadImage(f"cannot read {uri}: {type(err).__name__}: {first}".rstrip(": ")) from err
    elif isinstance(image, (str, os.PathLike)):
        try:
            image = local_path(os.fspath(image))
        except (ValueError, TypeError) as err:
            raise BadImage(str(err)) from None
        if image.startswith("~") and not os.path.exists(image):  # as model= and the jobs' manifests read it
            image = os.path.expanduser(image)
    return load_image(image) if max_pixels is None else load_image(image, max_pixels)


HTTP_READ_SECONDS = 60.0
"""How long ``https://`` reads wait for the next bytes before they fail (aiohttp waits 5 minutes in all by
default, and a download that takes longer than that fails even while bytes arrive)."""
HTTP_TOTAL_SECONDS = 1800.0
"""How long an ``https://`` image may take in all (a server dripping a byte every few seconds never trips
``HTTP_READ_SECONDS``): 30 minutes, a gigabyte at 0.6 MB/s."""


def _timed_out(seconds: float) -> str:
    """What an HTTP(S) read that timed out after ``seconds`` met: the whole read past ``HTTP_TOTAL_SECONDS``,
    or no bytes for ``HTTP_READ_SECONDS`` (the errors do not say which)."""
    if seconds >= HTTP_TOTAL_SECONDS:
        return f"no whole image within {HTTP_TOTAL_SECONDS:g} s (the server sends too slowly)"
    return f"the server sent nothing for {HTTP_READ_SECONDS:g} s"


def _http_timeouts(uri: str, storage_options: dict | None) -> dict:
    """``storage_options`` for ``uri``, with an HTTP(S) read timeout of ``HTTP_READ_SECONDS`` between bytes and
    30 s to connect, unless the options give aiohttp's ``timeout`` themselves."""
    options = dict(storage_options or {})
    client = options.get("client_kwargs")
    if uri.split(":", 1)[0].lower() not in ("http", "https") or not isinstance(client or {}, dict) or \
            "timeout" in (client or {}):
        return options
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=HTTP_TOTAL_SECONDS, sock_connect=30, sock_read=HTTP_READ_SECONDS)
    options["client_kwargs"] = {**(client or {}), "timeout": timeout}
    return options


def _digest(options: dict | None) -> str:
    """A SHA-256 of ``options`` (JSON, keys sorted; what JSON cannot hold by its ``repr``)."""
    import hashlib
    import json

    text = json.dumps(options or {}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_text_arguments(question, choices) -> None:
    """Raise TypeError for a question or a choice that is not text: ``str()`` would turn ``b"what"`` into the
    question ``"b'what'"`` and ``None`` into the choice ``"None"``, and the model would answer those."""
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    if choices is None or isinstance(choices, str):
        return
    if not isinstance(choices, (list, tuple)):
        raise TypeError(f"choices must be a list or tuple of str, a comma-separated str or None, "
                        f"got {type(choices).__name__}")
    for i, c in enumerate(choices):
        if not isinstance(c, str):
            raise TypeError(f"each choice must be a str, got {type(c).__name__} at choices[{i}]")


def answer(image, question: str, choices=None, *, model=None, revision: str | None = None,
           trust_remote_code: bool = False, endpoint: str | None = None, endpoint_options: dict | None = None,
           method: str = "spote",
           storage_options: dict | None = None, max_pixels: int | None = None, **policy_overrides) -> "SpotResult":
    """Answer ``question`` about ``image`` with SPOT-E, the model frozen.

    Args:
        image: a file path, an fsspec URI (``s3://...``, ``https://...``), encoded bytes, a binary file object,
            a PIL image, or an HxW / HxWxC numpy array (C = 1, 2, 3, 4: grey, grey and alpha, RGB, RGBA). Any
            size: views are rendered from the full-resolution pixels. High-bit-depth and float arrays are
            stretched to 8 bits.
        question: the question, a non-empty ``str``.
        choices: a closed answer set (a list or tuple of ``str``, or ``"a,b,c"``; at least two, distinct), or
            None for an open answer: the model writes it, at most 32 tokens (``spote.adapters.base.MAX_NEW_TOKENS``;
            through an endpoint its ``max_new_tokens``, default 32). A longer answer is cut there:
            ``SpotResult.answer_cut_off`` is then True.
        model: whatever ``load_adapter`` takes (None for the shipped ``spote-tiny``, a model folder, an
            ``s3://`` checkpoint, a Hugging Face hub id such as ``"Qwen/Qwen2.5-VL-3B-Instruct"``), or an adapter
            already loaded by ``load_adapter`` (no reload). With ``endpoint``: the model name the server serves.
        revision: a hub id's branch, tag or commit (default ``main``).
        trust_remote_code: run the Python code the checkpoint ships (its config's ``auto_map``), for a model
            transformers has no class of its own for; off unless asked (only for code you have read).
        endpoint: base URL of an OpenAI-compatible chat-completions server with log-probabilities
            (``"http://127.0.0.1:8000/v1"``): SPOT-E runs in black-box mode through it. The API key is read from
            ``OPENAI_API_KEY`` (or ``endpoint_options={"api_key_env": "NAME"}``).
        endpoint_options: ``spote.adapters.endpoint.EndpointConfig`` fields: ``concurrency``, ``timeout_s``,
            ``max_retries``, ``max_images``, ``view_size``, ``top_logprobs``, ``image_format``, ...
        method: ``"spote"`` or a peer for comparison (``spote.baselines``): ``baseline``, ``api``, ``vicrop``,
            ``grid``, ``naive_entropy``, ``random``, ``zoomeye``, ``scaffold``.
        storage_options: fsspec options for a remote image or checkpoint (e.g. ``{"endpoint_url": ...}``).
        max_pixels: the decompression-bomb guard, in pixels (default ``spote.images.DEFAULT_MAX_PIXELS``, 40
            million): an image over it is refused as ``BadImage``; raise it for a 48-megapixel photo.
        **policy_overrides: ``PolicyConfig`` fields, e.g. ``budget=32``, ``mode="zoom"``. A ``budget`` (forward
            passes) holds every search method to it, as ``spote ask --budget`` does; without one each runs at
            its own defaults (spote's ``PolicyConfig.budget``, 96; grid reads every window of its grid, zoomeye
            up to 256 passes, scaffold two steps of 4). The whole image is read whatever it costs (one pass per
            choice where choices span several tokens); ``api`` and ``vicrop`` cost 1-3 passes whatever the budget (1 in black-box mode).

    Returns:
        SpotResult (its docstring has every field): ``answer``; ``confidence`` (how sure the model is of the
        answer, 0-1, 6 significant digits: a closed set's probability; for an open answer the least of its
        ``token_confidences``, 0 only for an empty answer); ``entropy_trace`` (answer entropy in nats, the whole image first, then after each step);
        ``evidence_box`` ([x0, y0, x1, y1] in pixels of the original image of the window the answer was read on,
        None when the whole image answered; for an open answer the window where the best views agree, centred
        on the salient thing there, the answer decoded from shifted and rescaled copies of it);
        ``forward_passes``; ``seconds``; for an open answer also ``token_confidences`` (the probability of each
        answer token, in order), ``answer_token_ids`` (the model's token ids, one per token confidence),
        ``answer_cut_off`` (True where the token cap ended the answer) and, after a search that beat the whole
        image, ``reward_standout`` (a robust z of how far the best view's reward stands out of the rest; below
        ``standout_z`` the whole image answers).

    Raises:
        BadImage: the image cannot be read (missing, empty, corrupt, over the pixel cap, bad array shape).
        TypeError: ``trust_remote_code`` is not a bool; ``question`` is not a ``str``; ``choices`` is not None, a
            ``str``, a list or a tuple, or one
            of them is not a ``str``; ``model`` is neither a name nor an adapter.
        ValueError: empty question, fewer than two, empty or duplicate choices, an unknown policy field or
            method, a policy value out of range.
        spote.adapters.base.PromptTooLong: a ``ValueError``: the question (or, closed set, its choices), with
            the images, is longer than the model reads.
        spote.adapters.base.UnreadableText: a ``ValueError``: this model cannot read the question or choices
            as asked (one of its markers in the text, choices it reads as the same tokens, a question of
            tokens all unknown to it).
        spote.loading.ModelNotFound: the model cannot be found (a ``FileNotFoundError``; one-line message).
        spote.adapters.endpoint.EndpointError: an endpoint request failed after its retries.
        spote.adapters.base.ViewBatchTooLarge: a ``RuntimeError``: one view set does not fit in accelerator
            memory even alone (a smaller ``view_size``, or a larger device).
    """
    from dataclasses import fields

    from .baselines import ANSWER_METHODS, held_to_budget, run_method
    from .adapters.base import Adapter
    from .core import PolicyConfig
    from .images import ImageTooLarge, check_choices, check_question
    from .loading import load_adapter

    _check_text_arguments(question, choices)
    q = check_question(question)
    ch = check_choices(choices)
    known = {f.name for f in fields(PolicyConfig)}
    unknown = sorted(set(policy_overrides) - known)
    if unknown:
        raise ValueError(f"unknown policy fields {unknown}; known: {sorted(known)}")
    if method not in ANSWER_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(ANSWER_METHODS)}")
    cfg = PolicyConfig(**policy_overrides)
    if not isinstance(trust_remote_code, bool):  # "false" is a true value: the checkpoint's code would run
        raise TypeError(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    if endpoint_options and not endpoint:
        raise ValueError("endpoint_options apply to an endpoint, and no endpoint is given")
    if isinstance(model, str) and not model.strip():
        raise ValueError("model is an empty name; give None for the shipped spote-tiny, or a folder, URI or hub id")
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral)
                                   or max_pixels < 1):
        raise ValueError(f"max_pixels must be a whole number of pixels >= 1, got {max_pixels!r}")
    try:
        img = _read_image(image, storage_options, None if max_pixels is None else int(max_pixels))
    except ImageTooLarge as err:  # the guard is the caller's to raise, as `spote ask --max-pixels` says
        raise ImageTooLarge(f"{err}, or raise max_pixels=") from None
    if model is None or isinstance(model, str) or hasattr(model, "__fspath__"):
        # every argument that can change what loads: the same s3:// name on another store (storage_options)
        # is another model; options can hold secrets, so the key keeps only a hash of them
        from .uris import is_remote

        remote = model is not None and is_remote(str(model))
        # a folder by its real path: "m" in another working folder is another model
        name = (str(model) if model is None or endpoint or remote or not os.path.isdir(model)
                else os.path.realpath(model))
        key = (name if model is not None else None, revision, endpoint, _digest(endpoint_options),
               _digest(storage_options) if remote else None, cfg.use_relevance, trust_remote_code)
        with _ADAPTERS_LOCK:
            if key not in _ADAPTERS:
                _ADAPTERS[key] = load_adapter(model, revision=revision, endpoint=endpoint,
                                              endpoint_options=endpoint_options, relevance=cfg.use_relevance,
                                              storage_options=storage_options,
                                              trust_remote_code=trust_remote_code)
            adapter = _ADAPTERS[key]
    elif isinstance(model, Adapter):  # an adapter load_adapter returned, or any object with its members
        if getattr(model, "joint_decoding", False) and not callable(getattr(model, "generate_agreed", None)):
            raise TypeError(f"model ({type(model).__name__}) says joint_decoding but has no generate_agreed: give it "
                            "one, or set joint_decoding = False")
        if revision or endpoint or endpoint_options or trust_remote_code:
            raise ValueError("revision, trust_remote_code, endpoint and endpoint_options choose a model to load; "
                             "model is one already loaded: give them to load_adapter instead")
        adapter = model
    else:
        members = {m for m in dir(Adapter) if not m.startswith("_")} | set(getattr(Adapter, "__annotations__", {}))
        lacking = sorted(m for m in members if not hasattr(model, m))
        hint = ""
        if hasattr(model, "generate") and hasattr(model, "config"):  # a transformers model itself
            hint = ("; a transformers model in memory is wrapped with spote.adapters.base.HFAdapter(model, processor) "
                    "(or the family's adapter), or loaded from its folder with spote.load_adapter")
        elif len(lacking) < len(members):  # meant as an adapter: say what it lacks
            hint = f" without {', '.join(lacking)}"
        raise TypeError(f"model must be a folder, URI or hub id (str or path) or an adapter (load_adapter, or an "
                        f"object with the members of spote.adapters.base.Adapter), got {type(model).__name__}{hint}")
    # a budget given holds the peers to it too, as `spote ask --budget` and `spote bench --budget` do
    held = held_to_budget(cfg.budget if "budget" in policy_overrides else None)
    return run_method(method, adapter, img, q, ch, cfg, **held)
