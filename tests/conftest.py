"""Shared fixtures: a fresh random seed per test (printed on failure), small stores."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

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


def load_topology_module() -> ModuleType:
    """``infra/local/topology.py`` (not a package) imported once, under a fixed name."""
    import importlib.util

    name = "streamsvd_infra_topology"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parent.parent / "infra" / "local" / "topology.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while building the class
    spec.loader.exec_module(module)
    return module


def write_triplets(path: Path, rows: object, cols: object, values: object) -> Path:
    """``row_id, col_id, value`` triplets as CSV (``.csv``) or Parquet (otherwise)."""
    import pyarrow as pa

    table = pa.table({"row_id": rows, "col_id": cols, "value": np.asarray(values, float)})
    if path.suffix == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    return path


def count_landing_hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every file the landing listing hashes (the hashes stay real)."""
    import streamsvd.store.landing as landing

    hashed: list[Path] = []
    real_hash = landing.content_hash

    def counting_hash(path: Path, *, dataset: str | None = None) -> str:
        hashed.append(path)
        return real_hash(path, dataset=dataset)

    monkeypatch.setattr(landing, "content_hash", counting_hash)
    return hashed


def fitted_store(
    tmp: Path, data: np.ndarray, rank: int, *, float64: bool = False, **fit_args: Any
) -> Path:
    """A store of ``data`` (64-row chunks) with a synchronous fit of ``rank``; with
    ``float64`` both the stored rows and the fit's power passes are float64."""
    import streamsvd

    options = streamsvd.IngestOptions(chunk_rows=64, dtype="float64" if float64 else None)
    store = tmp / "store"
    streamsvd.ingest(store, [data], options=options)
    if float64:
        fit_args = {"dtype": "float64", **fit_args}
    streamsvd.fit(store, rank=rank, scheduler="sync", **fit_args)
    return store


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import streamsvd, streamsvd.store.checkpoints as checkpoints

    point, nth = sys.argv[1], int(sys.argv[2])
    seen = {"n": 0}

    def reached(name):
        if name == point:
            seen["n"] += 1
            if seen["n"] == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    checkpoints.reached = reached
    store, sources = sys.argv[3], sys.argv[4:]
    """
)


def run_killed(job: str, point: str, nth: int, store: Path, sources: list[Path]) -> int:
    """Run ``job`` (Python using ``store`` and ``sources``) in a child process that
    SIGKILLs itself the ``nth`` time it reaches the checkpoint ``point``; returns
    the child's return code (``-SIGKILL`` when it was killed)."""
    code = _KILLER + textwrap.dedent(job)
    cmd = [sys.executable, "-c", code, point, str(nth), str(store), *map(str, sources)]
    return subprocess.run(cmd, capture_output=True, timeout=120, check=False).returncode
