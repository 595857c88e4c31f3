"""Shared fixtures: tiny *real* transformers models built from configs (random weights)."""

from __future__ import annotations

import os

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
