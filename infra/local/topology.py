"""Start the streamsvd topology as local processes on 127.0.0.1.

The same roles as ``infra/compose.yaml`` (minus the object store): one Dask scheduler,
N Dask workers and, optionally, a Prefect server, each a child process of the caller,
each in its own process group, each logging to a file in the run directory.

Used by ``up.py``/``down.py`` (run as scripts: their folder is on ``sys.path``) and by
the integration tests, which load this file by path with ``importlib`` (see
``tests/test_infra.py``) because ``infra/`` is not a package. Standard library only,
except ``distributed`` (to wait for workers) and ``psutil`` (to check that a process
recorded in ``topology.json`` is really gone); both are dependencies of streamsvd.

    topo = start_topology("run/", workers=2, prefect=True)
    topo.dask_scheduler      # "tcp://127.0.0.1:PORT"
    topo.prefect_api_url     # "http://127.0.0.1:PORT/api"
    topo.stop()              # SIGTERM, then SIGKILL after a grace period; idempotent
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Topology", "TopologyError", "find_executable", "start_topology"]

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 90.0  # seconds, for each role to become ready
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
TOPOLOGY_FILE = "topology.json"


class TopologyError(RuntimeError):
    """A role did not start: the message names it and ends with its log tail."""


def find_executable(name: str) -> str:
    """The console script ``name`` of this interpreter's environment, else from PATH."""
    candidate = Path(sys.executable).parent / name  # not resolved: a venv's bin/ holds symlinks
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise TopologyError(
            f"cannot find the {name!r} executable next to {sys.executable} or on PATH; "
            "install the project with `pip install -e .[flows]`"
        )
    return found


def free_port() -> int:
    """A TCP port free on the loopback interface right now (a small race is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid`` (children run in their own group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


@dataclass
class Topology:
    """A running local topology. ``pids`` maps role names to process (and group) ids."""

    dir: Path
    dask_scheduler: str
    prefect_api_url: str | None
    pids: dict[str, int] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, object]:
        return {
            "dask_scheduler": self.dask_scheduler,
            "prefect_api_url": self.prefect_api_url,
            "pids": dict(self.pids),
            "dir": str(self.dir),
        }

    def write(self) -> Path:
        path = self.dir / TOPOLOGY_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Topology:
        """The topology recorded in ``directory/topology.json`` (no process handles)."""
        directory = Path(directory)
        data = json.loads((directory / TOPOLOGY_FILE).read_text())
        return cls(
            dir=directory,
            dask_scheduler=data["dask_scheduler"],
            prefect_api_url=data.get("prefect_api_url"),
            pids={str(k): int(v) for k, v in data.get("pids", {}).items()},
        )

    def alive(self) -> dict[str, bool]:
        return {role: _alive(pid) for role, pid in self.pids.items()}

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop every role with SIGTERM, then SIGKILL what is left after ``grace`` seconds.

        Workers first (while their scheduler still answers, they close in well under a
        second; with the scheduler gone they wait for it), then the scheduler and Prefect.
        Idempotent. Kills each role's whole process group (a Dask nanny's worker process,
        its resource tracker) and reaps the children this object started.
        """
        workers = sorted(role for role in self.pids if role.startswith("dask-worker"))
        others = sorted(role for role in self.pids if role not in workers)
        deadline = time.monotonic() + grace
        for phase in (workers, others):
            for role in phase:
                _signal(self.pids[role], signal.SIGTERM)
            for role in phase:
                self._wait(role, deadline)
        for role in workers + others:
            pid = self.pids[role]
            _signal_group(pid, signal.SIGKILL)  # leftovers in the group, e.g. a nanny's worker
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        for proc in self._procs.values():
            proc.wait()  # reap: no zombie, no ResourceWarning
        self._procs.clear()

    def _wait(self, role: str, deadline: float) -> None:
        proc = self._procs.get(role)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            return
        while _alive(self.pids[role]) and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _spawn(
    topo: Topology, role: str, argv: list[str], env: dict[str, str]
) -> subprocess.Popen[bytes]:
    log = topo.dir / f"{role}.log"
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: stop() kills the role's children too
        )
    topo._procs[role] = proc
    topo.pids[role] = proc.pid
    return proc


def _check_running(topo: Topology) -> None:
    for role, proc in topo._procs.items():
        code = proc.poll()
        if code is not None:
            raise TopologyError(
                f"{role} exited early with code {code}; last lines of "
                f"{topo.dir / (role + '.log')}:\n{log_tail(topo.dir / (role + '.log'))}"
            )


