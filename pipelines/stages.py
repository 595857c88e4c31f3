"""The stages every job shares: a CPU loader that turns a row into pixels (or an error row), and
the SPOT-E actor that holds one frozen VLM and answers row by row, never raising per item.
"""

from __future__ import annotations

import contextlib

import json
import os
import socket
import time
import traceback

import numpy as np

from spote.uris import redact_urls

from .storage import read_bytes

# The result schema's fixed part. Typed explicitly: a block of error rows only has empty traces and
# no choices, which Arrow would infer as null types that later blocks (and readers) cannot cast.
# ``run_id`` is also the hive partition key (results/run_id=<id>/); pyarrow's and pandas' default
# readers discover a partition key as dictionary<int32, string>, so the column is stored with that
# very type: the file keeps its run id when read alone, and the two never clash on merge.
# ``evidence_box``: [x0, y0, x1, y1] in pixels of the image the loader made for the row (the image, the
# rendered page, the upright tile), the view the answer came from; null when the whole image answered.
# ``token_confidences``: an open-ended answer's p of each generated token, in order (``confidence`` is the least
# of them, their product the whole answer's p); null for a closed-set answer and for rows that were not answered.
RESULT_TYPES = {
    "id": "string", "source": "string", "question": "string", "choices": "string", "answer": "string",
    "confidence": "float64", "token_confidences": ("list", "float64"), "entropy_initial": "float64", "entropy_final": "float64",
    "entropy_trace": ("list", "float64"), "boxes": ("list", ("list", "int64")), "forward_passes": "int64",
    "latency_ms": "float64", "status": "string", "error": "string", "model": "string", "policy": "string",
    "run_id": ("dictionary", "string"), "actor": "string", "evidence_box": ("list", "int64"),
}
# a job's own columns that a block may hold only empty values of (e.g. a block of non-georeferenced tiles)
JOB_COLUMN_TYPES = {"bounds": ("list", "float64"), "stretch_range": "string", "points_per_pixel": "float64",
                    "evidence_box_pt": ("list", "float64")}


RESULT_COLUMNS = tuple(RESULT_TYPES)


# error reasons (``stats.error_reason``: the text before the first ':') of failures that may not happen
# again: a time limit, a server or model fault, a storage read, a file listed and then gone while the run
# read it (moved away, and maybe back). A nightly job reads such items again.
PASSING_FAILURES = ("timeout", "endpoint error", "model error", "could not read", "missing object")


class SourceReadError(Exception):
    """A source's bytes could not be fetched (a connection reset, a throttled store, a permission):
    a passing failure, reported as ``could not read: <source>: ...``. A source that is not there at all
    raises FileNotFoundError instead ("missing object")."""


@contextlib.contextmanager
def source_read_errors():
    """Within the block, a failure to fetch a source's bytes, other than a missing object, is re-raised as
    ``SourceReadError``."""
    try:
        yield
    except (FileNotFoundError, IsADirectoryError):
        raise
    except NotADirectoryError as err:  # "a.png/b.png" under a file a.png: nothing is there, every night
        raise FileNotFoundError(str(err)) from err
    except Exception as err:
        raise SourceReadError(f"{type(err).__name__}: {err}") from err


def read_source(uri: str, storage_options=None) -> bytes:
    """``storage.read_bytes`` (retried), its failures other than a missing object as ``SourceReadError``.
    A store URI naming a bucket and no object is a missing object, not a passing failure (s3fs refuses it
    with a ParamValidationError, which a nightly job would retry every night)."""
    scheme, _, rest = uri.partition("://")
    if scheme in ("s3", "gs", "gcs", "az", "abfs") and "/" not in rest.strip("/"):
        raise FileNotFoundError(f"{uri} names a bucket, not an object")
    with source_read_errors():
        return read_bytes(uri, storage_options)


def error_row(row: dict, reason: str) -> dict:
    """``row`` failed: its reason recorded without the credentials an http(s) URL in it may carry."""
    return {**row, "status": "error", "error": redact_urls(reason), "pixels": b"", "height": 0, "width": 0}


class SkipItem(Exception):
    """Raised by a loader's ``read`` for an item that must not reach the model (e.g. a tile without valid
    pixels); the row is kept with status ``skipped`` and the message as its reason (in ``error``)."""


def skipped_row(row: dict, reason: str) -> dict:
    return {**row, "status": "skipped", "error": redact_urls(reason), "pixels": b"", "height": 0, "width": 0}


