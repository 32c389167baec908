"""A summary of a store: the stable interface behind ``streamsvd info --json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamsvd.store import layout
from streamsvd.store.matrix import matrix_array, read_batch_log, read_meta
from streamsvd.store.repository import Store


def store_info(store: str | Path | Store, *, version: str | None = None) -> dict[str, Any]:
    """Summarize a store.

    Returns
    -------
    dict
        Stable keys: ``rows``, ``cols``, ``dtype``, ``chunk_rows``, ``batches``,
        ``version``; also ``store``, ``codec``, ``created``, ``kind``, and
        ``factors`` (None until a fit) with the factors' summary. Sparse stores
        (``kind == "sparse"``) add ``nnz``, ``density``, ``row_ids`` and ``col_ids``
        (``int`` or ``str``) and ``chunk_nnz``.
    """
    opened = store if isinstance(store, Store) else Store.open(store)
    group = opened.root(version)
    meta = read_meta(group)
    log = read_batch_log(group)
    extra: dict[str, Any] = {}
    from streamsvd.store import sparse

    if meta.kind == sparse.KIND:
        rows = sparse.n_rows(group)
        stored = sparse.nnz(group)
        kinds = sparse.read_sparse_meta(group)
        extra = {
            "nnz": stored,
            "density": stored / (rows * meta.n_cols) if rows and meta.n_cols else 0.0,
            "row_ids": kinds.row_ids,
            "col_ids": kinds.col_ids,
            "chunk_nnz": kinds.chunk_nnz,
        }
    else:
        rows = int(matrix_array(group).shape[0])
    info: dict[str, Any] = {
        "store": str(opened.location),
        "rows": rows,
        "cols": int(meta.n_cols),
        "dtype": meta.dtype,
        "chunk_rows": int(meta.chunk_rows),
        "batches": len(log),
        "version": version or opened.current_version(),
        "kind": meta.kind,
        "codec": meta.codec,
        "created": meta.created,
        "factors": None,
        **extra,
    }
    if layout.FACTORS in group:
        from streamsvd.store.factors import factors_summary

        info["factors"] = factors_summary(group)
    return info
