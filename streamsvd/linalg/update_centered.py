"""Row appends in centred (PCA) mode: running mean, lazy left factor kept exact.

The state is the truncated SVD of the centred (and, with forgetting, row-weighted) data
``diag(ω)(A − 1 μᵀ) ≈ U diag(s) vt`` with ``U = U_raw T``. ``ω`` are the row weights
(all 1 without forgetting; ``γ^age`` with it), ``μ = Σ ω_i² a_i / Σ ω_i²`` the weighted
mean and ``rows_seen = Σ ω_i²`` (the number of rows when ``γ = 1``). ``U_raw`` carries the
weight vector: ``U_raw @ ones = ω`` — with the fit's layout ``ones = e_last``, the last
column of ``U_raw`` is all ones. Because the columns of the centred matrix sum to zero
(weighted: ``ωᵀ (A − 1 μᵀ) = 0``), ``ωᵀ U = 0`` holds and is preserved by every update.

Update with a batch ``B`` (``b`` rows, mean ``μ_B``), ``w = γ² rows_seen``::

    μ' = (w μ + b μ_B) / (w + b);   d = μ' − μ
    centred' = [[γ U diag(s) vt − (γ ω) dᵀ], [B − 1 μ'ᵀ]]

The mean shift of the old rows is a rank-one modification whose left vector ``γ ω`` is
orthogonal to ``U`` (Brand 2006, section 3; Ross et al. 2008 for the mean): with the unit
vector ``ω / ‖ω‖ = U_raw (ones / √rows_seen)``, ``centred' = blockdiag([U, ω/‖ω‖], I_b) W``
with ``W = [[γ diag(s) vt], [−√w dᵀ], [B − 1 μ'ᵀ]]``, which is merged by the core step of
:mod:`streamsvd.linalg.merge` with ``T`` temporarily ``[T, ones/√rows_seen]``
(``c × (k + 1)``). The weight vector itself is maintained through the same lazy append
(``U_raw' @ ones' = [γ ω; 1]``).

Exact accounting: ``energy' = γ² energy + ‖B − 1 μ_Bᵀ‖_F² + w b / (w + b) ‖μ_B − μ‖²``
and ``energy' − Σ s'² = ‖centred' − U' diag(s') vt'‖_F²`` because the old error ``E``
satisfies ``Uᵀ E = 0`` and ``ωᵀ E = 0``.

References
----------
D. A. Ross, J. Lim, R.-S. Lin, M.-H. Yang, "Incremental learning for robust visual
tracking", International Journal of Computer Vision 77 (2008) 125–141.
M. Brand, "Fast low-rank modifications of the thin singular value decomposition",
Linear Algebra and its Applications 415 (2006) 20–30.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from streamsvd.errors import InvalidInputError, ShapeMismatchError
from streamsvd.linalg.merge import _as_vector, _check_forget, _check_rank, relative_error
from streamsvd.linalg.tall import squared_norm
from streamsvd.linalg.update import (
    EXTEND_BELOW,
    _check_rows,
    _check_state,
    _lazy_update,
    _range_basis,
)

__all__ = ["CenteredAppend", "append_rows_centered"]

Array = NDArray[np.float64]


@dataclass(frozen=True)
class CenteredAppend:
    """Updated centred state; the inputs are not modified.

    Attributes
    ----------
    updated_t : ndarray, shape (c + e, rank)
    updated_s : ndarray, shape (rank,)
    updated_vt : ndarray, shape (rank, n_cols)
    updated_energy : float
        Weighted centred energy ``‖diag(ω')(A' − 1 μ'ᵀ)‖_F²``.
    updated_mean : ndarray, shape (n_cols,)
    updated_rows_seen : float
        ``Σ ω'²`` (``rows_seen + b`` when ``forget = 1``).
    updated_ones : ndarray, shape (c + e,)
        Coefficients with ``U_raw' @ updated_ones = ω'``; equal to ``forget · last_ones``
        padded with the entries of the added columns (zero unless columns were added
        and the weight vector needed them).
    new_u_raw_rows : ndarray, shape (b, c + e)
        Rows to append to ``U_raw``; ``new_u_raw_rows @ updated_ones = 1``.
    u_raw_columns_added : int
        Zero columns to add to the old rows of ``U_raw`` first (usually 0).
    relative_error : float
    sketched : bool
    """

    updated_t: Array
    updated_s: Array
    updated_vt: Array
    updated_energy: float
    updated_mean: Array
    updated_rows_seen: float
    updated_ones: Array
    new_u_raw_rows: Array
    u_raw_columns_added: int
    relative_error: float
    sketched: bool


def append_rows_centered(
    last_t: ArrayLike,
    last_s: ArrayLike,
    last_vt: ArrayLike,
    last_energy: float,
    new_rows: ArrayLike,
    *,
    last_mean: ArrayLike,
    last_rows_seen: float,
    last_ones: ArrayLike | None = None,
    rank: int | None = None,
    forget: float = 1.0,
    tol: float | None = None,
    extend_below: float = EXTEND_BELOW,
    sketch_above: int | None = None,
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
) -> CenteredAppend:
    """Append rows to a centred (PCA) truncated SVD, updating the mean (Ross et al. 2008).

    See the module docstring for the algebra. The state must come from a centred fit
    (``ωᵀ U = 0``) with ``last_rows_seen > 0``.

    Parameters
    ----------
    last_t, last_s, last_vt, last_energy
        As in :func:`streamsvd.linalg.update.append_rows`; ``last_energy`` is the centred
        energy ``‖diag(ω)(A − 1 μᵀ)‖_F²``.
    new_rows : array_like, shape (b, n_cols)
        Raw (uncentred) rows; ``b = 0`` is a no-op.
    last_mean : array_like, shape (n_cols,)
    last_rows_seen : float
        ``Σ ω²`` of the state (the row count when ``forget`` was always 1); > 0.
    last_ones : array_like, shape (c,), optional
        Coefficients of the weight vector on ``U_raw`` (``U_raw @ last_ones = ω``).
        Default: the last column of ``U_raw`` (``e_last``).
    rank, forget, tol, extend_below, sketch_above, oversample, power_iters, seed
        As in :func:`streamsvd.linalg.update.append_rows`; the sketch, when used, is of
        the rows centred by the updated mean.

    Returns
    -------
    CenteredAppend

    Notes
    -----
    Reads only the new rows. Cost as :func:`~streamsvd.linalg.update.append_rows` with
    one more row in the core matrix: O(b n min(b, n) + (k + b + 1)(k + r + 1)² + c k²).
    """
    t, s, vt = _check_state(last_t, last_s, last_vt, last_energy)
    n = vt.shape[1]
    rows = _check_rows(new_rows, n)
    gamma = _check_forget(forget)
    k_new = _check_rank(rank, s.shape[0])
    mean = _as_vector(last_mean, "last_mean")
    if mean.shape[0] != n:
        raise ShapeMismatchError(
            f"last_mean must have {n} entries (columns of vt); got {mean.shape[0]}."
        )
    if not np.isfinite(last_rows_seen) or last_rows_seen <= 0:
        raise InvalidInputError(
            f"last_rows_seen must be > 0 in centred mode; got {last_rows_seen}. "
            "Start from a centred fit of at least one row."
        )
    c = t.shape[0]
    if last_ones is None:
        if c == 0:
            raise ShapeMismatchError(
                "t has no rows, so U_raw has no weight column; pass last_ones explicitly."
            )
        ones = np.zeros(c)
        ones[-1] = 1.0
    else:
        ones = _as_vector(last_ones, "last_ones").copy()
        if ones.shape[0] != c:
            raise ShapeMismatchError(
                f"last_ones must have one entry per row of t ({c}); got {ones.shape[0]}."
            )
    b = rows.shape[0]
    if b == 0:
        return CenteredAppend(
            updated_t=t,
            updated_s=s,
            updated_vt=vt,
            updated_energy=float(last_energy),
            updated_mean=mean.copy(),
            updated_rows_seen=float(last_rows_seen),
            updated_ones=ones,
            new_u_raw_rows=np.zeros((0, c)),
            u_raw_columns_added=0,
            relative_error=relative_error(float(last_energy), s),
            sketched=False,
        )
    weight = gamma**2 * float(last_rows_seen)  # w = γ² Σ ω²
    batch_mean = rows.mean(axis=0)
    updated_mean = (weight * mean + b * batch_mean) / (weight + b)
    shift_row = -np.sqrt(weight) * (updated_mean - mean)  # pairs with ω / ‖ω‖ on old rows
    centred = rows - updated_mean
    basis = None
    if sketch_above is not None and b > sketch_above:
        basis = _range_basis(
            centred, vt, rank=k_new, oversample=oversample, power_iters=power_iters, seed=seed
        )
    block = centred if basis is None else basis.T @ centred
    k = s.shape[0]
    # The weight vector to maintain: on old rows γ ω = √w · (ω/‖ω‖), i.e. coordinate √w on
    # the extra basis vector; on new rows 1. Normalised by √w so that its column has the
    # same scale as the columns of U' in the null-direction test of _extend_lazy.
    keep_old = np.zeros(k + 1)
    keep_old[k] = 1.0
    core, lazy = _lazy_update(
        t,
        gamma * s,
        vt,
        block,
        left=basis,
        old_extra=(ones / np.sqrt(float(last_rows_seen)), shift_row),
        keep=(keep_old, np.full(b, 1.0 / np.sqrt(weight))),
        rank=k_new,
        tol=tol,
        extend_below=extend_below,
    )
    # ‖B − μ'‖² + ‖shift_row‖² = ‖B − mean(B)‖² + w b / (w + b) ‖mean(B) − μ‖²
    energy = gamma**2 * float(last_energy) + squared_norm(centred) + float(shift_row @ shift_row)
    return CenteredAppend(
        updated_t=lazy.coef[:, :-1],
        updated_s=core.s,
        updated_vt=core.vt,
        updated_energy=energy,
        updated_mean=updated_mean,
        updated_rows_seen=weight + b,
        updated_ones=lazy.coef[:, -1] * np.sqrt(weight),
        new_u_raw_rows=lazy.rows,
        u_raw_columns_added=lazy.added,
        relative_error=relative_error(energy, core.s),
        sketched=basis is not None,
    )
