"""project, reconstruct, compress-report and report on a sparse (triplet) store.

The store is small, so the test densifies it and compares with NumPy. The fits are
exact (``rank + oversample ≥ cols``), so products agree with LAPACK to ~1e-12
relative; 1e-8 leaves room. Sign-free quantities are compared (``U S Vᵀ``, the
projection ``x V Vᵀ`` onto the row space) since singular vectors are defined up
to sign.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

import streamsvd
import streamsvd.cli_factors  # registers the commands on the app
from streamsvd.cli import app
from streamsvd.compression import compression_table
from streamsvd.errors import ConfigError, InvalidInputError, ShapeMismatchError
from streamsvd.projection import (
    project,
    project_file,
    project_triplets,
    reconstruct,
    reconstruct_file,
)
from streamsvd.report import report_summary, spectrum_data, write_report
from streamsvd.store import sparse
from streamsvd.store.repository import Store
from tests.conftest import write_triplets

TRIPLETS = streamsvd.IngestOptions(format="triplets")
ROWS, COLS, RANK = 120, 30, 6


@dataclass(frozen=True)
class Small:
    store: Path
    dense: np.ndarray  # the stored matrix, densified (index order)
    col_ids: list[str]
    center: bool

    def reference(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """NumPy's SVD of the (centred) densified matrix, and the mean subtracted."""
        mean = self.dense.mean(axis=0) if self.center else np.zeros(COLS)
        u, s, vt = np.linalg.svd(self.dense - mean, full_matrices=False)
        return u, s, vt, mean


def _make(tmp_path: Path, rng: np.random.Generator, *, center: bool) -> Small:
    """120 × 30 ratings, ~3 % dense (every row and column non-empty), string ids."""
    dense = sp.random(ROWS, COLS, density=0.02, random_state=int(rng.integers(1 << 30))).toarray()
    dense[np.arange(ROWS), np.arange(ROWS) % COLS] = 1.0 + np.arange(ROWS) % 5
    coo = sp.coo_matrix(dense)
    store = tmp_path / "store"
    path = write_triplets(
        tmp_path / "ratings.parquet",
        [f"u{r}" for r in coo.row],
        [f"i{c}" for c in coo.col],
        coo.data,
    )
    streamsvd.ingest(store, [path], options=TRIPLETS)
    streamsvd.fit(store, rank=RANK, oversample=COLS, center=center, scheduler="sync")
    group = Store.open(store).root()
    stored = sparse.read_rows(group, 0, sparse.n_rows(group)).toarray()
    return Small(store, stored, [str(i) for i in sparse.read_ids(group, "cols")], center)


@pytest.fixture
def small(tmp_path: Path, rng: np.random.Generator) -> Small:
    return _make(tmp_path, rng, center=False)


def _close(actual: np.ndarray, expected: np.ndarray, tol: float = 1e-8) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale)


def _row_space(coords: np.ndarray, store: Path) -> np.ndarray:
    """``coords · diag(s) · Vᵀ``: sign-free, compares with NumPy's ``x V Vᵀ``."""
    f = streamsvd.open_factors(store)
    return np.asarray((coords * f.s) @ f.vt)


# -- compress-report ----------------------------------------------------------


def test_compression_table_counts_csr_bytes_and_ratio_below_one(small: Small) -> None:
    table = compression_table(small.store)
    nnz = int(np.count_nonzero(small.dense))
    csr = (ROWS + 1) * 8 + nnz * (4 + 8)  # indptr int64, indices int32, data float64
    _, s, _, _ = small.reference()
    energy = float(np.sum(s**2))
    for row in table:
        r = row["rank"]
        assert row["data_format"] == "csr"
        assert row["data_nnz"] == nnz
        assert row["data_bytes"] == csr
        assert row["factor_bytes"] == (ROWS * r + r + r * COLS) * 8
        assert row["ratio"] == pytest.approx(csr / row["factor_bytes"])
        expected = np.sqrt(max(energy - float(np.sum(s[:r] ** 2)), 0.0) / energy)
        assert row["relative_error"] == pytest.approx(expected, abs=1e-9)
    assert table[-1]["ratio"] < 1  # dense factors outweigh sparse ratings
    assert table[-1]["data_stored_bytes"] is not None


