"""Planning: the driver lists *sources* (scenes, documents, manifest parts); Ray Data tasks expand
each source into its item rows (tiles, pages x questions, manifest rows) and write the run's plan.

The driver never holds item rows: its memory grows with the number of sources, not with tiles,
pages or rows. The plan is Parquet under the run's staging folder, so a restarted driver reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa

from spote.uris import redact_uri

from .storage import filesystem, is_local

# every item row carries these; a job's plan schema adds its own columns
BASE_FIELDS = (("id", pa.string()), ("source", pa.string()), ("question", pa.string()), ("choices", pa.string()),
               ("status", pa.string()), ("error", pa.string()))
CHUNK_ROWS = 4096          # item rows per table an expansion task yields
SKIPPED_NAMED = 100        # skipped sources named in the summary (all are counted)


def lone_surrogate(text: str) -> str | None:
    """The first lone surrogate in ``text``, escaped (``\\ud800``), or None. JSON's and YAML's escapes can
    name half a UTF-16 pair, and ``surrogateescape`` decodes bytes that are not UTF-8 to one; no Arrow
    string (nor any file) can hold it."""
    odd = next((c for c in text if "\ud800" <= c <= "\udfff"), None)
    return None if odd is None else f"\\u{ord(odd):04x}"


def printable_name(path: str) -> str:
    """A file name the OS gave with bytes that are not UTF-8 (decoded to lone surrogates), shown with those
    bytes escaped: ``Rechnung_M\\xfcller.png``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace") if lone_surrogate(path) is not None else path


def not_utf8_path(what: str, path: str) -> str | None:
    """The refusal of a path given by ``what`` (``--input``, ``question file``) whose bytes are not UTF-8, or
    None: results, summaries and Arrow name their paths as text, which cannot hold it."""
    return f"{what} {printable_name(path)}: the path is not UTF-8 text; rename it" if lone_surrogate(path) else None


def not_utf8_text(head: bytes) -> str | None:
    """Why the first bytes of a text file (a manifest, a question file) show it is UTF-16 (Excel's and
    PowerShell's "Unicode"), or None. Without a byte-order mark UTF-16 decodes as UTF-8 without an error,
    every other byte a NUL, so that names would hold NULs and match nothing."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "is UTF-16 or UTF-32 text (it starts with a byte-order mark), not UTF-8; save it as UTF-8"
    sample = head[:256] if len(head) % 2 == 0 else head[:min(len(head) - 1, 256)]
    for nul, other in ((sample[1::2], sample[0::2]), (sample[0::2], sample[1::2])):
        if len(sample) >= 4 and not nul.strip(b"\x00") and b"\x00" not in other:
            return "is UTF-16 text (every other byte is NUL), not UTF-8; save it as UTF-8"
    return None


def plan_schema(*job_fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([*BASE_FIELDS, *job_fields, ("run_id", pa.string())])


@dataclass(frozen=True)
class Plan:
    """What a job will do, as the driver knows it: its sources and how a task expands one.

    ``sources``: one small dict per scene / document / manifest part (from the listing).
    ``expand(source) -> iterable of item-row dicts``: runs in Ray tasks; must be picklable.
    ``ids_from_sources``: every item id starts with its source's unique relative path, so ids are
    unique when the listing's paths are; otherwise (manifests, whose ids the user writes) the plan's
    ids are checked with a Ray Data group-by before any item is answered.
    ``skipped``: [{"source", "reason"}] of what the listing found but will not process.
    """

    sources: list[dict]
    expand: Callable[[dict], Iterable[dict]]
    schema: pa.Schema
    ids_from_sources: bool = True
    skipped: list[dict] = field(default_factory=list)
    count_sources: bool = False   # count distinct ``source`` values in the plan (documents_processed)
    empty_reason: str = ""        # what to say when there are no sources although the input was read
    input_version: str = ""       # ``listing_version`` of the input, part of the run's settings ("" = not kept)

    @staticmethod
    def of_rows(rows: list[dict], schema: pa.Schema | None = None) -> "Plan":
        """A plan whose items are already known (small inputs, tests): each row is its own source."""
        if schema is None:
            extra = sorted({k for r in rows for k in r} - {n for n, _ in BASE_FIELDS} - {"run_id"})
            schema = plan_schema(*[(k, _infer_type([r.get(k) for r in rows])) for k in extra])
        return Plan([dict(r) for r in rows], _identity, schema, ids_from_sources=False)


def _identity(source: dict) -> Iterable[dict]:
    yield source


def _infer_type(values: list) -> pa.DataType:
    t = pa.array([v for v in values if v is not None]).type if any(v is not None for v in values) else pa.string()
    return pa.string() if pa.types.is_null(t) else t


def expand_sources(batch: pa.Table, *, expand, schema: pa.Schema, run_id: str):
    """Ray Data UDF: a batch of sources -> tables of item rows (``schema``), ``CHUNK_ROWS`` at a time."""
    rows: list[dict] = []
    for source in batch.to_pylist():
        for row in expand(source):
            row.setdefault("status", "")
            row.setdefault("error", "")
            row["run_id"] = run_id
            rows.append(row)
            if len(rows) >= CHUNK_ROWS:
                yield rows_table(rows, schema)
                rows = []
    if rows:
        yield rows_table(rows, schema)


def rows_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Row dicts as a table of exactly ``schema`` (missing keys are nulls, extra keys dropped)."""
    return pa.table({f.name: pa.array([r.get(f.name) for r in rows], type=f.type) for f in schema}, schema=schema)


