"""Incremental updates on a store: accuracy, accounting, PCA mode, forgetting, drift, crashes."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import streamsvd
import streamsvd.incremental
from streamsvd.cli import app
from streamsvd.errors import ConfigError, NoFactorsError
from streamsvd.store.repository import Store
from tests.conftest import fitted_store, run_killed, write_npy
from tests.matrices import fast_decay, optimal_error


@pytest.mark.parametrize("n_batches", [1, 10, 100])
def test_updates_stay_within_two_percent_of_a_fresh_fit(
    tmp_path: Path, rng: np.random.Generator, n_batches: int
) -> None:
    data = fast_decay(rng, 1200, 40)
    rank = 6
    store = fitted_store(tmp_path, data[:600], rank)
    parts = np.array_split(data[600:], n_batches)
    for part in parts:
        report = streamsvd.update(store, [part])
    fresh = fitted_store(tmp_path / "fresh", data, rank)
    fresh_error = streamsvd.open_factors(fresh).relative_error
    # Issue #4: final error ≤ 1.02 × a fresh fit with the same parameters.
    assert report.relative_error <= 1.02 * fresh_error
    assert fresh_error <= 1.0001 * optimal_error(data, rank)
    assert report.rows_added == len(parts[-1])
    factors = streamsvd.open_factors(store)
    assert factors.attrs["rows_covered"] == 1200
    assert streamsvd.verify(store, scheduler="sync", check=False).ok


def test_exactly_low_rank_is_reproduced(tmp_path: Path, rng: np.random.Generator) -> None:
    true_rank, rank = 5, 7
    data = rng.standard_normal((900, true_rank)) @ rng.standard_normal((true_rank, 30))
    store = fitted_store(tmp_path, data[:300], rank)
    for part in (data[300:301], data[301:305], data[305:600], data[600:]):  # 1 row, wider, ...
        streamsvd.update(store, [part])
    factors = streamsvd.open_factors(store)
    u = factors.u.compute()
    # float64 round-off through ~4 updates: 1e-8 relative is the bound.
    np.testing.assert_allclose((u * factors.s) @ factors.vt, data, atol=1e-8 * np.abs(data).max())


def test_zero_rows_and_duplicates_are_no_ops(tmp_path: Path, rng: np.random.Generator) -> None:
    data = fast_decay(rng, 300, 12)
    store = fitted_store(tmp_path, data[:200], 3)
    version = Store.open(store).current_version()
    report = streamsvd.update(store, [np.empty((0, 12))])
    assert report.version is None
    assert report.skipped[0].reason == "no rows: nothing to do"
    streamsvd.update(store, [data[200:]])
    again = streamsvd.update(store, [data[200:]])
    assert again.version is None
    assert "already ingested" in again.skipped[0].reason
    assert Store.open(store).current_version() != version


def test_rank_deficient_batch_gives_no_nan(tmp_path: Path, rng: np.random.Generator) -> None:
    data = fast_decay(rng, 300, 10)
    store = fitted_store(tmp_path, data[:200], 4)
    report = streamsvd.update(store, [np.zeros((20, 10))])
    assert np.isfinite(report.relative_error)
    vt = streamsvd.open_factors(store).vt
    inside = rng.standard_normal((30, 4)) @ vt  # exactly in span(V): no residual direction
    report = streamsvd.update(store, [inside])
    assert np.isfinite(report.relative_error)
    factors = streamsvd.open_factors(store)
    assert np.isfinite(factors.u.compute()).all()
    assert streamsvd.verify(store, scheduler="sync", check=False).ok


def test_recorded_error_equals_verify_after_100_updates(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    data = fast_decay(rng, 1100, 25, noise=1e-2)
    store = fitted_store(tmp_path, data[:100], 5)
    for part in np.array_split(data[100:], 100):
        streamsvd.update(store, [part])
    report = streamsvd.verify(store, scheduler="sync")
    # Issue #4: recorded equals measured to 1e-6 relative.
    assert report.recorded_error == pytest.approx(report.measured_error, rel=1e-6)
    assert report.orthogonality_u < 1e-8
    history = streamsvd.open_factors(store).attrs["history"]
    assert [h["op"] for h in history].count("update") == 100


def test_compaction_keeps_the_factors(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = fast_decay(rng, 600, 20, noise=1e-2)
    store = fitted_store(tmp_path, data[:300], 4)
    before = streamsvd.open_factors(store).stored.u_raw.shape[1]
    monkeypatch.setattr(streamsvd.incremental, "MAX_CONDITION", 1.0)  # always compact
    report = streamsvd.update(store, [data[300:]])
    assert report.compacted
    factors = streamsvd.open_factors(store)
    assert (before, factors.stored.u_raw.shape[1]) == (14, 4)
    np.testing.assert_array_equal(factors.stored.t, np.eye(4))
    assert factors.attrs["compactions"] == 1
    assert streamsvd.verify(store, scheduler="sync", check=False).ok


def test_pca_mode_agrees_with_scikit_learn(tmp_path: Path, rng: np.random.Generator) -> None:
    from sklearn.decomposition import PCA, IncrementalPCA

    data = fast_decay(rng, 800, 15, noise=0.05) + rng.standard_normal(15) * 4
    rank = 15  # no truncation: streaming equals one-shot exactly
    batches = np.array_split(data[400:], 8)
    store = fitted_store(tmp_path, data[:400], rank, center=True)
    for part in batches:
        streamsvd.update(store, [part])
    factors = streamsvd.open_factors(store)
    pca = PCA(n_components=rank, svd_solver="full").fit(data)
    assert factors.mean is not None
    np.testing.assert_allclose(factors.mean, pca.mean_, rtol=1e-12, atol=1e-12)
    # Explained variance: s² / (m − 1); float64 LAPACK vs a chain of updates → 1e-9.
    np.testing.assert_allclose(factors.s**2 / (800 - 1), pca.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(np.abs(factors.vt @ pca.components_.T), np.eye(rank), atol=1e-6)
    ipca = IncrementalPCA(n_components=rank)
    ipca.partial_fit(data[:400])
    for part in batches:
        ipca.partial_fit(part)
    np.testing.assert_allclose(factors.s, ipca.singular_values_, rtol=1e-8)
    assert streamsvd.verify(store, scheduler="sync", check=False).ok


def test_pca_mode_truncated_is_near_optimal(tmp_path: Path, rng: np.random.Generator) -> None:
    data = fast_decay(rng, 1000, 30, noise=1e-2) + 7.0
    store = fitted_store(tmp_path, data[:500], 5, center=True)
    for part in np.array_split(data[500:], 10):
        report = streamsvd.update(store, [part])
    centred = data - data.mean(axis=0)
    assert report.relative_error <= 1.02 * optimal_error(centred, 5)
    assert streamsvd.verify(store, scheduler="sync", check=False).ok


def test_forgetting_weights_the_energy(tmp_path: Path, rng: np.random.Generator) -> None:
    data = fast_decay(rng, 300, 10)
    store = fitted_store(tmp_path, data[:100], 10)
    gamma = 0.8
    assert streamsvd.api.row_weights(streamsvd.open_factors(store).attrs) == []
    streamsvd.update(store, [data[100:200]], forget=gamma)
    streamsvd.update(store, [data[200:]], forget=gamma)
    weighted = np.vstack([gamma**2 * data[:100], gamma * data[100:200], data[200:]])
    factors = streamsvd.open_factors(store)
    assert factors.attrs["energy"] == pytest.approx(np.sum(weighted**2), rel=1e-12)
    np.testing.assert_allclose(
        factors.s, np.linalg.svd(weighted, compute_uv=False), rtol=1e-9, atol=1e-12
    )
    # verify measures the weighted matrix, from the weights recorded per batch.
    report = streamsvd.verify(store, scheduler="sync")
    assert report.measured_error == pytest.approx(report.recorded_error, rel=1e-6, abs=1e-7)
    with pytest.raises(ConfigError, match=r"--forget must be in \(0, 1\]; got 1.5"):
        streamsvd.update(store, [data[:5]], forget=1.5)


def test_refit_above_runs_a_full_fit(tmp_path: Path, rng: np.random.Generator) -> None:
    data = fast_decay(rng, 400, 20, noise=1e-3)
    store = fitted_store(tmp_path, data[:200], 3)
    drift = rng.standard_normal((200, 20)) * 5  # a new direction the rank-3 factors miss
    report = streamsvd.update(store, [drift], refit_above="+10%")
    assert report.refit is not None
    assert "exceeded the budget" in report.refit["reason"]
    ops = [h["op"] for h in streamsvd.open_factors(store).attrs["history"]]
    assert ops == ["fit", "update", "fit"]
    with pytest.raises(ConfigError, match=r"--refit-above must be .* got 'lots'"):
        streamsvd.update(store, [data[:3]], refit_above="lots")


def test_update_catches_up_rows_ingested_after_the_fit(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    data = fast_decay(rng, 300, 10)
    store = fitted_store(tmp_path, data[:100], 10)
    streamsvd.ingest(store, [data[100:]])
    report = streamsvd.update(store)
    assert report.rows_added == 200
    np.testing.assert_allclose(
        streamsvd.open_factors(store).s, np.linalg.svd(data, compute_uv=False), rtol=1e-9
    )


def test_update_without_factors_says_fit_first(tmp_path: Path, rng: np.random.Generator) -> None:
    streamsvd.ingest(tmp_path / "s", [rng.standard_normal((5, 3))])
    with pytest.raises(NoFactorsError, match="run `streamsvd fit"):
        streamsvd.update(tmp_path / "s", [rng.standard_normal((5, 3))])


UPDATE_JOB = """
options = streamsvd.IngestOptions(memory_budget=16 * 1024)
streamsvd.update(store, sources, options=options)
"""


@pytest.mark.parametrize(("point", "nth"), [("after-block", 2), ("before-commit", 1)])
def test_kill_during_update_then_rerun(
    tmp_path: Path, rng: np.random.Generator, point: str, nth: int
) -> None:
    data = fast_decay(rng, 900, 16)
    files = [
        write_npy(tmp_path / f"b{i}.npy", part)
        for i, part in enumerate(data[300:].reshape(3, 200, 16))
    ]
    reference = fitted_store(tmp_path / "ref", data[:300], 4)
    streamsvd.update(reference, files, options=streamsvd.IngestOptions(memory_budget=16 * 1024))
    store = fitted_store(tmp_path, data[:300], 4)
    before = Store.open(store).current_version()
    assert run_killed(UPDATE_JOB, point, nth, store, files) == -signal.SIGKILL
    assert Store.open(store).current_version() == before
    assert streamsvd.open_factors(store).attrs["rows_covered"] == 300
    streamsvd.update(store, files, options=streamsvd.IngestOptions(memory_budget=16 * 1024))
    got, want = streamsvd.open_factors(store), streamsvd.open_factors(reference)
    np.testing.assert_array_equal(got.s, want.s)
    np.testing.assert_array_equal(got.vt, want.vt)
    np.testing.assert_array_equal(got.u.compute(), want.u.compute())


def test_cli_update(tmp_path: Path, rng: np.random.Generator) -> None:
    data = fast_decay(rng, 300, 10)
    store = fitted_store(tmp_path, data[:200], 3)
    src = write_npy(tmp_path / "new.npy", data[200:])
    result = CliRunner().invoke(app, ["update", str(store), str(src), "--scheduler", "sync"])
    assert result.exit_code == 0, result.output
    assert "updated with 100 rows" in result.stdout
    result = CliRunner().invoke(app, ["update", str(store), str(src)])
    assert "nothing new" in result.stdout


def test_verify_measures_the_forget_weighted_matrix(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    data = fast_decay(rng, 600, 12, noise=0.05)
    store = fitted_store(tmp_path, data[:200], 3)
    for part in np.array_split(data[200:], 4):
        streamsvd.update(store, [part], forget=0.5)
    report = streamsvd.verify(store, scheduler="sync")
    assert report.measured_error == pytest.approx(report.recorded_error, rel=1e-6)
    # Negative control: the unweighted residual of the same factors is another number.
    factors = streamsvd.open_factors(store)
    u = factors.u.compute()
    unweighted = np.linalg.norm(data - (u * factors.s) @ factors.vt) / np.linalg.norm(data)
    assert abs(unweighted - report.recorded_error) > 1e-3 * report.recorded_error
    segments = streamsvd.api.row_weights(factors.attrs)
    assert [w for _, _, w in segments] == [0.5**4, 0.5**3, 0.5**2, 0.5, 1.0]
