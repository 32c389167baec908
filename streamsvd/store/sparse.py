"""Sparse stores: CSR row blocks in append-only 1-D Zarr arrays, read as Dask CSR blocks.

A store of kind ``"sparse"`` keeps its matrix as the three arrays of one CSR matrix
that only grows at the end::

    attrs["streamsvd"]   kind="sparse", n_cols (current width), dtype, chunk_rows, codec;
                         "sparse": {"chunk_nnz", "row_ids": "int"|"str", "col_ids": "int"|"str"}
    matrix/indptr        int64 (rows + 1,), chunks of chunk_rows: row i holds the entries
                         indptr[i]:indptr[i + 1] (the row → offset index; indptr[0] = 0)
    matrix/indices       int32 (nnz,), chunks of chunk_nnz: column of each entry, sorted per row
    matrix/data          store dtype (nnz,), chunks of chunk_nnz: the values
    ids/rows             (rows,) int64 or variable-length UTF-8: the id of each row index
    ids/cols             (n_cols,) likewise: the id of each column index
    batches              the batch log, as for dense stores

Appending a batch resizes the 1-D arrays and writes the new range: only the last,
partially filled chunk of each array is rewritten, by the one writer that holds the
store's lock, inside one Icechunk transaction (no sharding codec, so no shard is
shared between writers; see DESIGN "Known pitfalls"). Row block ``[r0, r1)`` is read
with two small reads of ``indptr`` and one contiguous range of ``indices``/``data``.

New columns *widen* the matrix: ``n_cols`` grows and older rows hold implicit zeros
in the new columns (exact: those entries were never observed). See
:mod:`streamsvd.store.triplets` for the ingest policy and the id maps.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import dask.array as da
import numpy as np
import scipy.sparse
import zarr

from streamsvd.errors import InvalidInputError
from streamsvd.store import layout
from streamsvd.store.matrix import MatrixMeta, read_meta

KIND = "sparse"
INDPTR = f"{layout.MATRIX}/indptr"
INDICES = f"{layout.MATRIX}/indices"
DATA = f"{layout.MATRIX}/data"
IDS = "ids"
ROW_IDS = f"{IDS}/rows"
COL_IDS = f"{IDS}/cols"

#: Rows per chunk of ``indptr`` (and of ``U_raw``): 512 KiB of offsets.
DEFAULT_CHUNK_ROWS = 65536
#: Entries per chunk of ``indices``/``data``: 4 MiB of int32 columns, 8 MiB of float64 values.
DEFAULT_CHUNK_NNZ = 1 << 20
#: Stored entries per Dask block: about 200 MB of CSR in float64, and few enough blocks
#: that the per-block ``n_cols × l`` partial sums of a fit stay small in number.
BLOCK_NNZ = 16 * 1024 * 1024
#: Largest column count: column indices are stored as int32.
MAX_COLS = int(np.iinfo(np.int32).max)


@dataclass(frozen=True)
class SparseMeta:
    """What a sparse store is besides its :class:`MatrixMeta`: chunking and id kinds."""

    chunk_nnz: int
    row_ids: str
    col_ids: str


def read_sparse_meta(group: zarr.Group) -> SparseMeta:
    raw = cast(dict[str, Any], group.attrs[layout.FORMAT_KEY]).get(KIND) or {}
    return SparseMeta(
        chunk_nnz=int(raw.get("chunk_nnz", DEFAULT_CHUNK_NNZ)),
        row_ids=str(raw.get("row_ids", "int")),
        col_ids=str(raw.get("col_ids", "int")),
    )


def init_sparse(group: zarr.Group, meta: MatrixMeta, sparse: SparseMeta) -> None:
    """Create the empty CSR arrays, id maps and batch log of a new sparse store."""
    created = meta.created or layout.now()
    attrs: dict[str, Any] = asdict(replace(meta, kind=KIND, created=created))
    attrs[KIND] = asdict(sparse)
    group.attrs[layout.FORMAT_KEY] = attrs
    group.create_group(layout.BATCHES).attrs["log"] = []
    group.create_group(layout.MATRIX)
    group.create_group(IDS)
    compressors = layout.compressors_for(meta.codec)
    indptr = group.create_array(
        INDPTR, shape=(1,), chunks=(meta.chunk_rows,), dtype="int64", fill_value=0,
        compressors=compressors,
    )  # fmt: skip
    indptr[0] = 0
    group.create_array(
        INDICES, shape=(0,), chunks=(sparse.chunk_nnz,), dtype="int32", fill_value=0,
        compressors=compressors,
    )  # fmt: skip
    group.create_array(
        DATA, shape=(0,), chunks=(sparse.chunk_nnz,), dtype=meta.dtype, fill_value=0.0,
        compressors=compressors,
    )  # fmt: skip
    for path, kind, chunks in (
        (ROW_IDS, sparse.row_ids, meta.chunk_rows),
        (COL_IDS, sparse.col_ids, meta.chunk_rows),
    ):
        group.create_array(path, shape=(0,), chunks=(chunks,), dtype=_id_dtype(kind))


def _id_dtype(kind: str) -> Any:
    return "int64" if kind == "int" else str


def _array(group: zarr.Group, path: str) -> zarr.Array:
    return cast(zarr.Array, group[path])


def n_rows(group: zarr.Group) -> int:
    """Rows of a sparse store's matrix."""
    return int(_array(group, INDPTR).shape[0]) - 1


