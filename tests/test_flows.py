"""Prefect flows and configuration: task logic through ``task.fn()``, one harnessed run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import streamsvd
from streamsvd.config import load_settings
from streamsvd.errors import ConfigError, StoreLockedError

ROOT = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, **sections: dict[str, Any]) -> Path:
    config = {
        "store": {"path": str(tmp_path / "store")},
        "sources": {"landing": str(tmp_path / "landing")},
        "svd": {"rank": 4, "power_iters": 1},
        "cluster": {"scheduler": "threads"},
        # Stationary data: the error after updates stays within a wide budget.
        "drift": {"refit_above": "+50%"},
        "report": {"out": str(tmp_path / "report")},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def landing_files(tmp_path: Path, rng: np.random.Generator, count: int) -> list[Path]:
    landing = tmp_path / "landing"
    landing.mkdir(exist_ok=True)
    basis = rng.standard_normal((6, 30)) * (3.0 ** -np.arange(6))[:, None]
    files = []
    for i in range(count):
        rows = rng.standard_normal((80, 6)) @ basis + 1e-3 * rng.standard_normal((80, 30))
        path = landing / f"part-{i:03d}.npy"
        np.save(path, rows)
        files.append(path)
    return files


# -- configuration ---------------------------------------------------------------------


def test_config_files_in_the_repository_are_valid() -> None:
    demo = load_settings(ROOT / "config" / "demo.yaml")
    assert demo.cluster.scheduler == "local"
    assert demo.demo is not None
    cluster = load_settings(ROOT / "config" / "cluster.example.yaml")
    assert cluster.store.path.startswith("s3://")
    assert cluster.cluster.tls is not None


def test_unknown_key_names_key_file_and_allowed(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("svd:\n  power_iter: 3\n")
    with pytest.raises(
        ConfigError, match=r"bad\.yaml: unknown key 'svd\.power_iter' .*power_iters"
    ):
        load_settings(path)


def test_bad_values_name_key_and_allowed_values(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("store:\n  codec: gzip\nsvd:\n  rank: lots\n")
    with pytest.raises(ConfigError, match=r"'store\.codec': Input should be 'auto', 'lz4'"):
        load_settings(path)
    path.write_text("svd:\n  rank: lots\n")
    with pytest.raises(ConfigError, match=r"'svd\.rank'.*'energy:x'"):
        load_settings(path)
    path.write_text("- a\n- list\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping"):
        load_settings(path)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path)
    monkeypatch.setenv("STREAMSVD_SVD__RANK", "energy:0.9")
    monkeypatch.setenv("STREAMSVD_CLUSTER__SCHEDULER", "tcp://10.0.0.1:8786")
    settings = load_settings(path)
    assert settings.svd.rank == "energy:0.9"
    assert settings.cluster.scheduler == "tcp://10.0.0.1:8786"
    assert settings.svd.power_iters == 1  # from the file
    monkeypatch.setenv("STREAMSVD_SVD__OVERSAMPLE", "-3")
    with pytest.raises(ConfigError, match=r"'svd\.oversample'"):
        load_settings(path)


# -- tasks through .fn() ------------------------------------------------------------------


def test_transient_errors_are_retried_and_bad_input_is_not() -> None:
    from flows.tasks import is_transient

    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert is_transient(StoreLockedError("busy"))
    assert not is_transient(streamsvd.errors.InvalidInputError("NaN in row 3"))
    assert not is_transient(streamsvd.errors.SourceNotFoundError("gone"))
    assert not is_transient(ValueError("bug"))


def test_initial_share_of_files() -> None:
    from flows.tasks import initial_files

    assert [initial_files(["f"] * n, 0.5) for n in (1, 2, 3, 10)] == [1, 1, 2, 5]
    assert initial_files(["f"] * 4, 1.0) == 4


def test_tasks_sequence_on_a_store(tmp_path: Path, rng: np.random.Generator) -> None:
    from flows import tasks

    settings = load_settings(write_config(tmp_path))
    files = landing_files(tmp_path, rng, 4)
    assert tasks.store_state.fn(settings)["exists"] is False
    assert tasks.list_new_files.fn(settings) == [str(f) for f in files]
    tasks.ingest_files.fn(settings, [str(files[0])])
    assert tasks.list_new_files.fn(settings) == [str(f) for f in files[1:]]
    fitted = tasks.fit_store.fn(settings, "sync")
    assert fitted["rank"] == 4
    updated = tasks.update_with.fn(settings, str(files[1]))
    assert updated["rows_added"] == 80
    assert tasks.drift_check.fn(settings)["refit"] is False
    verified = tasks.verify_store.fn(settings, "sync")
    assert verified["measured_error"] == pytest.approx(verified["recorded_error"], rel=1e-6)
    state = tasks.store_state.fn(settings)
    assert (state["has_factors"], state["rows"]) == (True, 160)
    kept = tasks.collect_garbage.fn(
        settings.model_copy(update={"store": settings.store.model_copy(update={"keep_days": 0.0})})
    )
    assert kept["versions_kept"] == 2  # the newest and the repository's empty first one
    assert kept["bytes_deleted"] > 0  # the data and factors of the older versions
    assert tasks.store_state.fn(settings)["rows"] == 160
    assert tasks.collect_garbage.fn(settings)["versions_expired"] == 0  # keep_days 7: all young


def test_serve_builds_two_scheduled_deployments_with_one_writer(tmp_path: Path) -> None:
    from flows.serve import deployments

    built = deployments(str(write_config(tmp_path)))
    assert [d.name for d in built] == ["streamsvd-pipeline", "streamsvd-refit"]  # type: ignore[attr-defined]
    for deployment in built:
        assert deployment.concurrency_limit == 1  # type: ignore[attr-defined]
        assert len(deployment.schedules) == 1  # type: ignore[attr-defined]


def test_prefect_yaml_points_at_real_flows() -> None:
    import importlib

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["name"]: d for d in spec["deployments"]}
    assert set(names) == {"streamsvd-pipeline", "streamsvd-refit"}
    for deployment in names.values():
        module, _, attr = deployment["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), attr)
        assert flow.name.startswith("streamsvd-")
        assert deployment["concurrency_limit"] == 1
        assert deployment["work_pool"]["name"] == "streamsvd-pool"
        assert deployment["schedules"][0]["cron"].count(" ") == 4
        load_settings(ROOT / deployment["parameters"]["config"])


# -- one harnessed pipeline run (Prefect's test server) -----------------------------------


@pytest.fixture(scope="session")
def prefect_harness() -> Any:
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_pipeline_flow_end_to_end(
    prefect_harness: None, tmp_path: Path, rng: np.random.Generator
) -> None:
    from flows.pipeline import pipeline_flow

    files = landing_files(tmp_path, rng, 5)
    config = write_config(tmp_path)
    first = pipeline_flow(config=str(config))
    info = first["info"]
    assert info["rows"] == 400
    assert info["batches"] == 5
    assert first["fit"]["rank"] == 4
    assert len(first["updates"]) == 2  # 3 of 5 files before the first fit, 2 by update
    assert first["verify"]["measured_error"] == pytest.approx(
        first["verify"]["recorded_error"], rel=1e-6
    )
    # A second run with one new file only updates.
    np.save(tmp_path / "landing" / "part-999.npy", np.load(files[0])[::-1] * 1.5)
    second = pipeline_flow(config=str(config))
    assert second["fit"] is None
    assert [u["rows_added"] for u in second["updates"]] == [80]
    history = streamsvd.open_factors(tmp_path / "store").attrs["history"]
    assert [h["op"] for h in history] == ["fit", "update", "update", "update"]
    report = tmp_path / "report"
    assert sorted(p.name for p in report.iterdir()) == [
        "energy.png",
        "history.png",
        "report.md",
        "spectrum.png",
    ]


def test_pipeline_publishes_artifacts(
    prefect_harness: None, tmp_path: Path, rng: np.random.Generator
) -> None:
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.pipeline import pipeline_flow

    landing_files(tmp_path, rng, 2)
    pipeline_flow(config=str(write_config(tmp_path)))

    async def latest() -> Any:
        async with get_client() as client:
            return await client.read_latest_artifacts()

    artifacts = {a.key: a for a in asyncio.run(latest())}
    assert {"streamsvd-run", "streamsvd-summary", "streamsvd-plots"} <= set(artifacts)
    assert "data:image/png;base64," in str(artifacts["streamsvd-plots"].data)
    assert "rank 4" in str(artifacts["streamsvd-summary"].data)
