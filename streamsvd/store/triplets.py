"""Triplet sources (``row_id, col_id, value``) and the id maps of a sparse store.

**Files.** CSV (with a header line, comma-separated) or Parquet. The columns named
``row_id``, ``col_id`` and ``value`` are used when all three exist; otherwise the first
three columns, in that role and order (other columns are ignored). Values are numbers;
an empty value is NaN and follows ``--nan`` (``reject``, ``zero``, or ``drop`` the
triplet).

**Ids.** Integers or strings, fixed per axis when the store is created: Parquet integer
columns are integer ids, string columns string ids; in CSV an id column whose values all
look like integers (``-?[0-9]+``) holds integer ids. Later batches are converted to the
store's kind (integers become their decimal strings in a string-id store; a non-integer
id in an integer-id store is an error naming it). The maps are persisted as ``ids/rows``
and ``ids/cols`` (index → id; int64, or Zarr variable-length UTF-8 strings). Lookups
id → index are vectorized binary searches on a sorted copy built once per ingest
(:class:`IdIndex`: O(n log n) to build, O(log n) per id; ~16 bytes per integer id).

**Policies.**

* One batch (file) gives one new row per distinct ``row_id``, in order of first
  appearance; its triplets need not be contiguous.
* Duplicate ``(row_id, col_id)`` pairs within a batch are **summed** (as
  ``scipy.sparse`` does; the natural reading of interaction counts) and counted in the
  batch log (``duplicates_summed``) so that they are visible.
* A ``row_id`` already in the store is an **error**: rows are append-only (their rows of
  ``U_raw`` are written once), so a row cannot grow later. Fold new activity of a known
  row in with ``recommend(items=...)`` or store it under a new id.
* An unseen ``col_id`` **widens** the matrix: it gets the next column index, older rows
  hold implicit zeros there (true: nothing was observed) and the factors' ``V`` gets a
  zero row for it on the next update. That is consistent with Brand's update, where the
  new column's energy enters through the residual ``B − BVVᵀ`` (``V`` is zero there),
  and keeps the exact error accounting. An error would be simpler but would stop every
  recommender whose catalogue grows.

Memory: one batch's triplets, about 40 bytes per triplet (ids, value, CSR and sort
workspace), plus the id maps of the store (one id per row and per column).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import scipy.sparse
import zarr
from numpy.dtypes import StringDType

from streamsvd.errors import ConfigError, InvalidInputError, UnsupportedFormatError
from streamsvd.store import checkpoints, layout, sparse
from streamsvd.store.matrix import BatchRecord, MatrixMeta, read_meta

TRIPLETS = "triplets"
COLUMNS = ("row_id", "col_id", "value")
_INT_PATTERN = r"^[+-]?[0-9]{1,18}$"
_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


# ------------------------------------------------------------------ reading files


@dataclass(frozen=True)
class Triplets:
    """The triplets of one file, as arrays (ids int64 or StringDType, values float64)."""

    row_ids: np.ndarray
    col_ids: np.ndarray
    values: np.ndarray
    row_kind: str
    col_kind: str
    format: str
    line_offset: int  # data triplet i is on line i + line_offset (CSV) or is row i (Parquet)


def triplet_format(path: Path) -> str:
    """``csv`` or ``parquet`` from the suffix."""
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise UnsupportedFormatError(
            f"{path}: triplets are read from .csv or .parquet files, not {path.suffix!r}; "
            "convert the file or rename it"
        )
    return fmt


def _choose(names: list[str], path: Path) -> list[str]:
    if all(c in names for c in COLUMNS):
        return list(COLUMNS)
    if len(names) < 3:
        raise InvalidInputError(
            f"{path}: triplets need three columns (row_id, col_id, value); found "
            f"{len(names)}: {names}"
        )
    return names[:3]


def read_triplets(path: Path) -> Triplets:
    """Read one triplet file (memory: its triplets, about 40 bytes each)."""
    fmt = triplet_format(path)
    if not path.is_file():
        raise InvalidInputError(f"{path} is not a file")
    try:
        if fmt == "csv":
            with path.open(newline="", encoding="utf-8-sig") as handle:
                header = next(csv.reader(handle), [])
            stripped = [h.strip() for h in header]
            chosen = _choose(stripped, path)
            raw_names = [header[stripped.index(c)] for c in chosen]
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    include_columns=raw_names,
                    column_types={
                        raw_names[0]: pa.string(),
                        raw_names[1]: pa.string(),
                        raw_names[2]: pa.float64(),
                    },
                    strings_can_be_null=False,
                ),
            )  # include_columns also orders the columns as raw_names
            offset = 2  # 1-based lines, after the header
        else:
            schema = pq.read_schema(path)
            chosen = _choose(list(schema.names), path)
            table = pq.read_table(path, columns=chosen)
            offset = 0
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise InvalidInputError(
            f"{path}: cannot read it as {fmt} triplets ({exc}); every record must be "
            "row_id, col_id, value with a numeric value"
        ) from None
    if table.num_rows == 0:
        raise InvalidInputError(f"{path} is empty: it has no triplets. Remove it or fill it.")
    rows, row_kind = _ids(table.column(0), infer=fmt == "csv", path=path, what="row_id")
    cols, col_kind = _ids(table.column(1), infer=fmt == "csv", path=path, what="col_id")
    value_col = table.column(2)
    kind = value_col.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise InvalidInputError(
            f"{path}: the value column {table.column_names[2]!r} has type "
            f"{value_col.type}; values must be numbers"
        )
    values = pc.cast(value_col, pa.float64()).to_numpy(zero_copy_only=False)
    return Triplets(
        row_ids=rows,
        col_ids=cols,
        values=np.asarray(values, dtype=np.float64),
        row_kind=row_kind,
        col_kind=col_kind,
        format=fmt,
        line_offset=offset,
    )


def _ids(column: Any, *, infer: bool, path: Path, what: str) -> tuple[np.ndarray, str]:
    if column.null_count:
        index = int(pc.index(pc.is_null(column), True).as_py())
        raise InvalidInputError(f"{path}: triplet {index + 1} has no {what}; every id is required")
    if pa.types.is_integer(column.type):
        return np.asarray(column.to_numpy(), dtype=np.int64), "int"
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise InvalidInputError(
            f"{path}: the {what} column has type {column.type}; ids are integers or strings"
        )
    if infer and bool(pc.all(pc.match_substring_regex(column, _INT_PATTERN)).as_py()):
        return np.asarray(pc.cast(column, pa.int64()).to_numpy(), dtype=np.int64), "int"
    return column.to_numpy(zero_copy_only=False).astype(StringDType()), "str"


def conform_ids(
    ids: np.ndarray, kind: str, store_kind: str, *, where: str, what: str
) -> np.ndarray:
    """Convert ids to the store's kind (``int`` or ``str``); a non-integer id for an
    integer-id store is an error naming it."""
    if kind == store_kind:
        return ids
    if store_kind == "str":
        return ids.astype(StringDType())
    text = ids.astype(StringDType())
    ok = np.asarray(pc.match_substring_regex(pa.array(text.tolist()), _INT_PATTERN))
    if not ok.all():
        bad = text[int(np.flatnonzero(~ok)[0])]
        raise InvalidInputError(
            f"{where}: {what} {str(bad)!r} is not an integer, but this store's {what}s are "
            "integers (fixed by its first batch); use integer ids or another store"
        )
    return text.astype(np.int64)


# ------------------------------------------------------------------------- id maps


class IdIndex:
    """Ids in index order with vectorized id → index lookups (binary search).

    Memory: the ids plus one sorted copy and an int64 permutation.
    """

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def lookup(self, query: np.ndarray) -> np.ndarray:
        """Index of each id in ``query`` (int64), ``-1`` where it is unknown."""
        out = np.full(query.shape[0], -1, dtype=np.int64)
        if len(self) == 0 or query.shape[0] == 0:
            return out
        pos = np.searchsorted(self._sorted, query)
        inside = pos < len(self)
        clipped = np.minimum(pos, len(self) - 1)
        hit = inside & (self._sorted[clipped] == query)
        out[hit] = self._order[clipped[hit]]
        return out

    def extended(self, new_ids: np.ndarray) -> IdIndex:
        """A new index with ``new_ids`` appended (indices ``len(self)``, ...)."""
        if new_ids.shape[0] == 0:
            return self
        return IdIndex(np.concatenate([self.ids, new_ids]))


def load_index(group: zarr.Group, axis: str) -> IdIndex:
    """The id index of ``rows`` or ``cols`` of a sparse store (reads all its ids)."""
    return IdIndex(sparse.read_ids(group, axis))


def parse_id(text: str | int, kind: str, *, what: str) -> int | str:
    """A command-line id in the store's kind (``int`` ids must be integers)."""
    if kind == "str":
        return str(text)
    try:
        return int(text)
    except ValueError:
        raise InvalidInputError(
            f"unknown {what} {text!r}: this store's {what}s are integers"
        ) from None


