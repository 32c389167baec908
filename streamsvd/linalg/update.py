"""Incremental row appends to a lazily stored truncated SVD (Brand 2006).

The state is ``A ≈ U diag(s) vt`` with the left factor kept lazily as ``U = U_raw T``:
``U_raw`` (``m × c``, on disk, row-chunked, append-only) and the small ``T`` (``c × k``).
``energy = ‖A‖_F²`` is carried along so that the error stays known exactly:
``‖A − U diag(s) vt‖_F² = energy − Σ s²`` (an invariant, because ``Uᵀ E = 0``).

An update reads only the new rows. It returns a new ``T`` and the rows to append to
``U_raw``; the old rows of ``U_raw`` are never rewritten. Occasionally a direction of
the updated ``U`` vanishes on the old rows (a new direction that the truncation keeps, or
a rank increase): it cannot be expressed through ``T`` alone, and the update then adds
``e`` columns to ``U_raw`` (``RowAppend.u_raw_columns_added``). The old rows hold zeros
in those columns: the caller widens ``U_raw`` (a Zarr ``resize`` of the column dimension
reads as the fill value 0 on old rows when the chunk width equals the old width, so no
old chunk is rewritten) or compacts instead (:mod:`streamsvd.linalg.compaction`).

Forgetting (``forget = γ < 1``, gensim's ``decay``): the represented matrix is
``[γ A; B]``. Old rows are scaled implicitly — in ``s`` and ``energy`` — and never
rewritten; after ``t`` updates a row that arrived ``a`` updates ago carries weight ``γ^a``.

Centred (PCA) mode is in :mod:`streamsvd.linalg.update_centered`; the core merge step and
the merge of partial SVDs in :mod:`streamsvd.linalg.merge`.

References
----------
M. Brand, "Fast low-rank modifications of the thin singular value decomposition",
Linear Algebra and its Applications 415 (2006) 20–30.
N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness",
SIAM Review 53 (2011) 217–288 (the range finder of :func:`sketch_rows`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from streamsvd.errors import ShapeMismatchError
from streamsvd.linalg.merge import (
    _as_matrix,
    _check_forget,
    _check_rank,
    _check_svd,
    _Core,
    _core_step,
    _extend_lazy,
    _LazyRows,
    relative_error,
)
from streamsvd.linalg.tall import squared_norm, times, times_t

__all__ = ["RowAppend", "append_rows", "sketch_rows"]

Array = NDArray[np.float64]

#: Old-row weight below which a new direction gets its own ``U_raw`` column (see
#: :func:`append_rows`): reaching it through ``T'⁺`` would amplify round-off by ``1/σ``.
EXTEND_BELOW = 1e-5


@dataclass(frozen=True)
class RowAppend:
    """Updated state after appending rows; nothing in the inputs is modified.

    Attributes
    ----------
    updated_t : ndarray, shape (c + e, rank)
        New ``T``; the updated left factor is ``[[U_raw, 0], [new_u_raw_rows]] @ updated_t``.
    updated_s : ndarray, shape (rank,)
    updated_vt : ndarray, shape (rank, n_cols)
    updated_energy : float
        ``γ² energy + ‖new_rows‖_F²``.
    new_u_raw_rows : ndarray, shape (n_new_rows, c + e)
        Rows to append to ``U_raw``.
    u_raw_columns_added : int
        ``e``: zero columns to add to the old rows of ``U_raw`` first (usually 0).
    relative_error : float
        Exact ``‖X − U diag(s) vt‖_F / ‖X‖_F`` of the updated state.
    sketched : bool
        Whether the batch went through the randomized sketch (:func:`sketch_rows`).
    """

    updated_t: Array
    updated_s: Array
    updated_vt: Array
    updated_energy: float
    new_u_raw_rows: Array
    u_raw_columns_added: int
    relative_error: float
    sketched: bool


# ------------------------------------------------------------------ internals


def _check_state(
    t: ArrayLike, s: ArrayLike, vt: ArrayLike, energy: float
) -> tuple[Array, Array, Array]:
    s_arr, vt_arr = _check_svd(s, vt, energy, "state")
    t_arr = _as_matrix(t, "t").copy()
    if t_arr.shape[1] != s_arr.shape[0]:
        raise ShapeMismatchError(
            f"t must have one column per singular value: expected shape (c, {s_arr.shape[0]}), "
            f"got {t_arr.shape}. Pass the T of the same state as s and vt."
        )
    return t_arr, s_arr, vt_arr


def _check_rows(new_rows: ArrayLike, n_cols: int, *, keep_float32: bool = False) -> Array:
    rows = _as_matrix(new_rows, "new_rows", keep_float32=keep_float32)
    if rows.shape[1] != n_cols:
        raise ShapeMismatchError(
            f"new_rows must have {n_cols} columns like the state; got shape {rows.shape}. "
            "Append rows of the same matrix."
        )
    return rows


def _orth(x: Array) -> Array:
    return np.linalg.qr(x)[0]


def _residual_range(
    mul: Callable[[Array], Array],
    mul_t: Callable[[Array], Array],
    n: int,
    vt: Array,
    lower: Array,
    *,
    width: int,
    power_iters: int,
    seed: int,
) -> Array:
    """Orthonormal ``Q`` (``b × (k + width)``) spanning ``L = B V`` (``lower``) and the
    dominant range of ``H = B − L vt`` (Halko et al. 2011, alg. 4.4, re-orthonormalized
    power iterations), through products ``mul(x) = B x`` and ``mul_t(y) = Bᵀ y`` only:
    ``H x = B x − L (vt x)`` and ``Hᵀ y = Bᵀ y − V (Lᵀ y)``, so ``H`` is never formed."""
    omega = np.random.default_rng(seed).standard_normal((n, width))
    q = _orth(mul(omega) - lower @ (vt @ omega))
    for _ in range(power_iters):
        z = _orth(mul_t(q) - vt.T @ (lower.T @ q))
        q = _orth(mul(z) - lower @ (vt @ z))
    return _orth(np.hstack([lower, q]))


def _range_basis(
    rows: NDArray[np.floating],
    vt: Array,
    *,
    rank: int,
    oversample: int,
    power_iters: int,
    seed: int,
) -> Array | None:
    """Orthonormal ``Q`` (``b × l``) whose span holds ``rows @ vt.T`` and the dominant range
    of the residual ``rows − rows vtᵀ vt`` (:func:`_residual_range`). ``None`` when
    ``l ≥ b`` (no saving). float32 rows are cast to float64 a slice at a time."""
    b, n = rows.shape
    k = vt.shape[0]
    width = min(rank + oversample, n)
    if k + width >= b:
        return None
    return _residual_range(
        lambda x: times(rows, x),
        lambda y: times_t(rows, y),
        n,
        vt,
        times(rows, vt.T),
        width=width,
        power_iters=power_iters,
        seed=seed,
    )


def _lazy_update(
    t: Array,
    s: Array,
    vt: Array,
    block: Array,
    *,
    left: Array | None,
    old_extra: tuple[Array, Array] | None,
    keep: tuple[Array, Array] | None,
    rank: int,
    tol: float | None,
    extend_below: float,
) -> tuple[_Core, _LazyRows]:
    """Merge ``block`` (rows with left factor ``left``, identity if ``None``) into the state.

    ``old_extra = (g, row)``: one more old-row left vector ``U_raw g`` (unit norm,
    orthogonal to ``U``) paired with the row ``row`` of the merged matrix (used by the
    centred mode). ``keep = (old_coords, new_values)``: one more vector to maintain on
    ``U_raw``, given by its coordinates in ``[U, U_raw g]`` on the old rows and its values
    on the new rows; it becomes the last column of the returned ``coef``.
    """
    k = s.shape[0]
    n_extra = 0 if old_extra is None else 1
    stacked = block if old_extra is None else np.vstack([old_extra[1][None, :], block])
    core = _core_step(s, vt, stacked, rank=rank, tol=tol)
    old_coords = core.mix[: k + n_extra]
    new_part = core.mix[k + n_extra :]
    new_values = new_part if left is None else left @ new_part
    basis = t if old_extra is None else np.hstack([t, old_extra[0][:, None]])
    if keep is not None:
        old_coords = np.hstack([old_coords, keep[0][:, None]])
        new_values = np.hstack([new_values, keep[1][:, None]])
    lazy = _extend_lazy(basis, old_coords, new_values, extend_below=extend_below)
    return core, lazy


def _result(
    core: _Core, lazy: _LazyRows, gamma: float, last_energy: float, rows: Array, *, sketched: bool
) -> RowAppend:
    """The :class:`RowAppend` of a finished step; ``energy' = γ² energy + ‖B‖_F²``."""
    energy = gamma**2 * float(last_energy) + squared_norm(rows)
    return RowAppend(
        updated_t=lazy.coef,
        updated_s=core.s,
        updated_vt=core.vt,
        updated_energy=energy,
        new_u_raw_rows=lazy.rows,
        u_raw_columns_added=lazy.added,
        relative_error=relative_error(energy, core.s),
        sketched=sketched,
    )