class RowLoader:
    """CPU stage skeleton: pass upstream errors on, check the question, ``read`` the pixels, turn every
    failure into an error row with a reason. Subclasses implement ``read(row) -> RGB image or array``."""

    failure = "could not read"   # prefix for unexpected errors
    image_errors_as_image = True  # BadImage -> "unreadable image: ..." (else it counts as a ``failure``)
    max_pixels_flag: str | None = None  # the job's flag that raises the decompression-bomb guard, named in its rows

    def read(self, row: dict):
        raise RuntimeError(f"{type(self).__name__} must implement read()")

    def forget(self) -> None:
        """Drop any cached source after a failure."""

    def describe(self, row: dict, err: Exception) -> str:
        return f"{self.failure}: {type(err).__name__}: {err}"

    def load(self, row: dict) -> dict:
        from spote.images import BadImage, ImageTooLarge, check_question

        if row.get("status") == "error":
            return error_row(row, row.get("error") or "failed upstream")
        if row.get("status") == "skipped":
            return skipped_row(row, row.get("error") or "skipped upstream")
        try:
            check_question(row.get("question"))
        except ValueError as err:
            return error_row(row, str(err))  # "empty question": its own reason
        try:
            pixels = np.ascontiguousarray(np.asarray(self.read(row)))
        except SkipItem as skip:
            return skipped_row(row, str(skip))
        except FileNotFoundError:
            self.forget()
            return error_row(row, f"missing object: {row['source']}")
        except IsADirectoryError:  # not a passing failure: it is a folder tomorrow too
            self.forget()
            return error_row(row, f"unreadable image: {row['source']} is a folder, not an image file")
        except SourceReadError as err:
            self.forget()
            return error_row(row, f"could not read: {row['source']}: {err}")
        except Exception as err:
            self.forget()
            if isinstance(err, BadImage) and self.image_errors_as_image:  # named by its source, as every reason is
                why = str(err) if str(row.get("source") or "") in str(err) else f"{row['source']}: {err}"
                if isinstance(err, ImageTooLarge) and self.max_pixels_flag:
                    why += f", or raise {self.max_pixels_flag}"
                return error_row(row, f"unreadable image: {why}")
            return error_row(row, self.describe(row, err))
        return {**row, "status": "ok", "error": "", "pixels": pixels.tobytes(), "height": pixels.shape[0],
                "width": pixels.shape[1]}

    def __call__(self, batch: dict) -> dict:
        return load_batch(self.load, batch)


def load_batch(load, batch: dict) -> dict:
    """Ray Data batch -> ``load`` per row -> batch; the encoded bytes stay behind (pixels travel on)."""
    out = [load(r) for r in _rows(batch)]
    for r in out:
        r.pop("image_bytes", None)
    return _columns(out)


class ImageLoader(RowLoader):
    """CPU stage: fetch bytes (or take them from the row), decode with the bomb guard, pass pixels on."""

    max_pixels_flag = "--max-pixels"

    def __init__(self, storage_options: dict | None = None, max_pixels: int | None = None):
        from spote.images import DEFAULT_MAX_PIXELS

        self.storage_options, self.max_pixels = storage_options, max_pixels or DEFAULT_MAX_PIXELS

    def read(self, row: dict):
        from spote.images import load_image

        data = row.get("image_bytes")
        if data is None or len(data) == 0:
            data = read_source(row["source"], self.storage_options)
        return load_image(data, self.max_pixels)

    def describe(self, row: dict, err: Exception) -> str:  # storage errors, permissions, ...
        return f"could not read: {row['source']}: {type(err).__name__}: {err}"


