"""Sparse stores: triplet ingest, id maps, fit and update on CSR blocks (never densified)."""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

import streamsvd
from streamsvd.cli import app
from streamsvd.errors import ConfigError, InvalidInputError, UnsupportedFormatError
from streamsvd.linalg.sparse_update import append_sparse_rows
from streamsvd.linalg.update import append_rows
from streamsvd.store import sparse
from streamsvd.store.repository import Store
from streamsvd.store.triplets import IdIndex
from tests.conftest import count_landing_hashes, write_triplets

TRIPLETS = streamsvd.IngestOptions(format="triplets", chunk_rows=32)


def write_matrix(path: Path, matrix: Any, *, row_offset: int = 0, prefix: str = "") -> Path:
    """Triplets of a sparse matrix; ids ``prefix + index`` (strings) or ints."""
    coo = sp.coo_matrix(matrix)
    rows = coo.row + row_offset
    cols = coo.col
    if prefix:
        return write_triplets(
            path, [f"{prefix}{r}" for r in rows], [f"c{c}" for c in cols], coo.data
        )
    return write_triplets(path, rows.astype(np.int64), cols.astype(np.int64), coo.data)


def stored_dense(store: Path, *, rows: int | None = None, cols: int | None = None) -> np.ndarray:
    """The stored matrix, densified (fine in a test: it is small)."""
    group = Store.open(store).root()
    total = sparse.n_rows(group) if rows is None else rows
    return np.asarray(sparse.read_rows(group, 0, total, n_cols=cols).toarray())


def decaying_sparse(rng: np.random.Generator, m: int, n: int, density: float) -> sp.csr_matrix:
    """A sparse rank-4 matrix ``L diag(8, 4, 2, 1) Rᵀ`` (sparse factors) plus one small
    entry per row (so no row is empty, and the spectrum has a tail ~1e-2)."""
    seeds = rng.integers(1 << 30, size=2)
    left = sp.random(
        m, 4, density=density, random_state=int(seeds[0]), data_rvs=rng.standard_normal
    )
    right = sp.random(
        n, 4, density=density, random_state=int(seeds[1]), data_rvs=rng.standard_normal
    )
    noise = sp.csr_matrix(
        (0.01 * rng.standard_normal(m), (np.arange(m), rng.integers(0, n, m))), shape=(m, n)
    )
    return sp.csr_matrix(left @ sp.diags([8.0, 4.0, 2.0, 1.0]) @ right.T + noise)


@pytest.fixture
def no_densify(monkeypatch: pytest.MonkeyPatch) -> None:
    """Densifying a scipy.sparse matrix raises, except a batch of at most 32 rows inside
    ``append_sparse_rows``: an update batch of at most ``k + l`` rows is used dense by
    design, and these tests keep ``k + l`` below 32.
    """

    def guarded(real: Any) -> Any:
        def check(self: Any, *args: Any, **kwargs: Any) -> Any:
            by_design = self.shape[0] <= 32 and any(
                frame.name == "append_sparse_rows" for frame in traceback.extract_stack()
            )
            if not by_design:
                raise AssertionError(f"a {self.shape} {type(self).__name__} was densified")
            return real(self, *args, **kwargs)

        return check

    for cls in (
        sp.csr_matrix,
        sp.csc_matrix,
        sp.coo_matrix,
        sp.csr_array,
        sp.csc_array,
        sp.coo_array,
    ):
        monkeypatch.setattr(cls, "toarray", guarded(cls.toarray))
        monkeypatch.setattr(cls, "todense", guarded(cls.todense))


# ----------------------------------------------------------------------------- fit


@pytest.mark.parametrize("center", [False, True])
def test_sparse_fit_equals_lapack_on_the_densified_matrix(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, center: bool
) -> None:
    matrix = decaying_sparse(rng, 300, 40, 0.2)
    store = tmp_path / "store"
    streamsvd.ingest(
        store, [write_matrix(tmp_path / "a.csv", matrix, prefix="u")], options=TRIPLETS
    )
    monkeypatch.setattr(sparse, "BLOCK_NNZ", 500)  # several Dask blocks of whole chunks
    assert len(streamsvd.api.matrix_as_dask(Store.open(store).root()).chunks[0]) > 2
    # oversample so that l ≥ n: the fit is then the exact SVD (DESIGN, "Fit").
    summary = streamsvd.fit(store, rank=6, oversample=40, center=center, scheduler="sync")
    dense = stored_dense(store)
    if center:
        dense = dense - dense.mean(axis=0)
    expected = np.linalg.svd(dense, compute_uv=False)
    # Backward-stable SVDs of the same matrix: σ_i agree to ~n·eps·σ₁.
    np.testing.assert_allclose(
        summary["singular_values"], expected[:6], rtol=0, atol=1e-9 * expected[0]
    )
    factors = streamsvd.open_factors(store)
    u = factors.u.compute()
    recon = (u * factors.s) @ factors.vt
    best = np.linalg.svd(dense, full_matrices=False)
    best_recon = (best.U[:, :6] * best.S[:6]) @ best.Vh[:6]
    np.testing.assert_allclose(recon, best_recon, atol=1e-8 * expected[0])
    report = streamsvd.verify(store, scheduler="sync", check=False)
    assert report.ok
    assert abs(report.measured_error - report.recorded_error) <= 1e-6 * report.recorded_error


