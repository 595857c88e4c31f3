"""A real local Ray and a real S3 API (moto's server over HTTP on 127.0.0.1)."""

from __future__ import annotations

import os
import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server():
    """The S3 endpoint itself, so a test can take it down and bring it back (state stays in-process)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port())
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


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray for the whole session, started after the S3 env is set so workers inherit it."""
    import ray

    from pipelines.job import init_ray

    init_ray(num_actors=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def fast_policy():
    return '{"budget": 4, "group_size": 2, "steps": 1}'
