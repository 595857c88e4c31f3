"""Shared fixtures: tiny *real* transformers models built from configs (random weights), and a real
S3 API (moto's server over HTTP on 127.0.0.1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def random_tiny_dir(tmp_path_factory):
    """spote-tiny's architecture with random weights, saved like any checkpoint."""
    from training.build import build_model, build_processor

    d = tmp_path_factory.mktemp("random-tiny")
    processor = build_processor()
    model = build_model(processor, seed=1)
    model.save_pretrained(d, safe_serialization=True)
    processor.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def random_adapter(random_tiny_dir):
    from spote.loading import load_adapter

    return load_adapter(random_tiny_dir, device="cpu")


@pytest.fixture(scope="session")
def shipped_adapter():
    from spote.loading import DEFAULT_MODEL, load_adapter

    if not (DEFAULT_MODEL / "model.safetensors").exists():
        pytest.skip("shipped spote-tiny weights missing")
    return load_adapter(None, device="cpu")


@pytest.fixture(scope="session")
def moto_server():
    """The S3 endpoint itself, so a test can take it down and bring it back (state stays in-process)."""
    from moto.server import ThreadedMotoServer

    from cluster.local import free_port

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(moto_server):
    endpoint = f"http://127.0.0.1:{moto_server._port}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    yield endpoint


@pytest.fixture(scope="session")
def s3(s3_server):
    import boto3
    import s3fs

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="spote")
    return s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=s3_server, use_listings_cache=False)


@pytest.fixture
def files_holding():
    """``files_holding(secret, *folders)``: the files under ``folders`` whose bytes hold ``secret`` (sockets
    skipped), for tests that a credential reached no output, report or log."""
    def find(secret: str, *folders) -> list[str]:
        return [str(p) for folder in folders for p in Path(folder).rglob("*")
                if p.is_file() and not p.is_socket() and secret.encode() in p.read_bytes()]

    return find
