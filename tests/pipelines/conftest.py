"""A real local Ray (the S3 API, moto's server, comes from tests/conftest.py)."""

from __future__ import annotations

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