class SpotePredictor:
    """Ray Data actor: one frozen VLM per actor, loaded once; SPOT-E per row; never raises per item."""

    def __init__(self, model: str | None = None, policy: dict | None = None, storage_options: dict | None = None,
                 device: str | None = None, threads: int = 1, timeout_s: float | None = None,
                 revision: str | None = None, endpoint: str | None = None, endpoint_options: dict | None = None,
                 model_fingerprint: str | None = None, trust_remote_code: bool = False):
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # an actor's output is a log: no \r redraws
        import torch

        from spote.core import PolicyConfig
        from spote.loading import ModelChanged, checkpoint_fingerprint, load_adapter

        torch.set_num_threads(max(1, threads))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.adapter = load_adapter(model, revision=revision, endpoint=endpoint, endpoint_options=endpoint_options,
                                    device=device, storage_options=storage_options, trust_remote_code=trust_remote_code)
        # the folder the run started with (JobOptions.predictor_kwargs), not weights saved over it since
        if model_fingerprint and (now := checkpoint_fingerprint(model, storage_options)) != model_fingerprint:
            raise ModelChanged(f"model {model or 'spote-tiny'!r} holds other files than when the run started "
                               f"({now[:15]}..., was {model_fingerprint[:15]}...): its answers so far came from the "
                               f"files it started with; put them back to resume it, or start another run")
        self.cfg = PolicyConfig(**(policy or {}))
        self.model_name = self.adapter.name
        self.actor = f"{socket.gethostname()}:{os.getpid()}"
        self.policy_json = json.dumps(self.cfg.__dict__, sort_keys=True)  # as asked: the rows not answered
        self.timeout_s = timeout_s if timeout_s and timeout_s > 0 else None  # seconds per item; None: no limit
        # Ray, Arrow and the model are here for the actor's life: move them out of the cyclic GC's
        # reach, so the collections spote's many short-lived objects trigger stay short
        import gc

        gc.collect()
        gc.freeze()

    def predict(self, row: dict) -> dict:
        """One result row for one item row (``pixels``, ``width``, ``height`` of the decoded image, the
        question, ``choices`` as JSON): ``ok`` with the answer, or ``error`` with its reason (a timeout, a
        model or endpoint error, a question too long or unreadable); a row the loader marked ``error`` or
        ``skipped`` passes through unanswered. Never raises for one item's failure."""
        from PIL import Image

        from spote.core import spote
        from spote.adapters.base import PromptTooLong, UnreadableText
        from spote.images import check_choices

        from .timelimit import DeadlineAdapter, ItemTimeout

        base = {k: row.get(k) for k in row if k not in ("pixels", "height", "width", "image_bytes")}
        base.update(model=self.model_name, policy=self.policy_json, answer="", confidence=float("nan"),
                    token_confidences=None, entropy_initial=float("nan"), entropy_final=float("nan"), entropy_trace=[], boxes=[],
                    forward_passes=0, latency_ms=None, actor=self.actor, evidence_box=None)
        if "evidence_box_pt" in base:  # planned empty (read back as NaN); set below for a PDF page's box
            base["evidence_box_pt"] = None
        if row.get("status") in ("error", "skipped"):
            return base
        t0, passes0 = time.perf_counter(), self.adapter.forward_passes
        adapter = self.adapter
        if self.timeout_s:  # checked before every model call: the loop stops between forward passes
            adapter = DeadlineAdapter(self.adapter, time.monotonic() + self.timeout_s, self.timeout_s)
        try:
            choices = check_choices(json.loads(row["choices"]) if row.get("choices") else None)
        except ValueError as err:  # json's errors included
            return {**base, "status": "error", "error": f"bad choices: {err}"}
        try:
            image = Image.frombytes("RGB", (int(row["width"]), int(row["height"])), row["pixels"])
            res = spote(adapter, image, row["question"], choices, self.cfg)
        except (ItemTimeout, PromptTooLong, UnreadableText) as err:  # the passes and time spent before it are spent
            # a question too long or unreadable is the input's fault, and lasting: "question too long: ...",
            # "unreadable question: ...", not a model error
            why = f"timeout: {err}" if isinstance(err, ItemTimeout) else str(err)
            return {**base, "status": "error", "error": redact_urls(why),
                    "forward_passes": self.adapter.forward_passes - passes0, "latency_ms": (time.perf_counter() - t0) * 1000}
        except Exception as err:  # "endpoint error" or "model error" groups them; the message (and class) follow
            from spote.adapters.endpoint import EndpointError

            what = f"endpoint error: {err}" if isinstance(err, EndpointError) else f"model error: {type(err).__name__}: {err}"
            return {**base, "status": "error", "error": redact_urls(what), "forward_passes": self.adapter.forward_passes - passes0,
                    "latency_ms": (time.perf_counter() - t0) * 1000, "traceback": redact_urls(traceback.format_exc(limit=3))}
        out = {**base, "status": "ok", "error": "", "answer": res.answer, "confidence": res.confidence,
               "token_confidences": res.token_confidences,
               "entropy_initial": res.entropy_trace[0], "entropy_final": res.entropy_trace[-1],
               "entropy_trace": res.entropy_trace, "boxes": res.boxes, "evidence_box": res.evidence_box,
               "forward_passes": res.forward_passes, "latency_ms": (time.perf_counter() - t0) * 1000,
               # as the search ran: use_relevance False where no attention was read (black box, no room for it)
               "policy": json.dumps(res.policy, sort_keys=True)}
        ppp = row.get("points_per_pixel")  # a rendered PDF page (null, read back as NaN, for page images)
        if isinstance(ppp, (int, float)) and ppp > 0 and res.evidence_box:
            out["evidence_box_pt"] = [round(v * float(ppp), 2) for v in res.evidence_box]
        return out

    def __call__(self, batch: dict):
        out = [self.predict(r) for r in _rows(batch)]
        for r in out:
            r.pop("traceback", None)
        return typed_table(_columns(out))


def _arrow_type(spec):
    """A RESULT_TYPES entry as a pyarrow type: an alias, ("list", item) or ("dictionary", value)."""
    import pyarrow as pa

    if isinstance(spec, tuple) and spec[0] == "dictionary":
        return pa.dictionary(pa.int32(), _arrow_type(spec[1]))
    return pa.list_(_arrow_type(spec[1])) if isinstance(spec, tuple) else pa.type_for_alias(spec)


def typed_table(columns: dict):
    """A pyarrow Table with RESULT_TYPES (and JOB_COLUMN_TYPES) for the known columns; the job's other fields
    are inferred."""
    import pyarrow as pa

    types = {**RESULT_TYPES, **JOB_COLUMN_TYPES}
    return pa.table({k: pa.array(v, type=_arrow_type(types[k]) if k in types else None) for k, v in columns.items()})


def _rows(batch: dict) -> list[dict]:
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    return [{k: _py(batch[k][i]) for k in keys} for i in range(n)]


def _py(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray) and v.dtype == object:
        return [_py(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _columns(rows: list[dict]) -> dict:
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    return {k: [r.get(k) for r in rows] for k in keys}
