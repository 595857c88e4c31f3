"""Storage: one fsspec view of local folders and object stores (``s3://``), with retries.

Object stores blip (a restarted endpoint, a throttled request); every read and write here either
succeeds, retries a connection-level error with exponential back-off, or raises.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
import uuid

import fsspec

from spote.uris import local_path

# connection-level messages of s3fs/botocore/aiohttp that Ray Data should retry when writing files
TRANSIENT_STORAGE_ERRORS = ("Could not connect to the endpoint URL", "Cannot connect to host", "Connection reset",
                            "Connection refused", "EndpointConnectionError", "ServerDisconnectedError", "Read timeout")


def parse_storage_options(text: str | None) -> dict:
    """``--storage-options`` JSON, merged over the S3 endpoint/credentials found in the environment: an
    endpoint the JSON names (``endpoint_url``, or ``client_kwargs.endpoint_url`` as s3fs takes it) wins
    over ``AWS_ENDPOINT_URL`` / ``S3_ENDPOINT_URL``."""
    opts: dict = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")
    if text:
        from spote.cli import unique_keys

        try:
            extra = json.loads(text, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as err:
            raise ValueError(f"--storage-options is not valid JSON: {err}") from err
        except ValueError as err:
            raise ValueError(f"--storage-options: {err}") from None
        if not isinstance(extra, dict):
            raise ValueError(f"--storage-options must be a JSON object of fsspec options, like "
                             f'\'{{"anon": true}}\', not {type(extra).__name__}')
        client = extra.get("client_kwargs")
        if isinstance(client, dict) and client.get("endpoint_url"):
            endpoint = client["endpoint_url"]
        if extra.get("endpoint_url"):
            endpoint = extra["endpoint_url"]
        extra.pop("endpoint_url", None)
        opts.update(extra)
    if endpoint:
        opts["client_kwargs"] = {**(opts.get("client_kwargs") or {}), "endpoint_url": endpoint}
    return opts


def filesystem(uri: str, storage_options: dict | None = None):
    """(fs, path) for a local path or any fsspec URI; s3 listings are never cached (they change under us).
    A local path comes back absolute, normalised and with links to folders resolved (``../in/./a.pdf``, or
    a link to the folder, as ``/work/in/a.pdf``): it names sources in results and the documents ledger, and
    one file must have one name however ``--input`` was spelled. A link to a file keeps its own name,
    which is the item's name (its id) in a job."""
    uri = local_path(uri)
    opts = dict(storage_options or {})
    if uri.startswith("s3://"):
        opts.setdefault("use_listings_cache", False)
        return fsspec.core.url_to_fs(uri, **opts)
    fs, path = fsspec.core.url_to_fs(uri)
    if not is_local(fs):
        return fs, path
    if os.path.isdir(path):
        return fs, os.path.realpath(path)
    return fs, os.path.join(os.path.realpath(os.path.dirname(path) or "."), os.path.basename(path))


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    """A whole file. On S3 an object up to s3fs's block size (50 MiB) is one GET, so a small file
    rewritten meanwhile (a run lease) reads as the old bytes or the new ones; ``open`` would send a
    HEAD first and fail its ETag check instead. Larger objects come in ranged GETs. Raises
    FileNotFoundError."""
    fs, path = filesystem(uri, storage_options)
    return fs.cat_file(path)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def transient_errors() -> tuple[type[BaseException], ...]:
    """The exception classes of connection-level storage failures, which another try may not meet: the
    builtins' (``OSError`` and its ``ConnectionError`` / ``TimeoutError``), and botocore's, which s3fs
    raises as they are and which are no ``OSError`` (``EndpointConnectionError``, ``ConnectTimeoutError``,
    ``ReadTimeoutError``, ``ConnectionClosedError``: its ``ConnectionError`` and ``HTTPClientError``)."""
    found: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # no S3 support installed: nothing of botocore's can be raised
        return found
    return (*found, BotoConnectionError, HTTPClientError)


# OSErrors of a local disk that another try meets again: a name too long, a read-only or full file system, a
# loop of links, a file over the size limit
PERMANENT_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ELOOP, errno.EFBIG})


def retrying(fn, *args, attempts: int = 8, first_wait: float = 0.5, **kwargs):
    """Call ``fn``, retrying connection-level storage errors (``transient_errors``) with exponential
    back-off: waits of 0.5, 1, 2, ... s, about a minute over the 8 attempts.

    Object stores blip (a restarted endpoint, a throttled request); a run must ride that out
    rather than fail or, worse, commit half its rows.
    """
    wait = first_wait
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError):
            raise  # the same on every try
        except transient_errors() as err:
            if attempt == attempts - 1 or getattr(err, "errno", None) in PERMANENT_ERRNOS:
                raise
            print(f"[storage] {type(err).__name__}: {err}; retrying in {wait:.1f}s")
            time.sleep(wait)
            wait *= 2



def write_text(uri: str, text: str, storage_options=None) -> None:
    write_bytes(uri, text.encode(), storage_options)


def write_parquet_file(table, uri: str, storage_options=None) -> None:
    """One Parquet file, the table's schema metadata (GeoParquet's ``geo``) kept, written whole (``storage.write_bytes``)."""
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes(uri, buf.getvalue(), storage_options)


def write_bytes(uri: str, data: bytes, storage_options=None) -> None:
    retrying(_write_bytes, uri, data, storage_options)


def _write_bytes(uri: str, data: bytes, storage_options=None) -> None:
    """Write a whole file. A reader sees the old bytes or the new ones, never a part: an object
    store's PUT is atomic; on a local disk the bytes go to a hidden file in the same folder that
    ``os.replace`` then puts in place (one rename on one file system)."""
    fs, p = filesystem(uri, storage_options)
    parent = p.rsplit("/", 1)[0] or "/"
    if not is_local(fs):
        if getattr(fs, "auto_mkdir", None) is not None:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(p, "wb") as f:
            f.write(data)
        return
    tmp = os.path.join(parent, f".{os.path.basename(p)}.{uuid.uuid4().hex}.tmp")
    try:
        with _created(tmp) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes reach the disk before the name does: whole after a power loss too
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _created(path: str):
    """``open(path, "wb")``, its folder made first; made again if an empty folder was removed between the
    two (a driver releasing its lease drops an empty ``_runs/<id>/`` that another may be writing into)."""
    for last in (False, True):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            return open(path, "wb")
        except FileNotFoundError:
            if last:
                raise


def is_local(fs) -> bool:
    """Whether an fsspec filesystem is this machine's disk (where folders exist apart from their files)."""
    proto = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return any(p in ("file", "local") for p in proto)


def arrow_fs(fs):
    import pyarrow.fs as pafs

    if "file" in str(fs.protocol) or "local" in str(fs.protocol):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def stable_cwd() -> str:
    """This process's working directory, stepping back into it when it was replaced under us.

    Ray can extract a job's ``working_dir`` package again under the same path while the job's
    driver runs, leaving the driver in a deleted directory: ``os.getcwd()`` then raises, and so do
    libraries that call it (fsspec's local ``rm``, a child Python resolving its paths). The ``PWD``
    the process started in names the new copy.

    Raises:
        FileNotFoundError: the directory is gone and ``PWD`` names none.
    """
    try:
        return os.getcwd()
    except FileNotFoundError:
        pwd = os.environ.get("PWD", "")
        if pwd and os.path.isdir(pwd):
            os.chdir(pwd)
            return pwd
        raise

