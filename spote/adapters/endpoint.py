"""Black-box adapter for any server that speaks the OpenAI chat-completions API with log-probabilities.

vLLM, SGLang and OpenAI return ``logprobs`` / ``top_logprobs`` in chat completions; SPOT-E needs nothing
more (no attention, no gradients), so the policy starts from the model-free saliency prior (black-box
mode, ``supports_relevance = False``). Each view set is one request: its images travel as base64 data-URL
image parts (PNG by default, lossless, so the server sees the very pixels an in-process run would),
followed by the same question text an in-process run uses.

Closed-set answers. One request per view set with ``max_completion_tokens=1`` and ``top_logprobs=k``,
after a system message asking for one of the choices only (``closed_set_instruction``; a chatty model's
first token is otherwise "The"); the distribution over the choices comes from the first answer token's
top-k, renormalised over the choices (``choice_distribution``):

* a top-k token counts for a choice when its text equals the choice (case and surrounding spaces
  ignored); several such tokens add up ("yes", " Yes"). A choice that no top-k token equals is a
  multi-token choice (or absent): it is scored by its first token, the longest top-k token that
  begins it and equals no choice ("scr" of "scratch"; never "b" for "blue" when "blue" itself is in
  the top-k). A first token shared by several choices ("re" of "red" and "rest" when neither is one
  token) is split evenly among them, so such choices cannot be told apart: give choices that differ
  in their first word piece;
* a choice matched by no top-k token gets ``min(p_min, leftover / n_missing)``, where ``p_min`` is the
  smallest top-k probability (a token outside the top-k is at most that likely) and ``leftover`` the
  mass outside the top-k shared by the missing choices. When every choice is in the top-k the result
  equals the in-process scoring (next-token probabilities restricted to the choices, renormalised).

Open answers. ``generate`` returns the generated tokens with their log-probabilities; the entropy per
token is estimated from the top-k (``topk_entropy``): ``-sum_topk p log p - r log p_min`` with
``r`` the mass outside the top-k, a lower bound of the true entropy (each unseen token is at most
``p_min`` likely), exact when the top-k holds all the mass. In-process runs compute the full-vocabulary
entropy. A chat-completions server cannot teacher-force a given answer, so ``teacher_forced`` (the
entropy of the baseline's answer span on another view) generates greedily on that view instead: up to
and including the first token where the view's answer departs from the baseline's, each position has
the baseline's prefix, exactly as under teacher forcing, and its entropy is the top-k estimate. The
positions after it (and the departing one when the view's answer simply stops there, since a server
returns no log-probabilities for the stop token) are conditioned on another prefix; they take the
baseline's own entropy, so they neither gain clarity nor break an anchor. What is lost against
in-process teacher forcing: the tail of the entropy (top-k truncation) and, after a departure, what
the view says about the rest of the baseline's answer.

Requests. A group's view sets are sent concurrently (``concurrency`` at most, a thread pool over the
official ``openai`` client). The client retries 408/409/429/5xx responses, connection errors and
timeouts ``max_retries`` times with exponential back-off (0.5 s doubling up to 8 s, minus up to 25%
random jitter), honouring ``Retry-After``; each attempt ends within ``timeout_s`` in all, however slowly
the server sends (``deadline_http_client``). A request that still fails, or an answer without usable
log-probabilities (none, or NaN / infinite ones), raises ``EndpointError``, whose one-line message names
the endpoint (without credentials) and the failure; the pipelines turn it into that item's error row. A
URL no request could use (not http/https, no host, a bad port) or one carrying user:password or a query
string is refused by ``EndpointConfig`` before any request. The API key is read from the environment
variable ``api_key_env`` (``OPENAI_API_KEY`` by default) and is kept only inside the client: it is
never part of a config, name, message or result, and a server's error text loses every word holding 6 or
more consecutive characters of it (``scrub``).
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import math
import os
import re
import threading
import time
import urllib.request
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from urllib.parse import urlsplit, urlunsplit

import torch
from PIL import Image

from ..prompt import format_question
from .base import Generation, drop_continuation_prefix

NO_LOGPROBS = ("the server returned no logprobs: SPOT-E needs logprobs/top_logprobs in chat completions "
               "(vLLM, SGLang and OpenAI give them; transformers serve does not)")


class EndpointError(RuntimeError):
    """A request to the endpoint failed for good (after the retries), or its answer is unusable."""


@dataclass(frozen=True)
class EndpointConfig:
    """How to reach an OpenAI-compatible server and what to ask of it. Holds no secret: only the name of
    the environment variable with the API key."""

    url: str                           # base URL, e.g. http://127.0.0.1:8000/v1
    model: str                         # the model name the server knows
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (unset: no key, for local servers)
    concurrency: int = 8               # requests in flight at most (a group's views are sent together)
    timeout_s: float = 60.0            # per request attempt, seconds in all (connect to the last byte)
    max_retries: int = 4               # the client's retries on 408/409/429/5xx, connection errors, timeouts
    max_images: int = 2                # images per request the server accepts; 1 turns zoom+context into zoom
    view_size: int = 512               # side of every rendered view in pixels (the smallest spotlight window too)
    top_logprobs: int = 20             # k (OpenAI allows at most 20; vLLM caps it with --max-logprobs)
    image_format: str = "png"          # png (lossless) | jpeg (smaller requests, lossy)
    jpeg_quality: int = 90
    max_new_tokens: int = 32           # open answers
    closed_set_instruction: str = "Answer with exactly one of the choices and nothing else."  # system message; "" for none

    def __post_init__(self):
        """Raises ValueError naming the field: a value of the wrong type or out of range, or a URL that is
        not ``http(s)://host[:port]/path`` (checked here, before any request: a bad URL is not retried)."""
        check_url(self.url)
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("an endpoint needs a model name (--model NAME, model=): the model name the server serves")
        for name, least, most in _INT_RANGES:
            value = getattr(self, name)
            # bool is an int in Python; JSON's true is no count
            if not isinstance(value, int) or isinstance(value, bool) or value < least or (most and value > most):
                bound = f"in {least}..{most}" if most else f">= {least}"
                raise ValueError(f"endpoint option {name} must be an integer {bound}, got {shown(value)}")
        if (not isinstance(self.timeout_s, (int, float)) or isinstance(self.timeout_s, bool)
                or not math.isfinite(self.timeout_s) or self.timeout_s <= 0):
            raise ValueError(f"endpoint option timeout_s must be a number of seconds > 0, got {shown(self.timeout_s)}")
        for name in ("api_key_env", "closed_set_instruction"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"endpoint option {name} must be a string, got {shown(getattr(self, name))}")
        if self.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            # a key pasted where its variable's name goes ("sk-..."): said without repeating it
            raise ValueError("endpoint option api_key_env (--api-key-env) takes the name of the environment variable "
                             "holding the key (letters, digits and _, e.g. MY_SERVER_KEY), never the key itself; got "
                             f"a string of {len(self.api_key_env)} characters that is no such name")
        if self.image_format not in ("png", "jpeg"):
            raise ValueError(f"endpoint option image_format must be png or jpeg, got {shown(self.image_format)}")


