"""Top-N recommendations from the factors of a sparse store (PureSVD), and their recall.

PureSVD (Cremonesi, Koren, Turrin 2010) scores every column (item) of a row (user) by
its rank-k reconstruction:

* a stored row ``i``: ``scores = U_i diag(s) Vᵀ``  (``+ μ`` in PCA mode);
* a new row ``x`` given as item/value pairs (fold-in): ``scores = x V Vᵀ``
  (``μ + (x − μ) V Vᵀ`` in PCA mode).

Items the row has already seen (its stored entries, or the given items) are excluded.
Columns added to the store after the factors were last written have no row of ``V``
yet and are not scored (run ``streamsvd update``). Ties are broken by column index.

Memory: ``O(k · n_cols)`` for ``V`` plus the id maps (read once per call); one row of
``U_raw`` and of the CSR matrix per stored row. :func:`evaluate_recall` scores rows in
blocks of :data:`EVAL_BLOCK` rows (``EVAL_BLOCK × n_cols`` floats at a time).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import zarr

from streamsvd.errors import ConfigError, InvalidInputError
from streamsvd.store import sparse
from streamsvd.store.factors import StoredFactors, read_factors
from streamsvd.store.matrix import read_meta
from streamsvd.store.repository import Store
from streamsvd.store.triplets import IdIndex, parse_id

Id = int | str
#: Rows scored at once by :func:`evaluate_recall`.
EVAL_BLOCK = 1024

__all__ = ["evaluate_recall", "recommend"]


@dataclass(frozen=True)
class _Model:
    group: zarr.Group
    factors: StoredFactors
    n_cols: int  # columns covered by the factors
    col_ids: np.ndarray
    row_kind: str
    col_kind: str

    @property
    def rows_covered(self) -> int:
        return self.factors.rows_covered


def _open(store: str | Path, version: str | None) -> _Model:
    opened = Store.open(store)
    group = opened.root(version)
    if read_meta(group).kind != sparse.KIND:
        raise ConfigError(
            f"recommend needs a sparse store (ingested with --format triplets), which has "
            f"row and column ids; {opened.location} holds a dense matrix"
        )
    factors = read_factors(group)
    kinds = sparse.read_sparse_meta(group)
    n_cols = int(factors.vt.shape[1])
    return _Model(
        group=group,
        factors=factors,
        n_cols=n_cols,
        col_ids=sparse.read_ids(group, "cols")[:n_cols],
        row_kind=kinds.row_ids,
        col_kind=kinds.col_ids,
    )


def _py(value: Any) -> Id:
    return str(value) if isinstance(value, str | np.str_) else int(value)


def _top(scores: np.ndarray, top: int) -> np.ndarray:
    """Indices of the ``top`` largest finite scores, best first, ties by index."""
    finite = np.flatnonzero(np.isfinite(scores))
    if finite.size <= top:
        chosen = finite
    else:
        cut = np.partition(scores[finite], finite.size - top)[finite.size - top]
        chosen = finite[scores[finite] >= cut]
    order = np.lexsort((chosen, -scores[chosen]))
    return cast(np.ndarray, chosen[order][:top])


def _row_index(model: _Model, row: Id) -> int:
    wanted = parse_id(row, model.row_kind, what="row_id")
    ids = sparse.read_ids(model.group, "rows")
    hits = np.flatnonzero(ids == wanted)
    if hits.size == 0:
        raise InvalidInputError(
            f"unknown row_id {wanted!r}: it is not in the store; give a stored row, or the "
            "row's items with --items"
        )
    index = int(hits[0])
    if index >= model.rows_covered:
        raise InvalidInputError(
            f"row_id {wanted!r} (row {index}) was ingested after the factors were written "
            f"(they cover {model.rows_covered} rows); run `streamsvd update` first"
        )
    return index


def _row_scores(model: _Model, index: int) -> tuple[np.ndarray, np.ndarray]:
    f = model.factors
    u = np.asarray(f.u_raw[index : index + 1], dtype=np.float64) @ f.t
    scores = ((u * f.s) @ f.vt)[0]
    if f.mean is not None:
        scores = scores + f.mean
    seen = sparse.read_rows(model.group, index, index + 1).indices
    return scores, seen[seen < model.n_cols]


def _item_scores(model: _Model, items: Mapping[Any, float]) -> tuple[np.ndarray, np.ndarray]:
    if not items:
        raise InvalidInputError("items is empty: give at least one item id and value")
    keys = [parse_id(k, model.col_kind, what="col_id") for k in items]
    query = np.array(keys, dtype=np.int64 if model.col_kind == "int" else np.dtypes.StringDType())
    index = IdIndex(model.col_ids).lookup(query)
    if (index < 0).any():
        unknown = ", ".join(repr(keys[i]) for i in np.flatnonzero(index < 0)[:5])
        raise InvalidInputError(
            f"unknown col_id {unknown}: not among the {model.n_cols} columns the factors "
            "cover (new columns are scored after `streamsvd update`)"
        )
    values = np.array([float(v) for v in items.values()])
    if not np.all(np.isfinite(values)):
        raise InvalidInputError("item values must be finite numbers")
    f = model.factors
    coords = f.vt[:, index] @ values  # x V, x zero off the given items
    if f.mean is not None:
        coords = coords - f.vt @ f.mean  # (x − μ) V
    scores = coords @ f.vt
    if f.mean is not None:
        scores = scores + f.mean
    return scores, index


def recommend(
    store: str | Path,
    *,
    row: Id | None = None,
    items: Mapping[Any, float] | None = None,
    top: int = 10,
    version: str | None = None,
) -> list[tuple[Id, float]]:
    """The ``top`` best columns (items) for a stored row or for new item/value pairs.

    Parameters
    ----------
    store : str or Path
        A sparse store with factors.
    row : int or str, optional
        A stored row id: PureSVD scores ``U_i diag(s) Vᵀ``, its stored items excluded.
    items : mapping of id to float, optional
        A new row as ``{col_id: value}``: fold-in scores ``x V Vᵀ``, those items excluded.
    top : int
        How many to return.
    version : str, optional
        A store version (default: newest).

    Returns
    -------
    list of (id, score)
        Original column ids (int or str), best first.

    Raises
    ------
    InvalidInputError
        An unknown row or column id (named), a row not covered by the factors yet.
    ConfigError
        Neither or both of ``row`` and ``items``; ``top < 1``; a dense store.
    """
    if (row is None) == (items is None):
        raise ConfigError("give exactly one of row= (a stored row id) or items= ({id: value})")
    if top < 1:
        raise ConfigError(f"top must be at least 1; got {top}")
    model = _open(store, version)
    if row is not None:
        scores, seen = _row_scores(model, _row_index(model, row))
    else:
        scores, seen = _item_scores(model, cast(Mapping[Any, float], items))
    scores = scores.copy()
    scores[seen] = -np.inf
    chosen = _top(scores, top)
    return [(_py(model.col_ids[j]), float(scores[j])) for j in chosen]


def _pairs(heldout: Mapping[Any, Any] | Iterable[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    if isinstance(heldout, Mapping):
        return list(heldout.items())
    return [(r, c) for r, c in heldout]


def evaluate_recall(
    store: str | Path,
    heldout: Mapping[Any, Any] | Iterable[tuple[Any, Any]],
    k: int = 10,
    *,
    method: Literal["puresvd", "popularity"] = "puresvd",
    version: str | None = None,
) -> float:
    """Recall@k of held-out ``(row_id, col_id)`` pairs: the share found in the row's top-k.

    Each row's stored (training) items are excluded before taking its top ``k``, for
    both methods. ``method="popularity"`` ranks columns by their number of stored entries
    (the most-popular baseline). A held-out column unknown to the factors (never seen in
    training) counts as a miss.

    Parameters
    ----------
    store : str or Path
        A sparse store with factors covering the rows of ``heldout``.
    heldout : mapping row_id → col_id, or iterable of (row_id, col_id)
    k : int
        Cut-off.
    method : {"puresvd", "popularity"}
    version : str, optional

    Returns
    -------
    float
        Hits / number of held-out pairs.

    Memory: ``EVAL_BLOCK × n_cols`` scores at a time, plus one column count per column.
    One pass over the stored entries for ``popularity``.
    """
    if method not in ("puresvd", "popularity"):
        raise ConfigError(f"method must be 'puresvd' or 'popularity'; got {method!r}")
    if k < 1:
        raise ConfigError(f"k must be at least 1; got {k}")
    pairs = _pairs(heldout)
    if not pairs:
        raise InvalidInputError("heldout is empty: give at least one (row_id, col_id) pair")
    model = _open(store, version)
    row_index = IdIndex(sparse.read_ids(model.group, "rows")[: model.rows_covered])
    row_ids = [parse_id(r, model.row_kind, what="row_id") for r, _ in pairs]
    col_ids = [parse_id(c, model.col_kind, what="col_id") for _, c in pairs]
    rows = row_index.lookup(_as_ids(row_ids, model.row_kind))
    if (rows < 0).any():
        bad = row_ids[int(np.flatnonzero(rows < 0)[0])]
        raise InvalidInputError(
            f"unknown row_id {bad!r}: not among the rows the factors cover; evaluate rows "
            "that were ingested and fitted"
        )
    cols = IdIndex(model.col_ids).lookup(_as_ids(col_ids, model.col_kind))
    f = model.factors
    popular = None
    if method == "popularity":
        popular = sparse.column_counts(model.group, rows=model.rows_covered)[: model.n_cols]
    order = np.argsort(rows, kind="stable")
    hits = 0
    for lo in range(0, order.size, EVAL_BLOCK):
        part = order[lo : lo + EVAL_BLOCK]
        block_rows = rows[part]
        first, last = int(block_rows.min()), int(block_rows.max()) + 1
        csr = sparse.read_rows(model.group, first, last, n_cols=model.n_cols)[block_rows - first]
        if popular is None:
            u = np.asarray(f.u_raw[first:last], dtype=np.float64)[block_rows - first] @ f.t
            scores = (u * f.s) @ f.vt
            if f.mean is not None:
                scores += f.mean
        else:
            scores = np.tile(popular.astype(np.float64), (part.size, 1))
        for j in range(part.size):
            seen = csr.indices[csr.indptr[j] : csr.indptr[j + 1]]
            row_scores = scores[j]
            row_scores[seen] = -np.inf
            target = cols[part[j]]
            if target >= 0 and target in _top(row_scores, k):
                hits += 1
    return hits / len(pairs)


def _as_ids(ids: list[Id], kind: str) -> np.ndarray:
    if kind == "int":
        return np.array(ids, dtype=np.int64)
    return np.array([str(i) for i in ids], dtype=np.dtypes.StringDType())
