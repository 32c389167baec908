"""Compression table and reports: exact errors against NumPy, bytes, files and plot data.

Tolerances: the table's errors come from ``‖A‖_F² − Σ s_i²`` (recorded energy);
the fit is an exact SVD here (sketch width ≥ columns), so they match the
measured ``‖A − U_r S_r V_rᵀ‖_F/‖A‖_F`` up to the cancellation in that
difference, ~eps·‖A‖²/residual² ≲ 1e-10 relative for this noise level: 1e-6
is the bound the brief asks for.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import streamsvd
import streamsvd.cli_factors  # registers the commands on the app
from streamsvd.cli import app
from streamsvd.compression import compression_table, error_at_ranks
from streamsvd.errors import ConfigError, NoFactorsError
from streamsvd.report import (
    gavish_donoho_threshold,
    history_data,
    report_summary,
    spectrum_data,
    write_report,
)
from tests.conftest import fitted_store

ROWS, COLS = 240, 16
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def noisy(rng: np.random.Generator) -> np.ndarray:
    # Decaying spectrum plus noise: every rank has a distinct, non-zero error.
    scales = 10.0 ** -np.arange(5)
    signal = (rng.standard_normal((ROWS, 5)) * scales) @ rng.standard_normal((5, COLS)) * 5
    return signal + 0.05 * rng.standard_normal((ROWS, COLS))


@pytest.fixture
def store(tmp_path: Path, noisy: np.ndarray) -> Path:
    return fitted_store(tmp_path, noisy, rank=6)  # l = min(6 + 10, 16) = 16: exact SVD


@pytest.mark.parametrize("center", [False, True])
def test_error_at_each_rank_matches_numpy(tmp_path: Path, noisy: np.ndarray, center: bool) -> None:
    store = fitted_store(tmp_path, noisy, rank=6, center=center)
    a = noisy - noisy.mean(axis=0) if center else noisy
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    table = compression_table(store)
    assert [row["rank"] for row in table] == list(range(1, 7))
    total = np.linalg.norm(a)
    for row in table:
        r = row["rank"]
        measured = np.linalg.norm(a - (u[:, :r] * s[:r]) @ vt[:r]) / total
        assert row["relative_error"] == pytest.approx(measured, rel=1e-6)
        assert row["captured_energy"] == pytest.approx(np.sum(s[:r] ** 2) / total**2, rel=1e-9)
    # The same from the factors themselves (reconstruction from the store).
    f = streamsvd.open_factors(store)
    assert table[-1]["relative_error"] == pytest.approx(f.relative_error, rel=1e-9)


def test_bytes_add_up_and_monotone(store: Path) -> None:
    table = compression_table(store)
    for row in table:
        r = row["rank"]
        assert row["u_bytes"] == ROWS * r * 8
        assert row["s_bytes"] == r * 8
        assert row["vt_bytes"] == r * COLS * 8
        assert row["mean_bytes"] == 0
        assert row["factor_bytes"] == row["u_bytes"] + row["s_bytes"] + row["vt_bytes"]
        assert row["data_bytes"] == ROWS * COLS * 8  # float64 store
        assert row["data_dtype"] == "float64"
        assert row["factor_dtype"] == "float64"
        assert row["ratio"] == pytest.approx(row["data_bytes"] / row["factor_bytes"])
        assert row["data_stored_bytes"] is not None
        assert row["data_stored_bytes"] > 0
    assert np.all(np.diff([row["factor_bytes"] for row in table]) > 0)
    assert np.all(np.diff([row["ratio"] for row in table]) < 0)
    assert np.all(np.diff([row["relative_error"] for row in table]) <= 0)
    assert np.all(np.diff([row["captured_energy"] for row in table]) >= 0)
    single = compression_table(store, factor_dtype="float32")
    assert [row["factor_bytes"] for row in single] == [row["factor_bytes"] // 2 for row in table]
    with pytest.raises(ConfigError, match=r"factor_dtype must be one of float64, float32"):
        compression_table(store, factor_dtype="int8")


def test_pca_mode_counts_the_mean(tmp_path: Path, noisy: np.ndarray) -> None:
    store = fitted_store(tmp_path, noisy.astype(np.float32), rank=3, center=True)
    table = compression_table(store)
    assert all(row["mean_bytes"] == COLS * 8 for row in table)
    assert table[0]["data_bytes"] == ROWS * COLS * 4  # float32 store
    assert table[0]["data_dtype"] == "float32"


def test_error_at_ranks_zero_energy() -> None:
    err, cap = error_at_ranks(np.zeros(3), 0.0)
    assert err.tolist() == [0.0, 0.0, 0.0]
    assert cap.tolist() == [1.0, 1.0, 1.0]


def test_compress_report_cli(store: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["compress-report", str(store), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == compression_table(store)
    result = runner.invoke(app, ["compress-report", str(store)])
    assert result.exit_code == 0, result.output
    assert "captured energy" in result.output


# -- reports ------------------------------------------------------------------


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5_000, f"{path} is suspiciously small ({len(data)} bytes)"


def test_write_report(store: Path, tmp_path: Path) -> None:
    paths = write_report(store, tmp_path / "report")
    for image in paths.images:
        _check_png(image)
    text = paths.markdown.read_text(encoding="utf-8")
    for name in ("spectrum.png", "energy.png", "history.png"):
        assert f"]({name})" in text
    assert "| rank | 6 |" in text
    assert "| rank rule | `6` |" in text
    summary = paths.summary
    assert summary["rank"] == 6
    assert summary["rows"] == summary["rows_covered"] == ROWS
    assert summary["cols"] == COLS
    assert summary["updates_since_fit"] == 0
    # float64 data against float64 U (rows × 6), S (6) and Vt (6 × cols)
    assert summary["compression_ratio"] == pytest.approx(ROWS * COLS / (ROWS * 6 + 6 + 6 * COLS))
    assert summary["last_fit"] is not None
    # the summary describes the stored version: reading it again gives the same record
    assert summary == {**report_summary(store), "gd_threshold": summary["gd_threshold"]}


def test_spectrum_data_and_threshold(store: Path, noisy: np.ndarray) -> None:
    data = spectrum_data(store)
    assert data.source == "sketch"
    assert data.rank == 6
    # The sketch covers the whole spectrum (l = 16 = cols): its values are the SVD's.
    np.testing.assert_allclose(
        data.values, np.linalg.svd(noisy, compute_uv=False), rtol=1e-8, atol=1e-10
    )
    assert data.threshold is not None
    assert "median singular value" in data.threshold_note
    # With part of the spectrum, σ̂ comes from the residual energy (DESIGN.md):
    s = data.values[:4]
    energy = float(np.sum(data.values**2))
    tau, note = gavish_donoho_threshold(s, energy, ROWS, COLS)
    beta = COLS / ROWS
    lam = np.sqrt(2 * (beta + 1) + 8 * beta / ((beta + 1) + np.sqrt(beta**2 + 14 * beta + 1)))
    sigma = np.sqrt((energy - np.sum(s**2)) / ((ROWS - 4) * (COLS - 4)))
    assert tau == pytest.approx(lam * np.sqrt(ROWS) * sigma, rel=1e-12)
    assert "residual energy" in note
    # Nothing left: skipped with a note.
    tau, note = gavish_donoho_threshold(s, float(np.sum(s**2)), ROWS, COLS)
    assert tau is None
    assert "residual energy is zero" in note


def test_history_after_updates(store: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    for rows in (10, 25, 7):
        streamsvd.update(store, [rng.standard_normal((rows, COLS))], scheduler="sync")
    points = history_data(store)
    assert [p.op for p in points] == ["fit", "update", "update", "update"]
    assert [p.rows for p in points] == [ROWS, ROWS + 10, ROWS + 35, ROWS + 42]
    f = streamsvd.open_factors(store)
    assert points[-1].relative_error == pytest.approx(f.relative_error)
    assert all(p.rank == 6 for p in points)
    # After updates the spectrum plot shows the current S, the stale sketch faintly.
    spectrum = spectrum_data(store)
    assert spectrum.source == "S"
    np.testing.assert_array_equal(spectrum.values, f.s)
    assert spectrum.stale_sketch is not None
    paths = write_report(store, tmp_path / "after")
    _check_png(paths.history)
    assert paths.summary["updates_since_fit"] == 3
    assert paths.summary["updates"] == 3
    assert "current singular values S" in paths.markdown.read_text(encoding="utf-8")


def test_report_cli(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "rep"
    result = runner.invoke(app, ["report", str(store), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "energy.png",
        "history.png",
        "report.md",
        "spectrum.png",
    ]


def test_report_without_factors(tmp_path: Path, rng: np.random.Generator) -> None:
    store = tmp_path / "store"
    streamsvd.ingest(store, [rng.standard_normal((20, 4))])
    with pytest.raises(NoFactorsError, match=r"no factors yet"):
        write_report(store, tmp_path / "r")
    result = CliRunner().invoke(app, ["compress-report", str(store)])
    assert result.exit_code == 6
