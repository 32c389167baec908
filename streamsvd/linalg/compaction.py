"""Compaction of the lazy left factor ``U = U_raw T``: when and how.

Updates only change ``T`` and append rows to ``U_raw``; over many updates ``T`` can grow
ill-conditioned, and every new ``U_raw`` row is formed through a pseudo-inverse of ``T``.
Compaction replaces ``U_raw`` by ``U_raw T`` (and ``T`` by the identity): one pass over
``U_raw``, never over the data. The pass itself (reading and writing ``U_raw`` blocks)
belongs to the engine; this module says when it is due and what each block becomes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from streamsvd.errors import ShapeMismatchError
from streamsvd.linalg.merge import _as_matrix, _check_rank, condition

__all__ = ["compact_rows", "compacted_t", "needs_compaction"]

Array = NDArray[np.float64]


def needs_compaction(t: ArrayLike, *, max_condition: float = 1e8) -> bool:
    """Whether ``U = U_raw T`` should be compacted (``U_raw ← U_raw T``, ``T ← I``).

    Every update forms the new ``U_raw`` rows through a pseudo-inverse of ``T'``, so their
    round-off is amplified by about ``cond(T')``; the old rows' ``U_raw T`` loses as much
    to cancellation. Both stay below ``eps · max_condition`` (≈ 2e-8 for the default)
    while this returns ``False``. Compaction costs one pass over ``U_raw`` (never over the
    data) and resets the condition to 1.

    Parameters
    ----------
    t : array_like, shape (c, k)
    max_condition : float, default 1e8
        Threshold on ``σ_max(T) / σ_min(T)`` (``T`` has full column rank for a valid state;
        ``σ_min = 0`` counts as infinitely ill-conditioned).

    Returns
    -------
    bool
    """
    t_arr = _as_matrix(t, "t")
    if t_arr.shape[1] == 0:
        return False
    return condition(t_arr) > max_condition


def compact_rows(u_raw_rows: ArrayLike, t: ArrayLike, *, ones: ArrayLike | None = None) -> Array:
    """One block of the compaction pass: rows of the new ``U_raw``.

    Returns ``u_raw_rows @ t`` (``rows × k``), or in centred mode (``ones`` given, the
    coefficients with ``U_raw @ ones`` = the row weights) ``[u_raw_rows @ t,
    u_raw_rows @ ones]`` (``rows × (k + 1)``): the weight column must survive compaction
    because ``U`` is orthogonal to it. Pair with :func:`compacted_t`.
    """
    rows = _as_matrix(u_raw_rows, "u_raw_rows")
    t_arr = _as_matrix(t, "t")
    if rows.shape[1] != t_arr.shape[0]:
        raise ShapeMismatchError(
            f"u_raw_rows must have {t_arr.shape[0]} columns (rows of t); got {rows.shape}."
        )
    out = rows @ t_arr
    if ones is None:
        return out
    return np.hstack([out, (rows @ np.asarray(ones, dtype=np.float64))[:, None]])


def compacted_t(rank: int, *, centered: bool = False) -> tuple[Array, Array | None]:
    """``T`` (and the weight-column coefficients) after :func:`compact_rows`.

    Returns ``(eye(rank), None)``, or for ``centered=True`` ``(T, ones)`` with
    ``T = [[I], [0]]`` (``(rank + 1) × rank``) and ``ones = e_last``.
    """
    k = _check_rank(rank, 0)
    if not centered:
        return np.eye(k), None
    ones = np.zeros(k + 1)
    ones[-1] = 1.0
    return np.eye(k + 1, k), ones
