"""Shared fixtures: a fresh random seed per test (printed on failure), small stores."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """A fresh seed for each run; set STREAMSVD_TEST_SEED to replay a failure."""
    value = int(os.environ.get("STREAMSVD_TEST_SEED") or secrets.randbits(32))
    request.node.user_properties.append(("seed", value))
    print(f"seed={value}")  # shown by pytest on failure
    return value


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_npy(path: Path, data: np.ndarray) -> Path:
    np.save(path, data, allow_pickle=False)
    return path
