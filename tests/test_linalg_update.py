"""Incremental updates (Brand row append, sketch, merge, centred mode) against LAPACK.

Everything is compared through sign-free quantities: singular values, projectors
``vtᵀ vt``, reconstructions ``U diag(s) vt``. The left factor is materialized from the
lazy ``U_raw T`` exactly as the factor store keeps it (old rows never rewritten; added
columns are zero on old rows).

Tolerances. float64 round-off of one Brand step is O(eps · ‖A‖) per entry, and it adds up
linearly over updates (each step is a product with orthogonal matrices); new rows of
``U_raw`` carry an extra factor ``cond(T) ≤ 1e3`` here. So 1e-10 (relative to ``s[0]``)
is ~1e5 eps of head-room for tens of updates; 1e-8 for reconstructions of entries of
size ~10 over up to ~60 updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsvd.errors import InvalidInputError, ShapeMismatchError
from streamsvd.linalg.compaction import compact_rows, compacted_t, needs_compaction
from streamsvd.linalg.merge import PartialSVD, merge_svds
from streamsvd.linalg.tall import _CholeskyRows, _compress_rows, _HouseholderRows
from streamsvd.linalg.update import RowAppend, append_rows, sketch_rows
from streamsvd.linalg.update_centered import CenteredAppend, append_rows_centered
from tests.matrices import low_rank, with_spectrum

Array = np.ndarray


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


@dataclass
class Lazy:
    """What the factor store holds: U_raw (append-only rows), T, s, vt, energy."""

    u_raw: Array
    t: Array
    s: Array
    vt: Array
    energy: float
    mean: Array | None = None
    rows_seen: float = 0.0
    ones: Array | None = None

    @classmethod
    def fit(cls, a: Array, rank: int) -> Lazy:
        u, s, vt = np.linalg.svd(a, full_matrices=False)
        rank = min(rank, s.size)
        return cls(u[:, :rank], np.eye(rank), s[:rank], vt[:rank], float(np.sum(a * a)))

    @classmethod
    def fit_centered(cls, a: Array, rank: int) -> Lazy:
        mean = a.mean(axis=0)
        u, s, vt = np.linalg.svd(a - mean, full_matrices=False)
        u_raw = np.hstack([u[:, :rank], np.ones((a.shape[0], 1))])
        t = np.vstack([np.eye(rank), np.zeros((1, rank))])
        ones = np.zeros(rank + 1)
        ones[-1] = 1.0
        energy = float(np.sum((a - mean) ** 2))
        return cls(u_raw, t, s[:rank], vt[:rank], energy, mean, float(a.shape[0]), ones)

    def apply(self, res: RowAppend | CenteredAppend) -> Lazy:
        pad = np.zeros((self.u_raw.shape[0], res.u_raw_columns_added))
        u_raw = np.vstack([np.hstack([self.u_raw, pad]), res.new_u_raw_rows])
        out = Lazy(u_raw, res.updated_t, res.updated_s, res.updated_vt, res.updated_energy)
        if isinstance(res, CenteredAppend):
            out.mean, out.rows_seen, out.ones = (
                res.updated_mean,
                res.updated_rows_seen,
                res.updated_ones,
            )
        return out

    def append(self, rows: Array, **kw: object) -> Lazy:
        return self.apply(append_rows(self.t, self.s, self.vt, self.energy, rows, **kw))  # type: ignore[arg-type]

    def append_centered(self, rows: Array, **kw: object) -> Lazy:
        if self.mean is None:
            raise ValueError("not a centred state: build it with Lazy.fit_centered")
        res = append_rows_centered(
            self.t, self.s, self.vt, self.energy, rows,
            last_mean=self.mean, last_rows_seen=self.rows_seen, last_ones=self.ones,
            **kw,  # type: ignore[arg-type]
        )  # fmt: skip
        return self.apply(res)

    @property
    def u(self) -> Array:
        return self.u_raw @ self.t

    def reconstruct(self) -> Array:
        return (self.u * self.s) @ self.vt


def orth_defect(x: Array) -> float:
    return float(np.abs(x.T @ x - np.eye(x.shape[1])).max()) if x.size else 0.0


def split_points(m: int, sizes: list[int]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for size in sizes:
        size = min(size, m - pos)
        out.append((pos, pos + size))
        pos += size
    out.append((pos, m))
    return out


# ----------------------------------------------------------- exact, low rank


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(3, 25),
    rho=st.integers(1, 5),
    extra=st.integers(0, 3),
    sizes=st.lists(st.sampled_from([0, 1, 2, 3, 7, 15, 40]), min_size=1, max_size=8),
)
def test_batch_splits_reproduce_low_rank_matrix(
    seed: int, n: int, rho: int, extra: int, sizes: list[int]
) -> None:
    rng = np.random.default_rng(seed)
    rho = min(rho, n)
    k = min(rho + extra, n)
    m = 8 + sum(sizes)
    a = low_rank(rng, m, n, rho)
    state = Lazy.fit(a[:k], k)  # the first k rows: a state with zero singular values if k > ρ
    for lo, hi in split_points(m, [k, *sizes])[1:]:
        state = state.append(a[lo:hi], rank=k)
        seen = a[:hi]
        # reconstruction: exact up to round-off (entries are O(10); 1e-8 see module doc)
        np.testing.assert_allclose(state.reconstruct(), seen, atol=1e-8)
        assert orth_defect(state.u) < 1e-10
        assert orth_defect(state.vt.T) < 1e-10
        assert np.all(np.diff(state.s) <= 0)
        assert np.all(state.s >= 0)
        assert state.energy == pytest.approx(float(np.sum(seen**2)), rel=1e-12)


def test_zero_row_batch_is_a_noop(rng: np.random.Generator) -> None:
    a = rng.standard_normal((10, 6))
    state = Lazy.fit(a, 4)
    res = append_rows(state.t, state.s, state.vt, state.energy, np.zeros((0, 6)), forget=0.5)
    np.testing.assert_array_equal(res.updated_t, state.t)
    np.testing.assert_array_equal(res.updated_s, state.s)
    np.testing.assert_array_equal(res.updated_vt, state.vt)
    assert res.updated_energy == state.energy
    assert res.new_u_raw_rows.shape == (0, 4)
    assert res.u_raw_columns_added == 0


def test_inputs_are_not_modified(rng: np.random.Generator) -> None:
    a = rng.standard_normal((30, 8))
    state = Lazy.fit(a[:10], 5)
    copies = [x.copy() for x in (state.t, state.s, state.vt)]
    rows = a[10:].copy()
    append_rows(state.t, state.s, state.vt, state.energy, rows, forget=0.9, rank=7)
    for before, after in zip(copies, (state.t, state.s, state.vt), strict=True):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(rows, a[10:])


def test_stream_from_empty_state_grows_rank(rng: np.random.Generator) -> None:
    # k = 0, c = 0: every direction is new, so it lands in added U_raw columns.
    a = low_rank(rng, 50, 12, 4)
    state = Lazy(np.zeros((0, 0)), np.zeros((0, 0)), np.zeros(0), np.zeros((0, 12)), 0.0)
    for lo, hi in split_points(50, [1, 3, 10, 20]):
        state = state.append(a[lo:hi], rank=6)
    np.testing.assert_allclose(state.reconstruct(), a, atol=1e-9)
    assert orth_defect(state.u) < 1e-10
    np.testing.assert_allclose(state.s[:4], np.linalg.svd(a, compute_uv=False)[:4], rtol=1e-10)


# ------------------------------------------------------- streaming == one-shot


@pytest.mark.parametrize("sizes", [[1] * 30, [7, 1, 40, 2, 13], [100]])
def test_no_truncation_matches_lapack(rng: np.random.Generator, sizes: list[int]) -> None:
    n = 15
    a = rng.standard_normal((20 + sum(sizes), n)) * np.geomspace(10, 0.01, n)
    state = Lazy.fit(a[:20], n)
    for lo, hi in split_points(a.shape[0], [20, *sizes])[1:]:
        state = state.append(a[lo:hi])
    u_ref, s_ref, vt_ref = np.linalg.svd(a, full_matrices=False)
    # singular values: backward stable to O(eps ‖A‖) per step (Weyl), ~1e-10 relative s[0]
    np.testing.assert_allclose(state.s, s_ref, rtol=0, atol=1e-10 * s_ref[0])
    np.testing.assert_allclose(state.vt.T @ state.vt, vt_ref.T @ vt_ref, atol=1e-10)
    np.testing.assert_allclose(state.u @ state.u.T, u_ref @ u_ref.T, atol=1e-10)


def test_rank_growth_up_to_full(rng: np.random.Generator) -> None:
    a = rng.standard_normal((40, 9))
    state = Lazy.fit(a[:10], 3).append(a[10:], rank=9)
    # With rank 3 on the first rows the old error is kept out of the state, so compare with
    # the SVD of [U S Vᵀ of the first rows; the rest], which the update is exact for.
    head = Lazy.fit(a[:10], 3).reconstruct()
    s_ref = np.linalg.svd(np.vstack([head, a[10:]]), compute_uv=False)
    np.testing.assert_allclose(state.s, s_ref[:9], atol=1e-10 * s_ref[0])
    assert orth_defect(state.u) < 1e-10


# ------------------------------------------------------------------- truncation


@pytest.mark.parametrize("n_batches", [1, 10, 100])
def test_truncated_stream_near_optimal_on_fast_decay(
    rng: np.random.Generator, n_batches: int
) -> None:
    m, n, k = 600, 80, 10
    sigma = 50 * 0.7 ** np.arange(n)
    a = with_spectrum(rng, m, n, sigma) + 1e-3 * rng.standard_normal((m, n))
    state = Lazy.fit(a[: m // 2], k)
    for chunk in np.array_split(a[m // 2 :], n_batches):
        state = state.append(chunk)
    s_all = np.linalg.svd(a, compute_uv=False)
    optimal = np.sqrt(np.sum(s_all[k:] ** 2))
    measured = np.linalg.norm(a - state.reconstruct())
    # The streaming error exceeds the optimum by the energy of the tail directions that
    # each truncation discarded; with σ_{k+1}/σ_k = 0.7 this stays within 2 % (brief's bound).
    assert measured <= 1.02 * optimal
    assert state.energy - np.sum(state.s**2) == pytest.approx(measured**2, rel=1e-6)


def test_error_accounting_after_100_updates(rng: np.random.Generator) -> None:
    m0, n, k = 50, 40, 8
    a = with_spectrum(rng, 1050, n, 10 * 0.8 ** np.arange(n)) + 0.05 * rng.standard_normal(
        (1050, n)
    )
    state = Lazy.fit(a[:m0], k)
    for chunk in np.array_split(a[m0:], 100):
        state = state.append(chunk)
    measured = np.linalg.norm(a - state.reconstruct())
    recorded = np.sqrt(state.energy - np.sum(state.s**2))
    # f − Σs² loses ~eps·f to cancellation; the error² is ~1e-2·f here, so 1e-6 is loose.
    assert recorded == pytest.approx(measured, rel=1e-6)
    assert orth_defect(state.u) < 1e-9
    assert orth_defect(state.vt.T) < 1e-10
    res = append_rows(state.t, state.s, state.vt, state.energy, a[:1])
    stacked = np.vstack([a, a[:1]])
    residual = np.linalg.norm(stacked - state.apply(res).reconstruct())
    assert res.relative_error == pytest.approx(residual / np.linalg.norm(stacked), rel=1e-6)


# ------------------------------------------------------------------- forgetting


def test_forget_equals_weighted_stacked_matrix(rng: np.random.Generator) -> None:
    n, gamma = 12, 0.8
    a = rng.standard_normal((70, n))
    state = Lazy.fit(a[:10], n)
    weights = np.ones(10)
    for lo, hi in [(10, 15), (15, 16), (16, 46), (46, 70)]:
        state = state.append(a[lo:hi], forget=gamma, rank=n)
        weights = np.concatenate([gamma * weights, np.ones(hi - lo)])
    weighted = weights[:, None] * a
    s_ref = np.linalg.svd(weighted, compute_uv=False)
    np.testing.assert_allclose(state.s, s_ref, atol=1e-10 * s_ref[0])
    np.testing.assert_allclose(state.reconstruct(), weighted, atol=1e-10)
    assert state.energy == pytest.approx(float(np.sum(weighted**2)), rel=1e-12)


# ------------------------------------------------------------ rank deficiency


def test_rank_deficient_batches(rng: np.random.Generator) -> None:
    a = low_rank(rng, 30, 10, 3)
    state = Lazy.fit(a, 3)
    zeros = np.zeros((4, 10))
    inside = rng.standard_normal((5, 3)) @ state.vt  # rows inside span(V): J is empty
    for rows in (zeros, inside, np.zeros((1, 10))):
        res = append_rows(state.t, state.s, state.vt, state.energy, rows, rank=5)
        assert all(np.all(np.isfinite(x)) for x in (res.updated_t, res.new_u_raw_rows))
        assert res.updated_s.shape == (3,)  # nothing new to grow into
        state = state.apply(res)
    full = np.vstack([a, zeros, inside, np.zeros((1, 10))])
    np.testing.assert_allclose(state.reconstruct(), full, atol=1e-9)
    assert orth_defect(state.u) < 1e-10


def test_new_orthogonal_direction_adds_a_column(rng: np.random.Generator) -> None:
    # The old rows live in the first 3 coordinates; the batch is a much stronger direction
    # outside them. It is kept, it vanishes on the old rows, so U_raw gains a column.
    a = np.zeros((20, 6))
    a[:, :3] = rng.standard_normal((20, 3))
    state = Lazy.fit(a, 3)
    batch = np.zeros((2, 6))
    batch[:, 5] = [100.0, 50.0]
    res = append_rows(state.t, state.s, state.vt, state.energy, batch)
    assert res.u_raw_columns_added >= 1
    state = state.apply(res)
    assert orth_defect(state.u) < 1e-12
    np.testing.assert_allclose(state.s[0], np.hypot(100, 50))
    measured = np.linalg.norm(np.vstack([a, batch]) - state.reconstruct())
    assert measured**2 == pytest.approx(state.energy - np.sum(state.s**2), rel=1e-9)


# ---------------------------------------------------------------------- sketch


def test_sketch_exact_for_low_rank_batch_and_accounting_exact(rng: np.random.Generator) -> None:
    n, k = 50, 6
    a = low_rank(rng, 400, n, 5)
    state = Lazy.fit(a[:40], k)
    res = append_rows(state.t, state.s, state.vt, state.energy, a[40:], sketch_above=30)
    assert res.sketched
    state = state.apply(res)
    np.testing.assert_allclose(state.reconstruct(), a, atol=1e-8)
    assert orth_defect(state.u) < 1e-10
    # A full-rank batch with slow decay: the sketch is lossy, the accounting stays exact.
    noisy = rng.standard_normal((300, n))
    res = sketch_rows(state.t, state.s, state.vt, state.energy, noisy, oversample=2,
                      power_iters=0, seed=3)  # fmt: skip
    state = state.apply(res)
    stacked = np.vstack([a, noisy])
    measured = np.linalg.norm(stacked - state.reconstruct())
    assert measured**2 == pytest.approx(state.energy - np.sum(state.s**2), rel=1e-9)
    assert orth_defect(state.u) < 1e-10
    again = sketch_rows(res.updated_t, res.updated_s, res.updated_vt, res.updated_energy,
                        noisy[:100], seed=4)  # fmt: skip
    same = sketch_rows(res.updated_t, res.updated_s, res.updated_vt, res.updated_energy,
                       noisy[:100], seed=4)  # fmt: skip
    np.testing.assert_array_equal(again.updated_s, same.updated_s)


# ---------------------------------------------------------------------- merge


def _partial(a: Array, rank: int | None = None) -> PartialSVD:
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    r = s.size if rank is None else rank
    return PartialSVD(u[:, :r], s[:r], vt[:r], float(np.sum(a * a)))


def test_merge_tree_order_independent_and_exact(rng: np.random.Generator) -> None:
    n = 10
    blocks = [rng.standard_normal((m, n)) for m in (3, 8, 1, 12)]
    parts = [_partial(b) for b in blocks]

    def merge(x: PartialSVD, y: PartialSVD) -> PartialSVD:
        res = merge_svds(x, y, rank=x.s.size + y.s.size)
        return PartialSVD(res.u, res.s, res.vt, res.energy)

    left = merge(merge(merge(parts[0], parts[1]), parts[2]), parts[3])
    tree = merge(merge(parts[0], parts[1]), merge(parts[2], parts[3]))
    stacked = np.vstack(blocks)
    s_ref = np.linalg.svd(stacked, compute_uv=False)
    for res in (left, tree):
        assert res.u is not None
        np.testing.assert_allclose(res.s, s_ref, atol=1e-12 * s_ref[0])
        np.testing.assert_allclose((res.u * res.s) @ res.vt, stacked, atol=1e-12)
        assert res.energy == pytest.approx(np.sum(stacked**2), rel=1e-13)
    np.testing.assert_allclose(left.vt.T @ left.vt, tree.vt.T @ tree.vt, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    heights=st.lists(st.integers(1, 9), min_size=2, max_size=6),
    order=st.lists(st.integers(0, 100), min_size=5, max_size=5),
)
def test_merge_random_trees_equal_lapack(seed: int, heights: list[int], order: list[int]) -> None:
    rng = np.random.default_rng(seed)
    n = 7
    blocks = [rng.standard_normal((h, n)) for h in heights]
    parts = [_partial(b) for b in blocks]
    # merge neighbours in a random order (any binary tree over the row order)
    for pick in order[: len(parts) - 1]:
        i = pick % (len(parts) - 1)
        x, y = parts[i], parts[i + 1]
        res = merge_svds(x, y, rank=x.s.size + y.s.size)
        parts[i : i + 2] = [PartialSVD(res.u, res.s, res.vt, res.energy)]
    (merged,) = parts
    stacked = np.vstack(blocks)
    s_ref = np.linalg.svd(stacked, compute_uv=False)
    assert merged.u is not None
    np.testing.assert_allclose(merged.s, s_ref[: merged.s.size], atol=1e-12 * s_ref[0])
    np.testing.assert_allclose((merged.u * merged.s) @ merged.vt, stacked, atol=1e-12)


def test_rank_zero_and_empty_core(rng: np.random.Generator) -> None:
    state = Lazy.fit(rng.standard_normal((6, 4)), 2)
    res = append_rows(state.t, state.s, state.vt, state.energy, np.ones((2, 4)), rank=0)
    assert res.updated_s.shape == (0,)
    assert res.updated_t.shape == (2, 0)
    assert res.relative_error == pytest.approx(1.0)
    empty = append_rows(np.zeros((0, 0)), [], np.zeros((0, 4)), 0.0, np.zeros((3, 4)), rank=2)
    assert empty.updated_s.size == 0
    assert empty.relative_error == 0.0


def test_merge_lazy_mixing_and_truncation(rng: np.random.Generator) -> None:
    x1 = with_spectrum(rng, 60, 20, 0.7 ** np.arange(15)) + 1e-3 * rng.standard_normal((60, 20))
    x2 = with_spectrum(rng, 40, 20, 0.6 ** np.arange(15))
    p1, p2 = _partial(x1, 6), _partial(x2, 6)
    res = merge_svds((None, p1.s, p1.vt, p1.energy), (None, p2.s, p2.vt, p2.energy), rank=6,
                     forget=0.5)  # fmt: skip
    assert res.u is None
    assert res.mix_first.shape == (6, 6)
    assert res.mix_second.shape == (6, 6)
    assert p1.u is not None
    assert p2.u is not None
    u = np.vstack([p1.u @ res.mix_first, p2.u @ res.mix_second])
    stacked = np.vstack([0.5 * x1, x2])
    measured = np.linalg.norm(stacked - (u * res.s) @ res.vt)
    assert orth_defect(u) < 1e-12
    assert res.relative_error == pytest.approx(measured / np.linalg.norm(stacked), rel=1e-6)


# ----------------------------------------------------------------- compaction


def test_needs_compaction(rng: np.random.Generator) -> None:
    q = np.linalg.qr(rng.standard_normal((8, 5)))[0]
    assert not needs_compaction(q)
    bad = q * np.array([1.0, 1.0, 1.0, 1.0, 1e-10])
    assert needs_compaction(bad)
    assert needs_compaction(bad, max_condition=1e12) is False
    # the threshold is on cond(T) = σ_max / σ_min: here exactly 1e12 (scaled orthogonal)
    square = np.linalg.qr(rng.standard_normal((5, 5)))[0]
    scaled = np.diag(1 / np.geomspace(1, 1e12, 5)) @ square
    assert needs_compaction(scaled)
    assert needs_compaction(scaled, max_condition=0.99e12)
    assert not needs_compaction(scaled, max_condition=1.01e12)
    assert needs_compaction(np.zeros((4, 2)))
    assert not needs_compaction(np.zeros((3, 0)))


def test_compaction_keeps_the_factor(rng: np.random.Generator) -> None:
    a = rng.standard_normal((40, 6)) + 2
    state = Lazy.fit_centered(a[:20], 4).append_centered(a[20:])
    assert state.ones is not None
    rows = np.vstack([compact_rows(block, state.t, ones=state.ones)
                      for block in np.array_split(state.u_raw, 3)])  # fmt: skip
    t, ones = compacted_t(4, centered=True)
    assert ones is not None
    np.testing.assert_allclose(rows @ t, state.u, atol=1e-14)
    np.testing.assert_allclose(rows @ ones, 1.0, atol=1e-14)
    assert np.array_equal(compacted_t(3)[0], np.eye(3))


# -------------------------------------------------------------------- centred


@pytest.mark.parametrize("gamma", [1.0, 0.85])
def test_centered_no_truncation_matches_lapack(rng: np.random.Generator, gamma: float) -> None:
    n = 12
    a = rng.standard_normal((90, n)) * np.geomspace(5, 0.1, n) + 3 + rng.standard_normal(n)
    state = Lazy.fit_centered(a[:20], n)
    weights = np.ones(20)
    for lo, hi in split_points(90, [20, 1, 30, 2, 10])[1:]:
        state = state.append_centered(a[lo:hi], forget=gamma)
        weights = np.concatenate([gamma * weights, np.ones(hi - lo)])
    w2 = weights**2
    mean = (w2[:, None] * a).sum(axis=0) / w2.sum()
    centred = weights[:, None] * (a - mean)
    if gamma == 1.0:
        np.testing.assert_allclose(mean, np.mean(a, axis=0), atol=1e-13)
    assert state.mean is not None
    assert state.ones is not None
    np.testing.assert_allclose(state.mean, mean, atol=1e-12)
    assert state.rows_seen == pytest.approx(w2.sum())
    u_ref, s_ref, vt_ref = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(state.s, s_ref, atol=1e-10 * s_ref[0])
    np.testing.assert_allclose(state.vt.T @ state.vt, vt_ref.T @ vt_ref, atol=1e-10)
    np.testing.assert_allclose(state.u @ state.u.T, u_ref @ u_ref.T, atol=1e-10)
    np.testing.assert_allclose(state.u_raw @ state.ones, weights, atol=1e-12)
    assert state.energy == pytest.approx(float(np.sum(centred**2)), rel=1e-12)


def test_centered_truncated_accounting_and_growth(rng: np.random.Generator) -> None:
    n, k = 30, 5
    a = with_spectrum(rng, 400, n, 20 * 0.75 ** np.arange(n)) + rng.standard_normal(n) * 4
    a += 0.01 * rng.standard_normal(a.shape)
    state = Lazy.fit_centered(a[:40], k)
    for chunk in np.array_split(a[40:-10], 30):
        state = state.append_centered(chunk)
    centred = a[:-10] - a[:-10].mean(axis=0)
    measured = np.linalg.norm(centred - state.reconstruct())
    optimal = np.sqrt(np.sum(np.linalg.svd(centred, compute_uv=False)[k:] ** 2))
    assert measured <= 1.02 * optimal  # as in the uncentred case (same spectrum decay)
    # Grow the rank on the last batch: the direction discarded earlier is not recovered
    # (no bound vs the optimum), but the accounting stays exact and U orthonormal.
    state = state.append_centered(a[-10:], rank=k + 2)
    assert state.s.size == k + 2
    np.testing.assert_allclose(state.mean, a.mean(axis=0), atol=1e-12)  # type: ignore[arg-type]
    centred = a - a.mean(axis=0)
    measured = np.linalg.norm(centred - state.reconstruct())
    assert measured**2 == pytest.approx(state.energy - np.sum(state.s**2), rel=1e-6)
    assert orth_defect(state.u) < 1e-10
    np.testing.assert_allclose(state.u.sum(axis=0), 0.0, atol=1e-9)  # ωᵀU = 0 invariant
    # the wide-batch sketch in centred mode, exact accounting again
    res = append_rows_centered(state.t, state.s, state.vt, state.energy, a[:200] + 1,
                               last_mean=state.mean, last_rows_seen=state.rows_seen,  # type: ignore[arg-type]
                               last_ones=state.ones, sketch_above=50)  # fmt: skip
    assert res.sketched
    state = state.apply(res)
    full = np.vstack([a, a[:200] + 1])
    centred = full - full.mean(axis=0)
    measured = np.linalg.norm(centred - state.reconstruct())
    assert measured**2 == pytest.approx(state.energy - np.sum(state.s**2), rel=1e-6)


def test_centered_new_directions_add_columns(rng: np.random.Generator) -> None:
    # Each batch brings a strong direction absent from the old rows: columns are added to
    # U_raw, and the weight vector ω (forgetting from the 4th batch) must survive them.
    n = 8
    a = np.zeros((30, n))
    a[:, :3] = rng.standard_normal((30, 3)) + 2
    state = Lazy.fit_centered(a, 3)
    blocks, weights, added = [a], np.ones(30), 0
    for step in range(6):
        batch = np.zeros((3, n))
        batch[:, :3] = rng.standard_normal((3, 3))
        batch[:, 3 + step % 5] = 100 * rng.standard_normal(3)
        gamma = 0.9 if step > 2 else 1.0
        before = state.u_raw.shape[1]
        state = state.append_centered(batch, rank=3 + step % 2, forget=gamma)
        added += state.u_raw.shape[1] - before
        blocks.append(batch)
        weights = np.concatenate([gamma * weights, np.ones(3)])
    assert added > 0
    assert state.ones is not None
    np.testing.assert_allclose(state.u_raw @ state.ones, weights, atol=1e-11)
    full = np.vstack(blocks)
    w2 = weights**2
    centred = weights[:, None] * (full - (w2[:, None] * full).sum(axis=0) / w2.sum())
    measured = np.linalg.norm(centred - state.reconstruct())
    assert measured**2 == pytest.approx(state.energy - np.sum(state.s**2), rel=1e-8)
    assert state.energy == pytest.approx(float(np.sum(centred**2)), rel=1e-12)
    assert orth_defect(state.u) < 1e-10


# ---------------------------------------------------------------------- errors


def test_invalid_inputs_are_refused(rng: np.random.Generator) -> None:
    state = Lazy.fit(rng.standard_normal((10, 5)), 3)
    args = (state.t, state.s, state.vt, state.energy)
    with pytest.raises(ShapeMismatchError, match="new_rows must have 5 columns"):
        append_rows(*args, np.ones((2, 4)))
    with pytest.raises(InvalidInputError, match="finite"):
        append_rows(*args, np.full((2, 5), np.nan))
    with pytest.raises(InvalidInputError, match="forget must satisfy"):
        append_rows(*args, np.ones((2, 5)), forget=0.0)
    with pytest.raises(InvalidInputError, match="rank must be a non-negative integer"):
        append_rows(*args, np.ones((2, 5)), rank=-1)
    with pytest.raises(ShapeMismatchError, match="t must have one column per singular value"):
        append_rows(np.eye(2), state.s, state.vt, state.energy, np.ones((2, 5)))
    with pytest.raises(InvalidInputError, match="sorted in decreasing order"):
        append_rows(state.t, state.s[::-1], state.vt, state.energy, np.ones((2, 5)))
    with pytest.raises(ShapeMismatchError, match="same number of columns"):
        merge_svds((None, state.s, state.vt, 1.0), (None, [1.0], np.ones((1, 4)), 1.0), rank=2)
    with pytest.raises(InvalidInputError, match="last_rows_seen must be > 0"):
        append_rows_centered(*args, np.ones((2, 5)), last_mean=np.zeros(5), last_rows_seen=0)
    with pytest.raises(ShapeMismatchError, match="last_mean must have 5 entries"):
        append_rows_centered(*args, np.ones((2, 5)), last_mean=np.zeros(4), last_rows_seen=3)


# ------------------------------------------------- core paths (tall, wide, partial SVD)


@pytest.mark.parametrize("b", [1, 30, 150, 600])
@pytest.mark.parametrize("spectrum", ["steep", "flat", "no_refine"])
def test_core_paths_match_lapack_on_stacked(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, b: int, spectrum: str
) -> None:
    # n = 200 > the partial-SVD threshold: b < n (wide core, partial SVD on its transpose),
    # b > n (rows compressed by a Householder QR first). "steep" certifies the partial SVD,
    # "flat" (slow convergence) may fall back, "no_refine" forces the full LAPACK SVD.
    import streamsvd.linalg.merge as merge_mod

    if spectrum == "no_refine":
        monkeypatch.setattr(merge_mod, "_REFINE_STEPS", 0)
    n, k = 200, 12
    sigma = 100 * 0.85 ** np.arange(60) if spectrum != "flat" else np.linspace(2, 1, 60)
    a = with_spectrum(rng, 300 + b, n, sigma) + 1e-3 * rng.standard_normal((300 + b, n))
    state = Lazy.fit(a[:300], k)
    res = append_rows(state.t, state.s, state.vt, state.energy, a[300:])
    stacked = np.vstack([state.s[:, None] * state.vt, a[300:]])
    _, s_ref, vt_ref = np.linalg.svd(stacked, full_matrices=False)
    np.testing.assert_allclose(res.updated_s, s_ref[:k], rtol=0, atol=1e-12 * s_ref[0])
    gap = (s_ref[k - 1] - s_ref[k]) / s_ref[0]  # subspace sensitivity ~ eps / gap
    proj = res.updated_vt.T @ res.updated_vt - vt_ref[:k].T @ vt_ref[:k]
    assert np.abs(proj).max() < 1e-13 / gap
    state = state.apply(res)
    assert orth_defect(state.u) < 1e-12
    assert orth_defect(state.vt.T) < 1e-12
    # exact accounting relative to the stacked matrix the update is exact for
    full = np.vstack([Lazy.fit(a[:300], k).reconstruct(), a[300:]])
    measured = np.linalg.norm(full - state.reconstruct())
    assert measured**2 == pytest.approx(np.sum(full**2) - np.sum(state.s**2), rel=1e-8)


# ------------------------------------- tall batches: Cholesky QR, Householder fallback


def _check_against_stacked(state: Lazy, batch: Array, res: RowAppend, k: int) -> None:
    """``res`` (rank ``k``, no growth) against LAPACK on the stacked matrix it is exact for."""
    stacked = np.vstack([state.s[:, None] * state.vt, batch])
    _, s_ref, vt_ref = np.linalg.svd(stacked, full_matrices=False)
    np.testing.assert_allclose(res.updated_s, s_ref[:k], rtol=0, atol=1e-12 * s_ref[0])
    gap = (s_ref[k - 1] - s_ref[k]) / s_ref[0]
    proj = res.updated_vt.T @ res.updated_vt - vt_ref[:k].T @ vt_ref[:k]
    assert np.abs(proj).max() < 1e-13 / gap
    new = state.apply(res)
    assert orth_defect(new.u) < 1e-12
    assert orth_defect(new.vt.T) < 1e-12
    full = np.vstack([state.reconstruct(), batch])
    measured = np.linalg.norm(full - new.reconstruct())
    assert measured**2 == pytest.approx(np.sum(full**2) - np.sum(new.s**2), rel=1e-8)


@pytest.mark.parametrize("method", ["cholesky", "householder"])
@pytest.mark.parametrize("layout", ["C", "F", "float32"])
def test_tall_batch_compressions_match_lapack(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, method: str, layout: str
) -> None:
    # b = 5 n: the batch is compressed to an n × n triangle; both QRs (forced) must give
    # LAPACK's answer on the stacked matrix, for either memory layout and float32 input.
    import streamsvd.linalg.merge as merge_mod

    monkeypatch.setattr(merge_mod, "_ROW_COMPRESSION", method)
    n, k, b = 60, 8, 300
    sigma = 100 * 0.8 ** np.arange(30)
    a = with_spectrum(rng, 200 + b, n, sigma) + 1e-2 * rng.standard_normal((200 + b, n))
    if layout == "float32":
        a = a.astype(np.float32).astype(np.float64)  # the values the float32 batch holds
    state = Lazy.fit(a[:200], k)
    batch = a[200:]
    given_batch: dict[str, Array] = {
        "C": batch,
        "F": np.asfortranarray(batch),
        "float32": batch.astype(np.float32),
    }
    core = merge_mod._core_step(state.s, state.vt, batch, rank=k, tol=None)
    assert core.compression == method
    kept = given_batch[layout].copy()
    res = append_rows(state.t, state.s, state.vt, state.energy, given_batch[layout])
    np.testing.assert_array_equal(given_batch[layout], kept)  # the batch is not modified
    _check_against_stacked(state, batch, res, k)


def test_tall_batch_paths_agree(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default (guarded Cholesky QR) takes the Cholesky path on a well-conditioned batch
    # and agrees with the Householder path to round-off.
    import streamsvd.linalg.merge as merge_mod

    n, k, b = 50, 6, 400
    a = with_spectrum(rng, 100 + b, n, 50 * 0.7 ** np.arange(20))
    a += 1e-3 * rng.standard_normal(a.shape)
    state = Lazy.fit(a[:100], k)
    batch = a[100:]
    assert isinstance(_compress_rows(batch), _CholeskyRows)
    assert merge_mod._core_step(state.s, state.vt, batch, rank=k, tol=None).compression == (
        "cholesky"
    )
    auto = append_rows(state.t, state.s, state.vt, state.energy, batch)
    monkeypatch.setattr(merge_mod, "_ROW_COMPRESSION", "householder")
    house = append_rows(state.t, state.s, state.vt, state.energy, batch)
    np.testing.assert_allclose(auto.updated_s, house.updated_s, rtol=1e-13)
    # the energy is ‖[A_old; batch]‖_F² whichever QR compressed the batch
    stacked_energy = float(np.sum(a * a))  # a = [A_old; batch]
    np.testing.assert_allclose(
        [auto.updated_energy, house.updated_energy], stacked_energy, rtol=1e-13
    )
    u_auto, u_house = state.apply(auto).u, state.apply(house).u
    np.testing.assert_allclose(u_auto[100:], u_house[100:], rtol=0, atol=1e-12)
    _check_against_stacked(state, batch, auto, k)


@pytest.mark.parametrize("kind", ["rank_deficient", "zero_column", "ill_conditioned"])
def test_ill_conditioned_tall_batch_falls_back_to_householder(
    rng: np.random.Generator, kind: str
) -> None:
    # Cholesky QR is refused a priori (Gram matrix not positive definite in floating point,
    # or cond(R) above the guard); the Householder QR then gives LAPACK's answer.
    import streamsvd.linalg.merge as merge_mod

    n, k, b = 40, 5, 200
    a = with_spectrum(rng, 80 + b, n, 20 * 0.6 ** np.arange(12))
    batch = a[80:].copy()
    if kind == "rank_deficient":  # rank 12 < n
        pass
    elif kind == "zero_column":
        batch += 1e-2 * rng.standard_normal(batch.shape)
        batch[:, 7] = 0.0
    else:  # full rank, cond ~2e7: potrf succeeds, the condition guard refuses
        batch += with_spectrum(rng, b, n, np.geomspace(1e-2, 1e-7, n))
    state = Lazy.fit(a[:80] + 1e-3 * rng.standard_normal((80, n)), k)
    assert isinstance(_compress_rows(batch), _HouseholderRows)
    core = merge_mod._core_step(state.s, state.vt, batch, rank=k, tol=None)
    assert core.compression == "householder"
    res = append_rows(state.t, state.s, state.vt, state.energy, batch)
    _check_against_stacked(state, batch, res, k)


@pytest.mark.parametrize("scale", [1e160, 1e-170])
def test_cholesky_guard_refuses_overflow_and_underflow(
    rng: np.random.Generator, scale: float
) -> None:
    # The Gram matrix over- or underflows although the block is representable: Householder
    # (norms computed with scaling) is used, and no floating-point warning escapes.
    x = rng.standard_normal((120, 20))
    comp = _compress_rows(x * scale)
    assert isinstance(comp, _HouseholderRows)
    ref = np.linalg.qr(x, mode="r")
    np.testing.assert_allclose(np.abs(comp.r / scale), np.abs(ref), rtol=1e-12, atol=1e-12)


def test_weak_directions_fall_back_after_the_orthogonality_check(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cond(batch) = 1e5 passes the a-priori guard, but growing the rank to keep every
    # direction makes the Cholesky left factor lose ~eps cond² of orthogonality: the
    # a-posteriori check must reject it and redo the step by Householder.
    import streamsvd.linalg.merge as merge_mod

    n, k, b = 30, 4, 150
    a = with_spectrum(rng, 40, n, 10 * 0.5 ** np.arange(k))
    state = Lazy.fit(a, k)
    batch = with_spectrum(rng, b, n, np.geomspace(10, 1e-4, n))
    assert isinstance(_compress_rows(batch), _CholeskyRows)
    monkeypatch.setattr(merge_mod, "_ROW_COMPRESSION", "cholesky")
    forced = merge_mod._core_step(state.s, state.vt, batch, rank=k + n, tol=None)
    assert forced.compression == "cholesky"
    assert orth_defect(forced.mix) > 1e-10  # what the check is for
    monkeypatch.setattr(merge_mod, "_ROW_COMPRESSION", "auto")
    core = merge_mod._core_step(state.s, state.vt, batch, rank=k + n, tol=None)
    assert core.compression == "householder"
    assert orth_defect(core.mix) < 1e-13
    res = append_rows(state.t, state.s, state.vt, state.energy, batch, rank=n)
    stacked = np.vstack([state.s[:, None] * state.vt, batch])
    s_ref = np.linalg.svd(stacked, compute_uv=False)
    np.testing.assert_allclose(res.updated_s, s_ref[:n], rtol=0, atol=1e-12 * s_ref[0])
    new = state.apply(res)
    assert orth_defect(new.u) < 1e-12
    np.testing.assert_allclose(new.reconstruct(), np.vstack([a, batch]), rtol=0, atol=1e-11)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(3, 40),
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=4),
    slice_rows=st.sampled_from([64, 100, 10_000]),  # 64 is tall's smallest slice
)
def test_float32_batches_are_exact_in_float64(
    seed: int, n: int, sizes: list[int], slice_rows: int
) -> None:
    """float32 rows go through the update without a float64 copy (cast per slice): the
    result must be the float64 update of the same values, whatever the slicing."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("streamsvd.linalg.tall._CAST_SLICE_BYTES", slice_rows * n * 8)
        check_float32_batches(seed, n, sizes)


