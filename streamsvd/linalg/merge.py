"""The core step shared by every incremental update: merge a truncated SVD with more rows.

Everything here is small and in memory. The state being updated is a truncated SVD
``X ≈ U diag(s) vt`` whose left factor may be huge (``m × k``) and is never touched: the
functions return the small *mixing matrix* that expresses the updated left factor in the
old one. Callers that keep ``U`` lazily as ``U = U_raw T`` (the factor store does) then
change only ``T`` and append rows to ``U_raw`` (see :mod:`streamsvd.linalg.update`).

The merge (Brand 2006, section 3; the same step merges two partial SVDs, as gensim's
``merge`` does): with the old part ``γ diag(s) vt`` (left factor ``U``, orthonormal
columns) and a block of ``p`` more rows ``C`` (left factor ``Q``, orthonormal columns,
block-diagonal to ``U``), the updated factors are the top-``k'`` SVD of the stacked
``W = [γ diag(s) vt; C]``. Brand's core ``M = W [V J]`` (``J`` a basis of the residual
``C − C V vt``) has the same SVD; it is computed without forming ``J`` or any
matrix with more than ``k + n`` rows::

    p > n:  C = Q_C R_C (Q_C implicit);  W̃ = [γ diag(s) vt; R_C]
    W̃ = Û diag(ŝ) V̂ᵀ   (top k' only: certified subspace iteration, else LAPACK)
    s' = ŝ[:k'];  vt' = V̂[:, :k']ᵀ;  U' = blockdiag(U, Q Q_C) Û[:, :k']

with ``k' = min(rank, k + r)``, ``r`` the numerical rank of the residual (evaluated only
when ``rank > k``).

Tall blocks (``p > n``) are compressed by a guarded Cholesky QR with a Householder
fallback (:mod:`streamsvd.linalg.tall`); the guard's a-posteriori part (the computed
``U'`` must be orthonormal to within ``1e-13``) is checked by :func:`_core_step`.

Exact accounting. Let ``X = [γ A; B]`` with ``A = U diag(s) vt + E``, ``Uᵀ E = 0`` and
``B = Q C + F``, ``Qᵀ F = 0`` (``F = 0`` when ``Q`` is the identity). Then
``U'ᵀ X = Ûᵀ [γ diag(s) vt; C] = diag(s') vt'`` (nothing of ``C`` is dropped), hence
``‖X − U' diag(s') vt'‖_F² = ‖X‖_F² − Σ s'²`` with ``‖X‖_F² = γ² ‖A‖_F² + ‖B‖_F²``.

References
----------
M. Brand, "Fast low-rank modifications of the thin singular value decomposition",
Linear Algebra and its Applications 415 (2006) 20–30.
R. Řehůřek, "Subspace tracking for latent semantic analysis", ECIR 2011 (the merge of
two truncated SVDs used by gensim's ``LsiModel``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg as sla
from numpy.typing import ArrayLike, NDArray

from streamsvd.errors import InvalidInputError, ShapeMismatchError
from streamsvd.linalg.signs import fix_signs
from streamsvd.linalg.tall import (
    _CholeskyRows,
    _compress_rows,
    _householder_rows,
    _orth_defect,
    _RowCompression,
)

__all__ = ["MergedSVD", "PartialSVD", "merge_svds"]

Array = NDArray[np.float64]

_EPS = float(np.finfo(np.float64).eps)

#: Smallest ``min(m, n)`` of the core matrix for which the partial SVD is tried.
_PARTIAL_MIN = 128
#: Refinement steps of the partial SVD before falling back to a full SVD.
_REFINE_STEPS = 6
#: How tall blocks are compressed: ``"auto"`` (guarded Cholesky QR, Householder fallback),
#: ``"cholesky"`` (whenever the Cholesky factorization succeeds; for tests) or
#: ``"householder"``.
_ROW_COMPRESSION: Literal["auto", "cholesky", "householder"] = "auto"
#: Largest ``max |U'ᵀ U' − I|`` accepted from the Cholesky QR path (Householder: ~1e-15).
_CHOLQR_ORTH_TOL = 1e-13


# --------------------------------------------------------------------------- checks


def _as_matrix(x: ArrayLike, name: str, *, keep_float32: bool = False) -> Array:
    """``x`` as a float64 matrix (float32 kept as it is with ``keep_float32``), finite."""
    arr = np.asarray(x)
    if not (keep_float32 and arr.dtype == np.float32):
        arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2:
        raise InvalidInputError(
            f"{name} must be a 2-D array; got {arr.ndim} dimension(s) with shape {arr.shape}. "
            "Pass a matrix (reshape a single row with x[None, :])."
        )
    # One pass without a temporary: a finite float64 sum means no NaN/Inf (an overflow
    # of the sum alone sends it to the exact check).
    if not np.isfinite(arr.sum(dtype=np.float64)) and not np.all(np.isfinite(arr)):
        raise InvalidInputError(
            f"{name} must hold finite numbers; found NaN or Inf. Clean the input first."
        )
    return arr


def _as_vector(x: ArrayLike, name: str) -> Array:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise InvalidInputError(
            f"{name} must be a 1-D array; got shape {arr.shape}. Pass the values as a vector."
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{name} must hold finite numbers; found NaN or Inf.")
    return arr


def _check_svd(s: ArrayLike, vt: ArrayLike, energy: float, name: str) -> tuple[Array, Array]:
    """Validate a truncated SVD ``(s, vt)`` with its energy and return float64 copies."""
    s_arr = _as_vector(s, f"{name} s")
    vt_arr = _as_matrix(vt, f"{name} vt")
    if vt_arr.shape[0] != s_arr.shape[0]:
        raise ShapeMismatchError(
            f"{name}: vt must have one row per singular value; got {vt_arr.shape[0]} rows "
            f"for {s_arr.shape[0]} values. Pass vt of shape (rank, n_cols)."
        )
    if np.any(s_arr < 0) or np.any(np.diff(s_arr) > 0):
        raise InvalidInputError(
            f"{name}: singular values must be non-negative and sorted in decreasing order; "
            f"got {s_arr}. Pass s as returned by an SVD."
        )
    if not np.isfinite(energy) or energy < 0:
        raise InvalidInputError(
            f"{name}: energy (squared Frobenius norm) must be finite and >= 0; got {energy}."
        )
    return s_arr.copy(), vt_arr.copy()


def _check_forget(forget: float) -> float:
    if not (0.0 < forget <= 1.0):
        raise InvalidInputError(
            f"forget must satisfy 0 < forget <= 1; got {forget}. Use 1.0 to keep all history."
        )
    return float(forget)


def _check_rank(rank: int | None, default: int) -> int:
    if rank is None:
        return default
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 0:
        raise InvalidInputError(f"rank must be a non-negative integer; got {rank!r}.")
    return int(rank)


def relative_error(energy: float, s: Array) -> float:
    """``sqrt(max(energy − Σ s², 0) / energy)``, 0 for a zero matrix.

    The exact relative Frobenius error of a truncated SVD whose left factor satisfies
    ``Uᵀ E = 0`` (see the module docstring).
    """
    if energy <= 0:
        return 0.0
    return float(np.sqrt(max(energy - float(s @ s), 0.0) / energy))


# ---------------------------------------------------------------------- core step


def _svd(a: Array) -> tuple[Array, Array, Array]:
    """Thin SVD by LAPACK ``gesdd``; ``gesvd`` (slower, more robust) if it fails to converge."""
    try:
        return sla.svd(a, full_matrices=False, lapack_driver="gesdd", check_finite=False)
    except np.linalg.LinAlgError:  # pragma: no cover - gesdd non-convergence is rare
        return sla.svd(a, full_matrices=False, lapack_driver="gesvd", check_finite=False)


def condition(a: ArrayLike) -> float:
    """``σ_max/σ_min`` of a matrix; ``inf`` when it is singular, wider than tall, or empty.

    Examples
    --------
    >>> condition(np.diag([10.0, 1.0]))
    10.0
    >>> condition(np.zeros((3, 2)))
    inf
    """
    arr = np.asarray(a, dtype=np.float64)
    if arr.size == 0 or arr.shape[0] < arr.shape[1]:
        return float("inf")
    sig = _svdvals(arr)
    return float(sig[0] / sig[-1]) if sig[-1] > 0 else float("inf")


def _svdvals(a: Array) -> Array:
    try:
        return sla.svd(a, compute_uv=False, lapack_driver="gesdd", check_finite=False)
    except np.linalg.LinAlgError:  # pragma: no cover
        return sla.svd(a, compute_uv=False, lapack_driver="gesvd", check_finite=False)


def _top_svd_tall(y: Array, q: int, k_new: int) -> tuple[Array, Array, Array] | None:
    """Top-``k_new`` SVD of a tall ``y`` (``m ≥ n``) by a certified two-sided subspace
    iteration, or ``None`` (the caller then runs a full LAPACK SVD).

    Start: the top-``q`` eigenvectors of ``yᵀ y`` (``syevr``, subset). That start squares
    the condition number, so it is refined by products with ``y`` and ``yᵀ`` only
    (``W ← orth(yᵀ orth(y W))``, never ``yᵀ y`` again) and each candidate is accepted
    only when it is as good as LAPACK's: the Rayleigh–Ritz triplets ``(s_i, u_i, v_i)``
    satisfy ``y v_i = s_i u_i`` by construction and must have ``‖yᵀ u_i − s_i v_i‖ ≤
    max(m, n) · eps · s_0`` (a backward error of that size) and ``s_i²`` must match the
    ``i``-th eigenvalue of ``yᵀ y`` within its rounding (so no larger singular value was
    missed).
    """
    m, n = y.shape
    try:
        lam, w = sla.eigh(y.T @ y, subset_by_index=[n - q, n - 1], driver="evr", check_finite=False)
    except (np.linalg.LinAlgError, ValueError):  # pragma: no cover
        return None
    lam, w = lam[::-1], w[:, ::-1]
    if not lam[0] > 0:
        return None
    gram_err = 4 * n * _EPS * lam[0]
    for _ in range(_REFINE_STEPS):
        u_hat, s_hat, wz = _svd(y @ w)  # Rayleigh–Ritz on span(w)
        v = w @ wz.T
        resid = y.T @ u_hat[:, :k_new] - v[:, :k_new] * s_hat[:k_new]
        bound = max(m, n) * _EPS * s_hat[0]
        if np.all(np.linalg.norm(resid, axis=0) <= bound) and np.all(
            np.abs(s_hat[:k_new] ** 2 - lam[:k_new]) <= gram_err + 2 * s_hat[:k_new] * bound
        ):
            return u_hat[:, :k_new], s_hat[:k_new], v[:, :k_new].T
        w = sla.qr(y.T @ u_hat, mode="economic", check_finite=False)[0]
    return None


def _top_svd(y: Array, k_new: int) -> tuple[Array, Array, Array]:
    """``(u, s, vt)`` of the top ``k_new`` singular triplets of a small dense ``y``.

    A full thin SVD when ``k_new`` is a large share of ``min(m, n)``; otherwise the
    certified subspace iteration of :func:`_top_svd_tall` (about 3× cheaper for
    ``k_new ≈ n / 10``), falling back to the full SVD whenever it is not certified.
    """
    m, n = y.shape
    full = min(m, n)
    q = min(full, k_new + max(10, k_new // 2))
    if full >= _PARTIAL_MIN and 2 * q <= full:
        if m >= n:
            found = _top_svd_tall(y, q, k_new)
        else:
            found = _top_svd_tall(y.T, q, k_new)
            if found is not None:
                found = (found[2].T, found[1], found[0].T)
        if found is not None:
            return found
    u_hat, s_hat, vt_hat = _svd(y)
    return u_hat[:, :k_new], s_hat[:k_new], vt_hat[:k_new]


def _residual_rank(block: Array, vt_old: Array, threshold: float) -> int:
    """Number of singular values of ``H = block (I − V vt)`` above ``threshold``.

    Projected twice ("twice is enough", Giraud et al. 2005): one projection leaves
    O(eps ‖block‖) of ``span(V)`` in ``H``.
    """
    if block.size == 0:
        return 0
    v = vt_old.T
    resid = block - (block @ v) @ vt_old
    resid -= (resid @ v) @ vt_old
    return int(np.count_nonzero(_svdvals(resid) > threshold))


@dataclass(frozen=True)
class _Core:
    """Result of the core merge: ``U' = blockdiag(U, Q) mix``, signs already fixed."""

    mix: Array  # (k + p, k'): rows for the old left factor first, then for the block
    s: Array  # (k',)
    vt: Array  # (k', n_cols)
    #: how the block was compressed: "none" (p <= n), "cholesky" or "householder"
    compression: str = "none"


