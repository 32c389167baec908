"""Parallel updates: the new files' partial SVDs merged in a tree on Dask (issue #4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import streamsvd
from streamsvd.cli import app
from streamsvd.engine.tree_update import (
    file_partial_svd,
    merge_plan,
    should_run_parallel,
    tree_depth,
)
from streamsvd.errors import ConfigError, InvalidInputError
from streamsvd.store.repository import Store
from tests.conftest import fitted_store, write_npy
from tests.matrices import fast_decay, low_rank

FLOAT64 = streamsvd.IngestOptions(chunk_rows=64, dtype="float64")


def files(path: Path, rows: np.ndarray, n_files: int) -> list[Path]:
    path.mkdir(exist_ok=True)
    return [
        write_npy(path / f"batch{i:02d}.npy", part)
        for i, part in enumerate(np.array_split(rows, n_files))
    ]


def two_stores(tmp_path: Path, old: np.ndarray, rank: int, **fit_args: Any) -> tuple[Path, Path]:
    return fitted_store(tmp_path / "par", old, rank, float64=True, **fit_args), fitted_store(
        tmp_path / "seq", old, rank, float64=True, **fit_args
    )


def dense_factors(store: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    f = streamsvd.open_factors(store)
    return np.asarray(f.u.compute()), np.asarray(f.s), np.asarray(f.vt), dict(f.attrs)


def assert_accounting_exact(store: Path) -> None:
    report = streamsvd.verify(store, scheduler="sync", check=False)
    assert report.ok
    measured, recorded = report.measured_error, report.recorded_error
    assert abs(recorded**2 - measured**2) <= 1e-6 * measured**2 + 4096 * np.finfo(float).eps


# ------------------------------------------------------------------------- pure parts


def test_merge_plan_is_a_fixed_pairwise_tree() -> None:
    assert merge_plan(1) == []
    assert merge_plan(2) == [(0, 1)]
    assert merge_plan(5) == [(0, 1), (2, 3), (5, 6), (7, 4)]
    for n in range(1, 20):
        plan = merge_plan(n)
        assert len(plan) == n - 1
        used = [i for pair in plan for i in pair]
        assert sorted(used) == list(range(2 * n - 2))  # every node but the root, once
        depth = [0] * n  # merges on the longest path from each node down to a leaf
        for first, second in plan:
            depth.append(1 + max(depth[first], depth[second]))
        assert tree_depth(n) == depth[-1]


def test_file_partial_svd_keeps_the_accounting_exact(rng: np.random.Generator) -> None:
    rows = fast_decay(rng, 300, 50)
    for width in (8, 60):  # sketched, exact
        part, sketched = file_partial_svd(rows, width=width, weight=0.5)
        assert sketched == (width < 50)
        assert part.u is not None
        x = 0.5 * rows
        assert part.energy == pytest.approx(float(np.sum(x * x)), rel=1e-13)
        np.testing.assert_allclose(part.u.T @ part.u, np.eye(part.s.size), atol=1e-12)
        # uᵀ E = 0: the error is energy − Σ s², exactly.
        resid = x - (part.u * part.s) @ part.vt
        np.testing.assert_allclose(part.u.T @ resid, 0, atol=1e-10 * np.abs(x).max())
        assert float(np.sum(resid**2)) == pytest.approx(
            part.energy - float(part.s @ part.s), rel=1e-6, abs=1e-12 * part.energy
        )


def test_auto_decision() -> None:
    auto: dict[str, Any] = {"n_sources": 3, "centred": False, "sparse": False}
    assert should_run_parallel(None, **auto, scheduler="tcp://scheduler:8786")
    assert not should_run_parallel(None, **auto, scheduler="sync")
    assert not should_run_parallel(None, **auto, scheduler="local")
    assert not should_run_parallel(None, **auto, scheduler=None)  # no client in this process
    assert not should_run_parallel(None, **{**auto, "n_sources": 1}, scheduler="tcp://s:8786")
    assert not should_run_parallel(False, **auto, scheduler="tcp://scheduler:8786")
    assert should_run_parallel(True, **{**auto, "n_sources": 1}, scheduler=None)
    for key in ("centred", "sparse"):
        other = {**auto, key: True}
        assert not should_run_parallel(None, **other, scheduler="tcp://scheduler:8786")
        with pytest.raises(ConfigError, match="centred" if key == "centred" else "sparse"):
            should_run_parallel(True, **other, scheduler=None)


# ------------------------------------------------------------------------ on a store


def test_without_truncation_equals_sequential_and_lapack(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    data = low_rank(rng, 1000, 30, 4)  # rank 4 < rank 6 kept: nothing truncated
    par, seq = two_stores(tmp_path, data[:400], 6)
    new = files(tmp_path / "new", data[400:], 6)
    report = streamsvd.update(par, new, parallel=True, scheduler="sync")
    streamsvd.update(seq, new, parallel=False)
    assert report.rows_added == 600
    u_p, s_p, vt_p, attrs = dense_factors(par)
    u_s, s_s, vt_s, _ = dense_factors(seq)
    s_true = np.linalg.svd(data, compute_uv=False)[:6]
    scale = s_true[0]
    for s in (s_p, s_s):
        np.testing.assert_allclose(s[:4], s_true[:4], rtol=1e-10)
        assert np.all(s[4:] <= 1e-10 * scale)  # round-off directions
    np.testing.assert_allclose(s_p[:4], s_s[:4], rtol=1e-10)
    proj = [vt[:4].T @ vt[:4] for vt in (vt_p, vt_s)]
    v_true = np.linalg.svd(data, full_matrices=False)[2][:4]
    np.testing.assert_allclose(proj[0], proj[1], atol=1e-8)
    np.testing.assert_allclose(proj[0], v_true.T @ v_true, atol=1e-8)
    big = np.abs(data).max()
    np.testing.assert_allclose((u_p * s_p) @ vt_p, data, atol=1e-8 * big)
    np.testing.assert_allclose((u_p * s_p) @ vt_p, (u_s * s_s) @ vt_s, atol=1e-8 * big)
    entry = attrs["history"][-1]
    assert entry["parallel"] is True
    assert entry["tree_depth"] == 3
    assert entry["tree_files"] == 6
    assert attrs["rows_covered"] == 1000
    assert_accounting_exact(par)


def test_truncated_stays_within_two_percent_of_a_fresh_fit(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    data = fast_decay(rng, 1200, 40)
    rank = 6
    par, seq = two_stores(tmp_path, data[:600], rank)
    new = files(tmp_path / "new", data[600:], 6)
    parallel = streamsvd.update(par, new, parallel=True, scheduler="sync").relative_error
    sequential = streamsvd.update(seq, new, parallel=False).relative_error
    fresh = fitted_store(tmp_path / "fresh", data, rank, float64=True)
    fresh_error = streamsvd.open_factors(fresh).relative_error
    assert parallel <= 1.02 * fresh_error
    assert parallel <= 1.02 * sequential
    assert sequential <= 1.02 * parallel
    attrs = streamsvd.open_factors(par).attrs
    x = np.vstack([data[:600], data[600:]])
    assert attrs["energy"] == pytest.approx(float(np.sum(x * x)), rel=1e-12)
    assert_accounting_exact(par)


def test_same_result_on_sync_and_on_a_local_cluster(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    from distributed import Client, LocalCluster

    data = fast_decay(rng, 900, 30)
    stores = two_stores(tmp_path, data[:300], 5)
    new = files(tmp_path / "new", data[300:], 5)
    streamsvd.update(stores[0], new, parallel=True, scheduler="sync")
    with (
        LocalCluster(
            n_workers=2, processes=False, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        Client(cluster),
    ):  # a random HTTP port: 8787 may be taken by a concurrent test run
        streamsvd.update(stores[1], new)  # auto: 5 files and a current client → parallel
    (u_a, s_a, vt_a, attrs_a), (u_b, s_b, vt_b, attrs_b) = map(dense_factors, stores)
    assert attrs_b["history"][-1]["parallel"] is True
    np.testing.assert_allclose(s_b, s_a, rtol=1e-12)
    np.testing.assert_allclose(vt_b, vt_a, atol=1e-12)
    np.testing.assert_allclose(u_b, u_a, atol=1e-12)
    assert attrs_b["relative_error"] == pytest.approx(attrs_a["relative_error"], rel=1e-12)


def test_forgetting_equals_sequential(tmp_path: Path, rng: np.random.Generator) -> None:
    data = low_rank(rng, 700, 20, 3)  # rank 3 < rank 5 kept: nothing truncated
    par, seq = two_stores(tmp_path, data[:300], 5)
    new = files(tmp_path / "new", data[300:], 4)
    gamma = 0.8
    streamsvd.update(par, new, parallel=True, forget=gamma, scheduler="sync")
    streamsvd.update(seq, new, parallel=False, forget=gamma)
    (u_p, s_p, vt_p, a_p), (u_s, s_s, vt_s, a_s) = map(dense_factors, (par, seq))
    # Sequential: γ before each of the 4 batches, so file i weighs γ^(3 − i), old rows γ^4.
    weights = np.concatenate(
        [np.full(300, gamma**4)] + [np.full(100, gamma ** (3 - i)) for i in range(4)]
    )
    s_true = np.linalg.svd(weights[:, None] * data, compute_uv=False)[:3]
    np.testing.assert_allclose(s_p[:3], s_s[:3], rtol=1e-10)
    np.testing.assert_allclose(s_p[:3], s_true, rtol=1e-10)
    for key in ("energy", "rows_seen"):
        assert a_p[key] == pytest.approx(a_s[key], rel=1e-12)
    assert a_p["energy"] == pytest.approx(float(np.sum((weights[:, None] * data) ** 2)), rel=1e-12)
    assert a_p["history"][-1]["forget_batches"] == a_s["history"][-1]["forget_batches"]
    np.testing.assert_allclose(
        (u_p * s_p) @ vt_p, (u_s * s_s) @ vt_s, atol=1e-8 * np.abs(data).max()
    )
    assert_accounting_exact(par)  # verify weighs the rows by γ^age


def test_new_direction_adds_u_raw_columns(tmp_path: Path, rng: np.random.Generator) -> None:
    n = 16
    basis = np.linalg.qr(rng.standard_normal((n, n)))[0]
    old = rng.standard_normal((300, 3)) @ basis[:3]  # rank 3, fitted at rank 4
    new = (rng.standard_normal((200, 4)) * [1, 1, 1, 5]) @ basis[:4]  # a strong 4th direction
    par, seq = two_stores(tmp_path, old, 4)
    columns = streamsvd.open_factors(par).stored.u_raw.shape[1]
    paths = files(tmp_path / "new", new, 4)
    streamsvd.update(par, paths, parallel=True, scheduler="sync")
    streamsvd.update(seq, paths, parallel=False)
    u, s, vt, attrs = dense_factors(par)
    assert attrs["u_raw_columns"] > columns  # no pseudo-inverse of a vanishing direction
    data = np.vstack([old, new])
    np.testing.assert_allclose((u * s) @ vt, data, atol=1e-8 * np.abs(data).max())
    np.testing.assert_allclose(s, dense_factors(seq)[1], rtol=1e-10)
    np.testing.assert_allclose(u.T @ u, np.eye(4), atol=1e-10)
    assert_accounting_exact(par)


def test_centred_store_refuses_parallel_and_auto_falls_back(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    data = fast_decay(rng, 400, 12) + 3.0
    store = fitted_store(tmp_path, data[:200], 3, float64=True, center=True)
    new = files(tmp_path / "new", data[200:], 2)
    with pytest.raises(ConfigError, match=r"centred.*without --parallel"):
        streamsvd.update(store, new, parallel=True, scheduler="sync")
    report = streamsvd.update(store, new, parallel=None, scheduler="tcp://127.0.0.1:1")
    assert report.rows_added == 200
    assert "parallel" not in streamsvd.open_factors(store).attrs["history"][-1]


def test_sparse_store_refuses_parallel(tmp_path: Path, rng: np.random.Generator) -> None:
    def triplets(path: Path, first_row: int, n_rows: int) -> Path:
        rows = np.repeat(np.arange(first_row, first_row + n_rows), 3)
        cols = rng.integers(0, 10, rows.size)
        pq.write_table(
            pa.table({"row_id": rows, "col_id": cols, "value": rng.standard_normal(rows.size)}),
            path,
        )
        return path

    store = tmp_path / "store"
    options = streamsvd.IngestOptions(format="triplets", chunk_rows=32)
    streamsvd.ingest(store, [triplets(tmp_path / "a.parquet", 0, 60)], options=options)
    streamsvd.fit(store, rank=2, scheduler="sync")
    new = [triplets(tmp_path / "b.parquet", 60, 10), triplets(tmp_path / "c.parquet", 70, 10)]
    with pytest.raises(ConfigError, match="sparse"):
        streamsvd.update(store, new, options=options, parallel=True, scheduler="sync")
    report = streamsvd.update(store, new, options=options, scheduler="tcp://127.0.0.1:1")
    assert report.rows_added == 20


def test_a_bad_file_in_the_middle_changes_nothing(tmp_path: Path, rng: np.random.Generator) -> None:
    data = fast_decay(rng, 500, 10)
    store = fitted_store(tmp_path, data[:200], 3, float64=True)
    new = files(tmp_path / "new", data[200:], 3)
    bad = data[300:400].copy()
    bad[17, 4] = np.nan
    new[1] = write_npy(tmp_path / "new" / "batch01.npy", bad)
    version = Store.open(store).current_version()
    with pytest.raises(InvalidInputError, match=r"batch01\.npy: row 17, column 5 holds nan"):
        streamsvd.update(store, new, parallel=True, scheduler="sync")
    assert Store.open(store).current_version() == version
    assert streamsvd.open_factors(store).attrs["rows_covered"] == 200


def test_cli_parallel_flag(tmp_path: Path, rng: np.random.Generator) -> None:
    data = fast_decay(rng, 400, 10)
    store = fitted_store(tmp_path, data[:200], 3, float64=True)
    new = files(tmp_path / "new", data[200:], 3)
    args = ["update", str(store), *map(str, new), "--scheduler", "sync", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--parallel"])
    assert result.exit_code == 0, result.output
    assert "updated with 200 rows" in result.stdout
    assert streamsvd.open_factors(store).attrs["history"][-1]["tree_depth"] == 2
