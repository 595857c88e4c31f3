"""Where a path or URI points: a local file (a plain path or a ``file:`` URI, RFC 8089) or an object in a
remote store that fsspec reads (``s3://``, ``https://``, ...)."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit, urlunsplit

_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)


def is_remote(uri: str) -> bool:
    """True for a URI with a scheme other than ``file:`` (``s3://b/k``, ``https://h/p``)."""
    return "://" in uri and not lower_scheme(uri).startswith("file:")


# schemes whose URIs hold no credentials and whose keys may hold '@', '?' and '#'
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "hf", "memory", "file"})


def lower_scheme(uri: str) -> str:
    """``uri`` with its scheme in lower case (``HTTPS://h/a.png`` -> ``https://h/a.png``): schemes are
    case-insensitive (RFC 3986, 3.1), fsspec's registry is not ("Protocol not known: HTTPS")."""
    scheme, sep, rest = uri.partition(":")
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]+", scheme) and scheme != scheme.lower() and \
            (rest.startswith("//") or scheme.lower() == "file"):
        return f"{scheme.lower()}:{rest}"
    return uri


def redact_uri(uri: str) -> str:
    """``uri`` as it may be recorded or shown: any URI without the ``user:password@`` of its authority
    (``ftp://``, ``sftp://``, ``smb://`` too), and an http(s) URL also without its query string or fragment,
    either of which may carry a credential (a presigned URL's signature, ``?token=``). Other URIs keep their
    ``?`` and ``#`` (part of an S3 key or a file name); local paths are returned as they are."""
    scheme, sep, rest = uri.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) or scheme.lower() in OBJECT_STORES:
        return uri  # an object store's '@', '?' and '#' are a key's characters, and it has no user:password
    http = scheme.lower() in ("http", "https")
    before_query = rest.split("?", 1)[0] if http else rest
    if "@" in before_query:  # past the last '@' of it: a password with an unescaped '/' or '#' is not shown either
        rest = before_query.rsplit("@", 1)[1] + rest[len(before_query):]
    if not http:
        return f"{scheme}://{rest}"
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    except ValueError:
        return "<unparseable URL>"


def redact_urls(text: str) -> str:
    """``text`` (a message) with every URI in it as ``redact_uri`` gives it: an error about a presigned or
    password-bearing URL names the object, not the credential."""
    return _URL.sub(lambda m: redact_uri(m.group()), text)


def local_path(uri: str) -> str:
    """A ``file:`` URI as the local path it names, percent-decoded (RFC 8089: ``file:///tmp/a%20b.png`` is
    ``/tmp/a b.png``, as ``Path.as_uri()`` writes it; ``file://localhost/...`` and ``file:/tmp/x`` are local
    too); anything else as it is.

    Raises:
        ValueError: a ``file:`` URI naming another host (``file://server/share/x``).
    """
    uri = lower_scheme(uri)
    if not uri.startswith("file:"):
        return uri
    rest = uri[len("file:"):]
    host = ""
    if rest.startswith("//"):  # file://host/path; no query or fragment is split off: "#" and "?" are in names
        host, _, path = rest[2:].partition("/")
        rest = "/" + path
    if host not in ("", "localhost"):
        raise ValueError(f"{uri}: a file URI on another host ({host}) cannot be read here")
    # percent-escapes are bytes (RFC 3986): "M%FCller.png" names a Latin-1 file, as the OS gives it to Python
    decoded = os.fsdecode(unquote_to_bytes(rest))
    # a name that holds "%20" itself (a download saved as is), written into a URI unencoded, is that name
    return rest if decoded != rest and not os.path.exists(decoded) and os.path.exists(rest) else decoded


@contextlib.contextmanager
def replacing(path: str | Path):
    """A temporary name beside ``path`` (the same extension, for writers that pick their format by it) to write;
    moved over ``path`` when the block ends without an error, removed when it fails: a full disk or a
    failed write leaves ``path`` as it was, not a file cut short."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.part{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