def _core_step(s_old: Array, vt_old: Array, block: Array, *, rank: int, tol: float | None) -> _Core:
    """Top-``rank`` SVD of ``[[diag(s_old) vt_old], [block]]`` through a small matrix.

    ``vt_old`` must have orthonormal rows. A block taller than wide (``p > n``) is first
    replaced by the triangular factor of its QR (same Gram matrix, ``n`` rows); the
    stacked ``(k + min(p, n)) × n`` matrix then has an ordinary thin SVD, and its left
    factor is mapped back through the implicit ``Q``. The QR is a guarded Cholesky QR,
    redone by Householder when the guard fails (see the module docstring). The rank kept
    is ``min(rank, k + r)`` with ``r`` the numerical rank of the residual
    ``block (I − V vt)`` (singular values above ``tol · max(s_old[0], ‖block‖_F)``); ``r``
    is computed only when ``rank > k``. Cost O(p n min(p, n) + (k + min(p, n)) n min(k +
    p, n) + p n rank), independent of the number of rows behind ``s_old``; never an SVD
    of more than ``k + n`` rows.
    """
    n = vt_old.shape[1]
    p = block.shape[0]
    if not p > n > 0:
        return _core_from(s_old, vt_old, block, None, rank=rank, tol=tol)
    comp = _compress_rows(block, _ROW_COMPRESSION)
    core = _core_from(s_old, vt_old, block, comp, rank=rank, tol=tol)
    if (
        isinstance(comp, _CholeskyRows)
        and _ROW_COMPRESSION == "auto"
        and not _orth_defect(core.mix) <= _CHOLQR_ORTH_TOL
    ):
        core = _core_from(s_old, vt_old, block, _householder_rows(block), rank=rank, tol=tol)
    return core


