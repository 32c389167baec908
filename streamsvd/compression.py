"""Compression: bytes of the factors at each rank against bytes of the data and the error.

For every rank ``r`` from 1 to the fitted rank, keeping ``U[:, :r]``, ``S[:r]``,
``Vᵀ[:r]`` (and ``μ`` in PCA mode) costs

    ``rows·r + r + r·cols (+ cols)`` values of ``factor_dtype``

against the bytes of the data the factors describe (``rows`` = the rows they
cover): ``rows·cols`` values of the store's dtype for a dense store; for a sparse
store its CSR arrays as stored, uncompressed,

    ``(rows + 1)·8`` (``indptr``, int64) ``+ nnz·4`` (``indices``, int32)
    ``+ nnz·itemsize`` (``data``),

``nnz`` the stored entries of those rows. The factors are dense, so for sparse
ratings they are usually *larger* than the data: the ratio is then below 1, and
the table says so rather than hide it. The relative Frobenius error of that
truncation is exact, from the recorded energy ``‖A‖_F²`` (of the centred
matrix in PCA mode) and no pass over the data:

    ``error(r) = √(max(‖A‖_F² − Σ_{i≤r} s_i², 0) / ‖A‖_F²)``,
    ``captured(r) = Σ_{i≤r} s_i² / ‖A‖_F²``.

``factor_dtype`` is float64 by default, the dtype ``streamsvd export`` writes;
pass ``"float32"`` to count factors stored in single precision.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from streamsvd.api import Factors, open_factors
from streamsvd.errors import ConfigError
from streamsvd.store import sparse
from streamsvd.store.matrix import matrix_array, read_meta

FACTOR_DTYPES = ("float64", "float32")


def error_at_ranks(s: np.ndarray, energy: float) -> tuple[np.ndarray, np.ndarray]:
    """Relative Frobenius error and captured energy of each truncation ``r = 1 … len(s)``.

    Examples
    --------
    >>> err, cap = error_at_ranks(np.array([3.0, 2.0, 1.0]), energy=14.0)
    >>> [round(float(e), 4) for e in err], [round(float(c), 4) for c in cap]
    ([0.5976, 0.2673, 0.0], [0.6429, 0.9286, 1.0])
    """
    cum = np.cumsum(np.asarray(s, dtype=np.float64) ** 2)
    if energy <= 0:
        return np.zeros_like(cum), np.ones_like(cum)
    return np.sqrt(np.maximum(energy - cum, 0.0) / energy), np.minimum(cum / energy, 1.0)


def compression_table(
    store: str | Path | Factors,
    *,
    version: str | None = None,
    factor_dtype: str = "float64",
) -> list[dict[str, Any]]:
    """Bytes of the factors, bytes of the data, ratio and exact error for ranks 1 … k.

    Reads the small factors and the store's metadata only: no pass over the
    data or ``U_raw``.

    Parameters
    ----------
    store : str, Path or Factors
        A store (its newest factors, or ``version``) or factors already opened.
    version : str, optional
    factor_dtype : {"float64", "float32"}
        dtype in which the factors are counted (float64: what ``export`` writes).

    Returns
    -------
    list of dict
        One per rank, increasing, with keys ``rank``, ``u_bytes``, ``s_bytes``,
        ``vt_bytes``, ``mean_bytes``, ``factor_bytes`` (their sum),
        ``factor_dtype``, ``data_bytes`` (uncompressed: rows covered × cols ×
        itemsize for a dense store, the CSR bytes of the rows covered for a
        sparse one), ``data_dtype``, ``data_format`` (``"dense"`` or ``"csr"``),
        ``data_nnz`` (stored entries of the rows covered; None for a dense
        store), ``data_stored_bytes`` (the matrix's compressed size in the
        store, or None when the matrix holds rows the factors do not cover),
        ``ratio`` (data_bytes / factor_bytes: below 1 when the factors are
        larger than the data, as usual for sparse ratings), ``stored_ratio``
        (data_stored_bytes / factor_bytes, or None), ``relative_error`` and
        ``captured_energy``.

    Examples
    --------
    >>> import numpy as np, tempfile, streamsvd
    >>> tmp = tempfile.mkdtemp()
    >>> a = np.random.default_rng(0).standard_normal((200, 30))
    >>> _ = streamsvd.ingest(f"{tmp}/store", [a])
    >>> _ = streamsvd.fit(f"{tmp}/store", rank=3, scheduler="sync")
    >>> table = compression_table(f"{tmp}/store")
    >>> [row["factor_bytes"] for row in table]  # (200·r + r + 30·r)·8
    [1848, 3696, 5544]
    >>> table[0]["data_bytes"]
    48000
    """
    if factor_dtype not in FACTOR_DTYPES:
        raise ConfigError(
            f"factor_dtype must be one of {', '.join(FACTOR_DTYPES)}; got {factor_dtype!r}"
        )
    factors = open_factors(store, version=version)
    group = factors.group
    meta = read_meta(group)
    rows = factors.stored.rows_covered
    cols = int(factors.vt.shape[1])
    data_itemsize = np.dtype(meta.dtype).itemsize
    nnz: int | None = None
    if meta.kind == sparse.KIND:
        data_format = "csr"
        data_bytes, nnz = _csr_bytes(group, rows, data_itemsize)
        arrays: list[Any] = [group[sparse.INDPTR], group[sparse.INDICES], group[sparse.DATA]]
        whole = sparse.n_rows(group) == rows
    else:
        data_format = "dense"
        data_bytes = rows * cols * data_itemsize
        arrays = [matrix_array(group)]
        whole = int(arrays[0].shape[0]) == rows
    stored: int | None = None
    if whole:
        try:
            stored = sum(int(a.nbytes_stored()) for a in arrays)
        except Exception:  # optional: a storage that cannot list sizes
            stored = None
    item = np.dtype(factor_dtype).itemsize
    mean_bytes = cols * item if factors.mean is not None else 0
    errors, captured = error_at_ranks(factors.s, float(factors.attrs["energy"]))
    table: list[dict[str, Any]] = []
    for r in range(1, factors.rank + 1):
        u_bytes, s_bytes, vt_bytes = rows * r * item, r * item, r * cols * item
        total = u_bytes + s_bytes + vt_bytes + mean_bytes
        table.append(
            {
                "rank": r,
                "u_bytes": u_bytes,
                "s_bytes": s_bytes,
                "vt_bytes": vt_bytes,
                "mean_bytes": mean_bytes,
                "factor_bytes": total,
                "factor_dtype": factor_dtype,
                "data_bytes": data_bytes,
                "data_dtype": meta.dtype,
                "data_format": data_format,
                "data_nnz": nnz,
                "data_stored_bytes": stored,
                "ratio": data_bytes / total,
                "stored_ratio": None if stored is None else stored / total,
                "relative_error": float(errors[r - 1]),
                "captured_energy": float(captured[r - 1]),
            }
        )
    return table


def _csr_bytes(group: Any, rows: int, itemsize: int) -> tuple[int, int]:
    """CSR bytes (indptr int64, indices int32, data) and nnz of a sparse store's first ``rows``."""
    nnz = int(np.asarray(group[sparse.INDPTR][rows : rows + 1])[0])
    return (rows + 1) * 8 + nnz * (4 + itemsize), nnz


def format_bytes(n: float) -> str:
    """Human-readable bytes (powers of 1024).

    Examples
    --------
    >>> format_bytes(512), format_bytes(3 * 1024**2)
    ('512 B', '3.0 MiB')
    """
    if n < 1024:
        return f"{int(n)} B"
    exponent = min(int(math.log(n, 1024)), 4)
    return f"{n / 1024**exponent:.1f} {('KiB', 'MiB', 'GiB', 'TiB')[exponent - 1]}"