# -------------------------------------------------------------------- batch building


@dataclass(frozen=True)
class CsrBatch:
    """A batch ready to append: its rows as CSR and the ids it adds."""

    matrix: Any  # scipy.sparse.csr_matrix, (rows, n_cols after the batch)
    row_ids: np.ndarray
    new_col_ids: np.ndarray
    triplets: int
    duplicates_summed: int
    nan_values: int
    dropped: int


def build_batch(
    trip: Triplets,
    rows_index: IdIndex,
    cols_index: IdIndex,
    *,
    nan: str,
    dtype: np.dtype[Any],
    where: str,
) -> CsrBatch:
    """Group triplets by row (first appearance order), map ids, sum duplicates.

    Raises
    ------
    InvalidInputError
        NaN/Inf values with ``nan="reject"``, a row id already in the store, a value
        beyond the store dtype's range.
    """
    values = trip.values
    rows, cols = trip.row_ids, trip.col_ids
    finite = np.isfinite(values)
    nan_values = int((~finite).sum())
    dropped = 0
    if nan_values:
        if nan == "reject":
            i = int(np.flatnonzero(~finite)[0])
            where_line = f"line {i + trip.line_offset}" if trip.format == "csv" else f"row {i}"
            raise InvalidInputError(
                f"{where}: {where_line} holds the value {values[i]}; NaN, Inf and empty "
                "values are rejected. Clean the file, or pass --nan zero or --nan drop."
            )
        if nan == "zero":
            values = np.where(finite, values, 0.0)
        else:
            values, rows, cols = values[finite], rows[finite], cols[finite]
            dropped = nan_values
    if dtype.itemsize < 8 and values.size:
        big = np.abs(values) > np.finfo(dtype).max
        if big.any():
            raise InvalidInputError(
                f"{where}: the value {values[int(np.flatnonzero(big)[0])]} is beyond the "
                f"range of the store's {dtype}; create the store with --dtype float64"
            )
    uniq, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    known = rows_index.lookup(uniq)
    if (known >= 0).any():
        hits = np.flatnonzero(known >= 0)
        j = hits[np.argmin(first[hits])]
        raise InvalidInputError(
            f"{where}: row_id {_show(uniq[j])} is already in the store (row {int(known[j])}); "
            "rows are append-only, so a stored row cannot get new entries. Give the new "
            "entries a new row_id, or score them with `streamsvd recommend --items`."
        )
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    row_pos = rank[inverse.ravel()]
    c_uniq, c_first, c_inverse = np.unique(cols, return_index=True, return_inverse=True)
    found = cols_index.lookup(c_uniq)
    missing = np.flatnonzero(found < 0)
    missing = missing[np.argsort(c_first[missing], kind="stable")]
    found[missing] = len(cols_index) + np.arange(missing.shape[0])
    col_idx = found[c_inverse.ravel()]
    n_cols = len(cols_index) + missing.shape[0]
    if n_cols > sparse.MAX_COLS:
        raise InvalidInputError(
            f"{where}: the store would have {n_cols} columns; at most {sparse.MAX_COLS} fit"
        )
    matrix = scipy.sparse.coo_matrix(
        (values.astype(dtype), (row_pos, col_idx.astype(np.int32))),
        shape=(order.shape[0], n_cols),
    ).tocsr()
    matrix.sum_duplicates()
    return CsrBatch(
        matrix=matrix,
        row_ids=uniq[order],
        new_col_ids=c_uniq[missing],
        triplets=int(values.shape[0]),
        duplicates_summed=int(values.shape[0] - matrix.nnz),
        nan_values=nan_values,
        dropped=dropped,
    )


