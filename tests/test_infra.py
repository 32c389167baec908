"""infra/: every file is parsed and checked here; the local topology is really started.

Docker and Kubernetes cannot run in the test environment (no engine, no cluster), so the
Dockerfile, compose file, manifests and Helm values are parsed and checked for structure and
consistency (same image, ports, pool names, no secrets). dask-jobqueue is not installed: the
Slurm script is compiled, its YAML parsed. The integration tests start the local topology
(``infra/local``: scheduler, workers, Prefect server on 127.0.0.1) and stop it.

``infra/local/topology.py`` is loaded by path with importlib (``infra`` is not a package and
nothing is added to ``sys.path``), registered as ``streamsvd_infra_topology``.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest
import yaml

from tests.conftest import load_topology_module

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
LOCAL = INFRA / "local"
PROJECT_SERVICES = {"dask-scheduler", "dask-worker", "prefect-server", "prefect-worker"}
POOL = "streamsvd-pool"


@pytest.fixture(scope="module")
def topology() -> ModuleType:
    return load_topology_module()


def load_yaml(path: Path) -> list[Any]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def one_yaml(path: Path) -> dict[str, Any]:
    docs = load_yaml(path)
    assert len(docs) == 1, path
    assert isinstance(docs[0], dict), path
    return docs[0]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def process_tree(pids: list[int]) -> set[int]:
    """The pids and all their descendants."""
    found = set(pids)
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
    return found


def wait_gone(pids: set[int], timeout: float = 15.0) -> set[int]:
    deadline = time.monotonic() + timeout
    left = {pid for pid in pids if not gone(pid)}
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {pid for pid in left if not gone(pid)}
    return left


# --------------------------------------------------------------------------- every file


def test_the_expected_files_exist() -> None:
    expected = [
        "Dockerfile",
        ".dockerignore",
        "compose.yaml",
        ".env.example",
        "README.md",
        "kubernetes/daskcluster.yaml",
        "kubernetes/prefect-worker.yaml",
        "kubernetes/values-prefect-worker.yaml",
        "slurm/jobqueue.yaml",
        "slurm/cluster.py",
        "local/up.py",
        "local/down.py",
        "local/topology.py",
    ]
    missing = [name for name in expected if not (INFRA / name).is_file()]
    assert not missing


@pytest.mark.parametrize(
    "path",
    sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")]),
    ids=lambda p: str(p.relative_to(INFRA)),
)
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_yaml(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in docs)


@pytest.mark.parametrize(
    "path", sorted(INFRA.rglob("*.py")), ids=lambda p: str(p.relative_to(INFRA))
)
def test_every_python_file_compiles(path: Path) -> None:
    source = path.read_text()
    compile(source, str(path), "exec", dont_inherit=True)  # like py_compile, writes no .pyc
    tree = ast.parse(source)
    assert ast.get_docstring(tree), f"{path} has no module docstring"


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (INFRA / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends with a continuation line"
    return instructions


def test_dockerfile_base_user_install_and_command() -> None:
    instructions = dockerfile_instructions()
    keywords = [k for k, _ in instructions]
    froms = [args for k, args in instructions if k == "FROM"]
    assert len(froms) == 1
    assert re.fullmatch(r"python:3\.11[\w.]*-slim[\w.-]*(@sha256:[0-9a-f]{64})?", froms[0])
    assert keywords[0] == "FROM"

    users = [args for k, args in instructions if k == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}

    installs = [
        i for i, (k, args) in enumerate(instructions) if k == "RUN" and "pip install" in args
    ]
    assert any('".[flows]"' in instructions[i][1] for i in installs)
    assert keywords.index("USER") > max(installs), "install as root, run as the user"

    assert "ENTRYPOINT" not in keywords
    cmd = [args for k, args in instructions if k == "CMD"]
    assert json.loads(cmd[-1]) == ["streamsvd", "--help"]

    exposed = {p for k, args in instructions if k == "EXPOSE" for p in args.split()}
    assert {"8786", "8787", "4200"} <= exposed


def test_dockerfile_copies_only_what_exists_in_the_build_context() -> None:
    for keyword, args in dockerfile_instructions():
        if keyword != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = [a for a in args.split() if not a.startswith("--")]
        for source in sources:
            if "*" in source:
                continue  # optional files (prefect.yaml*)
            assert (ROOT / source).exists(), f"COPY {source}: not in the build context (root)"


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = {
        line.strip()
        for line in (INFRA / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".env"} <= patterns


def test_readme_documents_the_build_from_the_repository_root() -> None:
    # No Docker engine here: the image is only validated by the tests above, never built.
    readme = (INFRA / "README.md").read_text()
    assert re.search(r"^docker build -f infra/Dockerfile\b.* \.(\s|$)", readme, re.MULTILINE)


# --------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return one_yaml(INFRA / "compose.yaml")


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def test_compose_services_and_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"minio", "createbuckets", *PROJECT_SERVICES} <= set(services)
    assert services["minio"]["image"].startswith("minio/minio:RELEASE.")
    assert services["createbuckets"]["image"].startswith("minio/mc:RELEASE.")
    images = {services[name]["image"] for name in PROJECT_SERVICES}
    assert len(images) == 1, "one image for every streamsvd role"
    for name in PROJECT_SERVICES:
        build = services[name]["build"]
        assert build["dockerfile"] == "infra/Dockerfile"
        assert (INFRA / build["context"]).resolve() == ROOT
    for name, service in services.items():
        assert "latest" not in service["image"], f"{name}: pin the image tag"


def test_compose_commands_ports_and_replicas(compose: dict[str, Any]) -> None:
    services = compose["services"]
    scheduler = services["dask-scheduler"]
    assert command_of(scheduler)[:2] == ["dask", "scheduler"]
    assert {"8786:8786", "8787:8787"} <= set(scheduler["ports"])

    worker = services["dask-worker"]
    cmd = command_of(worker)
    assert cmd[:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
    assert cmd[cmd.index("--nthreads") + 1] == "2"
    assert cmd[cmd.index("--memory-limit") + 1] == "4GiB"
    assert worker["deploy"]["replicas"] == 2

    server = services["prefect-server"]
    cmd = command_of(server)
    assert cmd[:3] == ["prefect", "server", "start"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert "4200:4200" in server["ports"]

    pworker = command_of(services["prefect-worker"])
    assert pworker[:3] == ["prefect", "worker", "start"]
    assert pworker[pworker.index("--pool") + 1] == POOL
    assert pworker[pworker.index("--type") + 1] == "process"

    assert "9000:9000" in services["minio"]["ports"]
    for name in ("minio", "dask-scheduler", "dask-worker", "prefect-server"):
        assert services[name]["healthcheck"]["test"], name


def test_compose_environment_points_at_the_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("dask-worker", "prefect-worker"):
        env = services[name]["environment"]
        assert env["DASK_SCHEDULER_ADDRESS"] == "tcp://dask-scheduler:8786"
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(env)
    deps = services["prefect-worker"]["depends_on"]
    assert deps["prefect-server"]["condition"] == "service_healthy"
    assert deps["createbuckets"]["condition"] == "service_completed_successfully"


def test_compose_secrets_come_from_the_env_file(compose: dict[str, Any]) -> None:
    text = (INFRA / "compose.yaml").read_text()
    for service in compose["services"].values():
        env = service.get("environment", {})
        for key in ("AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_PASSWORD"):
            if key in env:
                assert str(env[key]).startswith("${"), f"{key} is hard-coded"
    example = {
        line.split("=", 1)[0]
        for line in (INFRA / ".env.example").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    assert used <= example | {"PREFECT_DATABASE_URL"}, used - example
    assert "PREFECT_DATABASE_URL" in (INFRA / ".env.example").read_text()


# --------------------------------------------------------------------------- Kubernetes


def check_k8s_object(doc: dict[str, Any]) -> None:
    assert {"apiVersion", "kind", "metadata"} <= set(doc), doc.get("kind")
    name = doc["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
    assert len(name) <= 63


def container_image_set() -> set[str]:
    images: set[str] = set()
    for path in (INFRA / "kubernetes").glob("*.yaml"):
        images.update(re.findall(r"image:\s*\"?(ghcr\.io/[^\s\"]+)", path.read_text()))
    return images


def test_daskcluster(compose: dict[str, Any]) -> None:
    doc = one_yaml(INFRA / "kubernetes" / "daskcluster.yaml")
    check_k8s_object(doc)
    assert doc["apiVersion"] == "kubernetes.dask.org/v1"
    assert doc["kind"] == "DaskCluster"
    worker = doc["spec"]["worker"]
    assert worker["replicas"] >= 1
    (wc,) = worker["spec"]["containers"]
    assert wc["args"][:2] == ["dask", "worker"]
    (sc,) = doc["spec"]["scheduler"]["spec"]["containers"]
    assert sc["args"][:2] == ["dask", "scheduler"]
    assert wc["image"] == sc["image"]
    assert {p["containerPort"] for p in sc["ports"]} == {8786, 8787}
    service = doc["spec"]["scheduler"]["service"]
    assert service["selector"]["dask.org/cluster-name"] == doc["metadata"]["name"]
    assert {p["port"] for p in service["ports"]} == {8786, 8787}
    assert sc["readinessProbe"]["httpGet"]["path"] == "/health"


def test_prefect_worker_manifests() -> None:
    docs = load_yaml(INFRA / "kubernetes" / "prefect-worker.yaml")
    for doc in docs:
        check_k8s_object(doc)
    by_kind = {doc["kind"]: doc for doc in docs}
    assert set(by_kind) == {"ServiceAccount", "ConfigMap", "Deployment"}
    deployment = by_kind["Deployment"]
    assert deployment["apiVersion"] == "apps/v1"
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == by_kind["ServiceAccount"]["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    cmd = container["command"]
    assert cmd[:3] == ["prefect", "worker", "start"]
    assert cmd[cmd.index("--pool") + 1] == POOL
    assert cmd[cmd.index("--type") + 1] == "process"
    config_maps = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
    assert config_maps == [by_kind["ConfigMap"]["metadata"]["name"]]
    data = by_kind["ConfigMap"]["data"]
    assert data["PREFECT_API_URL"].endswith("/api")
    assert data["DASK_SCHEDULER_ADDRESS"].startswith("tcp://")
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings"
    secrets = [e["secretRef"] for e in container["envFrom"] if "secretRef" in e]
    assert secrets
    assert all(s["optional"] for s in secrets)


def test_prefect_worker_helm_values() -> None:
    values = one_yaml(INFRA / "kubernetes" / "values-prefect-worker.yaml")
    worker = values["worker"]
    assert worker["config"]["workPool"] == POOL
    assert worker["config"]["type"] == "process"
    assert worker["apiConfig"] in {"server", "selfHostedServer", "cloud"}
    assert worker["serverApiConfig"]["apiUrl"].endswith("/api")
    assert worker["podSecurityContext"]["runAsNonRoot"] is True
    image = f"{worker['image']['repository']}:{worker['image']['prefectTag']}"
    assert image in container_image_set()


def test_one_image_everywhere_in_kubernetes() -> None:
    assert len(container_image_set()) == 1


# --------------------------------------------------------------------------- Slurm


def test_jobqueue_config() -> None:
    from dask.utils import parse_bytes

    settings = one_yaml(INFRA / "slurm" / "jobqueue.yaml")
    cluster = settings["cluster"]
    assert {"cores", "memory", "walltime", "job_extra_directives", "processes"} <= set(cluster)
    assert all("-" not in key for key in cluster), "SLURMCluster keyword arguments use _"
    assert isinstance(cluster["cores"], int)
    assert cluster["cores"] % cluster["processes"] == 0
    assert parse_bytes(cluster["memory"]) >= 1 << 30
    assert re.fullmatch(r"\d+:\d\d:\d\d", cluster["walltime"])
    assert all(d.startswith("--") for d in cluster["job_extra_directives"])
    assert isinstance(settings["jobs"], int)


def test_slurm_script_imports_dask_jobqueue_lazily() -> None:
    tree = ast.parse((INFRA / "slurm" / "cluster.py").read_text())
    top_level = {
        alias.name.split(".")[0]
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    }
    assert "dask_jobqueue" not in top_level
    source = ast.unparse(tree)
    assert "SLURMCluster(**config)" in source
    assert "scale(jobs=jobs)" in source
    assert "scheduler_address" in source


# --------------------------------------------------------------------------- local (fast)


def test_local_scripts_help() -> None:
    for script in ("up.py", "down.py"):
        result = subprocess.run(
            [sys.executable, str(LOCAL / script), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "--dir" in result.stdout


def test_down_is_idempotent(tmp_path: Path, topology: ModuleType) -> None:
    result = subprocess.run(
        [sys.executable, str(LOCAL / "down.py"), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # A topology whose processes are gone: stopping it again is not an error.
    with subprocess.Popen([sys.executable, "-c", "pass"]) as proc:
        proc.wait()
    topo = topology.Topology(
        dir=tmp_path,
        dask_scheduler="tcp://127.0.0.1:1",
        prefect_api_url=None,
        pids={"dask-scheduler": proc.pid},
    )
    topo.write()
    loaded = topology.Topology.load(tmp_path)
    assert loaded.pids == {"dask-scheduler": proc.pid}
    loaded.stop(grace=0.5)
    loaded.stop(grace=0.5)


def test_a_role_that_dies_early_is_reported_with_its_log(
    tmp_path: Path, topology: ModuleType
) -> None:
    topo = topology.Topology(dir=tmp_path, dask_scheduler="", prefect_api_url=None)
    proc = topology._spawn(
        topo,
        "dask-scheduler",
        [sys.executable, "-c", "import sys; sys.exit('address already in use: boom')"],
        dict(os.environ),
    )
    proc.wait(timeout=30)
    with pytest.raises(topology.TopologyError, match=r"(?s)dask-scheduler exited early.*boom"):
        topology._check_running(topo)
    topo.stop()


# --------------------------------------------------------------------------- local (real)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_local_topology_runs_dask_and_prefect(tmp_path: Path, topology: ModuleType) -> None:
    from distributed import Client

    started = time.monotonic()
    topo = topology.start_topology(tmp_path, workers=2, prefect=True)
    tree: set[int] = set()  # defined even when an assertion below fails
    try:
        print(f"topology up in {time.monotonic() - started:.1f} s")
        assert topo.dask_scheduler.startswith("tcp://127.0.0.1:")
        assert topo.prefect_api_url.startswith("http://127.0.0.1:")
        assert topo.prefect_api_url.endswith("/api")
        recorded = json.loads((tmp_path / "topology.json").read_text())
        assert recorded["dask_scheduler"] == topo.dask_scheduler
        assert recorded["prefect_api_url"] == topo.prefect_api_url
        assert set(recorded["pids"]) == {
            "dask-scheduler",
            "dask-worker-0",
            "dask-worker-1",
            "prefect-server",
        }

        with Client(topo.dask_scheduler, timeout="30s") as client:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            assert len(workers) == 2
            assert all(w["nthreads"] == 1 for w in workers.values())
            assert client.submit(sum, range(10)).result(timeout=30) == 45

        with urllib.request.urlopen(f"{topo.prefect_api_url}/health", timeout=10) as response:
            assert response.status == 200
            assert json.loads(response.read()) is True

        tree = process_tree(list(topo.pids.values()))
        assert len(tree) >= 4
    finally:
        topo.stop()
    assert not wait_gone(tree), "processes left running after stop()"
    assert not any(topo.alive().values())
    for role in ("dask-scheduler", "dask-worker-0", "dask-worker-1", "prefect-server"):
        assert (tmp_path / f"{role}.log").stat().st_size > 0


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_up_detach_then_down(tmp_path: Path) -> None:
    up = subprocess.run(
        [
            sys.executable,
            str(LOCAL / "up.py"),
            "--dir",
            str(tmp_path),
            "--workers",
            "1",
            "--no-prefect",
            "--detach",
        ],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    printed = json.loads(up.stdout)
    assert printed == json.loads((tmp_path / "topology.json").read_text())
    assert printed["prefect_api_url"] is None
    pids = set(printed["pids"].values())
    assert not any(gone(pid) for pid in pids), "--detach must leave the processes running"
    tree = process_tree(list(pids))

    down = subprocess.run(
        [sys.executable, str(LOCAL / "down.py"), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert down.returncode == 0, down.stderr
    assert not wait_gone(tree)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_up_in_the_foreground_stops_on_sigterm(tmp_path: Path) -> None:
    argv = [sys.executable, str(LOCAL / "up.py"), "--dir", str(tmp_path), "--workers", "1",
            "--no-prefect"]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        record = tmp_path / "topology.json"
        deadline = time.monotonic() + 90
        while not record.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert record.exists(), "up.py wrote no topology.json"
        pids = list(json.loads(record.read_text())["pids"].values())
        tree = process_tree(pids)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["dask_scheduler"].startswith("tcp://127.0.0.1:")
    assert not wait_gone(tree)
