# The studies' tests share the package tests' model fixtures (`make -C research test` runs them alone).
from tests.conftest import random_adapter, random_tiny_dir, shipped_adapter  # noqa: F401