def test_cli_compress_report_says_the_factors_are_larger(small: Small) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["compress-report", str(small.store)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "as CSR" in text
    assert "LARGER than the data" in text
    result = runner.invoke(app, ["compress-report", str(small.store), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == compression_table(small.store)


# -- report -------------------------------------------------------------------


def test_report_on_a_sparse_store(small: Small, tmp_path: Path) -> None:
    summary = report_summary(small.store)
    assert summary["kind"] == "sparse"
    assert summary["rows"] == ROWS
    assert summary["nnz"] == np.count_nonzero(small.dense)
    assert summary["density"] == pytest.approx(np.count_nonzero(small.dense) / small.dense.size)
    assert summary["compression_ratio"] < 1
    _, s, _, _ = small.reference()
    values = spectrum_data(small.store).values
    _close(values[:COLS], s[: values.size], tol=1e-9)
    paths = write_report(small.store, tmp_path / "report")
    assert all(p.stat().st_size > 0 for p in paths.images)
    text = paths.markdown.read_text(encoding="utf-8")
    assert "| stored entries (nnz) |" in text
    assert "of data as CSR" in text
    assert "the factors are larger than the data" in text


def test_cli_report_on_a_sparse_store(small: Small, tmp_path: Path) -> None:
    out = tmp_path / "cli-report"
    result = CliRunner().invoke(app, ["report", str(small.store), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {
        "report.md",
        "spectrum.png",
        "energy.png",
        "history.png",
    }
    assert "density" in (out / "report.md").read_text(encoding="utf-8")


# -- reconstruct --------------------------------------------------------------


def test_reconstruct_rows_of_a_sparse_store(small: Small, tmp_path: Path) -> None:
    u, s, vt, _ = small.reference()
    expected = (u[5:9, :RANK] * s[:RANK]) @ vt[:RANK]
    _close(reconstruct(small.store, slice(5, 9)), expected)
    result = CliRunner().invoke(
        app, ["reconstruct", str(small.store), "--rows", "5:9", "--out", str(tmp_path / "r.npy")]
    )
    assert result.exit_code == 0, result.output
    _close(np.load(tmp_path / "r.npy"), expected)


def test_reconstruct_refuses_beyond_the_memory_budget(small: Small, tmp_path: Path) -> None:
    size = ROWS * COLS * 8
    match = rf"dense {ROWS} × {COLS} float64 array .*\({size} bytes\).*at most 4 at a time"
    with pytest.raises(ConfigError, match=match):
        reconstruct(small.store, memory_budget=4 * COLS * 8 + 7)
    with pytest.raises(ConfigError, match="reconstruct fewer rows"):
        reconstruct_file(small.store, tmp_path / "r.npy", memory_budget=1000)
    assert not (tmp_path / "r.npy").exists()
    assert reconstruct(small.store, slice(0, 4), memory_budget=4 * COLS * 8).shape == (4, COLS)


def test_reconstruct_budget_does_not_apply_to_dense_stores(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    store = tmp_path / "dense"
    streamsvd.ingest(store, [rng.standard_normal((20, 5))])
    streamsvd.fit(store, rank=2, scheduler="sync")
    assert reconstruct(store, memory_budget=1).shape == (20, 5)


# -- project ------------------------------------------------------------------


def test_project_dense_rows_onto_a_sparse_store(
    small: Small, tmp_path: Path, rng: np.random.Generator
) -> None:
    _, _, vt, _ = small.reference()
    x = rng.standard_normal((7, COLS))
    coords = project(small.store, x).compute()
    _close(_row_space(coords, small.store), x @ vt[:RANK].T @ vt[:RANK])
    # fold-in identity: the stored rows project onto their rows of U
    _close(
        project(small.store, small.dense).compute(), streamsvd.open_factors(small.store).u.compute()
    )
    np.save(tmp_path / "x.npy", x)
    project_file(small.store, tmp_path / "x.npy", tmp_path / "p.npy")
    _close(np.load(tmp_path / "p.npy"), coords)
    np.save(tmp_path / "narrow.npy", x[:, :3])
    with pytest.raises(ShapeMismatchError, match="pass --format triplets"):
        project_file(small.store, tmp_path / "narrow.npy", tmp_path / "q.npy")


@pytest.mark.parametrize("center", [False, True])
def test_project_triplets_folds_in_rows_by_id(
    tmp_path: Path, rng: np.random.Generator, center: bool
) -> None:
    small = _make(tmp_path, rng, center=center)
    # new rows b and a interleaved with the stored row u7 (its stored entries);
    # (b, i3) twice: summed
    stored = np.flatnonzero(small.dense[7])
    u7_cols = [small.col_ids[j] for j in stored]
    u7_vals = list(small.dense[7, stored])
    rows = ["b", "u7", "a", "b", "b"] + ["u7"] * (stored.size - 1)
    cols = ["i3", u7_cols[0], "i1", "i10", "i3", *u7_cols[1:]]
    vals = [1.0, u7_vals[0], 4.0, -1.0, 0.5, *u7_vals[1:]]
    col_of = {c: j for j, c in enumerate(small.col_ids)}
    x = np.zeros((3, COLS))  # b, u7, a: order of first appearance
    order = {"b": 0, "u7": 1, "a": 2}
    for r, c, v in zip(rows, cols, vals, strict=True):
        x[order[r], col_of[c]] += v
    _, _, vt, mean = small.reference()
    expected = (x - mean) @ vt[:RANK].T @ vt[:RANK]

    path = write_triplets(tmp_path / "new.parquet", rows, cols, vals)
    ids, coords = project_triplets(small.store, path)
    assert ids.tolist() == ["b", "u7", "a"]
    _close(_row_space(coords, small.store), expected)
    # a stored row folds in to its row of U (fold-in identity of an exact fit)
    _close(coords[1], streamsvd.open_factors(small.store).u[7].compute())
    _, scores = project_triplets(small.store, path, scores=True, rank=2)
    f = streamsvd.open_factors(small.store)
    _close(scores, (x - (0 if f.mean is None else f.mean)) @ f.vt[:2].T)

    # a file, auto-detected (CSV here), with the ids in a row_id column
    csv = write_triplets(tmp_path / "new.csv", rows, cols, vals)
    report = project_file(small.store, csv, tmp_path / "out.parquet")
    assert (report.rows, report.cols) == (3, RANK)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["row_id", *(f"c{j}" for j in range(RANK))]
    assert table.column("row_id").to_pylist() == ["b", "u7", "a"]
    got = np.column_stack([table.column(f"c{j}").to_numpy() for j in range(RANK)])
    _close(got, coords)


def test_cli_project_triplets_to_parquet(small: Small, tmp_path: Path) -> None:
    path = write_triplets(
        tmp_path / "new.parquet", [10, 10, 11], ["i1", "i2", "i2"], [1.0, 2.0, 3.0]
    )
    out = tmp_path / "p.parquet"
    result = CliRunner().invoke(
        app,
        ["project", str(small.store), str(path), "--out", str(out), "--format", "triplets"],
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("row_id").to_pylist() == [10, 11]  # integer ids stay integers
    ids, coords = project_triplets(small.store, path)
    assert ids.tolist() == [10, 11]
    got = np.column_stack([table.column(f"c{j}").to_numpy() for j in range(RANK)])
    _close(got, coords)
    result = CliRunner().invoke(
        app, ["project", str(small.store), str(path), "--out", str(tmp_path / "p.npy")]
    )
    assert result.exit_code == 2
    assert "only Parquet can hold them" in " ".join(result.output.split())


def test_project_triplets_errors(small: Small, tmp_path: Path, rng: np.random.Generator) -> None:
    unknown = write_triplets(tmp_path / "unknown.csv", ["a", "a"], ["i1", "zz"], [1.0, 2.0])
    with pytest.raises(InvalidInputError, match=r"line 3 has col_id 'zz', unknown to"):
        project_triplets(small.store, unknown)
    nan = write_triplets(tmp_path / "nan.parquet", ["a", "b"], ["i1", "i2"], [1.0, np.nan])
    with pytest.raises(InvalidInputError, match="row 1 holds the value nan"):
        project_triplets(small.store, nan)
    ok = write_triplets(tmp_path / "ok.parquet", ["a"], ["i1"], [1.0])
    for suffix in (".npy", ".zarr"):
        with pytest.raises(ConfigError, match=r"only Parquet can hold them.*out\.parquet"):
            project_file(small.store, ok, tmp_path / f"out{suffix}")
    # a column ingested after the fit: the factors have no row of V for it yet
    later = write_triplets(tmp_path / "later.parquet", ["v1"], ["new-item"], [1.0])
    streamsvd.ingest(small.store, [later], options=TRIPLETS)
    late = write_triplets(tmp_path / "late.parquet", ["a"], ["new-item"], [1.0])
    with pytest.raises(InvalidInputError, match="run `streamsvd update` first"):
        project_triplets(small.store, late)
    # integer col ids: a non-integer one is an unknown column too
    ints = tmp_path / "ints"
    first = write_triplets(tmp_path / "i.parquet", [1, 2, 2], [5, 6, 7], [1.0, 2.0, 3.0])
    streamsvd.ingest(ints, [first], options=TRIPLETS)
    streamsvd.fit(ints, rank=1, scheduler="sync")
    bad = write_triplets(tmp_path / "bad.csv", [9, 9], ["5", "x7"], [1.0, 1.0])
    with pytest.raises(InvalidInputError, match=r"line 3 has col_id 'x7', unknown to .* integers"):
        project_triplets(ints, bad)
    missing = write_triplets(tmp_path / "missing.parquet", [9, 9], [5, 99], [1.0, 1.0])
    with pytest.raises(InvalidInputError, match=r"row 1 has col_id 99, unknown to"):
        project_triplets(ints, missing)
    # triplets need a sparse store's col id map
    dense = tmp_path / "dense"
    streamsvd.ingest(dense, [rng.standard_normal((20, 3))])
    streamsvd.fit(dense, rank=2, scheduler="sync")
    with pytest.raises(ConfigError, match="can only be projected onto a sparse store"):
        project_file(dense, ok, tmp_path / "d.parquet", format="triplets")