def _noop(t: Array, s: Array, vt: Array, energy: float) -> RowAppend:
    return RowAppend(
        updated_t=t,
        updated_s=s,
        updated_vt=vt,
        updated_energy=float(energy),
        new_u_raw_rows=np.zeros((0, t.shape[0])),
        u_raw_columns_added=0,
        relative_error=relative_error(float(energy), s),
        sketched=False,
    )


# --------------------------------------------------------------------- public


def append_rows(
    last_t: ArrayLike,
    last_s: ArrayLike,
    last_vt: ArrayLike,
    last_energy: float,
    new_rows: ArrayLike,
    *,
    rank: int | None = None,
    forget: float = 1.0,
    tol: float | None = None,
    extend_below: float = EXTEND_BELOW,
    sketch_above: int | None = None,
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
) -> RowAppend:
    """Append rows to a truncated SVD kept as ``U = U_raw T`` (Brand 2006).

    With ``B = new_rows`` (``b × n``) and ``γ = forget``::

        L = B V;  H = B − L vt;  H = P Σ Jᵀ   (rank-revealing SVD, tiny Σ_jj dropped)
        M = [[γ diag(s), 0], [L, P Σ]] = Û diag(ŝ) V̂ᵀ         ((k + b) × (k + r))
        s' = ŝ[:k'];  vt' = V̂[:, :k']ᵀ [V J]ᵀ;  T' = T Û[:k, :k']
        new U_raw rows R:  R T' = Û[k:, :k']  (R = Û[k:, :k'] T'⁺ when well posed)
        energy' = γ² energy + ‖B‖_F²

    so that ``[[U_raw], [R]] T'`` is the rank-``k'`` left factor of ``[γ A; B]``
    (exactly, for ``k' = k + r``; otherwise its optimal truncation within
    ``span(U) ⊕ span(B)``). ``T'⁺`` is never formed for a direction whose old-row weight
    (singular value of ``Û[:k, :k']``) is below ``extend_below``: that direction gets a
    new ``U_raw`` column instead (``u_raw_columns_added``), so round-off is amplified by
    at most ``cond(T) / extend_below``.

    Parameters
    ----------
    last_t : array_like, shape (c, k)
        ``T`` of the state; ``U_raw T`` must have orthonormal columns.
    last_s : array_like, shape (k,)
        Singular values, decreasing.
    last_vt : array_like, shape (k, n_cols)
        Right singular vectors (orthonormal rows).
    last_energy : float
        ``‖A‖_F²`` of everything seen (γ-weighted).
    new_rows : array_like, shape (b, n_cols)
        The batch; ``b = 0`` is a no-op that returns the state unchanged (no forgetting).
        float32 rows are used as they are (cast to float64 a slice at a time, all sums in
        float64); other types are converted to float64.
    rank : int, optional
        Rank after the update, default ``k``; larger values grow the rank up to ``k + r``.
    forget : float, default 1.0
        ``γ`` in ``(0, 1]``: ``s ← γ s``, ``energy ← γ² energy`` before the merge.
    tol : float, optional
        Residual directions with singular value ``≤ tol · max(s[0], ‖B‖_F)`` are dropped
        (they are round-off); default ``max(b, n_cols) · eps``.
    extend_below : float, default 1e-5
        See above.
    sketch_above : int, optional
        Batches with more rows than this go through :func:`sketch_rows` (approximate,
        accounting still exact). Default ``None``: always exact. A sensible value is
        ``2 (rank + oversample)`` when ``n_cols`` is large.
    oversample, power_iters, seed : int
        Sketch parameters, used only when the batch is sketched.

    Returns
    -------
    RowAppend

    Notes
    -----
    Reads only the new rows, never ``U_raw`` nor old data. The SVD of ``M`` is obtained
    without any matrix of more than ``k + n`` rows (see :mod:`streamsvd.linalg.merge`):
    cost O(b n min(b, n) + b n k' + n³) flops, memory O((b + k) n), independent of the
    number of rows seen. Signs follow :func:`streamsvd.linalg.signs.fix_signs`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = rng.standard_normal((6, 3)) @ rng.standard_normal((3, 5))
    >>> u, s, vt = np.linalg.svd(a[:4], full_matrices=False)
    >>> res = append_rows(np.eye(3), s[:3], vt[:3], float(np.sum(a[:4] ** 2)), a[4:])
    >>> u_raw = np.vstack([np.hstack([u[:, :3], np.zeros((4, res.u_raw_columns_added))]),
    ...                    res.new_u_raw_rows])
    >>> np.allclose(u_raw @ res.updated_t * res.updated_s @ res.updated_vt, a)
    True
    """
    t, s, vt = _check_state(last_t, last_s, last_vt, last_energy)
    # float32 rows stay float32: the kernels that touch the whole batch cast them to
    # float64 a slice at a time (streamsvd.linalg.tall), so no float64 copy is made.
    rows = _check_rows(new_rows, vt.shape[1], keep_float32=True)
    gamma = _check_forget(forget)
    k_new = _check_rank(rank, s.shape[0])
    if rows.shape[0] == 0:
        return _noop(t, s, vt, last_energy)
    if sketch_above is not None and rows.shape[0] > sketch_above:
        return _sketch(
            t,
            s,
            vt,
            last_energy,
            rows,
            rank=k_new,
            gamma=gamma,
            tol=tol,
            extend_below=extend_below,
            oversample=oversample,
            power_iters=power_iters,
            seed=seed,
        )
    return _exact(
        t, s, vt, last_energy, rows, rank=k_new, gamma=gamma, tol=tol, extend_below=extend_below
    )


