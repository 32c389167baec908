"""Brand row append with a sparse batch, by products with the batch only.

A sparse batch ``B`` (``b × n``, scipy.sparse) is never densified. Its left space is
captured by an orthonormal ``Q`` (``b × w``) and only the projection ``C = QᵀB``
(``w × n`` dense, ``w ≤ k + l``; formed as ``(BᵀQ)ᵀ``) enters the same core step as a
dense update (:func:`streamsvd.linalg.update.append_rows`); the new rows of ``U_raw`` are
``Q`` times the rows that step returns for ``C``. With ``V`` the state's right vectors
(``vt = Vᵀ``) and ``L = BV``::

    b ≤ k + l:  Q = I_b                              (exact Brand append)
    otherwise:  HΩ = BΩ − L(VᵀΩ)                     (H = B − LVᵀ, Ω ~ N(0, 1) n × l)
                q power iterations: HᵀY = BᵀY − V(LᵀY),  HX = BX − L(VᵀX), re-orthonormalized
                Q = orth([L, HΩ])

The error accounting stays exact whatever ``Q`` is: the updated left factor lies in
``span(blockdiag(U, Q))``, so ``U'ᵀ[γA; B] = Ûᵀ[γ diag(s) vt; C] = diag(s') vt'`` and
``‖[γA; B] − U' diag(s') vt'‖² = γ²·energy + ‖B‖_F² − Σ s'²`` — the energy of ``B``
outside ``span(Q)`` is counted as error, never lost.

**New columns.** A batch wider than ``vt`` widens the state: ``V`` gets zero rows for
the new columns (nothing old was observed there), and their energy enters through the
residual ``H``, exactly as Brand's update treats any direction outside ``span(V)``.

References
----------
M. Brand (2006), Linear Algebra Appl. 415, 20–30. Halko, Martinsson, Tropp (2011),
SIAM Rev. 53(2), alg. 4.4 (range finder with re-orthonormalized power iterations).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse
from numpy.typing import ArrayLike, NDArray

from streamsvd.errors import InvalidInputError, ShapeMismatchError
from streamsvd.linalg.merge import _check_rank, relative_error
from streamsvd.linalg.update import EXTEND_BELOW, RowAppend, _residual_range, append_rows

__all__ = ["append_sparse_rows", "sparse_range_basis", "widen_vt"]

Array = NDArray[np.float64]


def widen_vt(vt: ArrayLike, n_cols: int) -> Array:
    """``vt`` with zero columns appended up to ``n_cols`` (new columns of the matrix)."""
    vt_arr = np.asarray(vt, dtype=np.float64)
    extra = n_cols - vt_arr.shape[1]
    if extra < 0:
        raise ShapeMismatchError(
            f"the factors have {vt_arr.shape[1]} columns, more than the batch's {n_cols}; "
            "a matrix never loses columns"
        )
    if extra == 0:
        return vt_arr
    return np.hstack([vt_arr, np.zeros((vt_arr.shape[0], extra))])


def sparse_range_basis(
    rows: Any,
    vt: Array,
    lower: Array,
    *,
    width: int,
    power_iters: int,
    seed: int,
) -> Array:
    """Orthonormal ``Q`` (``b × (k + width)``) spanning ``L = BV`` and the dominant range of
    ``H = B − LVᵀ``, by products with the sparse ``B`` only (the range finder of
    :func:`streamsvd.linalg.update._range_basis`, same seed, same draws).

    Memory: ``O(n · width + b · (k + width))``; the products with ``B`` cost
    ``O(nnz(B) · width)`` per pass over the batch (``2·power_iters + 1`` of them).
    """
    return _residual_range(
        lambda x: np.asarray(rows @ x),
        lambda y: np.asarray(rows.T @ y),
        rows.shape[1],
        vt,
        lower,
        width=width,
        power_iters=power_iters,
        seed=seed,
    )


def append_sparse_rows(
    last_t: ArrayLike,
    last_s: ArrayLike,
    last_vt: ArrayLike,
    last_energy: float,
    new_rows: Any,
    *,
    rank: int | None = None,
    forget: float = 1.0,
    oversample: int = 10,
    power_iters: int = 1,
    seed: int = 0,
    tol: float | None = None,
    extend_below: float = EXTEND_BELOW,
) -> RowAppend:
    """Append a sparse batch to a truncated SVD kept as ``U = U_raw T`` (Brand 2006).

    Parameters
    ----------
    last_t, last_s, last_vt, last_energy
        The state, as for :func:`streamsvd.linalg.update.append_rows`; ``last_vt`` may
        have fewer columns than ``new_rows`` (see "New columns" in the module docstring).
    new_rows : scipy.sparse matrix, shape (b, n_cols)
        The batch; converted to CSR float64 (its stored values only).
    rank : int, optional
        Rank after the update (default: the state's).
    forget : float
        ``γ`` in ``(0, 1]``.
    oversample : int
        ``l``: the batch is captured exactly when ``b ≤ k + rank + oversample``,
        otherwise by a randomized range of width ``rank + oversample``.
    power_iters, seed : int
        Power iterations and seed of the randomized range (larger batches only).
    tol, extend_below
        Passed to :func:`streamsvd.linalg.update.append_rows`.

    Returns
    -------
    RowAppend
        ``updated_vt`` has the batch's column count; ``sketched`` tells whether the
        randomized range was used; ``updated_energy = γ²·last_energy + ‖B‖_F²``.

    Notes
    -----
    Forms no ``b × n`` dense matrix except for a batch of at most ``k + l`` rows (used
    as it is); otherwise the batch enters only through products (``BV``, ``BΩ``,
    ``BᵀQ``). Memory ``O(n (k + l) + b (k + l))`` (the state's ``vt``
    is ``k × n`` already); cost ``O(nnz(B)(k + l)(2 power_iters + 3) + n (k + l)²)``,
    independent of the rows seen before.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> a = sp.random(40, 30, density=0.2, random_state=0, format="csr")
    >>> u, s, vt = np.linalg.svd(a[:20].toarray(), full_matrices=False)
    >>> res = append_sparse_rows(np.eye(20), s, vt, float(a[:20].power(2).sum()), a[20:],
    ...                          rank=40)
    >>> bool(np.allclose(res.updated_s, np.linalg.svd(a.toarray(), compute_uv=False)))
    True
    """
    if not scipy.sparse.issparse(new_rows):
        raise InvalidInputError(
            f"new_rows must be a scipy.sparse matrix, got {type(new_rows).__name__}; "
            "use streamsvd.linalg.update.append_rows for dense rows"
        )
    rows = scipy.sparse.csr_matrix(new_rows, dtype=np.float64)
    if not np.all(np.isfinite(rows.data)):
        raise InvalidInputError("new_rows must hold finite numbers; found NaN or Inf")
    vt = widen_vt(last_vt, rows.shape[1])
    s = np.asarray(last_s, dtype=np.float64)
    k = s.shape[0]
    k_new = _check_rank(rank, k)
    b, n = rows.shape
    width = min(k_new + oversample, n)
    sq_norm = float(rows.data @ rows.data)
    if b == 0:
        return append_rows(last_t, s, vt, last_energy, np.zeros((0, n)), rank=k_new)
    sketched = k + width < b
    basis: Array | None = None
    if sketched:
        lower = np.asarray(rows @ vt.T)
        basis = sparse_range_basis(rows, vt, lower, width=width, power_iters=power_iters, seed=seed)
        projected = np.asarray(rows.T @ basis).T  # C = QᵀB, (w, n)
    else:
        projected = rows.toarray()  # Q = I_b: C = B itself (b ≤ k + l rows; sums duplicates)
    core = append_rows(
        last_t,
        s,
        vt,
        last_energy,
        projected,
        rank=k_new,
        forget=forget,
        tol=tol,
        extend_below=extend_below,
    )
    energy = forget**2 * float(last_energy) + sq_norm
    return RowAppend(
        updated_t=core.updated_t,
        updated_s=core.updated_s,
        updated_vt=core.updated_vt,
        updated_energy=energy,
        new_u_raw_rows=core.new_u_raw_rows if basis is None else basis @ core.new_u_raw_rows,
        u_raw_columns_added=core.u_raw_columns_added,
        relative_error=relative_error(energy, core.updated_s),
        sketched=sketched,
    )
