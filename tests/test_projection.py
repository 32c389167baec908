"""Projection (fold-in) and reconstruction against NumPy on small in-memory matrices.

Tolerances: the factors come from float64 arithmetic on well-conditioned
matrices (condition of the kept singular values ≲ 10³), so products agree
with NumPy to ~1e-12 relative; 1e-8 leaves room without hiding a wrong formula.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from typer.testing import CliRunner

import streamsvd
import streamsvd.cli_factors  # registers the commands on the app
from streamsvd.cli import app
from streamsvd.errors import ConfigError, InvalidInputError, ShapeMismatchError, StoreExistsError
from streamsvd.projection import parse_rows, project, project_file, reconstruct, reconstruct_file
from tests.conftest import fitted_store, write_npy

ROWS, COLS = 300, 12


@pytest.fixture
def noisy(rng: np.random.Generator) -> np.ndarray:
    """Low rank plus noise, with an offset so that PCA mode differs from plain SVD."""
    signal = rng.standard_normal((ROWS, 4)) @ rng.standard_normal((4, COLS)) * 3
    return signal + 0.1 * rng.standard_normal((ROWS, COLS)) + 2.0


@pytest.fixture
def store(tmp_path: Path, noisy: np.ndarray) -> Path:
    # rank 5 + oversample 10 ≥ 12 columns: the fit is an exact SVD (one pass).
    return fitted_store(tmp_path, noisy, rank=5)


@pytest.fixture
def pca_store(tmp_path: Path, noisy: np.ndarray) -> Path:
    return fitted_store(tmp_path, noisy, rank=5, center=True)


def _close(actual: np.ndarray, expected: np.ndarray, tol: float = 1e-8) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale)


# -- project ------------------------------------------------------------------


def test_project_equals_numpy(store: Path, rng: np.random.Generator) -> None:
    f = streamsvd.open_factors(store)
    x = rng.standard_normal((37, COLS))
    out = project(store, x)
    assert isinstance(out, da.Array)
    assert out.shape == (37, f.rank)
    _close(out.compute(), (x @ f.vt.T) / f.s)
    _close(project(store, x, scores=True).compute(), x @ f.vt.T)
    _close(project(store, x, rank=2).compute(), (x @ f.vt[:2].T) / f.s[:2])


def test_project_pca_mode_subtracts_mean(pca_store: Path, rng: np.random.Generator) -> None:
    f = streamsvd.open_factors(pca_store)
    assert f.mean is not None
    x = rng.standard_normal((20, COLS)) + 2.0
    _close(project(pca_store, x).compute(), ((x - f.mean) @ f.vt.T) / f.s)
    _close(project(pca_store, x, scores=True).compute(), (x - f.mean) @ f.vt.T)


@pytest.mark.parametrize("center", [False, True])
def test_fold_in_of_stored_rows_gives_u(tmp_path: Path, noisy: np.ndarray, center: bool) -> None:
    store = fitted_store(tmp_path, noisy, rank=5, center=center)
    f = streamsvd.open_factors(store)
    # A dask input keeps its row chunks.
    x = da.from_array(noisy, chunks=(50, COLS))
    projected = project(store, x)
    assert projected.chunks[0] == x.chunks[0]
    _close(projected.compute(), f.u.compute())
    # Scores of stored rows are U S.
    _close(project(store, noisy, scores=True).compute(), f.u.compute() * f.s)


def test_zero_singular_values_map_to_zero(tmp_path: Path, rng: np.random.Generator) -> None:
    # Rank 2 data, rank 4 fit: s_3, s_4 are zero up to rounding.
    data = rng.standard_normal((120, 2)) @ rng.standard_normal((2, 8))
    store = fitted_store(tmp_path, data, rank=4)
    f = streamsvd.open_factors(store)
    x = rng.standard_normal((10, 8))
    out = project(store, x).compute()
    assert np.isfinite(out).all()
    assert np.all(out[:, 2:] == 0)
    _close(out[:, :2], (x @ f.vt[:2].T) / f.s[:2])


def test_project_rejects_bad_input(store: Path, rng: np.random.Generator) -> None:
    with pytest.raises(ShapeMismatchError, match=r"x has 5 columns but the factors .* have 12"):
        project(store, rng.standard_normal((3, 5)))
    with pytest.raises(InvalidInputError, match=r"x must be 2-D"):
        project(store, rng.standard_normal(COLS))
    with pytest.raises(ConfigError, match=r"--rank must be an integer between 1 and the fitted"):
        project(store, rng.standard_normal((3, COLS)), rank=6)
    x = rng.standard_normal((100, COLS))
    x[71, 3] = np.nan
    with pytest.raises(InvalidInputError, match=r"x: row 71, column 4 holds nan"):
        project(store, da.from_array(x, chunks=(30, COLS))).compute()


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".zarr"])
def test_project_file_round_trips(
    store: Path, tmp_path: Path, rng: np.random.Generator, suffix: str
) -> None:
    f = streamsvd.open_factors(store)
    x = rng.standard_normal((250, COLS))
    src = write_npy(tmp_path / "new.npy", x)
    out = tmp_path / f"proj{suffix}"
    # 40 rows × 12 cols × 8 bytes per block: 7 blocks, the last one partial.
    report = project_file(store, src, out, memory_budget=40 * COLS * 8)
    assert (report.rows, report.cols, report.blocks) == (250, f.rank, 7)
    expected = (x @ f.vt.T) / f.s
    if suffix == ".npy":
        got = np.load(out)
    elif suffix == ".parquet":
        pf = pq.ParquetFile(out)
        assert pf.metadata.num_row_groups == 7
        assert pf.schema_arrow.names == [f"c{j}" for j in range(f.rank)]
        got = np.column_stack([pf.read().column(f"c{j}").to_numpy() for j in range(f.rank)])
    else:
        array = zarr.open_array(str(out), mode="r")
        assert array.metadata.zarr_format == 3
        assert array.chunks == (40, f.rank)
        got = array[...]
    _close(got, expected)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".proj")] == []


def test_project_file_csv_unknown_row_count(
    store: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    # CSV sources do not know their row count up front: the .npy goes through a raw file.
    f = streamsvd.open_factors(store)
    x = rng.standard_normal((53, COLS))
    io = tmp_path / "io"
    io.mkdir()
    src = io / "new.csv"
    np.savetxt(src, x, delimiter=",", fmt="%.17g")
    out = io / "proj.npy"
    project_file(store, src, out, rank=3, scores=True, memory_budget=10 * COLS * 8)
    _close(np.load(out), x @ f.vt[:3].T)
    assert sorted(p.name for p in io.iterdir()) == ["new.csv", "proj.npy"]


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".zarr"])
def test_project_file_nan_leaves_nothing(
    store: Path, tmp_path: Path, rng: np.random.Generator, suffix: str
) -> None:
    x = rng.standard_normal((200, COLS))
    x[123, 0] = np.inf
    io = tmp_path / "io"
    io.mkdir()
    src = write_npy(io / "bad.npy", x)
    with pytest.raises(InvalidInputError, match=r"bad\.npy: row 123, column 1 holds inf"):
        project_file(store, src, io / f"proj{suffix}", memory_budget=50 * COLS * 8)
    assert [p.name for p in io.iterdir()] == ["bad.npy"]


def test_project_file_errors(store: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    src = write_npy(tmp_path / "new.npy", rng.standard_normal((5, COLS)))
    with pytest.raises(ConfigError, match=r"cannot tell the output format .* '\.txt'"):
        project_file(store, src, tmp_path / "out.txt")
    project_file(store, src, tmp_path / "out.npy")
    with pytest.raises(StoreExistsError, match=r"out\.npy exists; pass --overwrite"):
        project_file(store, src, tmp_path / "out.npy")
    project_file(store, src, tmp_path / "out.npy", overwrite=True, rank=1)
    assert np.load(tmp_path / "out.npy").shape == (5, 1)
    wide = write_npy(tmp_path / "wide.npy", rng.standard_normal((5, COLS + 1)))
    with pytest.raises(ShapeMismatchError, match=r"wide\.npy: has 13 columns .* have 12"):
        project_file(store, wide, tmp_path / "w.npy")


def test_project_cli(store: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    f = streamsvd.open_factors(store)
    x = rng.standard_normal((30, COLS))
    src = write_npy(tmp_path / "new.npy", x)
    runner = CliRunner()
    result = runner.invoke(
        app, ["project", str(store), str(src), "--out", str(tmp_path / "p.parquet"), "--rank", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "projected 30 rows onto 3 components" in result.output
    table = pq.read_table(tmp_path / "p.parquet")
    got = np.column_stack([table.column(f"c{j}").to_numpy() for j in range(3)])
    _close(got, (x @ f.vt[:3].T) / f.s[:3])
    x[4, 2] = np.nan
    bad = write_npy(tmp_path / "bad.npy", x)
    result = runner.invoke(app, ["project", str(store), str(bad), "--out", str(tmp_path / "b.npy")])
    assert result.exit_code == 3
    assert not (tmp_path / "b.npy").exists()


# -- reconstruct --------------------------------------------------------------


def test_reconstruct_equals_usvt(pca_store: Path) -> None:
    f = streamsvd.open_factors(pca_store)
    u = f.u.compute()
    got = reconstruct(pca_store, slice(70, 150))
    assert f.mean is not None
    _close(got, (u[70:150] * f.s) @ f.vt + f.mean)
    _close(reconstruct(pca_store, slice(0, 5), rank=2), (u[:5, :2] * f.s[:2]) @ f.vt[:2] + f.mean)


def test_reconstruct_exact_for_low_rank(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.standard_normal((200, 3)) @ rng.standard_normal((3, 30))
    store = fitted_store(tmp_path, data, rank=4)  # rank ≥ true rank 3
    _close(reconstruct(store, slice(None)), data)
    _close(reconstruct(store, slice(130, 131)), data[130:131])


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".zarr"])
def test_reconstruct_file(store: Path, tmp_path: Path, suffix: str) -> None:
    expected = reconstruct(store, slice(10, 290))
    out = tmp_path / f"rec{suffix}"
    report = reconstruct_file(store, out, rows=slice(10, 290), block_rows=64)
    assert (report.rows, report.cols, report.blocks) == (280, COLS, 5)
    if suffix == ".npy":
        got = np.load(out)
    elif suffix == ".parquet":
        table = pq.read_table(out)
        got = np.column_stack([table.column(f"c{j}").to_numpy() for j in range(COLS)])
    else:
        got = zarr.open_array(str(out), mode="r")[...]
    _close(got, expected)


def test_reconstruct_bad_range(store: Path) -> None:
    with pytest.raises(ConfigError, match=r"rows 250:301 are outside .* cover \(0:300\)"):
        reconstruct(store, slice(250, 301))
    with pytest.raises(ConfigError, match=r"rows 10:10 are outside"):
        reconstruct(store, slice(10, 10))
    with pytest.raises(ConfigError, match=r"rows -1:5 are outside"):
        reconstruct(store, slice(-1, 5))
    with pytest.raises(ConfigError, match=r"contiguous range"):
        reconstruct(store, slice(0, 10, 2))
    with pytest.raises(ConfigError, match=r"--rows must be A:B"):
        parse_rows("a:b")


def test_reconstruct_cli(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "r.zarr"
    result = runner.invoke(app, ["reconstruct", str(store), "--rows", "5:25", "--out", str(out)])
    assert result.exit_code == 0, result.output
    _close(zarr.open_array(str(out), mode="r")[...], reconstruct(store, slice(5, 25)))
    result = runner.invoke(
        app, ["reconstruct", str(store), "--rows", "290:310", "--out", str(tmp_path / "x.npy")]
    )
    assert result.exit_code == 2
    assert "outside the rows the factors cover (0:300)" in result.output