def shown(value) -> str:
    """A wrong option value as an error message shows it: a string of more than 16 characters by its length
    only (an API key pasted into the wrong option must not reach a log), anything else as its repr."""
    if isinstance(value, str) and len(value) > 16:
        return f"a string of {len(value)} characters"
    return repr(value)


# integer fields: (name, least, most or None); top_logprobs' 20 is the OpenAI API's limit
_INT_RANGES = (("concurrency", 1, None), ("max_retries", 0, None), ("max_images", 1, None), ("view_size", 16, 4096),
               ("top_logprobs", 1, 20), ("jpeg_quality", 1, 100), ("max_new_tokens", 1, None))


def check_url(url) -> None:
    """Refuse an endpoint URL that no request could use, before any request (a bad URL is not retried):
    scheme other than http/https, no host, a port outside 1..65535, unparseable. Also refuse one with
    user:password or a query string: httpx would send user:password as Basic auth in place of the key,
    and either would be echoed in messages; the key belongs in the environment variable ``api_key_env``.

    Raises:
        ValueError: one line naming the problem, the URL shown without credentials.
    """
    example = "a URL such as http://127.0.0.1:8000/v1"
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"endpoint must be {example}, got {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is no number or outside 0..65535
    except ValueError as err:
        raise ValueError(f"endpoint {safe_url(url)!r} is not a valid URL ({err}); give {example}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"endpoint {safe_url(url)!r}: the scheme must be http or https; give {example}")
    if not parts.hostname:
        raise ValueError(f"endpoint {safe_url(url)!r} names no host; give {example}")
    if port == 0:
        raise ValueError(f"endpoint {safe_url(url)!r}: port 0 is no server's port (1..65535)")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"endpoint {safe_url(url)!r}: the URL carries user:password; remove it and put the "
                         "API key in the environment variable named by --api-key-env")
    if parts.query:
        raise ValueError(f"endpoint {safe_url(url)!r}: the URL carries a query string; remove it (an API key "
                         "belongs in the environment variable named by --api-key-env)")