def _wait_for_scheduler_file(topo: Topology, path: Path, deadline: float) -> str:
    while time.monotonic() < deadline:
        _check_running(topo)
        if path.exists():
            try:
                return str(json.loads(path.read_text())["address"])
            except (ValueError, KeyError):
                pass  # being written
        time.sleep(0.1)
    raise TopologyError(
        f"the Dask scheduler wrote no {path} within {STARTUP_TIMEOUT:.0f} s:\n"
        + log_tail(topo.dir / "dask-scheduler.log")
    )


def _wait_for_workers(topo: Topology, address: str, n: int, deadline: float) -> None:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        while True:
            _check_running(topo)
            try:
                client.wait_for_workers(n, timeout=1)
                return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TopologyError(
                        f"{n} Dask workers did not join {address} within "
                        f"{STARTUP_TIMEOUT:.0f} s:\n" + log_tail(topo.dir / "dask-worker-0.log")
                    ) from None


def _prefect_healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as exc:
        exc.close()
        return False
    except (OSError, ValueError):  # URLError is an OSError: refused, reset, timeout
        return False


def _wait_for_prefect(topo: Topology, api_url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        _check_running(topo)
        if _prefect_healthy(api_url):
            return
        time.sleep(0.25)
    raise TopologyError(
        f"the Prefect server at {api_url} was not healthy within {STARTUP_TIMEOUT:.0f} s:\n"
        + log_tail(topo.dir / "prefect-server.log")
    )


def prefect_server_env(directory: Path, port: int, ui: bool = False) -> dict[str, str]:
    """Environment of the local Prefect server: its own home and SQLite file, no analytics.

    Setting names checked with ``prefect config view --show-defaults`` (Prefect 3.9).
    """
    api_url = f"http://{HOST}:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        {
            "PREFECT_HOME": str(directory / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": (
                f"sqlite+aiosqlite:///{directory / 'prefect.db'}"
            ),
            "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
            "PREFECT_SERVER_UI_API_URL": api_url,
        }
    )
    return env


def start_topology(
    directory: str | os.PathLike[str],
    workers: int = 2,
    prefect: bool = True,
    *,
    ui: bool = False,
    memory_limit: str = "2GiB",
) -> Topology:
    """Start a scheduler, ``workers`` workers (one thread each) and a Prefect server.

    Returns once the workers have joined and ``GET {prefect_api_url}/health`` answers 200,
    after writing ``directory/topology.json``. On failure every started process is stopped
    and a :class:`TopologyError` names the role and shows its log tail. Logs:
    ``directory/<role>.log``.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    root = Path(directory).absolute()
    root.mkdir(parents=True, exist_ok=True)
    scheduler_file = root / "scheduler.json"
    scheduler_file.unlink(missing_ok=True)
    dask = find_executable("dask")
    topo = Topology(dir=root, dask_scheduler="", prefect_api_url=None)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        env = {**os.environ, "DO_NOT_TRACK": "1"}
        _spawn(
            topo,
            "dask-scheduler",
            [
                dask,
                "scheduler",
                "--host",
                HOST,
                "--port",
                str(free_port()),
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            env,
        )
        api_url = None
        if prefect:  # started early: it is the slowest role (10-20 s)
            port = free_port()
            api_url = f"http://{HOST}:{port}/api"
            _spawn(
                topo,
                "prefect-server",
                [
                    find_executable("prefect"),
                    "server",
                    "start",
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                ],
                prefect_server_env(root, port, ui=ui),
            )
        topo.dask_scheduler = _wait_for_scheduler_file(topo, scheduler_file, deadline)
        for i in range(workers):
            _spawn(
                topo,
                f"dask-worker-{i}",
                [
                    dask,
                    "worker",
                    "--nthreads",
                    "1",
                    "--host",
                    HOST,
                    "--no-dashboard",
                    "--name",
                    f"local-{i}",
                    "--memory-limit",
                    memory_limit,
                    "--local-directory",
                    str(root / f"dask-worker-{i}"),
                    "--scheduler-file",
                    str(scheduler_file),
                ],
                env,
            )
        _wait_for_workers(topo, topo.dask_scheduler, workers, deadline)
        if api_url is not None:
            _wait_for_prefect(topo, api_url, deadline)
            topo.prefect_api_url = api_url
        topo.write()
    except BaseException:
        topo.stop(grace=5.0)
        raise
    return topo
