"""A real local Ray (the S3 API, moto's server, comes from tests/conftest.py)."""

from __future__ import annotations

import time

import pytest


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


@pytest.fixture(params=["local", "s3"])
def lease_uri(request, tmp_path):
    """Where a run's lease would be: in a folder, and on S3 (a fresh prefix per test)."""
    if request.param == "local":
        return str(tmp_path / "_runs" / "r" / "lease.json")
    request.getfixturevalue("s3")
    return f"s3://spote/lease-{request.node.name.replace('[', '-').rstrip(']')}-{time.time_ns()}/lease.json"