def _core_from(
    s_old: Array,
    vt_old: Array,
    block: Array,
    comp: _RowCompression | None,
    *,
    rank: int,
    tol: float | None,
) -> _Core:
    """:func:`_core_step` with the block's compression given (``None``: not compressed)."""
    k, n = vt_old.shape
    p = block.shape[0]
    small = block if comp is None else comp.r
    method = "none" if comp is None else comp.method
    k_new = min(rank, k + small.shape[0], n)
    if rank > k:
        # ‖r‖_F = ‖block‖_F to rounding (same Gram matrix)
        scale = max(float(s_old[0]) if k else 0.0, float(np.linalg.norm(small)))
        if tol is None:
            tol = max(p, n, 1) * _EPS
        r = _residual_rank(small, vt_old, tol * scale) if scale > 0 else 0
        k_new = min(k_new, k + r)
    if k_new == 0:
        return _Core(
            mix=np.zeros((k + p, 0)), s=np.zeros(0), vt=np.zeros((0, n)), compression=method
        )
    stacked = np.vstack([s_old[:, None] * vt_old, small])
    top, s_hat, vt_hat = _top_svd(stacked, k_new)
    lower = top[k:] if comp is None else comp.apply(top[k:])
    mix, vt_new = fix_signs(np.vstack([top[:k], lower]), vt_hat)
    return _Core(
        mix=mix.astype(np.float64, copy=False),
        s=s_hat.astype(np.float64, copy=True),
        vt=vt_new.astype(np.float64, copy=False),
        compression=method,
    )


