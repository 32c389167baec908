"""Connecting to Dask: version checks and addresses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from streamsvd.engine.cluster import check_cluster_versions, cluster_address, dask_client
from streamsvd.errors import ConfigError


class FakeClient:
    """Answers version queries as a scheduler and two workers would."""

    def __init__(self, worker_numpy: str) -> None:
        self.worker_numpy = worker_numpy

    def run_on_scheduler(self, fn: Callable[[], dict[str, str]]) -> dict[str, str]:
        return fn()

    def run(self, fn: Callable[[], dict[str, str]]) -> dict[str, dict[str, str]]:
        same = fn()
        return {
            "tcp://127.0.0.1:1": same,
            "tcp://127.0.0.1:2": {**same, "numpy": self.worker_numpy},
        }


def test_matching_versions_pass() -> None:
    import numpy as np

    check_cluster_versions(FakeClient(np.__version__))


def test_a_mismatch_names_package_where_and_fix() -> None:
    with pytest.raises(
        ConfigError, match=r"numpy 1\.0\.0 on tcp://127\.0\.0\.1:2 vs .* here.*same versions"
    ):
        check_cluster_versions(FakeClient("1.0.0"))


def test_unreachable_scheduler_is_a_clear_error() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        pytest.raises(
            ConfigError, match=rf"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:{port}"
        ),
        dask_client(f"tcp://127.0.0.1:{port}", timeout="2s"),
    ):
        pass


def test_cluster_address_passes_non_local_through() -> None:
    results: list[Any] = []
    for name in ("threads", "tcp://host:8786"):
        with cluster_address(name) as address:
            results.append(address)
    assert results == ["threads", "tcp://host:8786"]


def test_embedded_cluster_runs_without_profiler_and_stealing() -> None:
    with dask_client(None) as client:
        cluster = client.cluster
        worker = next(iter(cluster.workers.values()))
        assert "stealing" not in cluster.scheduler.extensions
        assert not any("profile" in name for name in worker.periodic_callbacks)
        assert client.submit(sum, [1, 2]).result() == 3
    import dask

    # The settings were scoped to the cluster's start, not left in the global config.
    assert dask.config.get("distributed.worker.profile.enabled") is True


def test_shared_objects_are_on_every_worker() -> None:
    # Scattered data has no lineage: on one worker only, losing that worker cancels
    # every task that needs it (seen once as FutureCancelledError in the lost-worker test).
    import numpy as np

    from streamsvd.engine.fit import share

    with dask_client(None, n_workers=2, threads_per_worker=1) as client:
        shared = share(np.arange(10.0))
        holders = client.who_has([shared])[shared.key]
        assert len(holders) == 2
        assert sorted(holders) == sorted(client.scheduler_info()["workers"])


def test_a_broadcast_cut_by_a_lost_worker_is_tried_again(monkeypatch) -> None:
    # Seen in the lost-worker integration test: the worker died during the
    # broadcast of Q, and the scheduler closed the client's comm mid-call.
    from distributed.comm.core import CommClosedError

    from streamsvd.engine import fit

    class Flaky:
        def __init__(self, failures: int) -> None:
            self.calls, self.failures = 0, failures

        def scatter(self, value, broadcast):
            self.calls += 1
            if self.calls <= self.failures:
                raise CommClosedError("in <TCP ConnectionPool.scatter>: Stream is closed")
            return ("future", value, broadcast)

    monkeypatch.setattr(fit, "_sleep", lambda seconds: None)
    client = Flaky(failures=fit.SCATTER_ATTEMPTS - 1)
    monkeypatch.setattr(fit, "current_client", lambda: client)
    assert fit.share("q") == ("future", "q", True)
    assert client.calls == fit.SCATTER_ATTEMPTS
    client = Flaky(failures=fit.SCATTER_ATTEMPTS)  # a cluster that stays broken still fails
    with pytest.raises(CommClosedError):
        fit.share("q")
    assert client.calls == fit.SCATTER_ATTEMPTS

    class NoWorkers:
        calls = 0

        def scatter(self, value, broadcast):
            self.calls += 1
            raise TimeoutError("No valid workers found")

    client = NoWorkers()  # not a lost worker: no point in trying again
    with pytest.raises(TimeoutError):
        fit.share("q")
    assert client.calls == 1