def check_float32_batches(seed: int, n: int, sizes: list[int]) -> None:
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((30 + sum(sizes), n)) * np.geomspace(10, 0.1, n)).astype(np.float32)
    a64 = a.astype(np.float64)
    state32 = state64 = Lazy.fit(a64[:30], n)
    for lo, hi in split_points(a.shape[0], [30, *sizes])[1:]:
        state32 = state32.append(a[lo:hi], rank=n)  # the rank may grow when n > 30
        state64 = state64.append(a64[lo:hi], rank=n)
    s_ref = np.linalg.svd(a64, compute_uv=False)
    # Both are float64 arithmetic on the same values: they agree to rounding (the
    # float32 path only regroups the sums), and both match LAPACK on A as in
    # test_no_truncation_matches_lapack.
    np.testing.assert_allclose(state32.s, state64.s, rtol=0, atol=1e-12 * s_ref[0])
    np.testing.assert_allclose(state32.s, s_ref[: state32.s.size], rtol=0, atol=1e-10 * s_ref[0])
    assert state32.energy == pytest.approx(float(np.sum(a64 * a64)), rel=1e-13)
    np.testing.assert_allclose(state32.reconstruct(), a64, rtol=0, atol=1e-9 * s_ref[0])
    assert orth_defect(state32.u) < 1e-10
