"""The deployed shape on loopback: a real Prefect server, a Dask scheduler, two workers.

Uses ``infra/local`` (the same scripts a developer runs by hand). One test serves the
pipeline deployment with ``flow.serve`` in a child process and triggers a run through
the Prefect API; another kills a Dask worker in the middle of a fit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import streamsvd
import streamsvd.api
from streamsvd.store.repository import Store
from tests.conftest import load_topology_module

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    topo = load_topology_module().start_topology(
        tmp_path_factory.mktemp("topology"), workers=2, prefect=True
    )
    try:
        yield topo
    finally:
        topo.stop()


def make_landing(folder: Path, rng: np.random.Generator, files: int, rows: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    basis = rng.standard_normal((5, 40)) * (2.0 ** -np.arange(5))[:, None]
    for i in range(files):
        data = rng.standard_normal((rows, 5)) @ basis + 1e-3 * rng.standard_normal((rows, 40))
        np.save(folder / f"part-{i:03d}.npy", data)


def test_served_pipeline_deployment_runs_through_the_prefect_api(
    topology: Any, tmp_path: Path, rng: np.random.Generator
) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    make_landing(tmp_path / "landing", rng, files=4, rows=200)
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": {"path": str(tmp_path / "store")},
                "sources": {"landing": str(tmp_path / "landing")},
                "svd": {"rank": 3, "power_iters": 1},
                "cluster": {"scheduler": topology.dask_scheduler},
                "drift": {"refit_above": "+50%"},
                "report": {"out": str(tmp_path / "report")},
            }
        )
    )
    env = {
        **os.environ,
        "PREFECT_API_URL": topology.prefect_api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "flows", "serve", "--config", str(config), "--no-schedules"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with temporary_settings({PREFECT_API_URL: topology.prefect_api_url}):
            flow_run = None
            deadline = time.monotonic() + 120
            while flow_run is None:
                try:
                    flow_run = run_deployment(
                        "streamsvd-pipeline/streamsvd-pipeline",
                        parameters={"config": str(config)},
                        timeout=240,
                        poll_interval=1,
                    )
                except Exception:  # the deployment is not registered yet
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(1)
        assert flow_run.state is not None
        assert flow_run.state.is_completed(), (
            flow_run.state,
            (tmp_path / "serve.log").read_text()[-3000:],
        )
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    store = Store.open(tmp_path / "store")
    assert [v.message.split()[0] for v in store.versions()][:2] == ["update", "update"]
    factors = streamsvd.open_factors(tmp_path / "store")
    assert factors.attrs["rows_covered"] == 800
    assert factors.rank == 3


def test_fit_survives_a_lost_worker_with_the_same_factors(
    topology: Any, tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client

    data = rng.standard_normal((200_000, 8)) @ rng.standard_normal((8, 60))
    data += 0.01 * rng.standard_normal(data.shape)
    np.save(tmp_path / "rows.npy", data)
    store = tmp_path / "store"
    streamsvd.ingest(
        store, [tmp_path / "rows.npy"], options=streamsvd.IngestOptions(chunk_rows=512)
    )
    monkeypatch.setattr(streamsvd.api, "BLOCK_BYTES", 512 * 60 * 8)  # many small tasks
    args = {"rank": 5, "power_iters": 3, "seed": 11, "scheduler": topology.dask_scheduler}
    streamsvd.fit(store, **args)
    reference = streamsvd.open_factors(store)

    worker = sorted(role for role in topology.pids if role.startswith("dask-worker"))[0]
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["summary"] = streamsvd.fit(store, **args)
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    fitting = threading.Thread(target=run)
    fitting.start()
    with Client(topology.dask_scheduler, set_as_default=False) as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the first pass is under way
            processing = client.processing()
            if sum(len(v) for v in processing.values()) > 0:
                break
            time.sleep(0.05)
    time.sleep(0.5)
    assert fitting.is_alive(), "the fit ended before a worker could be killed"
    os.killpg(topology.pids[worker], signal.SIGKILL)
    fitting.join(timeout=300)
    assert not fitting.is_alive(), "the fit did not finish within 300 s after the worker died"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["summary"]["version"] != reference.version  # a new fit was committed
    again = streamsvd.open_factors(store)
    # Partial sums are reduced in a fixed tree, so recomputed tasks give the same bits.
    np.testing.assert_array_equal(again.s, reference.s)
    np.testing.assert_array_equal(again.vt, reference.vt)
    np.testing.assert_array_equal(again.stored.t, reference.stored.t)
    assert streamsvd.verify(store, scheduler="sync", check=False).ok