def _exact(
    t: Array,
    s: Array,
    vt: Array,
    last_energy: float,
    rows: Array,
    *,
    rank: int,
    gamma: float,
    tol: float | None,
    extend_below: float,
) -> RowAppend:
    """The exact Brand append of already-checked ``rows`` (``b ≥ 1``)."""
    core, lazy = _lazy_update(
        t,
        gamma * s,
        vt,
        rows,
        left=None,
        old_extra=None,
        keep=None,
        rank=rank,
        tol=tol,
        extend_below=extend_below,
    )
    return _result(core, lazy, gamma, last_energy, rows, sketched=False)


def sketch_rows(
    last_t: ArrayLike,
    last_s: ArrayLike,
    last_vt: ArrayLike,
    last_energy: float,
    new_rows: ArrayLike,
    *,
    rank: int | None = None,
    forget: float = 1.0,
    tol: float | None = None,
    extend_below: float = EXTEND_BELOW,
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
) -> RowAppend:
    """Append a wide batch (many more rows than the rank) through a randomized sketch.

    The batch ``B`` (``b × n``) is first projected on an orthonormal ``Q`` (``b × l``,
    ``l = k + rank + oversample``) whose span holds ``B V`` exactly and the dominant range
    of the residual ``B − B V vt`` (Halko et al. 2011, randomized range finder with
    ``power_iters`` re-orthonormalized power iterations, seeded); then ``C = Qᵀ B``
    (``l × n``) is merged like :func:`append_rows` merges ``B``, with the new rows of
    ``U'`` equal to ``Q Û[k:, :k']``.

    The accounting stays exact, with ``energy' = γ² energy + ‖B‖_F²`` (all of ``B``,
    not only ``‖C‖``): ``U'ᵀ [γ A; B] = Ûᵀ [γ Uᵀ A; Qᵀ B] = Ûᵀ [γ diag(s) vt; C]
    = diag(s') vt'`` because ``Uᵀ A = diag(s) vt`` and ``U' ⊆ span(blockdiag(U, Q))``;
    the energy of ``B`` outside ``span(Q)`` is thus counted as error, never lost silently.

    When ``l ≥ b`` sketching saves nothing and the exact :func:`append_rows` runs.
    Parameters and result as in :func:`append_rows` (``sketched=True``).

    Notes
    -----
    Cost O(b n l (2 power_iters + 2) + l n min(l, n) + (k + l)³); memory O(b (n + l)).
    Deterministic for a given ``seed``.
    """
    return append_rows(
        last_t,
        last_s,
        last_vt,
        last_energy,
        new_rows,
        rank=rank,
        forget=forget,
        tol=tol,
        extend_below=extend_below,
        sketch_above=0,  # every non-empty batch
        oversample=oversample,
        power_iters=power_iters,
        seed=seed,
    )


def _sketch(
    t: Array,
    s: Array,
    vt: Array,
    last_energy: float,
    rows: Array,
    *,
    rank: int,
    gamma: float,
    tol: float | None,
    extend_below: float,
    oversample: int,
    power_iters: int,
    seed: int,
) -> RowAppend:
    """:func:`sketch_rows` on already-checked ``t, s, vt, rows`` (``b ≥ 1``, float64 or
    float32 rows, never copied whole)."""
    basis = _range_basis(
        rows, vt, rank=rank, oversample=oversample, power_iters=power_iters, seed=seed
    )
    if basis is None:
        return _exact(
            t, s, vt, last_energy, rows, rank=rank, gamma=gamma, tol=tol, extend_below=extend_below
        )
    core, lazy = _lazy_update(
        t,
        gamma * s,
        vt,
        times_t(rows, basis).T,
        left=basis,
        old_extra=None,
        keep=None,
        rank=rank,
        tol=tol,
        extend_below=extend_below,
    )
    return _result(core, lazy, gamma, last_energy, rows, sketched=True)