def safe_url(url: str) -> str:
    """``url`` without user:password and without a query string (either may carry a credential)."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<unparseable URL>"


SECRET_RUN = 6  # this many consecutive characters of a key in a word make the word a secret


def scrub(text: str, secrets, public=()) -> str:
    """``text`` with every secret replaced by ``***``, and with it every word (between spaces, quotes,
    brackets, commas, ``=``) that holds ``SECRET_RUN`` or more consecutive characters of one: a server may
    echo a key masked (OpenAI's ``sk-proj-****...abcd``), cut, or as a prefix or suffix. Words in
    ``public`` (the model name, the URL) stay, whatever they share with a key."""
    for secret in secrets:
        text = text.replace(secret, "***")
        if len(secret) >= SECRET_RUN:
            words = re.split(r"""([\s'"`,;()\[\]{}<>=]+)""", text)
            text = "".join("***" if w not in public and any(w[i:i + SECRET_RUN] in secret
                                                            for i in range(len(w) - SECRET_RUN + 1)) else w
                           for w in words)
    return text


def encode_view(image: Image.Image, fmt: str = "png", quality: int = 90) -> str:
    """A data URL (``data:image/png;base64,...``) holding ``image``."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="PNG")
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _norm(text: str) -> str:
    # byte-level BPE and SentencePiece servers may return raw word-start markers
    return text.replace("\u2581", " ").replace("\u0120", " ").strip().casefold()


def _is_logprob(lp: float) -> bool:
    return math.isfinite(lp) and lp <= 1e-3  # a little above 0: a server's float rounding of log 1


def topk_entropy(logprobs: list[float]) -> float:
    """Entropy estimate (nats) from a top-k: ``-sum p log p - r log p_min``, r = 1 - sum p.

    A lower bound of the full entropy (the mass r outside the top-k is in pieces of at most p_min);
    exact when the top-k holds all the mass.
    """
    if not logprobs:
        return 0.0
    ps = [math.exp(lp) for lp in logprobs]
    h = -sum(p * lp for p, lp in zip(ps, logprobs))
    rest = max(0.0, 1.0 - sum(ps))
    if rest > 1e-12:
        h -= rest * min(logprobs)
    return max(0.0, h)


def choice_distribution(top: list[tuple[str, float]], choices) -> list[float]:
    """log p over ``choices`` from the first answer token's top-k ``[(token, logprob), ...]`` (module docstring).

    1. A token equal to a choice (case and surrounding spaces ignored) counts for that choice.
    2. A choice no token equals is scored by its first token: the longest top-k tokens that begin it and
       equal no choice; a token beginning several such choices is split evenly among them.
    3. A choice still without mass gets ``min(p_min, leftover / n_missing)``.

    Returns C log-probabilities that sum (in probability) to 1.
    """
    names = [_norm(c) for c in choices]
    mass = [0.0] * len(names)
    entries = [(_norm(t), math.exp(lp)) for t, lp in top]
    entries = [(t, p) for t, p in entries if t]
    exact = set()
    for t, p in entries:
        hits = [i for i, n in enumerate(names) if n == t]
        for i in hits:
            mass[i] += p / len(hits)
            exact.add(i)
    first_token: dict[str, list[int]] = {}  # prefix token -> the choices it begins
    for i, n in enumerate(names):
        if i in exact:
            continue
        prefixes = [t for t, _ in entries if n.startswith(t) and t not in names]
        if prefixes:
            longest = max(len(t) for t in prefixes)
            for t in {t for t in prefixes if len(t) == longest}:
                first_token.setdefault(t, []).append(i)
    for t, p in entries:
        for i in first_token.get(t, []):
            mass[i] += p / len(first_token[t])
    if top:
        p_min = math.exp(min(lp for _, lp in top))
        leftover = max(0.0, 1.0 - sum(math.exp(lp) for _, lp in top))
    else:
        p_min, leftover = 1.0, 1.0
    missing = [i for i, m in enumerate(mass) if m <= 0.0]
    for i in missing:
        mass[i] = max(min(p_min, leftover / len(missing)), 1e-12)  # never 0: entropy and log stay finite
    total = sum(mass)
    return [math.log(m / total) for m in mass]


class TokenTable:
    """Token strings as small integer ids, so a served answer span looks like an in-process one.

    The server returns token *texts*; the loop keeps span token ids and decodes them for the anchors.
    """

    def __init__(self):
        self._ids: dict[str, int] = {}
        self._texts: list[str] = []
        self._lock = threading.Lock()

    def intern(self, text: str) -> int:
        with self._lock:
            if text not in self._ids:
                self._ids[text] = len(self._texts)
                self._texts.append(text)
            return self._ids[text]

    def text(self, token_id: int) -> str:
        return self._texts[token_id]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(self._texts[i] for i in ids)


@dataclass
class Served:
    """One answer from the server: token texts, their log p, each position's top-k, and why it ended
    (``finish_reason``: "stop", "length", ...; None where the server does not say)."""

    text: str
    tokens: list[str]
    logprobs: list[float]
    top: list[list[tuple[str, float]]]
    finish_reason: str | None = None


def deadline_http_client(config: EndpointConfig):
    """The openai client's HTTP client, each attempt of which ends within ``config.timeout_s`` seconds in all
    (None, the client's own, where the installed httpx has no pool backend to wrap).

    httpx's timeouts bound each socket operation alone (connect, write, one read), so a server that trickles
    its answer a byte at a time holds a request for as long as it likes. Here every operation of an attempt
    (connect, TLS, writes, each read of the headers and the body) waits at most what is left of the attempt's
    ``timeout_s``, through httpcore's pluggable network backend; running out raises httpcore's timeout, which
    the openai client retries and reports as a timeout like any other. The proxy the environment names for
    the endpoint (``HTTPS_PROXY``, ``NO_PROXY``, ...) is kept: a client given its own transport ignores them.
    """
    import openai

    # the httpx the openai client is built on (httpx, or the httpx2 fork), and its httpcore
    httpx = importlib.import_module(next(c for c in openai.DefaultHttpxClient.__mro__
                                         if not c.__module__.startswith("openai")).__module__.split(".")[0])
    httpcore = importlib.import_module(httpx.__name__.replace("httpx", "httpcore"))
    deadline = threading.local()  # the attempt's end (time.monotonic), per thread: one attempt at a time each

    def left(timeout, timed_out):
        end = getattr(deadline, "end", None)
        if end is None:
            return timeout
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise timed_out(f"the attempt took more than {config.timeout_s:g} s in all")
        return remaining if timeout is None else min(timeout, remaining)

    class Stream(httpcore.NetworkStream):
        def __init__(self, inner):
            self.inner = inner

        def read(self, max_bytes, timeout=None):
            return self.inner.read(max_bytes, left(timeout, httpcore.ReadTimeout))

        def write(self, buffer, timeout=None):
            return self.inner.write(buffer, left(timeout, httpcore.WriteTimeout))

        def close(self):
            self.inner.close()

        def start_tls(self, ssl_context, server_hostname=None, timeout=None):
            return Stream(self.inner.start_tls(ssl_context, server_hostname, left(timeout, httpcore.ConnectTimeout)))

        def get_extra_info(self, info):
            return self.inner.get_extra_info(info)

    class Backend(httpcore.NetworkBackend):
        def __init__(self, inner):
            self.inner = inner

        def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
            return Stream(self.inner.connect_tcp(host, port, left(timeout, httpcore.ConnectTimeout), local_address,
                                                 socket_options))

        def connect_unix_socket(self, path, timeout=None, socket_options=None):
            return Stream(self.inner.connect_unix_socket(path, left(timeout, httpcore.ConnectTimeout), socket_options))

        def sleep(self, seconds):
            self.inner.sleep(seconds)

    class Transport(httpx.HTTPTransport):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            # httpx builds its httpcore pool without a way to pass a backend: swap it in (an AttributeError
            # here, should httpx rename it, leaves the openai client's own, per-operation timeouts)
            self._pool._network_backend = Backend(self._pool._network_backend)

        def handle_request(self, request):
            # the body is read after this returns, in the same thread, so the deadline stays until the next attempt
            deadline.end = time.monotonic() + config.timeout_s
            return super().handle_request(request)

    host = urlsplit(config.url).hostname or ""
    proxies = urllib.request.getproxies()
    proxy = None if urllib.request.proxy_bypass(host) else proxies.get(urlsplit(config.url).scheme, proxies.get("all"))
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=max(20, config.concurrency))
    try:
        transport = Transport(proxy=proxy, limits=limits)
    except AttributeError:  # another httpx: each socket operation is still bounded by timeout_s, not the attempt
        return None
    return openai.DefaultHttpxClient(transport=transport)


def _not_retried(client, response) -> str | None:
    """Why the ``openai`` ``client`` did not retry a ``response`` it would otherwise retry (408, 409, 429,
    5xx), asked of the client itself (``_should_retry``; its rules differ between versions): the server
    said not to (``x-should-retry: false``), or its ``Retry-After`` is longer than the client waits
    (``MAX_RETRY_AFTER_DELAY``, 120 s in openai 2.x). None where it retried."""
    from openai._constants import MAX_RETRY_AFTER_DELAY

    if response is None or client._should_retry(response):
        return None
    if response.headers.get("x-should-retry") == "false":
        return "not retried: the server said not to (x-should-retry: false)"
    wait = client._parse_retry_after_header(response.headers)
    if wait is None:
        return "not retried"
    return (f"not retried: the server asked to wait {wait:g} s (Retry-After), longer than the client waits, "
            f"{MAX_RETRY_AFTER_DELAY} s")


class EndpointAdapter:
    """The adapter interface (``spote.adapters.base``) over an OpenAI-compatible chat-completions server.

    ``forward_passes`` counts view sets sent (one request each; retries not counted), like the
    sequences an in-process adapter runs.
    """

    family = "endpoint"
    supports_relevance = False
    joint_decoding = False  # a server decodes each request alone: an open answer is read off one view set

    def __init__(self, config: EndpointConfig):
        from openai import OpenAI

        self.config = config
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        self._secrets = tuple(s for s in (key,) if s)
        # servers without authentication (a local vLLM) accept any key; the client insists on one
        self.client = OpenAI(base_url=config.url, api_key=key or "no-key", timeout=config.timeout_s,
                             max_retries=config.max_retries, http_client=deadline_http_client(config))
        self.input_size = config.view_size
        self.max_images = config.max_images
        self.batch_size = 64  # view sets per read in the exhaustive peers (grid); requests stay bounded by concurrency
        self.forward_passes = 0
        self.tokenizer = TokenTable()
        self.name = f"{config.model} @ {safe_url(config.url)}"
        self._pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="spote-endpoint")
        self._count = threading.Lock()
        self._span_entropies: OrderedDict[tuple, list[float]] = OrderedDict()  # recent generations: ids -> H

    @property
    def device(self) -> str:
        return "endpoint"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # ------------------------------------------------------------------ prompts
    def prompt_text(self, n_images: int, question: str, choices=None) -> str:
        """The user turn's text; the server applies its own chat template around it."""
        return format_question(question, choices)

    def continuation_ids(self, prompt: str, answer: str) -> list[int]:
        """One id per choice: every choice is read off the same first-token top-k, one request per view set."""
        return [self.tokenizer.intern(answer)]

    def _messages(self, views: list[Image.Image], text: str, closed_set: bool) -> list[dict]:
        if len(views) > self.max_images:
            raise EndpointError(f"{len(views)} images per request, but max_images is {self.max_images}")
        cfg = self.config
        content = [{"type": "image_url", "image_url": {"url": encode_view(v, cfg.image_format, cfg.jpeg_quality)}}
                   for v in views]
        content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        if closed_set and cfg.closed_set_instruction:
            messages.insert(0, {"role": "system", "content": cfg.closed_set_instruction})
        return messages

    # ------------------------------------------------------------------ requests
    def _describe(self, err: Exception) -> str:
        """One line naming the endpoint and the failure, with every secret scrubbed."""
        import openai

        cfg = self.config
        public = {cfg.model, safe_url(cfg.url), urlsplit(cfg.url).hostname}  # what the line names on purpose
        if isinstance(err, openai.APITimeoutError):
            what = f"no answer within {cfg.timeout_s:g} s (after {cfg.max_retries} retries)"
        elif isinstance(err, openai.APIConnectionError):
            cause = err.__cause__ or err
            what = f"cannot connect: {type(cause).__name__}: {cause} (after {cfg.max_retries} retries)"
        elif isinstance(err, openai.APIStatusError):
            code = err.status_code
            retried = code in (408, 409, 429) or code >= 500
            why_not = _not_retried(self.client, getattr(err, "response", None)) if retried and cfg.max_retries else None
            # scrubbed before it is cut short: a cut could leave a piece of the key too short to be recognised
            detail = scrub(" ".join(str(getattr(err, "message", "") or "").split()), self._secrets, public)[:300]
            how = f" after {cfg.max_retries} retries" if retried and not why_not else f" ({why_not})" if why_not else ""
            what = f"HTTP {code}{how}: {detail}"
            if code in (401, 403) and not self._secrets and cfg.api_key_env:
                # the variable's name is not repeated: a key pasted where its name goes would be printed
                what += " (no API key was sent: the environment variable api_key_env names is not set, or empty, here)"
            if code == 400 and self.max_images > 1 and "image" in detail.lower():
                what += " (a server that takes one image per request needs max_images 1)"
        else:
            what = f"{type(err).__name__}: {err}"
        return scrub(" ".join(f"endpoint {safe_url(cfg.url)} (model {cfg.model!r}): {what}".split()), self._secrets,
                     public)

    def _request(self, views: list[Image.Image], text: str, max_tokens: int, closed_set: bool) -> Served:
        cfg = self.config
        try:
            resp = self.client.chat.completions.create(
                model=cfg.model, messages=self._messages(views, text, closed_set), max_completion_tokens=max_tokens,
                temperature=0, logprobs=True, top_logprobs=cfg.top_logprobs, n=1)
        except EndpointError:
            raise
        except Exception as err:  # openai errors, and anything the transport raises
            raise EndpointError(self._describe(err)) from None
        with self._count:
            self.forward_passes += 1
        try:
            choice = resp.choices[0]
            content = choice.logprobs.content if choice.logprobs is not None else None
        except (AttributeError, IndexError, TypeError):
            raise EndpointError(self._describe(ValueError("the response has no choices"))) from None
        if content is None:
            raise EndpointError(self._describe(ValueError(NO_LOGPROBS)))
        try:
            logprobs = [float(c.logprob) for c in content]
            # a position without top_logprobs has its own token as its top-1 (a lower bound of its entropy,
            # -log p), never an empty top-k, whose entropy would read 0 nats: certain
            top = [[(t.token, float(t.logprob)) for t in (c.top_logprobs or [])] or [(c.token, float(c.logprob))]
                   for c in content]
        except (TypeError, ValueError):  # a logprob that is null or no number
            raise EndpointError(self._describe(ValueError(NO_LOGPROBS))) from None
        bad = [lp for lp in logprobs + [lp for row in top for _, lp in row] if not _is_logprob(lp)]
        if bad:  # NaN would read as 0 nats (max(0, nan) is 0): a sure answer that stops the search at once
            raise EndpointError(self._describe(ValueError(
                f"the server returned a log-probability that is not one ({bad[0]!r}: not finite, or above 0)")))
        finish = getattr(choice, "finish_reason", None)
        text, tokens = (choice.message.content or "").strip(), [c.token for c in content]
        if len(tokens) > max_tokens:  # a server that ignores the cap: cut where it would have ended the answer
            tokens, logprobs, top = tokens[:max_tokens], logprobs[:max_tokens], top[:max_tokens]
            kept = "".join(tokens)
            if not (choice.message.content or "").startswith(kept):  # tokens in byte form ("bytes:\xc3", "Ġthe")
                raise EndpointError(self._describe(ValueError(
                    f"the server answered past the cap of {max_tokens} tokens, in tokens that do not spell its text, "
                    "so the answer cannot be cut where the cap is")))
            text, finish = kept.strip(), "length"
        return Served(text=text, tokens=tokens, logprobs=logprobs, top=top,
                      finish_reason=finish if isinstance(finish, str) else None)

    def _request_all(self, views_batch, text: str, max_tokens: int, closed_set: bool) -> list[Served]:
        """One request per view set, ``concurrency`` at a time; the first failure fails the whole group."""
        futures = [self._pool.submit(self._request, views, text, max_tokens, closed_set) for views in views_batch]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    # ------------------------------------------------------------------ closed set
    def choice_logprobs(self, views_batch: list[list[Image.Image]], question: str, choices) -> torch.Tensor:
        """log p(choice | views, question) over the choices, from the first token's top-k: [B, C]."""
        choices = list(choices)
        served = self._request_all(views_batch, format_question(question, choices), 1, closed_set=True)
        rows = []
        for s in served:
            top = s.top[0] if s.top else []
            if not top and s.tokens:
                top = [(s.tokens[0], s.logprobs[0])]
            if not top and not s.text and s.finish_reason == "stop":
                raise EndpointError(self._describe(ValueError(
                    "the model ended its answer before any token (finish_reason stop, no text), and the server "
                    "sends no log-probabilities for that step, so the choices cannot be scored on this view")))
            if not top:
                raise EndpointError(self._describe(ValueError(NO_LOGPROBS)))
            rows.append(choice_distribution(top, choices))
        return torch.tensor(rows, dtype=torch.float32)

    # ------------------------------------------------------------------ open ended
    def _generation(self, s: Served) -> Generation:
        """The open answer of ``s``; an empty answer (no text: the model ended at once, or only spoke
        whitespace) has no tokens, so its confidence is 0 as in-process. ``cut_off`` from the server's
        ``finish_reason`` (OpenAI API): "length" (the token cap ended it) True, "stop" False, else None (not
        known). Raises EndpointError for an answer whose tokens came without log-probabilities."""
        cut_off = {"length": True, "stop": False}.get(s.finish_reason)
        if not s.text:
            return Generation("", [], [], [], cut_off=cut_off)
        if not s.tokens:  # text without tokens: nothing to score it by (the entropy would read 0: certain)
            raise EndpointError(self._describe(ValueError(NO_LOGPROBS)))
        ids = [self.tokenizer.intern(t) for t in s.tokens]
        ents = [topk_entropy([lp for _, lp in top]) for top in s.top]
        text = drop_continuation_prefix(s.text, s.tokens[0] if s.tokens else None)  # as in-process
        return Generation(text, ids, ents, list(s.logprobs), cut_off=cut_off)

    def generate(self, views: list[Image.Image], question: str, max_new_tokens: int | None = None) -> Generation:
        """Greedy answer with per-token log p and top-k entropy estimates (nats)."""
        n = max_new_tokens or self.config.max_new_tokens
        gen = self._generation(self._request_all([views], format_question(question), n, closed_set=False)[0])
        self._span_entropies[tuple(gen.token_ids)] = gen.entropies  # what teacher_forced falls back on
        while len(self._span_entropies) > 256:
            self._span_entropies.popitem(last=False)
        return gen

    def teacher_forced(self, views_batch, prompt: str, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position log p and entropy (nats) of the span ``ids`` on each view set, [B, L] each, from a
        greedy answer on that view (module docstring: exact prefix up to its first departure from ``ids``,
        the span's own entropies after it)."""
        target = [self.tokenizer.text(i) for i in ids]
        L = len(target)
        base = self._span_entropies.get(tuple(ids))
        served = self._request_all(views_batch, prompt, max(1, L), closed_set=False)
        lps, ents = torch.empty(len(served), L), torch.empty(len(served), L)
        for b, s in enumerate(served):
            if s.text and not s.tokens:  # as in generate: an answer without log-probabilities reads nothing
                raise EndpointError(self._describe(ValueError(NO_LOGPROBS)))
            own = [topk_entropy([lp for _, lp in top]) for top in s.top]
            fallback = base if base is not None and len(base) == L else [sum(own) / len(own) if own else 0.0] * L
            same_prefix = True  # positions 0..t-1 of the view's answer equal the baseline's
            for t in range(L):
                top = dict(s.top[t]) if same_prefix and t < len(s.top) else {}
                ents[b, t] = own[t] if top else fallback[t]
                lps[b, t] = top.get(target[t], min(top.values())) if top else math.log(1e-12)
                same_prefix = same_prefix and t < len(s.tokens) and s.tokens[t] == target[t]
        return lps, ents

    # ------------------------------------------------------------------ relevance
    def relevance(self, views, question: str, choices=None):
        """Black-box mode: a server returns no attention."""
        return None


ENDPOINT_OPTIONS = tuple(f.name for f in fields(EndpointConfig) if f.name not in ("url", "model"))


def endpoint_options(api_key_env: str | None, concurrency: int | None, options: str) -> dict:
    """The ``endpoint_options`` of ``load_adapter`` from the command-line flags (``spote ask``, ``spote bench``,
    every job): the fields of
    ``--endpoint-options`` (JSON), with ``--api-key-env`` / ``--endpoint-concurrency`` where given (None: left
    out, so the JSON's field or the EndpointConfig default holds). A flag that sets the same field as the JSON
    must agree with it, as flags and ``--policy`` do. Types and ranges are checked by ``EndpointConfig``.

    Raises:
        ValueError: the JSON is not an object, or a flag and the JSON set one field to two values.
    """
    from ..cli import unique_keys

    try:
        extra = json.loads(options, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as err:
        raise ValueError(f"--endpoint-options is not valid JSON: {err}") from None
    except ValueError as err:
        raise ValueError(f"--endpoint-options: {err}") from None
    if not isinstance(extra, dict):
        raise ValueError("--endpoint-options must be a JSON object")
    merged = dict(extra)
    for name, flag, value in (("api_key_env", "--api-key-env", api_key_env),
                              ("concurrency", "--endpoint-concurrency", concurrency)):
        if value is None:
            continue
        if name in extra and extra[name] != value:
            raise ValueError(f"--endpoint-options sets {name} to {shown(extra[name])} and {flag} sets it to {shown(value)}; "
                             "give one")
        merged[name] = value
    return merged


def endpoint_config(url: str, model: str | None, **options) -> EndpointConfig:
    """The ``EndpointConfig`` for ``url`` serving ``model``; ``options`` are its other fields. Checks
    everything that can be checked without a request, so a command can refuse bad flags at once.

    Raises:
        ValueError: no model name, a URL no request could use, unknown options, a value of the wrong type
            or out of range (one line, naming the option).
    """
    unknown = sorted(set(options) - set(ENDPOINT_OPTIONS))
    if unknown:
        raise ValueError(f"unknown endpoint options {unknown}; known: {list(ENDPOINT_OPTIONS)}")
    if model is None or not str(model).strip():
        raise ValueError("an endpoint needs a model name (--model NAME, model=): the model name the server serves")
    return EndpointConfig(url=url, model=str(model), **options)


LISTING_TIMEOUT_S = 10.0  # the model listing asked once at open: a server that is slow to list is not judged


def check_served_model(config: EndpointConfig) -> None:
    """Refuse a model name the server does not serve, before any question: the server lists what it serves
    (``GET /models``, OpenAI's API, answered by vLLM, SGLang and OpenAI) and ``config.model`` is not there.
    Asked once, without retries, within ``LISTING_TIMEOUT_S`` in all (``timeout_s`` where less); a server that
    cannot be reached now or does not list its models in time is not judged here (its first request says why).

    Raises:
        spote.loading.ModelNotFound: the listing names other models (one line naming up to eight of them).
    """
    from openai import OpenAI

    from ..loading import ModelNotFound

    key = os.environ.get(config.api_key_env) if config.api_key_env else None
    try:
        listing = replace(config, timeout_s=min(LISTING_TIMEOUT_S, config.timeout_s))  # in all, as every request
        with OpenAI(base_url=config.url, api_key=key or "no-key", timeout=listing.timeout_s, max_retries=0,
                    http_client=deadline_http_client(listing)) as client:
            served = [str(m.id) for m in client.models.list()]
    except Exception:  # unreachable, 401, 404 (no listing), an odd body: the completions will say
        return
    if served and config.model not in served:
        names = ", ".join(repr(m) for m in served[:8]) + (f" and {len(served) - 8} more" if len(served) > 8 else "")
        raise ModelNotFound(f"endpoint {safe_url(config.url)} does not serve a model {config.model!r}; it serves "
                            f"{names}: name one of those as the model (--model, model=)")


def open_endpoint(url: str, model: str | None, **options) -> EndpointAdapter:
    """An ``EndpointAdapter`` for ``url`` serving ``model``; ``options`` are ``EndpointConfig`` fields.

    Raises:
        ValueError: as ``endpoint_config``.
        spote.loading.ModelNotFound: the server lists the models it serves, and ``model`` is not one
            (``check_served_model``).
    """
    config = endpoint_config(url, model, **options)
    check_served_model(config)
    return EndpointAdapter(config)
