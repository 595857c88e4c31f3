"""Whole-file writes: a reader never sees part of a file, on a folder and on S3 (moto's server)."""

import json
import os
import threading

import pytest

from pipelines.storage import read_bytes, retrying, write_bytes, write_text


def test_a_file_rewritten_while_read_is_always_read_whole(lease_uri):
    uri = lease_uri
    write_text(uri, json.dumps({"beat": 0, "pad": "x" * 4000}))
    stop = threading.Event()

    def rewrite():
        beat = 0
        while not stop.is_set():
            beat += 1
            write_text(uri, json.dumps({"beat": beat, "pad": "x" * 4000}))

    writer = threading.Thread(target=rewrite)
    writer.start()
    beats = []
    try:
        for _ in range(300 if uri.startswith("s3://") else 3000):
            beats.append(json.loads(retrying(read_bytes, uri))["beat"])   # raises on a part-written file
    finally:
        stop.set()
        writer.join()
    assert len(set(beats)) > 1                                       # the reads did overlap the rewrites
    if not uri.startswith("s3://"):
        assert os.listdir(os.path.dirname(uri)) == ["lease.json"]    # no temporary file is left behind


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "plan.json"
    write_bytes(str(path), b'{"rows": 3}')
    with pytest.raises(TypeError):
        write_bytes(str(path), "not bytes")                          # fails inside the write itself
    assert path.read_bytes() == b'{"rows": 3}'
    assert os.listdir(tmp_path) == ["plan.json"]


def test_a_write_makes_the_missing_folders(tmp_path):
    write_bytes(str(tmp_path / "a" / "b" / "c.json"), b"{}")
    assert (tmp_path / "a" / "b" / "c.json").read_bytes() == b"{}"


@pytest.mark.parametrize("text, expected", [("5", "not int"), ('["x"]', "not list"), ("null", "not NoneType"),
                                            ("{anon: true}", "not valid JSON")])
def test_storage_options_that_are_not_a_json_object_are_one_clear_error(text, expected):
    from pipelines.storage import parse_storage_options

    with pytest.raises(ValueError, match=expected) as err:
        parse_storage_options(text)
    assert "--storage-options" in str(err.value)


def test_storage_options_merge_over_the_endpoint_in_the_environment(monkeypatch):
    from pipelines.storage import parse_storage_options

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert parse_storage_options('{"anon": true}') == {"anon": True, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    assert parse_storage_options('{"endpoint_url": "http://h:1"}') == {"client_kwargs": {"endpoint_url": "http://h:1"}}
    # s3fs's own spelling names the endpoint too: the environment's replaced it without a word
    named = '{"client_kwargs": {"endpoint_url": "http://h:2", "region_name": "eu-west-1"}}'
    assert parse_storage_options(named) == {"client_kwargs": {"endpoint_url": "http://h:2", "region_name": "eu-west-1"}}
    assert parse_storage_options('{"client_kwargs": {"region_name": "eu-west-1"}}') == {
        "client_kwargs": {"region_name": "eu-west-1", "endpoint_url": "http://127.0.0.1:9"}}


def test_a_parquet_file_whose_table_cannot_be_written_leaves_the_old_one(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.storage import write_parquet_file

    path = tmp_path / "results" / "part-00000.parquet"
    good = pa.table({"id": ["a", "b"]})
    write_parquet_file(good, str(path))
    bad = pa.table({"x": pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval())})
    with pytest.raises(pa.ArrowNotImplementedError):                 # Parquet has no such type
        write_parquet_file(bad, str(path))
    assert pq.read_table(path).equals(good) and os.listdir(path.parent) == [path.name]


@pytest.mark.parametrize("code", ["ENAMETOOLONG", "EROFS", "ENOSPC"])
def test_a_disk_error_another_try_meets_again_is_not_retried(code):
    """A name too long or a full or read-only disk was retried for a minute as if a store had blinked; a
    connection reset still is retried."""
    import errno

    calls = []

    def fail(exc):
        calls.append(1)
        raise exc

    with pytest.raises(OSError) as err:
        retrying(fail, OSError(getattr(errno, code), os.strerror(getattr(errno, code))), first_wait=0.0)
    assert err.value.errno == getattr(errno, code) and len(calls) == 1
    calls.clear()
    with pytest.raises(ConnectionResetError):
        retrying(fail, ConnectionResetError("reset"), attempts=3, first_wait=0.0)
    assert len(calls) == 3