# --------------------------------------------------------------- lazy left factor


@dataclass(frozen=True)
class _LazyRows:
    coef: Array  # (c + e, q): new coefficient matrix on U_raw (old rows padded with zeros)
    rows: Array  # (b, c + e): rows to append to U_raw
    added: int  # e


def _extend_lazy(
    basis: Array, old_coords: Array, new_values: Array, *, extend_below: float
) -> _LazyRows:
    """Express new columns lazily on ``U_raw`` without rewriting its old rows.

    Given ``U_raw`` (``m × c``, not passed) with ``U_raw @ basis`` orthonormal (``c × p``),
    find ``coef`` (``(c + e) × q``) and new rows ``R`` (``b × (c + e)``) with::

        [[U_raw, 0], [R]] @ coef = [[U_raw @ basis @ old_coords], [new_values]]

    i.e. old rows get ``e`` zero columns, new rows are appended. When ``old_coords``
    (``p × q``) has full column rank with singular values above ``extend_below`` no
    column is added (``e = 0``) and ``R = new_values (basis old_coords)⁺``; a direction
    that (almost) vanishes on the old rows — new data, rank growth — cannot be reached
    through a pseudo-inverse without amplifying round-off by ``1/σ``, so it gets a
    column of its own.
    """
    c, p = basis.shape
    q = old_coords.shape[1]
    b = new_values.shape[0]
    if q == 0:
        return _LazyRows(coef=np.zeros((c, 0)), rows=np.zeros((b, c)), added=0)
    if p:
        try:
            pl, sig, qht = sla.svd(old_coords, lapack_driver="gesdd", check_finite=False)
        except np.linalg.LinAlgError:  # pragma: no cover
            pl, sig, qht = sla.svd(old_coords, lapack_driver="gesvd", check_finite=False)
    else:
        pl, sig, qht = np.zeros((0, 0)), np.zeros(0), np.eye(q)
    r = int(np.count_nonzero(sig > extend_below))  # sig is sorted, the kept ones come first
    q_keep = qht[:r].T  # (q, r)
    null = qht[r:].T  # (q, e)
    coef_old = basis @ old_coords  # (c, q)
    reach = basis @ (pl[:, :r] * sig[:r])  # = coef_old @ q_keep, full column rank r
    rows = new_values @ (q_keep @ np.linalg.pinv(reach)) if r else np.zeros((b, c))
    if not null.shape[1]:  # the usual case: no column added, no O(b q c) remainder
        return _LazyRows(coef=coef_old, rows=rows, added=0)
    extra = (new_values - rows @ coef_old) @ null  # exact remainder, (b, e)
    return _LazyRows(
        coef=np.vstack([coef_old, null.T]),
        rows=np.hstack([rows, extra]),
        added=null.shape[1],
    )


