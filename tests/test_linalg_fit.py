"""The pure fit steps of streamsvd.linalg.sketch / tsqr, run on in-memory blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsvd.linalg.sketch import (
    combine,
    error_summary,
    final_block,
    finish_final_pass,
    orthonormal_completion,
    power_block,
    power_step,
    sketch_svd,
    start_basis,
    truncate,
)
from streamsvd.linalg.tsqr import block_r, merge_r, pad_r
from tests.matrices import with_spectrum

EPS = np.finfo(np.float64).eps


def fit_blocks(a, k, p, q, seed=0, center=False, block_rows=37):
    """The engine's algorithm on numpy row blocks (no Dask)."""
    blocks = [a[i : i + block_rows] for i in range(0, a.shape[0], block_rows)]
    n = a.shape[1]
    width = min(k + p, n)
    basis = start_basis(n, width, seed)
    shift = None
    for _ in range(q if width < n else 0):
        sums = combine([power_block(b, basis, shift) for b in blocks])
        basis, mean, _ = power_step(sums, basis, center, shift)
        shift = mean if center else None
    outs = [final_block(b, basis, shift, center) for b in blocks]
    sums = combine([o[1] for o in outs])
    r, y, f, mean, c = finish_final_pass(sums, basis, center, shift)
    sk = sketch_svd(r, y)
    t, s, vt = truncate(sk, k, c)
    u = np.vstack([o[0] for o in outs]) @ t
    return u, s, vt, f, mean, sk


@pytest.mark.parametrize("decay", ["steep", "slow", "flat"])
def test_power_step_estimates_the_condition_of_the_next_z(rng, decay):
    n, width = 200, 30
    spectra = {"steep": 0.8 ** np.arange(n), "slow": (1.0 + np.arange(n)) ** -0.5}
    a = with_spectrum(rng, 1500, n, spectra.get(decay, np.ones(n)))
    a += 1e-5 * rng.standard_normal(a.shape)
    basis = start_basis(n, width, 1)
    for _ in range(2):
        basis, _, estimate = power_step(power_block(a, basis), basis, False, None)
    sig = np.linalg.svd(a @ basis, compute_uv=False)
    actual = (sig[0] / sig[-1]) ** 2  # κ² of the Z the final pass will form
    # the engine trusts the Gram route up to GRAM_MAX_COND_SQ / 4 on this estimate
    # and checks the true Gram after the pass: an estimate far too low would make
    # that check fail (and the pass repeat) often; one too high only costs a TSQR.
    # Over 40 seeds: estimate/actual 1.07-2.9 (steep), 1.19-1.32 (slow), 1.00 (flat).
    assert actual / 2 <= estimate <= 5 * actual


def test_tsqr_r_matches_gram(rng):
    z = rng.standard_normal((200, 7))
    parts = [block_r(z[i : i + 3]) for i in range(0, 200, 3)]  # blocks shorter than width
    r = pad_r(merge_r(parts[:10]), 7)
    r_all = merge_r([r, *parts[10:]])
    # zᵀz = rᵀr up to rounding: backward-stable QR, error ~ eps·‖z‖² (Golub–Van Loan 5.2)
    np.testing.assert_allclose(r_all.T @ r_all, z.T @ z, atol=200 * EPS * np.sum(z**2))
    assert block_r(np.zeros((0, 4))).shape == (0, 4)
    with pytest.raises(ValueError, match="at least one R factor"):
        merge_r([])