# ---------------------------------------------------------------- listing

def source_uri(input_uri: str, path: str) -> str:
    """An fsspec path found under ``input_uri`` as a URI with the input's protocol; under a local path or
    a ``file:`` URI, the plain local path (one name per file, however the input was spelled)."""
    if input_uri.startswith("file:"):
        return path
    proto = input_uri.split("://", 1)[0] + "://" if "://" in input_uri else ""
    return proto + path if proto and not path.startswith(proto) else path


def relative_path(root: str, path: str) -> str:
    """``path`` relative to the listing root, POSIX style (the source's id within its job)."""
    root = root.rstrip("/")
    if path == root:
        return PurePosixPath(path).name
    return path[len(root):].lstrip("/") if path.startswith(root + "/") else PurePosixPath(path).name


def list_sources(input_uri: str, storage_options: dict | None, reason_to_skip: Callable[[str], str | None],
                 ) -> tuple[list[dict], list[dict]]:
    """Every file under ``input_uri`` (or the file itself): (accepted, skipped).

    accepted: [{"uri", "rel", "size", "mtime", "etag"}] sorted by path; the metadata is what the
    store's listing gives (no extra requests). skipped: [{"source", "reason"}] where
    ``reason_to_skip(rel)`` gave a reason, and hidden files, of a folder; a file named itself that the job
    does not read raises ValueError (a nightly job would commit an empty run and exit 0).
    """
    fs, root = filesystem(input_uri, storage_options)
    # a mistyped local path would otherwise commit an empty run under the night's run id; on a store a
    # prefix exists only through its objects, so an empty one is an empty input, not an error
    if is_local(fs) and not fs.exists(root):
        raise FileNotFoundError(f"--input {input_uri}: no such file or folder")
    if is_local(fs) and not (os.path.isdir(root) or os.path.isfile(root)):  # a FIFO, <(zcat x.gz), a device
        raise ValueError(f"--input {input_uri}: not a regular file or folder (a pipe or a device); a job lists its "
                         "input and reads it again on resume: save it to a file first")
    if (why := not_utf8_path("--input", str(input_uri))) is not None:
        raise ValueError(why)
    named_file = False
    try:
        if fs.isfile(root):
            found, named_file = {root: fs.info(root)}, True
        else:
            found = _find_local(root) if is_local(fs) else fs.find(root, detail=True)
    except (FileNotFoundError, PermissionError) as err:  # s3fs: "The specified bucket does not exist", "Forbidden"
        if str(input_uri) in str(err):
            raise
        what = ("no such bucket or container" if isinstance(err, FileNotFoundError)
                else "access denied (check the credentials and their permissions)")
        raise type(err)(f"--input {redact_uri(input_uri)}: {what}: {err}") from None
    except Exception as err:  # an http(s) server's refusal (aiohttp's errors), its text holding the whole URL
        if type(err).__module__.split(".")[0] != "aiohttp":
            raise
        status = getattr(err, "status", None)
        what = ("access denied" if status in (401, 403) else "the server answered") + f" HTTP {status}" if status \
            else f"cannot be read: {type(err).__name__}"
        raise ValueError(f"--input {redact_uri(input_uri)}: {what}") from None
    # a named file (its name ends as the job's inputs do) that is not there is a typo, not an empty prefix
    named = PurePosixPath(redact_uri(root))  # an http(s) URL's name without its query
    if not found and not is_local(fs) and named.suffix and reason_to_skip(named.name) is None:
        raise FileNotFoundError(f"--input {redact_uri(input_uri)}: no such object, and no objects under it")
    accepted, skipped = [], []
    for path in sorted(found):
        info = found[path]
        rel = relative_path(root, path)
        if redact_uri(input_uri) != input_uri:  # an http(s) URL's query (a signature?) is no part of its name
            rel = rel.split("?", 1)[0].split("#", 1)[0]
        name = PurePosixPath(rel).name
        if info.get("type") == "directory":  # a store's folder marker object
            continue
        if lone_surrogate(rel) is not None:  # a name in another encoding (an old zip, an SMB share): no id can hold it
            skipped.append({"source": printable_name(rel), "reason": "path is not UTF-8 (rename it to read it)"})
            continue
        if info.get("type", "file") != "file":  # a link that cannot be followed, a FIFO, a socket
            skipped.append({"source": rel, "reason": info.get("skip_reason") or "not a regular file"})
            continue
        reason = "hidden file" if name.startswith(".") and not named_file else reason_to_skip(rel)
        if reason and named_file:  # named on purpose: not a folder's stray file, and no empty run to commit
            raise ValueError(f"--input {redact_uri(input_uri)}: the job does not read this file ({reason})")
        if reason:
            skipped.append({"source": rel, "reason": reason})
            continue
        etag = info.get("ETag") or info.get("etag") or ""
        mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("updated")
        accepted.append({"uri": source_uri(input_uri, path), "rel": rel, "size": int(info.get("size") or 0),
                         "mtime": str(mtime if mtime is not None else ""), "etag": str(etag).strip('"')})
    return accepted, skipped


