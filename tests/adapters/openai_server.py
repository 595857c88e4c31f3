"""TEST FIXTURE: a small OpenAI-compatible chat-completions server for a local transformers VLM.

Not part of the product. It exists because ``transformers serve`` answers chat completions without
``logprobs`` / ``top_logprobs``, and vLLM / SGLang do not install on CPU-only machines; the endpoint
adapter needs a real server over HTTP on 127.0.0.1 to be tested against, as the pipelines use moto's
S3 server. It speaks the subset of the wire format SPOT-E uses:

* ``POST /v1/chat/completions``: ``messages`` with ``image_url`` parts holding base64 data URLs and
  ``text`` parts; ``max_completion_tokens`` (or ``max_tokens``), ``logprobs``, ``top_logprobs``; greedy
  decoding. The answer carries ``choices[0].logprobs.content[i].{token, logprob, top_logprobs}``,
  computed from the full softmax, as vLLM returns them.
* ``GET /v1/models``.
* Test controls, under ``/fixture/``: ``POST /fixture/faults {"status": 429, "times": 2}`` answers the
  next ``times`` completions with that status (``"retry_after": "100000"``: a 429's ``Retry-After``) (status 200: a normal answer without ``logprobs``, as
  ``transformers serve`` gives); ``GET /fixture/stats`` counts chat-completion answers by status. A
  question containing ``[reject]`` is answered 400 (a request the server refuses, never retried).
  ``{"mode": NAME, "times": n}`` instead misbehaves as a broken server might (``MODES``): answers with
  NaN / +inf log-probabilities, empty ``top_logprobs`` or ``logprobs.content``, a null ``message.content``,
  no ``finish_reason`` (null, as a server that does not say), an answer past the token cap it was given
  (``ignore-cap``, marked "stop"; ``ignore-cap-bytes``: its tokens spelled as byte-level BPE spells them), a body
  trickled one byte every ``interval_s`` (0.5 s), or a 401 echoing parts of the key it was sent; ``ends-at-once``:
  an empty answer with no log-probabilities, finish "stop" (a model whose first token is its end, which this
  server leaves out of ``logprobs``); ``trickle-listing``: the next ``GET /v1/models`` trickled.

With ``--require-key-env NAME`` every request must carry ``Authorization: Bearer $NAME`` (else 401).

    python tests/adapters/openai_server.py --model spote/weights/spote-tiny --port 0
    # prints: listening on http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class TinyVLM:
    """A frozen transformers VLM answering chat messages greedily, with per-token top-k log-probabilities."""

    def __init__(self, folder: str):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.torch = torch
        self.model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
        self.model.eval()
        self.processor = AutoProcessor.from_pretrained(folder)
        self.tokenizer = self.processor.tokenizer
        self.lock = threading.Lock()  # one forward pass at a time: deterministic, and the machine is small

    def _inputs(self, messages: list[dict]):
        from PIL import Image

        images, converted = [], []
        for m in messages:
            content = m.get("content")
            if isinstance(content, str):
                converted.append({"role": m["role"], "content": [{"type": "text", "text": content}]})
                continue
            parts = []
            for part in content:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    if not url.startswith("data:image/"):
                        raise ValueError("only base64 data: image URLs are served here")
                    data = base64.b64decode(url.split(",", 1)[1])
                    images.append(Image.open(io.BytesIO(data)).convert("RGB"))
                    parts.append({"type": "image"})
                elif part.get("type") == "text":
                    parts.append({"type": "text", "text": part["text"]})
            converted.append({"role": m["role"], "content": parts})
        prompt = self.processor.apply_chat_template(converted, add_generation_prompt=True, tokenize=False)
        return self.processor(text=[prompt], images=images or None, return_tensors="pt")

    def complete(self, messages: list[dict], max_tokens: int, top_k: int) -> tuple[str, list[dict], str]:
        torch = self.torch
        batch = self._inputs(messages)
        with self.lock, torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=max_tokens, do_sample=False, output_scores=True,
                                      return_dict_in_generate=True)
        start = batch["input_ids"].shape[1]
        ids, content, finish = [], [], "length"
        for step, scores in enumerate(out.scores):
            tok = int(out.sequences[0, start + step])
            if tok == self.tokenizer.eos_token_id:
                finish = "stop"
                break
            logp = torch.log_softmax(scores[0].float(), -1)
            values, indices = logp.topk(min(top_k, logp.numel())) if top_k else (logp[:0], logp[:0].long())
            ids.append(tok)
            content.append({**self._token(tok, float(logp[tok])),
                            "top_logprobs": [self._token(int(i), float(v)) for v, i in zip(values, indices)]})
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip(), content, finish

    def _token(self, token_id: int, logprob: float) -> dict:
        text = self.tokenizer.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


class Handler(BaseHTTPRequestHandler):
    server: "FixtureServer"

    def log_message(self, *args):  # quiet: tests read stdout for the address only
        pass

    def _send(self, status: int, body: dict, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        if self.path.startswith("/v1/chat/"):
            self.server.count(status)

    def _error(self, status: int, message: str, headers: dict | None = None):
        self._send(status, {"error": {"message": message, "type": "fixture_error", "code": status}}, headers)

    def _authorised(self) -> bool:
        want = self.server.api_key
        return want is None or self.headers.get("Authorization") == f"Bearer {want}"

    def do_GET(self):
        if self.path.rstrip("/") == "/fixture/stats":
            return self._send(200, dict(self.server.stats))
        if not self._authorised():
            return self._error(401, "invalid API key")
        if self.path.rstrip("/") == "/v1/models":
            listing = {"object": "list", "data": [{"id": self.server.model_name, "object": "model"}]}
            interval = self.server.take_listing_fault()
            return self._trickle(listing, interval) if interval else self._send(200, listing)
        self._error(404, f"no route {self.path}")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path.rstrip("/") == "/fixture/faults":
            if body.get("mode") not in (None, *MODES):
                return self._error(400, f"unknown mode {body['mode']!r}; known: {list(MODES)}")
            self.server.set_faults(int(body.get("status", 200)), int(body.get("times", 1)), body.get("mode"),
                                   float(body.get("interval_s", 0.5)), body.get("retry_after"))
            return self._send(200, {"ok": True})
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}")
        if not self._authorised():
            return self._error(401, "invalid API key")
        fault, mode, interval = self.server.take_fault()
        if mode == "echo-key":  # as OpenAI's 401 does (first 8 and last 4 characters), and worse
            key = self.headers.get("Authorization", "").removeprefix("Bearer ")
            masked = key[:8] + "*" * max(0, len(key) - 12) + key[-4:]
            return self._error(401, f"Incorrect API key provided: {masked}. Key tail '{key[-9:]}', "
                                    f"middle {key[4:12]}.")
        with_logprobs = bool(body.get("logprobs")) and fault != 200
        if fault and fault != 200:
            wait = {"retry-after": self.server.retry_after} if self.server.retry_after else {"retry-after-ms": "20"}
            return self._error(fault, "injected fault", wait if fault == 429 else None)
        if body.get("model") != self.server.model_name:
            return self._error(404, f"model {body.get('model')!r} does not exist")
        texts = [p.get("text", "") for m in body.get("messages", []) if isinstance(m.get("content"), list)
                 for p in m["content"] if p.get("type") == "text"]
        if any("[reject]" in t for t in texts):
            return self._error(400, "request rejected by the server's content policy")
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        if mode in ("ignore-cap", "ignore-cap-bytes"):  # as a server that does not honour the cap, says it stopped
            max_tokens = 4 * max_tokens + 8
        top_k = int(body.get("top_logprobs") or 0) if with_logprobs else 0
        try:
            text, content, finish = self.server.vlm.complete(body["messages"], max_tokens, top_k)
        except (ValueError, KeyError) as err:
            return self._error(400, str(err))
        if mode and content:
            text, content = misbehave(mode, text, content)
        if mode == "no-finish":
            finish = None
        if mode == "ends-at-once":
            finish = "stop"
        if mode in ("ignore-cap", "ignore-cap-bytes"):
            finish = "stop"
        answer = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.server.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": {"content": content} if with_logprobs else None,
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": 0, "completion_tokens": len(content), "total_tokens": len(content)},
        }
        if mode == "trickle":
            return self._trickle(answer, interval)
        self._send(200, answer)

    def _trickle(self, body: dict, interval: float):
        """A slow-loris answer: headers at once, then the body one byte every ``interval`` seconds, so
        that no single read waits long although the whole answer takes len(body) * interval."""
        data = json.dumps(body).encode()
        self.server.count(200)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(interval)
        except OSError:  # the client gave up: what a deadline should do
            self.close_connection = True


# what a broken server sends (faults' "mode"); each maps (text, logprobs content) to the broken pair
MODES = ("nan-top", "inf-top", "nan-token", "empty-top", "empty-content", "null-message", "no-finish", "trickle",
         "echo-key", "ignore-cap", "ignore-cap-bytes", "ends-at-once", "trickle-listing")


def misbehave(mode: str, text: str, content: list[dict]) -> tuple[str | None, list[dict]]:
    if mode == "nan-top":        # json.dumps writes NaN / Infinity, as some servers do
        content[0]["top_logprobs"][-1]["logprob"] = float("nan")
    elif mode == "inf-top":
        content[0]["top_logprobs"][-1]["logprob"] = float("inf")
    elif mode == "nan-token":
        content[0]["logprob"] = float("nan")
    elif mode == "empty-top":
        for c in content:
            c["top_logprobs"] = []
    elif mode == "empty-content":
        content = []
    elif mode == "ends-at-once":  # the model's first token is its end, which this server leaves out of logprobs
        text, content = "", []
    elif mode == "null-message":
        text = None
    elif mode == "ignore-cap-bytes":  # tokens as byte-level BPE spells them, not as the text reads
        for c in content:
            c["token"] = "\u0120" + c["token"]
    return text, content


class FixtureServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, vlm: TinyVLM, model_name: str, api_key: str | None):
        super().__init__(address, Handler)
        self.vlm, self.model_name, self.api_key = vlm, model_name, api_key
        self.stats: Counter = Counter()
        self._faults: list[tuple[int, str | None, float]] = []
        self.retry_after: str | None = None  # a 429's Retry-After (set_faults)
        self._lock = threading.Lock()

    def count(self, status: int):
        with self._lock:
            self.stats[str(status)] += 1

    def set_faults(self, status: int, times: int, mode: str | None = None, interval: float = 0.5,
                   retry_after: str | None = None):
        """The next ``times`` completions: answered with ``status`` (200 and no mode: without logprobs; a 429
        with ``Retry-After: retry_after`` where given, else ``retry-after-ms: 20``), or with ``mode``'s
        misbehaviour (status ignored)."""
        with self._lock:
            self._faults = [(None if mode else status, mode, interval)] * times
            self.retry_after = retry_after

    def take_fault(self) -> tuple[int | None, str | None, float]:
        with self._lock:
            if self._faults and self._faults[0][1] == "trickle-listing":  # a listing's fault, not a completion's
                return None, None, 0.0
            return self._faults.pop(0) if self._faults else (None, None, 0.0)

    def take_listing_fault(self) -> float:
        """The trickle interval of the next ``GET /models`` (0: answered at once)."""
        with self._lock:
            if self._faults and self._faults[0][1] == "trickle-listing":
                return self._faults.pop(0)[2]
            return 0.0


def launch(model: str, served_name: str = "spote-tiny", require_key_env: str | None = None, env: dict | None = None,
           wait_s: float = 180.0):
    """Start this server in a subprocess on a free port; (process, base URL). Stop it with ``process.terminate()``."""
    import subprocess
    import sys

    cmd = [sys.executable, os.path.abspath(__file__), "--model", str(model), "--served-name", served_name, "--port", "0"]
    if require_key_env:
        cmd += ["--require-key-env", require_key_env]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **(env or {})})
    deadline = time.time() + wait_s
    line = ""
    while time.time() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            return proc, line.split()[-1]
    proc.kill()
    raise RuntimeError(f"the fixture server did not start (exit {proc.poll()}, last line {line!r})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model folder")
    ap.add_argument("--served-name", default="spote-tiny")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--require-key-env", default=None, help="environment variable holding the key to require")
    args = ap.parse_args()
    key = os.environ[args.require_key_env] if args.require_key_env else None
    server = FixtureServer(("127.0.0.1", args.port), TinyVLM(args.model), args.served_name, key)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