@pytest.mark.parametrize(("m", "n"), [(300, 40), (40, 90), (5, 12)])
def test_exact_when_width_covers_columns(rng, m, n):
    # cond(A) = 10 so the Gram route's relative error eps·cond² ≈ 2e-14 ≪ 1e-10
    k = min(m, n)
    s_true = np.linspace(10, 1, k)
    a = with_spectrum(rng, m, n, s_true)
    u, s, vt, f, _, _ = fit_blocks(a, k, p=n, q=2)
    np.testing.assert_allclose(s, s_true, rtol=1e-10)
    np.testing.assert_allclose(
        vt.T @ vt, np.linalg.svd(a)[2][:k].T @ np.linalg.svd(a)[2][:k], atol=1e-10
    )
    np.testing.assert_allclose(u @ np.diag(s) @ vt, a, atol=1e-10 * s_true[0])
    np.testing.assert_allclose(u.T @ u, np.eye(k), atol=1e-12)
    assert f == pytest.approx(np.sum(a**2), rel=1e-13)


def test_graded_spectrum_keeps_error_accounting(rng):
    # σ_i from 1 down to 1e-18: a pseudo-inverse cut at l·eps would let rounding
    # noise of size ~eps·σ₁²/σ_j into B (ΣS² > ‖A‖², U not orthonormal); the
    # √eps cut keeps U orthonormal to rounding and ΣS² ≤ ‖A‖²(1 + O(eps)).
    a = with_spectrum(rng, 600, 120, np.logspace(0, -18, 120))
    u, s, _vt, f, _, _ = fit_blocks(a, 10, p=200, q=0)
    np.testing.assert_allclose(u.T @ u, np.eye(10), atol=1e-13)
    assert np.sum(s**2) <= f * (1 + 100 * EPS)
    np.testing.assert_allclose(s, np.logspace(0, -18, 120)[:10], rtol=1e-10)


@pytest.mark.parametrize("case", ["zero", "zero_columns", "low_rank"])
def test_rank_deficient_is_finite_and_correct(rng, case):
    m, n, k = 120, 30, 8
    p = 5
    if case == "zero":
        a = np.zeros((m, n))
    elif case == "zero_columns":
        a = rng.standard_normal((m, n))
        a[:, ::3] = 0
        p = n  # l = n: exact, with 10 zero columns
    else:
        a = rng.standard_normal((m, 3)) @ rng.standard_normal((3, n))  # rank 3 < k < l
    u, s, vt, f, _, _ = fit_blocks(a, k, p=p, q=1)
    assert np.all(np.isfinite(u))
    assert np.all(np.isfinite(vt))
    assert np.all(np.isfinite(s))
    assert np.all(np.diff(s) <= 0)
    assert np.all(s >= 0)
    np.testing.assert_allclose(vt @ vt.T, np.eye(k), atol=1e-12)  # completion keeps V orthonormal
    s_ref = np.linalg.svd(a, compute_uv=False)[:k]
    # rank-deficient data: exact up to the Gram-route rounding, ~eps·σ₁ absolute
    np.testing.assert_allclose(s, s_ref, atol=1e-10 * max(s_ref[0], 1))
    rel, _ = error_summary(f, s)
    if case == "zero":
        assert f == 0
        assert rel == 0
        assert np.all(s == 0)
    if case != "zero_columns":  # rank ≤ 3 < k: the rank-k fit reproduces A
        np.testing.assert_allclose(u @ np.diag(s) @ vt, a, atol=1e-9 * max(s_ref[0], 1))


@pytest.mark.parametrize("q", [0, 2])
def test_pca_matches_numpy_on_centred_matrix(rng, q):
    m, n, k = 500, 25, 4
    # centred rank 6 < l = 14 < n: the sketch is exact in exact arithmetic, and
    # q = 2 takes the shifted-block path (width < n)
    a = with_spectrum(rng, m, n, np.linspace(5, 1, 6)) + 100.0 + rng.standard_normal(n)
    u, s, vt, f, mean, _ = fit_blocks(a, k, p=10, q=q, center=True)
    centred = a - a.mean(axis=0)
    _, s_ref, vt_ref = np.linalg.svd(centred)
    np.testing.assert_allclose(mean, a.mean(axis=0), rtol=1e-13)
    # With q = 0 the mean is unknown before the final pass, and the ones-column
    # formulas (f_c = ‖A‖² − m‖μ‖², Y_c = AᵀZ − mμcᵀ) lose ~eps·‖A‖²/‖A_c‖²
    # relative (≈ 1e-10 here, mean 100 ≫ spread); with q ≥ 1 the blocks are
    # shifted by the mean of the first pass and only rounding ~1e-13 is left.
    rel = 100 * EPS * np.sum(a**2) / np.sum(centred**2) if q == 0 else 1e-12
    np.testing.assert_allclose(s, s_ref[:k], rtol=rel)
    np.testing.assert_allclose(vt.T @ vt, vt_ref[:k].T @ vt_ref[:k], atol=10 * rel)
    recon = centred @ vt_ref[:k].T @ vt_ref[:k]
    np.testing.assert_allclose(u @ np.diag(s) @ vt, recon, atol=10 * rel * s_ref[0])
    assert f == pytest.approx(np.sum(centred**2), rel=rel)