def nnz(group: zarr.Group) -> int:
    """Stored entries of a sparse store's matrix (one read of the last ``indptr`` chunk)."""
    indptr = _array(group, INDPTR)
    return _offset(indptr, int(indptr.shape[0]) - 1)


def read_ids(group: zarr.Group, axis: str) -> np.ndarray:
    """All row (``axis="rows"``) or column ids, index order (int64 or StringDType)."""
    return np.asarray(_array(group, f"{IDS}/{axis}")[...])


def append_ids(group: zarr.Group, axis: str, ids: np.ndarray) -> None:
    """Append ids for new row or column indices."""
    _append_1d(_array(group, f"{IDS}/{axis}"), ids)


def set_n_cols(group: zarr.Group, n_cols: int) -> None:
    """Widen the matrix to ``n_cols`` columns (new columns are zero on existing rows)."""
    if n_cols > MAX_COLS:
        raise InvalidInputError(
            f"a sparse store holds at most {MAX_COLS} columns (int32 indices); this batch "
            f"would make {n_cols}. Split the columns into several stores."
        )
    attrs = dict(cast(dict[str, Any], group.attrs[layout.FORMAT_KEY]))
    attrs["n_cols"] = int(n_cols)
    group.attrs[layout.FORMAT_KEY] = attrs


def append_csr(group: zarr.Group, block: Any) -> tuple[int, int]:
    """Append the rows of a CSR matrix (canonical: sorted, summed); returns their row range.

    Memory: the block's arrays plus one chunk per array being rewritten.
    """
    csr = scipy.sparse.csr_matrix(block)
    indptr_arr = _array(group, INDPTR)
    start = int(indptr_arr.shape[0]) - 1
    offset = _offset(indptr_arr, start)
    _append_1d(_array(group, INDICES), csr.indices.astype(np.int32, copy=False))
    _append_1d(_array(group, DATA), csr.data.astype(_array(group, DATA).dtype, copy=False))
    _append_1d(indptr_arr, csr.indptr[1:].astype(np.int64) + offset)
    return start, start + csr.shape[0]


def _offset(indptr: zarr.Array, row: int) -> int:
    """``indptr[row]``: one read of one chunk."""
    return int(np.asarray(indptr[row : row + 1])[0])


def _append_1d(array: zarr.Array, values: np.ndarray) -> None:
    start = int(array.shape[0])
    if values.size == 0:
        return
    array.resize((start + values.shape[0],))
    array[start:] = values


