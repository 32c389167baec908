"""Connecting to Dask: an embedded LocalCluster by default, or a scheduler by address.

The address comes from the argument, else ``DASK_SCHEDULER_ADDRESS``; TLS uses
distributed's own security settings (``distributed.security.Security``, or the
``DASK_DISTRIBUTED__COMM__TLS__*`` configuration). On connect the versions of the
packages that must agree are compared across client, scheduler and workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from streamsvd.errors import ConfigError

# Packages whose versions must agree between client, scheduler and workers:
# a mismatch here changes results or breaks (de)serialization.
MUST_MATCH = ("python", "dask", "distributed", "numpy", "zarr", "icechunk", "streamsvd")


@contextmanager
def dask_client(
    address: str | None = None,
    *,
    n_workers: int = 1,
    threads_per_worker: int | None = None,
    security: Any = None,
    check_versions: bool = True,
    timeout: str = "20s",
) -> Iterator[Any]:
    """A ``distributed.Client``: to ``address`` or to a new embedded LocalCluster.

    Parameters
    ----------
    address : str, optional
        ``tcp://host:8786``, ``tls://…``, or None for ``DASK_SCHEDULER_ADDRESS`` or,
        when that is unset too, an embedded LocalCluster (closed on exit).
    n_workers, threads_per_worker : int
        Size of the embedded cluster (default: one in-process worker with a
        thread per core). Threads, not processes: NumPy, the codecs and
        Icechunk release the GIL, and an in-process worker avoids moving every
        partial result between processes (measured: 15 s instead of 22 s for the
        2 GB fit benchmark, and a lower peak memory).
    security : distributed.security.Security, optional
        TLS settings for ``tls://`` addresses.
    check_versions : bool
        Compare package versions across client, scheduler and workers.
    timeout : str
        How long to try reaching the scheduler.
    """
    import dask
    from distributed import Client

    address = address or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if address:
        try:
            # Not set as the process-wide default: that is global state, and a
            # second thread's client would overwrite (and not restore) it.
            client = Client(address, security=security, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {address}: {exc}; check the address "
                "(--scheduler or DASK_SCHEDULER_ADDRESS) and that the scheduler runs"
            ) from None
        try:
            if check_versions:
                check_cluster_versions(client)
            with dask.config.set(scheduler=client.get):
                yield client
        finally:
            client.close()
        return
    cluster = start_local_cluster(n_workers, threads_per_worker)
    try:
        with (
            Client(cluster, set_as_default=False) as client,
            dask.config.set(scheduler=client.get),
        ):
            yield client
    finally:
        cluster.close()


#: Settings of the embedded cluster. Its worker's statistical profiler (a stack
#: walk of every thread every 10 ms, for the dashboard's Profile tab) and work
#: stealing (nothing to steal from with one worker) took CPU from the two
#: compute threads: the 2 GB fit benchmark ran in 7.9-8.5 s without them and
#: 9.4-10.7 s with them on the same machine.
EMBEDDED_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.scheduler.work-stealing": False,
}


def start_local_cluster(n_workers: int = 1, threads_per_worker: int | None = None) -> Any:
    """The embedded cluster: in-process workers, a thread per core, dashboard on a free port.

    Runs without the worker profiler and, with one worker, without work stealing
    (see :data:`EMBEDDED_CLUSTER_CONFIG`).
    """
    import dask
    from distributed import LocalCluster

    config = dict(EMBEDDED_CLUSTER_CONFIG)
    if n_workers > 1:
        del config["distributed.scheduler.work-stealing"]
    with dask.config.set(config):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker or os.cpu_count() or 1,
            processes=False,
            dashboard_address=":0",
            silence_logs=40,
        )


def check_cluster_versions(client: Any) -> None:
    """Raise :class:`ConfigError` when client, scheduler and workers disagree on versions."""
    import importlib.metadata
    import platform

    def local_versions() -> dict[str, str]:
        out = {"python": platform.python_version()}
        for name in MUST_MATCH[1:]:
            try:
                out[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                out[name] = "not installed"
        return out

    mine = local_versions()
    scheduler = client.run_on_scheduler(local_versions)
    workers = client.run(local_versions)
    problems = []
    for where, theirs in [("scheduler", scheduler), *workers.items()]:
        for name in MUST_MATCH:
            if theirs.get(name) != mine.get(name):
                problems.append(f"{name} {theirs.get(name)} on {where} vs {mine.get(name)} here")
    if problems:
        raise ConfigError(
            "the Dask cluster runs other package versions than this client: "
            + "; ".join(problems)
            + ". Install the same versions everywhere (one image for every role, see infra/)."
        )


@contextmanager
def cluster_address(
    scheduler: str = "local",
    *,
    n_workers: int = 1,
    threads_per_worker: int | None = None,
) -> Iterator[str]:
    """An address to pass as ``scheduler=`` to many calls, valid for the block.

    ``"local"`` starts one embedded LocalCluster for the whole block (instead of
    one per call) and yields its address; ``"threads"``/``"sync"`` and addresses
    are yielded unchanged.
    """
    if scheduler != "local":
        yield scheduler
        return
    cluster = start_local_cluster(n_workers, threads_per_worker)
    try:
        yield str(cluster.scheduler_address)
    finally:
        cluster.close()


def configure_tls(ca_file: str, client_cert: str, client_key: str) -> None:
    """Make ``tls://`` connections of this process use these files (dask config)."""
    import dask

    dask.config.set(
        {
            "distributed.comm.tls.ca-file": ca_file,
            "distributed.comm.tls.client.cert": client_cert,
            "distributed.comm.tls.client.key": client_key,
            "distributed.comm.require-encryption": True,
        }
    )