def test_power_block_float32_and_sparse(rng):
    import scipy.sparse as sp

    a = rng.standard_normal((50, 10))
    a[a < 0.5] = 0
    q = start_basis(10, 4, seed=1)
    dense64 = power_block(a, q)
    sparse = power_block(sp.csr_matrix(a), q)
    # Sparse blocks are not densified: the products sum the nonzeros in another order,
    # so they agree to round-off (~n·eps relative), not bit for bit.
    np.testing.assert_allclose(
        sparse.y, dense64.y, rtol=1e-13, atol=1e-13 * np.abs(dense64.y).max()
    )
    np.testing.assert_allclose(sparse.colsum, dense64.colsum, rtol=1e-14)
    f32 = power_block(a.astype(np.float32), q, dtype=np.float32)
    assert f32.y.dtype == np.float64
    # float32 products: relative error ~ eps32·n ≈ 1e-6
    np.testing.assert_allclose(f32.y, dense64.y, rtol=1e-4, atol=1e-4 * np.abs(dense64.y).max())


def test_truncate_pads_and_fixes_signs(rng):
    a = rng.standard_normal((40, 6)) @ np.diag([3, 2, 1, 0, 0, 0])
    sk = sketch_svd(np.linalg.qr(a, mode="r"), a.T @ a)
    assert sk.s.size == 3  # the cut-off drops the null directions
    t, s, vt = truncate(sk, 5)
    assert t.shape == (6, 5)
    assert np.all(t[:, 3:] == 0)
    np.testing.assert_array_equal(s[3:], 0)
    idx = np.argmax(np.abs(vt), axis=1)
    assert np.all(vt[np.arange(5), idx] > 0)
    comp = orthonormal_completion(vt[:2], 3)
    np.testing.assert_allclose(
        np.vstack([vt[:2], comp]) @ np.vstack([vt[:2], comp]).T, np.eye(5), atol=1e-13
    )


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 60),
    n=st.integers(1, 20),
    k=st.integers(1, 20),
    p=st.integers(0, 6),
    center=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_error_accounting_identity(m, n, k, p, center, seed):
    """‖A − U S Vᵀ‖² = f − ΣS² for any shape (the exact error of the fit)."""
    k = min(k, m, n)
    a = np.random.default_rng(seed).standard_normal((m, n))
    u, s, vt, f, mean, _ = fit_blocks(a, k, p, q=1, seed=seed, center=center, block_rows=7)
    target = a - (mean if center else 0)
    resid = np.sum((target - u @ np.diag(s) @ vt) ** 2)
    # both sides are sums of O(mn) float64 terms of size ≤ ‖A‖²: rounding ~1e-12·‖A‖²
    assert resid == pytest.approx(max(f - np.sum(s**2), 0), abs=1e-10 * max(np.sum(a**2), 1))
    assert np.all(np.isfinite(u))


def test_error_summary():
    assert error_summary(0.0, np.zeros(3)) == (0.0, 1.0)
    assert error_summary(4.0, np.array([2.0])) == (0.0, 1.0)