def listing_version(sources: list[dict]) -> str:
    """The version of an input as its listing shows it (``list_sources``' entries): the number of files,
    their bytes and a digest of each one's relative path, size, modification time and ETag, e.g.
    ``"2 files, 1,280 bytes, digest 3f9a0c1d2e4b5a69"``. Part of a run's settings (hashed into the default
    run id), so that a manifest or a scene edited, added or removed is a new run, not a committed one
    returned as if it answered the new input; the same rule as make's and rsync's (no file is read)."""
    h = hashlib.blake2b(digest_size=8)
    for s in sorted(sources, key=lambda s: s["rel"]):
        h.update(json.dumps([s["rel"], s.get("size", 0), s.get("mtime", ""), s.get("etag", "")]).encode() + b"\n")
    size = sum(int(s.get("size") or 0) for s in sources)
    return f"{len(sources)} file{'' if len(sources) == 1 else 's'}, {size:,} bytes, digest {h.hexdigest()}"


def _find_local(root: str) -> dict[str, dict]:
    """Every file under a local folder, as ``fs.find(root, detail=True)`` gives it ({path: {"type", "size",
    "mtime"}}), with symbolic links followed and nothing left out without a reason. fsspec lists a link as
    type ``other`` and does not follow it, and leaves out a folder it cannot list (its ``on_error`` does
    not reach subfolders), so this walks with ``os.walk``.

    A link to a file is that file (its size and mtime); a linked folder is read under the link's name.
    Each folder and file is read once (unlike ``find -L``): a link to a folder read already (the input, a
    folder in it, another link's) or holding the input is not followed, and a file reached by a second
    name (a link to a file of the input, two links into one folder) is read under its own name, or the
    first in order. What is not read is type ``other`` with a ``skip_reason``: a link that dangles or
    loops, a FIFO, a socket or a link to one, a folder that cannot be listed, a second name."""
    import errno
    import os
    import stat

    real_root = os.path.realpath(root)
    walked, found, folders = [real_root], {}, [(root, False)]

    def file_info(st, linked: bool) -> dict:
        return {"type": "file", "size": st.st_size, "mtime": st.st_mtime, "linked": linked}

    while folders:
        folder, linked = folders.pop()
        failed: list[OSError] = []
        for dirpath, dirnames, filenames in os.walk(folder, onerror=failed.append):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    if name in filenames:  # folders are walked by os.walk itself
                        st = os.stat(path)
                        found[path] = (file_info(st, linked) if stat.S_ISREG(st.st_mode)
                                       else {"type": "other", "skip_reason": "not a regular file"})
                    continue
                try:
                    st = os.stat(path)  # follows the link
                except OSError as err:
                    reason = "symbolic link that loops" if err.errno == errno.ELOOP else "broken symbolic link"
                    found[path] = {"type": "other", "skip_reason": reason}
                    continue
                real = os.path.realpath(path)
                if stat.S_ISREG(st.st_mode):
                    found[path] = file_info(st, True)
                elif not stat.S_ISDIR(st.st_mode):
                    found[path] = {"type": "other", "skip_reason": "symbolic link to something that is not a file or folder"}
                elif any(_within(real, w) for w in walked) or _within(real_root, real):
                    found[path] = {"type": "other",
                                   "skip_reason": "symbolic link to a folder read already, or holding the input"}
                else:
                    walked.append(real)
                    folders.append((path, True))
        for err in failed:
            found[str(err.filename or folder)] = {"type": "other",
                                                  "skip_reason": f"folder cannot be read ({err.strerror or err})"}
    first_name: dict[tuple[int, int], str] = {}
    for path in sorted(found, key=lambda p: (found[p].get("linked", False), p)):  # own names first
        if found[path]["type"] != "file":
            continue
        st = os.stat(path)
        kept = first_name.setdefault((st.st_dev, st.st_ino), path)
        if kept != path:
            found[path] = {"type": "other", "skip_reason": f"a second name of {relative_path(root, kept)} (read once)"}
    return found