# ------------------------------------------------------------------ public merge


@dataclass(frozen=True)
class PartialSVD:
    """A truncated SVD of a set of rows: ``X ≈ u diag(s) vt`` with ``energy = ‖X‖_F²``.

    ``u`` (``n_rows × rank``) may be ``None`` when it is kept elsewhere (on disk, lazily);
    the merge only needs ``s`` (``rank,``), ``vt`` (``rank × n_cols``, orthonormal rows)
    and ``energy``. For the exact error accounting, ``uᵀ (X − u diag(s) vt) = 0`` must
    hold (true for an exact truncated SVD and for projection-based sketches).
    """

    u: Array | None
    s: Array
    vt: Array
    energy: float


@dataclass(frozen=True)
class MergedSVD:
    """Result of :func:`merge_svds`.

    The merged left factor is ``blockdiag(u_first, u_second) @ vstack([mix_first,
    mix_second])``: the caller applies ``mix_first`` (``k1 × rank``) to the first left
    factor (``T1' = T1 mix_first`` if it is lazy) and ``mix_second`` (``k2 × rank``) to
    the second. ``u`` is that product when both inputs carried ``u``, else ``None``.
    """

    s: Array
    vt: Array
    energy: float
    mix_first: Array
    mix_second: Array
    u: Array | None
    relative_error: float


