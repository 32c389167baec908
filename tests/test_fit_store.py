"""Fit on a store: factors committed with the data version, info, verify, export, clusters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

import streamsvd
import streamsvd.api
from streamsvd.cli import app
from streamsvd.engine import fit_array
from streamsvd.errors import NoFactorsError, VerificationError
from streamsvd.store.ingest import IngestOptions, ingest
from streamsvd.store.repository import Store
from streamsvd.store.row_block import RowBlock
from tests.conftest import write_npy
from tests.matrices import fast_decay, optimal_error


@pytest.fixture
def many_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Dask blocks of a few KiB: many blocks and many U_raw writers per fit.
    monkeypatch.setattr(streamsvd.api, "BLOCK_BYTES", 4096)


@pytest.fixture
def store(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray]:
    data = fast_decay(rng, 700, 30, rank=8)
    ingest(
        tmp_path / "store",
        [write_npy(tmp_path / "a.npy", data[:300]), write_npy(tmp_path / "b.npy", data[300:])],
        options=IngestOptions(chunk_rows=32),
    )
    return tmp_path / "store", data


def test_fit_commits_factors_that_match_lapack(
    store: tuple[Path, np.ndarray], many_blocks: None
) -> None:
    path, data = store
    # many_blocks took effect (it once set a constant that a default argument had read)
    assert streamsvd.api.matrix_as_dask(Store.open(path).root()).numblocks[0] > 10
    data_version = Store.open(path).current_version()
    summary = streamsvd.fit(path, rank=5, scheduler="sync")
    factors = streamsvd.open_factors(path)
    u = factors.u.compute()
    s_ref = np.linalg.svd(data, compute_uv=False)
    # q=2 on a 0.6^i spectrum: the top singular values are exact to ~(σ_{l+1}/σ_k)^(2q+1).
    np.testing.assert_allclose(factors.s, s_ref[:5], rtol=1e-9)
    np.testing.assert_allclose(u.T @ u, np.eye(5), atol=1e-12)
    measured = np.linalg.norm(data - (u * factors.s) @ factors.vt) / np.linalg.norm(data)
    # Exact accounting: recorded = ‖A‖² − Σs² up to float64 cancellation.
    assert summary["relative_error"] == pytest.approx(measured, rel=1e-6)
    assert measured <= optimal_error(data, 5) * 1.0001
    assert factors.attrs["data_version"] == data_version
    assert factors.attrs["rows_covered"] == 700
    assert factors.attrs["passes"] == 3
    report = streamsvd.verify(path, scheduler="sync", check=False)
    assert report.ok
    assert report.measured_error == pytest.approx(measured, rel=1e-9)


def test_a_dense_store_fit_reads_each_block_in_its_own_task(
    store: tuple[Path, np.ndarray], many_blocks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = store
    given: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        given.append(kwargs.get("blocks"))
        return fit_array(*args, **kwargs)

    monkeypatch.setattr(streamsvd.api, "fit_array", spy)
    streamsvd.fit(path, rank=3, scheduler="sync")
    (blocks,) = given
    assert blocks is not None
    assert len(blocks) > 10
    assert all(isinstance(b, RowBlock) for b in blocks)
    assert [b.start for b in blocks[1:]] == [b.stop for b in blocks[:-1]]
    assert blocks[-1].stop == 700


def test_readers_of_the_old_version_keep_the_old_factors(
    store: tuple[Path, np.ndarray], many_blocks: None
) -> None:
    path, _ = store
    first = streamsvd.fit(path, rank=3, scheduler="sync")
    streamsvd.fit(path, rank=6, scheduler="sync", seed=7)
    assert streamsvd.open_factors(path, version=first["version"]).rank == 3
    assert streamsvd.open_factors(path).rank == 6
    assert [h["rank"] for h in streamsvd.open_factors(path).attrs["history"]] == [3, 6]
    before_any_fit = Store.open(path).versions()[-2].id
    with pytest.raises(NoFactorsError, match="run `streamsvd fit"):
        streamsvd.open_factors(path, version=before_any_fit)


def test_pca_mode_on_a_store(store: tuple[Path, np.ndarray], many_blocks: None) -> None:
    path, data = store
    data = data + 5.0  # a mean far from zero
    tmp = path.parent
    ingest(tmp / "shifted", [write_npy(tmp / "shifted.npy", data)])
    streamsvd.fit(tmp / "shifted", rank=4, center=True, scheduler="sync")
    factors = streamsvd.open_factors(tmp / "shifted")
    assert factors.mean is not None
    np.testing.assert_allclose(factors.mean, data.mean(axis=0), rtol=1e-12)
    s_ref = np.linalg.svd(data - data.mean(axis=0), compute_uv=False)
    np.testing.assert_allclose(factors.s, s_ref[:4], rtol=1e-8)
    assert streamsvd.verify(tmp / "shifted", scheduler="sync", check=False).ok


def test_verify_catches_a_wrong_record(store: tuple[Path, np.ndarray]) -> None:
    path, _ = store
    streamsvd.fit(path, rank=4, scheduler="sync")
    true_error = float(streamsvd.open_factors(path).attrs["relative_error"])
    with Store.open_for_writing(path) as writer, writer.transaction() as tx:
        tx.group["factors"].attrs["relative_error"] = 0.5
        tx.commit("tamper with the record")
    with pytest.raises(VerificationError, match=r"recorded relative error 0\.5, measured"):
        streamsvd.verify(path, scheduler="sync")
    report = streamsvd.verify(path, scheduler="sync", check=False)  # the same, as a report
    assert not report.ok
    assert report.recorded_error == 0.5
    assert report.measured_error == pytest.approx(true_error, rel=1e-6)  # measured, not read


def test_export_is_a_plain_zarr_group(store: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, data = store
    streamsvd.fit(path, rank=6, scheduler="sync")
    out = streamsvd.export(path, tmp_path / "factors.zarr", rank=4, scheduler="sync")
    group = zarr.open_group(str(out), mode="r")
    u, s, vt = group["U"][:], group["S"][:], group["Vt"][:]
    assert (u.shape, s.shape, vt.shape) == ((700, 4), (4,), (4, 30))
    attrs = dict(group.attrs)
    assert {"rank", "rows", "cols", "relative_error", "captured_energy", "params"} <= set(attrs)
    assert attrs["source_version"] == Store.open(path).current_version()
    measured = np.linalg.norm(data - (u * s) @ vt) / np.linalg.norm(data)
    assert attrs["relative_error"] == pytest.approx(measured, rel=1e-6)
    assert "mean" not in group


def test_cli_fit_info_verify_export(store: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = store
    runner = CliRunner()
    result = runner.invoke(app, ["fit", str(path), "--rank", "energy:0.99", "--scheduler", "sync"])
    assert result.exit_code == 0, result.output
    assert "energy:0.99" in result.stdout
    payload = json.loads(runner.invoke(app, ["info", str(path), "--json"]).stdout)
    factors = payload["factors"]
    assert {
        "rank",
        "rows_covered",
        "relative_error",
        "captured_energy",
        "singular_values",
        "params",
    } <= set(factors)
    assert factors["captured_energy"] >= 0.99
    result = runner.invoke(app, ["verify", str(path), "--scheduler", "sync"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(path), str(tmp_path / "out.zarr")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(path), str(tmp_path / "out.zarr")])
    assert result.exit_code == 4
    assert "exists; pass --overwrite" in result.stderr


@pytest.fixture(scope="module")
def dask_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real `dask scheduler` process on loopback."""
    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    bin_dir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [
            str(bin_dir / "dask"),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        yield address, scheduler_file
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def start_workers(scheduler_file: Path, count: int) -> list[subprocess.Popen[bytes]]:
    bin_dir = Path(sys.executable).parent
    return [
        subprocess.Popen(
            [
                str(bin_dir / "dask"),
                "worker",
                "--scheduler-file",
                str(scheduler_file),
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                "--host",
                "127.0.0.1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
        )
        for _ in range(count)
    ]


@pytest.mark.integration
def test_same_factors_on_one_or_two_real_workers(
    dask_scheduler: tuple[str, Path], store: tuple[Path, np.ndarray], many_blocks: None
) -> None:
    from distributed import Client

    address, scheduler_file = dask_scheduler
    results = []
    for count in (1, 2):
        workers = start_workers(scheduler_file, count)
        try:
            with Client(address) as client:
                client.wait_for_workers(count, timeout=60)
                streamsvd.fit(store[0], rank=5, seed=3, power_iters=2)
            factors = streamsvd.open_factors(store[0])
            results.append((factors.s, factors.vt, factors.stored.t, factors.u.compute()))
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait(timeout=30)
    for first, second in zip(*results, strict=True):
        np.testing.assert_array_equal(first, second)