def _within(path: str, folder: str) -> bool:
    import os

    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def skip_by_extension(accepted_exts: Iterable[str], what: str) -> Callable[[str], str | None]:
    """A ``reason_to_skip`` that accepts the given extensions (case-insensitive) and names the rest."""
    exts = tuple(e.lower() for e in accepted_exts)

    def reason(rel: str) -> str | None:
        if rel.lower().endswith(exts):
            return None
        suffix = PurePosixPath(rel).suffix.lower() or "(no extension)"
        return f"not a {what} format this job reads: {suffix}"

    return reason


def summarise_skipped(skipped: list[dict]) -> dict:
    """``skipped_sources`` for the summary: every skip counted by reason, the first ones named."""
    by_reason: dict[str, int] = {}
    for s in skipped:
        by_reason[s["reason"]] = by_reason.get(s["reason"], 0) + 1
    return {"count": len(skipped), "by_reason": by_reason, "named": skipped[:SKIPPED_NAMED]}


def check_source_ids_unique(sources: list[dict], key: str = "rel") -> None:
    """Source ids (relative paths) are unique: a clash is refused before any work, naming both."""
    seen: dict[str, str] = {}
    for s in sources:
        k = s[key]
        if k in seen:
            raise ValueError(f"two sources share the id {k!r}: {seen[k]} and {s.get('uri', k)}")
        seen[k] = s.get("uri", k)


# ---------------------------------------------------------------- id digests

def id_hashes(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash per id (uint64); their sum mod 2**64 is a digest of the id multiset."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little")
                        for i in ids.to_pylist()), dtype=np.uint64, count=len(ids))


def digest_sum(hashes: np.ndarray) -> int:
    return int(hashes.sum(dtype=np.uint64)) if len(hashes) else 0


MASK64 = (1 << 64) - 1