def merge_svds(
    first: PartialSVD | tuple[ArrayLike | None, ArrayLike, ArrayLike, float],
    second: PartialSVD | tuple[ArrayLike | None, ArrayLike, ArrayLike, float],
    *,
    rank: int,
    forget: float = 1.0,
    tol: float | None = None,
) -> MergedSVD:
    """Merge the truncated SVDs of two disjoint row sets into one of the stacked rows.

    Computes the rank-``rank`` SVD of ``[γ X1; X2]`` from ``X1 ≈ u1 diag(s1) vt1`` and
    ``X2 ≈ u2 diag(s2) vt2`` (``γ = forget`` down-weights the first, older part) without
    touching ``u1`` or ``u2`` (Brand 2006; the merge of gensim's ``LsiModel``). With
    ``rank >= k1 + k2`` nothing is truncated and the result is exact: merging many parts
    in any tree order gives the same ``s`` and the same projector ``vtᵀ vt`` (up to
    round-off), which is what lets Dask workers combine partial SVDs in a tree.

    Parameters
    ----------
    first, second : PartialSVD or tuple (u or None, s, vt, energy)
        ``s`` of shape ``(k1,)``/``(k2,)`` sorted decreasing, ``vt`` of shape
        ``(k1, n_cols)``/``(k2, n_cols)``; ``first.vt`` must have orthonormal rows.
    rank : int
        Rank kept after the merge (at most ``k1 + k2``; fewer if the parts span less).
    forget : float, default 1.0
        ``γ`` in ``(0, 1]``: ``s1 ← γ s1`` and ``energy1 ← γ² energy1`` before merging.
    tol : float, optional
        Directions of ``s2 vt2`` outside ``span(vt1)`` with norm at most
        ``tol · max(s1[0], ‖s2‖)`` are dropped; default ``max(k2, n_cols) · eps``.

    Returns
    -------
    MergedSVD
        ``s`` (``rank,``), ``vt`` (``rank × n_cols``), ``energy = γ² e1 + e2``, the mixing
        blocks and the exact relative error ``sqrt(energy − Σ s²) / sqrt(energy)``.

    Notes
    -----
    Cost O(k2 n min(k2, n) + (k1 + k2)³ + n (k1 + k2) rank), memory O(n (k1 + k2)); no
    pass over any data. Signs follow :func:`streamsvd.linalg.signs.fix_signs`.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(12.0).reshape(4, 3)
    >>> parts = [np.linalg.svd(x[:2], full_matrices=False),
    ...          np.linalg.svd(x[2:], full_matrices=False)]
    >>> merged = merge_svds((None, parts[0][1], parts[0][2], float(np.sum(x[:2] ** 2))),
    ...                     (None, parts[1][1], parts[1][2], float(np.sum(x[2:] ** 2))),
    ...                     rank=2)
    >>> np.allclose(merged.s, np.linalg.svd(x, compute_uv=False)[:2])
    True
    """
    (u1_in, s1_in, vt1_in, e1), (u2_in, s2_in, vt2_in, e2) = (
        (p.u, p.s, p.vt, p.energy) if isinstance(p, PartialSVD) else p for p in (first, second)
    )
    gamma = _check_forget(forget)
    s1, vt1 = _check_svd(s1_in, vt1_in, e1, "first")
    s2, vt2 = _check_svd(s2_in, vt2_in, e2, "second")
    if vt1.shape[1] != vt2.shape[1]:
        raise ShapeMismatchError(
            f"both parts must have the same number of columns; got {vt1.shape[1]} and "
            f"{vt2.shape[1]}. Merge SVDs of the same matrix columns only."
        )
    k_rank = _check_rank(rank, 0)
    core = _core_step(gamma * s1, vt1, s2[:, None] * vt2, rank=k_rank, tol=tol)
    k1 = s1.shape[0]
    mix_first, mix_second = core.mix[:k1], core.mix[k1:]
    u: Array | None = None
    if u1_in is not None and u2_in is not None:
        u1 = _as_matrix(u1_in, "first u")
        u2 = _as_matrix(u2_in, "second u")
        if u1.shape[1] != k1 or u2.shape[1] != s2.shape[0]:
            raise ShapeMismatchError(
                f"u must have one column per singular value; got {u1.shape[1]} and "
                f"{u2.shape[1]} columns for {k1} and {s2.shape[0]} values."
            )
        u = np.vstack([u1 @ mix_first, u2 @ mix_second])
    energy = gamma**2 * float(e1) + float(e2)
    return MergedSVD(
        s=core.s,
        vt=core.vt,
        energy=energy,
        mix_first=mix_first,
        mix_second=mix_second,
        u=u,
        relative_error=relative_error(energy, core.s),
    )