def read_rows(group: zarr.Group, start: int, stop: int, *, n_cols: int | None = None) -> Any:
    """Rows ``[start, stop)`` as a ``scipy.sparse.csr_matrix`` (never densified).

    ``n_cols`` defaults to the store's current width; a smaller value drops nothing
    for rows stored while the matrix had at most that many columns.
    """
    width = read_meta(group).n_cols if n_cols is None else n_cols
    return load_block(
        (_array(group, INDPTR), _array(group, INDICES), _array(group, DATA)), start, stop, width
    )


def load_block(arrays: tuple[Any, Any, Any], start: int, stop: int, n_cols: int) -> Any:
    """Read one CSR row block from the three arrays (the Dask task of :func:`as_dask`)."""
    indptr_arr, indices_arr, data_arr = arrays
    indptr = np.asarray(indptr_arr[start : stop + 1], dtype=np.int64)
    lo, hi = int(indptr[0]), int(indptr[-1])
    indices = np.asarray(indices_arr[lo:hi])
    data = np.asarray(data_arr[lo:hi])
    local = indptr - lo
    if hi - lo <= np.iinfo(np.int32).max:
        local = local.astype(np.int32)
    else:
        indices = indices.astype(np.int64)
    return scipy.sparse.csr_matrix((data, indices, local), shape=(stop - start, n_cols))


def block_rows_for(group: zarr.Group, rows: int) -> int:
    """Rows per Dask block: whole ``indptr`` chunks holding about :data:`BLOCK_NNZ` entries."""
    chunk_rows = read_meta(group).chunk_rows
    if rows == 0:
        return chunk_rows
    per_row = max(nnz(group) / max(n_rows(group), 1), 1e-9)
    wanted = int(BLOCK_NNZ / per_row)
    return int(max(chunk_rows, (wanted // chunk_rows) * chunk_rows))


def as_dask(
    group: zarr.Group,
    *,
    rows: int | None = None,
    n_cols: int | None = None,
    block_rows: int | None = None,
) -> da.Array:
    """The sparse matrix (its first ``rows`` rows, ``n_cols`` columns) as a Dask array.

    Every block is a ``scipy.sparse.csr_matrix`` of whole ``indptr`` chunks (so that
    ``U_raw``, chunked like ``indptr``, is written by one task per chunk), read by one
    task with three range reads. Nothing is read until the array is computed.
    """
    meta = read_meta(group)
    total = n_rows(group) if rows is None else rows
    width = meta.n_cols if n_cols is None else n_cols
    step = block_rows or block_rows_for(group, total)
    if step % meta.chunk_rows:
        raise InvalidInputError(
            f"block_rows={step} must be a multiple of the store's chunk_rows={meta.chunk_rows}"
        )
    bounds = [*range(0, total, step), total] if total else [0, 0]
    spans = list(itertools.pairwise(bounds))
    arrays = (_array(group, INDPTR), _array(group, INDICES), _array(group, DATA))
    name = f"streamsvd-sparse-{uuid.uuid4().hex}"
    graph: dict[Any, Any] = {
        (name, i, 0): (load_block, arrays, lo, hi, width) for i, (lo, hi) in enumerate(spans)
    }
    sizes = tuple(hi - lo for lo, hi in spans)
    dtype = np.dtype(meta.dtype)
    return da.Array(
        graph,
        name,
        chunks=(sizes, (width,)),
        dtype=dtype,
        meta=scipy.sparse.csr_matrix((0, 0), dtype=dtype),
    )


def column_counts(group: zarr.Group, *, rows: int | None = None) -> np.ndarray:
    """Stored entries per column over the first ``rows`` rows (one pass over ``indices``)."""
    meta = read_meta(group)
    total = n_rows(group) if rows is None else rows
    indptr = _array(group, INDPTR)
    hi = _offset(indptr, total)
    counts = np.zeros(meta.n_cols, dtype=np.int64)
    indices = _array(group, INDICES)
    step = read_sparse_meta(group).chunk_nnz * 8
    for lo in range(0, hi, step):
        part = np.asarray(indices[lo : min(lo + step, hi)])
        counts += np.bincount(part, minlength=meta.n_cols)
    return counts