def _show(value: Any) -> str:
    return repr(str(value)) if isinstance(value, str | np.str_) else str(int(value))


# --------------------------------------------------------------------------- ingest


def ingest_triplets_into(
    tx: Any,
    items: list[Any],
    options: Any,
    progress: Callable[[str, int, int | None], None] | None,
    *,
    created: bool,
    on_block: Callable[[Any, int, bool], None] | None = None,
    meta: MatrixMeta | None = None,
) -> Any:
    """Ingest triplet files into an open transaction (no commit).

    The counterpart of :func:`streamsvd.store.ingest.ingest_into` for sparse stores:
    same arguments, same result type; ``on_block`` receives each batch's rows as a
    ``scipy.sparse.csr_matrix`` (as wide as the store after the batch). ``meta`` is
    the store's metadata when the caller has read it already (else it is read here).
    """
    from streamsvd.store.ingest import Skipped, _Partial

    group: zarr.Group = tx.group
    if created:
        meta = None
    elif meta is None:
        meta = read_meta(group)
    if meta is not None and meta.kind != sparse.KIND:
        raise ConfigError(
            "--format triplets needs a sparse store, but this store holds a dense matrix "
            "(created from row files); ingest the triplets into a new store"
        )
    raw_log: list[dict[str, Any]] = (
        [] if created else list(cast(Any, group[layout.BATCHES].attrs.get("log", [])))
    )
    known = {e["id"]: e for e in raw_log}
    partial = _Partial(batches=[], skipped=[])
    rows_index = cols_index = None
    kinds = None if meta is None else sparse.read_sparse_meta(group)
    seen: set[str] = set()
    for item in items:
        if item.path is None:
            raise InvalidInputError(
                f"{item.name}: triplets are read from CSV or Parquet files, not arrays"
            )
        path = Path(item.path)
        triplet_format(path)
        batch_id, (size, mtime_ns) = item.identify(options.dataset)
        if batch_id in known:
            prev = known[batch_id]
            partial.skipped.append(
                Skipped(
                    str(path),
                    f"already ingested as batch {batch_id[:20]}… from {prev['source']} "
                    f"(rows {prev['row_start']}–{prev['row_stop']}); nothing to do",
                )
            )
            continue
        if batch_id in seen:
            partial.skipped.append(
                Skipped(str(path), "same content as an earlier source in this ingest")
            )
            continue
        seen.add(batch_id)
        trip = read_triplets(path)
        if meta is None or kinds is None:
            dtype = options.dtype or "float64"
            meta = MatrixMeta(
                n_cols=0,
                dtype=dtype,
                chunk_rows=options.chunk_rows or sparse.DEFAULT_CHUNK_ROWS,
                # auto: lz4 (no dense sample to judge by; indices always shrink)
                codec=layout.resolve_codec(options.codec, None),
                kind=sparse.KIND,
            )
            kinds = sparse.SparseMeta(sparse.DEFAULT_CHUNK_NNZ, trip.row_kind, trip.col_kind)
            sparse.init_sparse(group, meta, kinds)
        if rows_index is None or cols_index is None:
            rows_index, cols_index = load_index(group, "rows"), load_index(group, "cols")
        trip = Triplets(
            row_ids=conform_ids(
                trip.row_ids, trip.row_kind, kinds.row_ids, where=str(path), what="row_id"
            ),
            col_ids=conform_ids(
                trip.col_ids, trip.col_kind, kinds.col_ids, where=str(path), what="col_id"
            ),
            values=trip.values,
            row_kind=kinds.row_ids,
            col_kind=kinds.col_ids,
            format=trip.format,
            line_offset=trip.line_offset,
        )
        batch = build_batch(
            trip, rows_index, cols_index, nan=options.nan, dtype=np.dtype(meta.dtype),
            where=str(path),
        )  # fmt: skip
        start, stop = sparse.append_csr(group, batch.matrix)
        sparse.append_ids(group, "rows", batch.row_ids)
        sparse.append_ids(group, "cols", batch.new_col_ids)
        sparse.set_n_cols(group, batch.matrix.shape[1])
        rows_index = rows_index.extended(batch.row_ids)
        cols_index = cols_index.extended(batch.new_col_ids)
        if on_block is not None and batch.matrix.shape[0]:
            on_block(batch.matrix, start, True)
        if progress is not None:
            progress(path.name, batch.matrix.shape[0], batch.matrix.shape[0])
        checkpoints.reached("after-block")
        record = BatchRecord(
            id=batch_id,
            source=str(path),
            row_start=start,
            row_stop=stop,
            rows=stop - start,
            format=f"{TRIPLETS}-{trip.format}",
            nan_policy=options.nan,
            nan_values=batch.nan_values,
            dropped_rows=batch.dropped,
            time=layout.now(),
            size=size,
            mtime_ns=mtime_ns,
        )
        raw_log.append(
            {
                **record.to_json(),
                "triplets": batch.triplets,
                "nnz": int(batch.matrix.nnz),
                "duplicates_summed": batch.duplicates_summed,
                "new_cols": int(batch.new_col_ids.shape[0]),
            }
        )
        known[batch_id] = raw_log[-1]
        partial.batches.append(record)
    if partial.batches:
        group[layout.BATCHES].attrs["log"] = raw_log
    return partial