def test_fit_with_power_iterations_recovers_the_dominant_subspace(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    matrix = decaying_sparse(rng, 400, 120, 0.3)
    store = tmp_path / "store"
    streamsvd.ingest(store, [write_matrix(tmp_path / "a.parquet", matrix)], options=TRIPLETS)
    summary = streamsvd.fit(store, rank=3, power_iters=2, dtype="float64", scheduler="sync")
    expected = np.linalg.svd(stored_dense(store), compute_uv=False)
    # Rank-4 signal with σ₄/σ₅ ≫ 1: two power iterations give σ₁..₃ to ~1e-8 relative.
    np.testing.assert_allclose(summary["singular_values"], expected[:3], rtol=1e-6)


def test_fit_update_and_verify_never_densify_a_block(
    tmp_path: Path, rng: np.random.Generator, no_densify: None
) -> None:
    first = decaying_sparse(rng, 200, 30, 0.2)
    wider = sp.random(150, 45, density=0.1, random_state=int(rng.integers(1 << 30)), format="csr")
    small = sp.random(5, 45, density=0.3, random_state=int(rng.integers(1 << 30)), format="csr")
    store = tmp_path / "store"
    streamsvd.ingest(store, [write_matrix(tmp_path / "a.parquet", first)], options=TRIPLETS)
    streamsvd.fit(store, rank=5, power_iters=1, scheduler="sync")
    report = streamsvd.update(store, [write_matrix(tmp_path / "b.parquet", wider, row_offset=1000)])
    assert report.sketched_blocks == 1  # 150 rows > k + l: the randomized range
    report = streamsvd.update(store, [write_matrix(tmp_path / "c.parquet", small, row_offset=5000)])
    assert report.sketched_blocks == 0  # 5 rows: exact
    check = streamsvd.verify(store, scheduler="sync", check=False)
    assert check.ok
    assert abs(check.measured_error - check.recorded_error) <= 1e-6 * check.recorded_error


# -------------------------------------------------------------------------- update


def test_sparse_update_accounting_is_exact_and_new_columns_widen_v(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    first = decaying_sparse(rng, 300, 40, 0.2)
    store = tmp_path / "store"
    streamsvd.ingest(store, [write_matrix(tmp_path / "a.csv", first, prefix="u")], options=TRIPLETS)
    streamsvd.fit(store, rank=5, power_iters=2, scheduler="sync")
    before = streamsvd.open_factors(store)
    batch = sp.random(80, 55, density=0.1, random_state=int(rng.integers(1 << 30)), format="csr")
    batch = batch[np.diff(batch.indptr) > 0]  # rows without entries are not in the triplets
    path = write_matrix(tmp_path / "b.csv", batch, row_offset=10_000, prefix="u")
    report = streamsvd.update(store, [path])
    info = streamsvd.info(store)
    after = streamsvd.open_factors(store)
    assert info["cols"] == after.vt.shape[1] > 40  # the new columns widened V
    # energy' = energy + ‖B‖_F² exactly (issue #6); recorded error == measured error.
    np.testing.assert_allclose(
        after.attrs["energy"], before.attrs["energy"] + float(batch.power(2).sum()), rtol=1e-12
    )
    dense = stored_dense(store)
    residual = dense - (after.u.compute() * after.s) @ after.vt
    measured = np.linalg.norm(residual) / np.linalg.norm(dense)
    assert report.relative_error == pytest.approx(measured, rel=1e-6)
    assert streamsvd.verify(store, scheduler="sync", check=False).ok


def test_small_sparse_batch_equals_the_dense_brand_append(rng: np.random.Generator) -> None:
    old = decaying_sparse(rng, 60, 20, 0.3).toarray()
    _u, s, vt = np.linalg.svd(old, full_matrices=False)
    k = 5
    batch = sp.random(8, 26, density=0.3, random_state=int(rng.integers(1 << 30)), format="csr")
    energy = float(np.sum(old**2))
    got = append_sparse_rows(np.eye(k), s[:k], vt[:k], energy, batch, rank=k)
    padded = np.hstack([vt[:k], np.zeros((k, 6))])  # new columns: zero rows of V
    want = append_rows(np.eye(k), s[:k], padded, energy, batch.toarray(), rank=k)
    assert not got.sketched
    np.testing.assert_allclose(got.updated_s, want.updated_s, rtol=1e-12)
    np.testing.assert_allclose(
        got.updated_vt.T @ got.updated_vt, want.updated_vt.T @ want.updated_vt, atol=1e-10
    )
    assert got.updated_energy == pytest.approx(energy + float(batch.power(2).sum()), rel=1e-14)


def test_large_sparse_batch_is_sketched_with_exact_accounting(rng: np.random.Generator) -> None:
    old = decaying_sparse(rng, 100, 50, 0.3).toarray()
    u, s, vt = np.linalg.svd(old, full_matrices=False)
    k = 4
    batch = decaying_sparse(rng, 200, 50, 0.3)
    res = append_sparse_rows(np.eye(k), s[:k], vt[:k], float(np.sum(old**2)), batch)
    assert res.sketched
    stacked = np.vstack([old, batch.toarray()])
    old_u_raw = np.hstack([u[:, :k], np.zeros((100, res.u_raw_columns_added))])
    u_new = np.vstack([old_u_raw, res.new_u_raw_rows]) @ res.updated_t
    true_error = np.linalg.norm(stacked - (u_new * res.updated_s) @ res.updated_vt)
    # The recorded error is exact for any Q (module docstring): energy − Σs² = ‖X − USVᵀ‖².
    assert res.relative_error == pytest.approx(true_error / np.linalg.norm(stacked), rel=1e-8)
    np.testing.assert_allclose(u_new.T @ u_new, np.eye(k), atol=1e-10)


def test_sparse_update_rejects_dense_rows_and_nan() -> None:
    with pytest.raises(InvalidInputError, match=r"scipy\.sparse matrix"):
        append_sparse_rows(np.eye(1), [1.0], [[1.0, 0.0]], 1.0, np.ones((1, 2)))
    bad = sp.csr_matrix(np.array([[np.nan, 1.0]]))
    with pytest.raises(InvalidInputError, match="finite"):
        append_sparse_rows(np.eye(1), [1.0], [[1.0, 0.0]], 1.0, bad)


# -------------------------------------------------------------------------- ingest


def test_ingest_groups_rows_sums_duplicates_and_keeps_id_maps(tmp_path: Path) -> None:
    path = write_triplets(
        tmp_path / "r.csv",
        ["bob", "ann", "bob", "bob", "cid"],
        ["x", "y", "y", "x", "z"],
        [1.0, 2.0, 3.0, 4.0, 5.0],
    )
    store = tmp_path / "store"
    report = streamsvd.ingest(store, [path], options=TRIPLETS)
    assert report.rows_added == 3
    group = Store.open(store).root()
    assert list(sparse.read_ids(group, "rows")) == ["bob", "ann", "cid"]  # first appearance
    assert list(sparse.read_ids(group, "cols")) == ["x", "y", "z"]
    np.testing.assert_array_equal(stored_dense(store), [[5, 3, 0], [0, 2, 0], [0, 0, 5]])
    log = group["batches"].attrs["log"]
    assert log[0]["duplicates_summed"] == 1
    assert log[0]["nnz"] == 4
    info = streamsvd.info(store)
    assert (info["kind"], info["rows"], info["cols"], info["nnz"]) == ("sparse", 3, 3, 4)
    # the default codec (auto) resolves to lz4 for sparse stores, never left unresolved
    assert info["codec"] == "lz4"
    assert len(group[sparse.DATA].compressors) == 1
    assert (info["row_ids"], info["col_ids"]) == ("str", "str")
    again = streamsvd.ingest(store, [path], options=TRIPLETS)
    assert again.version is None
    assert "already ingested" in again.skipped[0].reason


def test_triplet_landing_listing_does_not_rehash_logged_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamsvd.store.landing as landing

    folder = tmp_path / "landing"
    folder.mkdir()
    old = write_triplets(folder / "001.csv", [1, 2], [10, 11], [1.0, 2.0])
    streamsvd.ingest(tmp_path / "s", [folder], options=TRIPLETS)
    entry = Store.open(tmp_path / "s").root()["batches"].attrs["log"][0]
    stat = old.stat()
    assert (entry["size"], entry["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
    new = write_triplets(folder / "002.csv", [3], [10], [3.0])
    hashed = count_landing_hashes(monkeypatch)
    assert landing.new_sources(tmp_path / "s", [folder]) == [new]
    assert hashed == [new]  # the logged, unchanged triplet file was not read


def test_first_three_columns_are_used_without_the_standard_names(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating,comment\n7,100,4.5,ok\n8,100,1,\n7,101,2,x\n")
    store = tmp_path / "store"
    streamsvd.ingest(store, [path], options=TRIPLETS)
    info = streamsvd.info(store)
    assert (info["row_ids"], info["col_ids"], info["rows"], info["cols"]) == ("int", "int", 2, 2)
    np.testing.assert_array_equal(stored_dense(store), [[4.5, 2.0], [1.0, 0.0]])


def test_ingest_errors_name_the_id_and_leave_the_store_unchanged(tmp_path: Path) -> None:
    store = tmp_path / "store"
    streamsvd.ingest(
        store, [write_triplets(tmp_path / "a.parquet", [1, 2], [10, 11], [1, 2])], options=TRIPLETS
    )
    version = Store.open(store).current_version()
    again = write_triplets(tmp_path / "b.parquet", [3, 2], [10, 10], [1, 1])
    with pytest.raises(InvalidInputError, match="row_id 2 is already in the store"):
        streamsvd.ingest(store, [again], options=TRIPLETS)
    text = write_triplets(tmp_path / "c.csv", ["4", "abc"], ["10", "10"], [1, 1])
    with pytest.raises(InvalidInputError, match="row_id 'abc' is not an integer"):
        streamsvd.ingest(store, [text], options=TRIPLETS)
    nan = write_triplets(tmp_path / "d.parquet", [5, 6], [10, 10], [1.0, np.nan])
    with pytest.raises(InvalidInputError, match="row 1 holds the value nan"):
        streamsvd.ingest(store, [nan], options=TRIPLETS)
    two = tmp_path / "e.csv"
    two.write_text("a,b\n1,2\n")
    with pytest.raises(InvalidInputError, match="need three columns"):
        streamsvd.ingest(store, [two], options=TRIPLETS)
    odd = tmp_path / "f.json"
    odd.write_text("{}")
    with pytest.raises(UnsupportedFormatError, match=r"\.csv or \.parquet"):
        streamsvd.ingest(store, [odd], options=TRIPLETS)
    assert Store.open(store).current_version() == version
    dropped = streamsvd.ingest(
        store, [nan], options=streamsvd.IngestOptions(format="triplets", nan="drop")
    )
    assert dropped.batches[0].nan_values == 1
    assert dropped.rows_added == 1


def test_triplets_into_a_dense_store_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    streamsvd.ingest(store, [np.ones((4, 3))])
    path = write_triplets(tmp_path / "a.csv", [1], [1], [1.0])
    with pytest.raises(ConfigError, match="needs a sparse store"):
        streamsvd.ingest(store, [path], options=TRIPLETS)


def test_id_index_lookups() -> None:
    index = IdIndex(np.array([30, 10, 20], dtype=np.int64))
    np.testing.assert_array_equal(index.lookup(np.array([20, 40, 30])), [2, -1, 0])
    grown = index.extended(np.array([5], dtype=np.int64))
    np.testing.assert_array_equal(grown.lookup(np.array([5, 10])), [3, 1])
    assert IdIndex(np.array([], dtype=np.int64)).lookup(np.array([1])).tolist() == [-1]


def test_cli_ingest_update_and_info_with_triplets(tmp_path: Path, rng: np.random.Generator) -> None:
    runner = CliRunner()
    store = str(tmp_path / "store")
    first = write_matrix(tmp_path / "a.parquet", decaying_sparse(rng, 120, 25, 0.2))
    result = runner.invoke(
        app, ["ingest", store, str(first), "--format", "triplets", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["fit", store, "--rank", "3", "--scheduler", "sync"]).exit_code == 0
    second = write_matrix(tmp_path / "b.parquet", decaying_sparse(rng, 30, 25, 0.2), row_offset=500)
    result = runner.invoke(app, ["update", store, str(second), "--no-progress"])
    assert result.exit_code == 0, result.output
    info = json.loads(runner.invoke(app, ["info", store, "--json"]).output)
    assert info["kind"] == "sparse"
    assert info["rows"] == 150
    assert info["factors"]["rows_covered"] == 150
    bad = write_triplets(tmp_path / "c.parquet", [0], [1], [1.0])
    result = runner.invoke(app, ["update", store, str(bad), "--no-progress"])
    assert result.exit_code == 3
    assert "row_id 0 is already in the store" in result.output


# --------------------------------------------------------------------------- memory


@pytest.mark.slow
def test_fit_of_a_matrix_too_large_to_densify_stays_within_2_gb(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import sparse_memory  # type: ignore[import-not-found]

    result = sparse_memory.run(2_000_000, 2_000_000, 5, workdir=tmp_path, rank=10)
    assert result["dense_bytes"] > 24e12  # 32 TB as float64
    assert result["peak_rss_bytes"] < 2 * 1024**3, result
