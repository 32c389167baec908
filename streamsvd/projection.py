"""Use the factors on rows: project (fold in) new rows, reconstruct stored rows.

Projection maps a row ``x`` (1 × cols) into the factor space:

* **coordinates** (default): ``x ↦ (x − μ) V S⁻¹``, the row's coefficients in
  the basis of left singular vectors. For a stored row ``a_i`` of an exact SVD
  this is ``u_i``, the row of ``U`` (the fold-in identity); for new rows it is
  the least-squares fold-in used by LSI and PureSVD.
* **scores** (``scores=True``): ``x ↦ (x − μ) V``, the PCA scores (``U S`` for
  stored rows), which keep the scale of the data and need no division.

``μ`` is the column mean in PCA mode (``fit(center=True)``), else 0. Components
whose singular value is (numerically) zero map to 0, never to inf or NaN: the
cut-off is ``s ≤ max(rows, cols)·eps·s₁``, as in ``numpy.linalg.matrix_rank``.

Reconstruction rebuilds stored rows ``U[a:b] S Vᵀ (+ μ)`` from ``U_raw[a:b] T``,
reading only those rows of ``U_raw``.

**Sparse stores** (ingested with ``--format triplets``). Dense rows ``x`` with the
factors' columns project as above. A *triplet* file (``row_id, col_id, value``, as
``ingest --format triplets`` reads) is folded in with :func:`project_triplets` (or
``project_file(..., format="triplets")``, also chosen by ``format="auto"`` when the
file has the three columns ``row_id``, ``col_id`` and ``value``): one row per
distinct ``row_id`` in order of first appearance, zero off its given columns,
duplicate ``(row_id, col_id)`` pairs summed (as ingest does), col ids mapped by the
store's id map (an unknown one is an error naming it). Its Parquet output has the
ids in a leading ``row_id`` column; ``.npy`` and ``.zarr`` cannot hold them and are
refused. Reconstructed rows of a sparse store are dense (``rows × cols`` float64,
unlike its CSR), so :func:`reconstruct` and :func:`reconstruct_file` refuse a range
whose dense size exceeds ``memory_budget`` (default 256 MiB).

Outputs of :func:`project_file` and :func:`reconstruct_file` are float64
arrays written block by block to a temporary name next to the target and
renamed at the end, so a failure leaves no partial file: ``.npy``
(``numpy.lib.format.open_memmap``), ``.parquet`` (columns ``c0 … c{k−1}``, one
row group per block) or ``.zarr`` (a Zarr v3 array chunked by block rows, no
sharding).
"""

from __future__ import annotations

import abc
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse
import zarr

from streamsvd.api import Factors, block_rows_for, open_factors
from streamsvd.compression import format_bytes
from streamsvd.errors import ConfigError, InvalidInputError, ShapeMismatchError, StoreExistsError
from streamsvd.store import sparse, triplets
from streamsvd.store.matrix import read_meta
from streamsvd.store.sources import Source, open_source, rows_for_budget

#: Output suffix (lower case) → format.
OUTPUT_SUFFIXES: dict[str, str] = {
    ".npy": "npy",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".zarr": "zarr",
}
#: Memory of one input block of :func:`project_file`, in bytes (as float64).
DEFAULT_MEMORY_BUDGET = 128 * 1024 * 1024
#: Bytes (float64) of one block of rows read or produced by project/reconstruct.
OUTPUT_BLOCK_BYTES = 64 * 1024 * 1024
#: Largest dense reconstruction of a sparse store's rows, in bytes (float64).
DEFAULT_RECONSTRUCT_BUDGET = 256 * 1024 * 1024
#: ``format`` of :func:`project_file` for triplet files (as ``ingest --format triplets``).
TRIPLETS = "triplets"

ProgressCallback = Callable[[str, int, int | None], None]
FactorsLike = str | Path | Factors


@dataclass(frozen=True)
class OutputReport:
    """What :func:`project_file` or :func:`reconstruct_file` wrote.

    Attributes
    ----------
    path : Path
        The output written.
    format : str
        ``npy``, ``parquet`` or ``zarr``.
    rows, cols : int
        Its shape (cols = the rank used, or the store's columns for reconstruct).
    blocks : int
        Blocks written (row groups of a Parquet file, chunks of a Zarr array).
    seconds : float
        Wall time.
    """

    path: Path
    format: str
    rows: int
    cols: int
    blocks: int
    seconds: float


# -- projection ---------------------------------------------------------------


def _projector(
    factors: Factors, rank: int | None, scores: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(W, μ)`` of a projection: ``(x − μ) W`` (μ is None outside PCA mode)."""
    w = projection_matrix(factors, rank=rank, scores=scores)
    mean = None if factors.mean is None else np.asarray(factors.mean, dtype=np.float64)
    return w, mean


def projection_matrix(
    factors: Factors, *, rank: int | None = None, scores: bool = False
) -> np.ndarray:
    """The (cols × k) matrix ``W`` with ``projection = (x − μ) W``.

    ``W = V[:, :k] S[:k]⁻¹`` (coordinates) or ``V[:, :k]`` (scores); columns of
    numerically zero singular values are 0.
    """
    k = factors.checked_rank(rank)
    v = np.asarray(factors.vt[:k], dtype=np.float64).T
    if scores:
        return np.ascontiguousarray(v)
    s = np.asarray(factors.s[:k], dtype=np.float64)
    rows = int(factors.attrs.get("rows_covered", 1))
    cutoff = max(rows, v.shape[0]) * np.finfo(np.float64).eps * (float(s[0]) if s.size else 0.0)
    keep = s > cutoff
    inverse = np.zeros_like(s)
    inverse[keep] = 1.0 / s[keep]
    return np.ascontiguousarray(v * inverse)


def _project_block(
    block: np.ndarray,
    w: np.ndarray,
    mean: np.ndarray | None,
    name: str,
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    offset = int(block_info[0]["array-location"][0][0]) if block_info else 0
    _check_finite(block, offset, name=name)
    x = np.asarray(block, dtype=np.float64)
    if mean is not None:
        x = x - mean
    return np.asarray(x @ w, dtype=np.float64)


def _check_finite(
    block: np.ndarray, offset: int, *, name: str, source: Source | None = None
) -> None:
    if block.dtype.kind not in "fc":
        return
    finite = np.isfinite(block)
    if finite.all():
        return
    row, col = (int(i) for i in np.argwhere(~finite)[0])
    where = source.describe_row(offset + row) if source is not None else f"row {offset + row}"
    raise InvalidInputError(
        f"{name}: {where}, column {col + 1} holds {block[row, col]}; NaN and Inf cannot be "
        "projected. Clean the rows (or ingest them with --nan zero|drop and project the "
        "cleaned copy)."
    )


def project(
    store: FactorsLike,
    x: np.ndarray | da.Array,
    *,
    rank: int | None = None,
    scores: bool = False,
    version: str | None = None,
) -> da.Array:
    """Fold rows into the factor space: ``(x − μ) V S⁻¹`` (or ``(x − μ) V``).

    Lazy: returns a Dask array; nothing is read or computed until it is.
    Computing it makes one pass over ``x`` with memory of one block of ``x``
    (as float64) plus ``cols × k`` per task.

    Parameters
    ----------
    store : str, Path or Factors
        A store (its newest factors, or ``version``), or factors already opened.
    x : ndarray or dask.array.Array, shape (n_rows, cols)
        Rows with the store's columns. A NumPy array is wrapped in blocks of
        about 64 MiB; a Dask array keeps its row chunks. NaN/Inf raise
        :class:`~streamsvd.errors.InvalidInputError` (naming the row) when
        the result is computed.
    rank : int, optional
        Use the first ``rank`` components (default: all fitted ones).
    scores : bool, default False
        Return PCA-style scores ``(x − μ) V`` instead of coordinates
        ``(x − μ) V S⁻¹``.
    version : str, optional
        Version of the store's factors (default: newest).

    Returns
    -------
    dask.array.Array, shape (n_rows, k), float64

    Examples
    --------
    >>> import numpy as np, tempfile, streamsvd
    >>> tmp = tempfile.mkdtemp()
    >>> a = np.random.default_rng(0).standard_normal((40, 6))
    >>> _ = streamsvd.ingest(f"{tmp}/store", [a])
    >>> _ = streamsvd.fit(f"{tmp}/store", rank=6, scheduler="sync")
    >>> u = streamsvd.open_factors(f"{tmp}/store").u.compute()
    >>> bool(np.allclose(project(f"{tmp}/store", a).compute(), u))  # fold-in identity
    True
    """
    factors = open_factors(store, version=version)
    w, mean = _projector(factors, rank, scores)
    n_cols = w.shape[0]
    if x.ndim != 2:
        raise InvalidInputError(
            f"x must be 2-D (rows, {n_cols}), got shape {tuple(x.shape)}; "
            "for one row use x.reshape(1, -1)"
        )
    if x.shape[1] != n_cols:
        raise ShapeMismatchError(
            f"x has {x.shape[1]} columns but the factors of {factors.store} have {n_cols}; "
            "project rows with the store's columns"
        )
    if isinstance(x, da.Array):
        arr = x if len(x.chunks[1]) == 1 else x.rechunk({1: -1})
    else:
        block = rows_for_budget(n_cols, 8, OUTPUT_BLOCK_BYTES)
        arr = da.from_array(np.asarray(x), chunks=(block, n_cols))
    func = partial(_project_block, w=w, mean=mean, name="x")
    return da.map_blocks(func, arr, chunks=(arr.chunks[0], (w.shape[1],)), dtype=np.float64)


def project_file(
    store: FactorsLike,
    source: str | Path,
    out: str | Path,
    *,
    rank: int | None = None,
    scores: bool = False,
    format: str = "auto",
    dataset: str | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    overwrite: bool = False,
    version: str | None = None,
    progress: ProgressCallback | None = None,
) -> OutputReport:
    """Project every row of a file and write the result as ``.npy``, ``.parquet`` or ``.zarr``.

    One pass over the input, in blocks of ``memory_budget`` bytes (as float64);
    memory is one input block plus its projection, whatever the file size.
    Rows are validated like ``ingest``: NaN/Inf are an error naming the file
    and the row, and nothing is left at ``out``.

    Parameters
    ----------
    store : str, Path or Factors
        The store whose factors project.
    source : str or Path
        Any source ``ingest`` reads (npy, csv, parquet, hdf5, zarr).
    out : str or Path
        Output path; its suffix picks the format (``.npy``, ``.parquet``/``.pq``,
        ``.zarr``).
    rank, scores, version
        As in :func:`project`.
    format, dataset
        As in :func:`streamsvd.store.sources.open_source`, plus ``"triplets"``
        (a sparse store only; see :func:`project_triplets`). ``"auto"`` on a
        sparse store picks ``"triplets"`` for a CSV or Parquet file with the
        columns ``row_id``, ``col_id`` and ``value``.
    memory_budget : int
        Bytes of one input block (of one output block for triplets, whose file
        is read whole, about 40 bytes per triplet, as ingest does).
    overwrite : bool
        Replace ``out`` if it exists (else :class:`~streamsvd.errors.StoreExistsError`).
    progress : callable, optional
        ``progress(name, rows_done, rows_total_or_None)`` after each block.

    Returns
    -------
    OutputReport
    """
    started = time.perf_counter()
    factors = open_factors(store, version=version)
    w, mean = _projector(factors, rank, scores)
    n_cols, k = w.shape
    sparse_store = format in ("auto", TRIPLETS) and _is_sparse(factors)
    if format == TRIPLETS or (sparse_store and _looks_like_triplets(Path(source))):
        return _project_triplets_file(
            factors,
            Path(source),
            out,
            w=w,
            mean=mean,
            scores=scores,
            memory_budget=memory_budget,
            overwrite=overwrite,
            progress=progress,
            started=started,
        )
    hint = (
        "; to fold in triplets (row_id, col_id, value) of this sparse store, pass "
        "--format triplets (format='triplets')"
        if sparse_store
        else ""
    )
    target, fmt = _output_target(out, overwrite)
    try:
        opened = open_source(source, format=format, dataset=dataset)
    except InvalidInputError as exc:
        if not hint:
            raise
        raise type(exc)(f"{exc}{hint}") from None
    with opened as src:
        if src.n_cols != n_cols:
            raise ShapeMismatchError(
                f"{src.path}: has {src.n_cols} columns but the factors of {factors.store} "
                f"have {n_cols}; project rows with the store's columns{hint}"
            )
        block_rows = rows_for_budget(n_cols, 8, memory_budget)
        attrs = {
            "streamsvd": {
                "kind": "scores" if scores else "coordinates",
                "rank": k,
                "source": str(src.path),
                "store": factors.store,
                "version": factors.version,
            }
        }
        done = 0
        with _atomic_output(target, fmt, src.n_rows, k, block_rows, attrs) as writer:
            for block in src.blocks(block_rows):
                _check_finite(block.data, block.row_start, name=str(src.path), source=src)
                x = np.asarray(block.data, dtype=np.float64)
                if mean is not None:
                    x = x - mean  # never in place: the block may be the source's memmap
                writer.write(x @ w)
                done = block.row_stop
                if progress is not None:
                    progress(src.path.name, done, src.n_rows)
            blocks = writer.blocks
    return OutputReport(target, fmt, done, k, blocks, time.perf_counter() - started)


# -- triplets (sparse stores) -------------------------------------------------


def _is_sparse(factors: Factors) -> bool:
    return read_meta(factors.group).kind == sparse.KIND


def _looks_like_triplets(path: Path) -> bool:
    """A CSV or Parquet file whose columns include ``row_id``, ``col_id`` and ``value``."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq") or not path.is_file():
        return False
    try:
        if suffix == ".csv":
            import csv

            with path.open(newline="", encoding="utf-8-sig") as handle:
                names = [h.strip() for h in next(csv.reader(handle), [])]
        else:
            import pyarrow.parquet as pq

            names = list(pq.read_schema(path).names)
    except Exception:  # unreadable: let the dense reader report it
        return False
    return all(c in names for c in triplets.COLUMNS)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _show_id(value: Any) -> str:
    return repr(str(value)) if isinstance(value, str | np.str_) else str(int(value))


def _triplet_rows(factors: Factors, path: Path) -> tuple[np.ndarray, Any]:
    """The rows of a triplet file as (row ids, CSR over the factors' columns)."""
    group = factors.group
    if read_meta(group).kind != sparse.KIND:
        raise ConfigError(
            f"{path}: triplets (row_id, col_id, value) can only be projected onto a sparse "
            f"store, whose id map turns col_ids into columns; {factors.store} holds a dense "
            "matrix. Project rows with its columns (npy, csv, parquet, hdf5, zarr) instead."
        )
    n_cols = int(factors.vt.shape[1])
    trip = triplets.read_triplets(path)

    def where(i: int) -> str:
        return f"line {i + trip.line_offset}" if trip.format == "csv" else f"row {i}"

    values = trip.values
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = int(bad[0])
        raise InvalidInputError(
            f"{path}: {where(i)} holds the value {values[i]}; NaN, Inf and empty values "
            "cannot be projected. Clean the file (drop or fill those triplets)."
        )
    kinds = sparse.read_sparse_meta(group)
    try:
        cols = triplets.conform_ids(
            trip.col_ids, trip.col_kind, kinds.col_ids, where=str(path), what="col_id"
        )
    except InvalidInputError:  # a non-integer id: name it and its line, as an unknown column
        i = next(j for j, c in enumerate(trip.col_ids.tolist()) if not _is_int(str(c)))
        raise InvalidInputError(
            f"{path}: {where(i)} has col_id {str(trip.col_ids[i])!r}, unknown to "
            f"{factors.store} (its col_ids are integers); only the store's columns can be "
            "projected: drop its triplets"
        ) from None
    all_cols = sparse.read_ids(group, "cols")
    index = triplets.IdIndex(all_cols).lookup(cols)
    unknown = np.flatnonzero((index < 0) | (index >= n_cols))
    if unknown.size:
        i = int(unknown[0])
        later = int(index[i]) >= n_cols
        raise InvalidInputError(
            f"{path}: {where(i)} has col_id {_show_id(cols[i])}, "
            + (
                f"a column ingested after the factors were written (they cover {n_cols} "
                "columns); run `streamsvd update` first, or drop its triplets"
                if later
                else f"unknown to {factors.store} (not among the {n_cols} columns the factors "
                "cover); only the store's columns can be projected: drop its triplets"
            )
        )
    uniq, first, inverse = np.unique(trip.row_ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(order.shape[0])
    x = scipy.sparse.coo_matrix(
        (values, (position[inverse.ravel()], index)), shape=(order.shape[0], n_cols)
    ).tocsr()
    x.sum_duplicates()
    return uniq[order], x


def _fold_in(x: Any, w: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """``(x − μ) W`` for CSR rows ``x`` (zero off their entries), never densifying ``x``."""
    out = np.asarray(x @ w, dtype=np.float64)
    if mean is not None:
        out -= mean @ w
    return out


def project_triplets(
    store: FactorsLike,
    source: str | Path,
    *,
    rank: int | None = None,
    scores: bool = False,
    version: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold the rows of a triplet file into the factor space of a sparse store.

    Each distinct ``row_id`` of ``source`` (CSV or Parquet, the columns of
    ``ingest --format triplets``) is a row ``x`` over the factors' columns, zero
    off its given col ids; duplicate ``(row_id, col_id)`` pairs are summed. Its
    projection is ``(x − μ) V S⁻¹`` (or ``(x − μ) V`` with ``scores=True``) as in
    :func:`project`. A row id need not be new: a stored row folds in to its row
    of ``U`` (exactly, for an exact fit). Memory: the file's triplets (about 40
    bytes each) plus ``rows × k`` floats of output.

    Returns
    -------
    (ndarray, ndarray)
        The row ids (int64 or strings) in order of first appearance, and their
        projections, shape ``(rows, k)``, float64.

    Raises
    ------
    ConfigError
        The store is dense (it has no col id map).
    InvalidInputError
        A col id the factors do not cover (named, with its line), a NaN/Inf value.
    """
    factors = open_factors(store, version=version)
    w, mean = _projector(factors, rank, scores)
    ids, x = _triplet_rows(factors, Path(source).expanduser())
    return ids, _fold_in(x, w, mean)


def _project_triplets_file(
    factors: Factors,
    source: Path,
    out: str | Path,
    *,
    w: np.ndarray,
    mean: np.ndarray | None,
    scores: bool,
    memory_budget: int,
    overwrite: bool,
    progress: ProgressCallback | None,
    started: float,
) -> OutputReport:
    target, fmt = _output_target(out, overwrite)
    if fmt != "parquet":
        raise ConfigError(
            f"{target}: projecting triplets writes one row per row_id (in order of first "
            "appearance) with the ids in a row_id column, and only Parquet can hold them "
            f"beside the numbers; write --out {target.with_suffix('.parquet')} instead"
        )
    k = w.shape[1]
    source = source.expanduser()
    ids, x = _triplet_rows(factors, source)
    n_rows = int(x.shape[0])
    block_rows = rows_for_budget(k, 8, memory_budget)
    attrs = {
        "streamsvd": {
            "kind": "scores" if scores else "coordinates",
            "rank": k,
            "source": str(source),
            "input": TRIPLETS,
            "store": factors.store,
            "version": factors.version,
        }
    }
    id_kind = "int" if ids.dtype.kind == "i" else "str"
    with _atomic_output(target, fmt, n_rows, k, block_rows, attrs, id_kind=id_kind) as writer:
        assert isinstance(writer, _ParquetOutput)
        for a in range(0, n_rows, block_rows):
            b = min(a + block_rows, n_rows)
            writer.write_with_ids(_fold_in(x[a:b], w, mean), ids[a:b])
            if progress is not None:
                progress(source.name, b, n_rows)
        blocks = writer.blocks
    return OutputReport(target, fmt, n_rows, k, blocks, time.perf_counter() - started)


# -- reconstruction -----------------------------------------------------------


def _row_range(rows: slice, covered: int) -> tuple[int, int]:
    if rows.step not in (None, 1):
        raise ConfigError(f"rows must be a contiguous range (step 1); got step {rows.step}")
    start = 0 if rows.start is None else int(rows.start)
    stop = covered if rows.stop is None else int(rows.stop)
    if not 0 <= start < stop <= covered:
        raise ConfigError(
            f"rows {start}:{stop} are outside the rows the factors cover (0:{covered}); "
            f"give a range A:B with 0 <= A < B <= {covered}"
        )
    return start, stop


def parse_rows(text: str) -> slice:
    """Parse ``"A:B"``, ``"A:"``, ``":B"`` or ``"A"`` (one row) into a slice.

    Examples
    --------
    >>> parse_rows("10:20"), parse_rows(":5"), parse_rows("7")
    (slice(10, 20, None), slice(None, 5, None), slice(7, 8, None))
    """
    parts = text.split(":")
    try:
        if len(parts) == 1:
            row = int(parts[0])
            return slice(row, row + 1)
        if len(parts) == 2:
            start = int(parts[0]) if parts[0].strip() else None
            stop = int(parts[1]) if parts[1].strip() else None
            return slice(start, stop)
    except ValueError:
        pass
    raise ConfigError(f"--rows must be A:B, A:, :B or A (row indices from 0); got {text!r}")


def _check_dense_budget(factors: Factors, start: int, stop: int, budget: int) -> None:
    """Refuse to densify rows ``start:stop`` of a sparse store beyond ``budget`` bytes."""
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 1:
        raise ConfigError(f"memory_budget must be a positive number of bytes; got {budget!r}")
    if not _is_sparse(factors):
        return
    n_cols = int(factors.vt.shape[1])
    size = (stop - start) * n_cols * 8
    if size <= budget:
        return
    fits = int(budget) // (8 * n_cols)
    fewer = (
        f"reconstruct fewer rows (at most {fits} at a time, e.g. --rows {start}:{start + fits})"
        if fits
        else "raise the budget: even one row does not fit"
    )
    raise ConfigError(
        f"rows {start}:{stop} of the sparse store {factors.store} reconstruct to a dense "
        f"{stop - start} × {n_cols} float64 array of {format_bytes(size)} ({size} bytes), "
        f"over the memory budget of {format_bytes(budget)}; {fewer}, raise --memory-mb "
        "(memory_budget=), or list a row's best items with `streamsvd recommend --row ID`"
    )


def _reconstruct_rows(factors: Factors, start: int, stop: int, k: int) -> np.ndarray:
    u_raw = np.asarray(factors.stored.u_raw[start:stop], dtype=np.float64)
    u = u_raw @ factors.stored.t[:, :k]
    out = (u * factors.s[:k]) @ factors.vt[:k]
    if factors.mean is not None:
        out += factors.mean
    return np.asarray(out, dtype=np.float64)


def reconstruct(
    store: FactorsLike,
    rows: slice = slice(None),
    *,
    rank: int | None = None,
    version: str | None = None,
    memory_budget: int = DEFAULT_RECONSTRUCT_BUDGET,
) -> np.ndarray:
    """Rebuild stored rows: ``U[a:b] S Vᵀ`` (+ μ in PCA mode) as a NumPy array.

    Reads only rows ``a:b`` of ``U_raw`` (the chunks that hold them), never the
    data; memory is ``(b − a)·(cols + c)`` floats, ``c`` the columns of
    ``U_raw``. For rows of a large range use :func:`reconstruct_file`, which
    streams.

    Parameters
    ----------
    store : str, Path or Factors
    rows : slice
        A contiguous range ``a:b`` of the rows the factors cover
        (``0 ≤ a < b ≤ rows_covered``; default all).
    rank : int, optional
        Use the first ``rank`` components (default: all).
    version : str, optional
    memory_budget : int
        Largest result for a sparse store, in bytes (``(b − a)·cols·8``): its
        rows are stored sparse but reconstruct dense. Not applied to dense stores.

    Returns
    -------
    ndarray, shape (b − a, cols), float64

    Raises
    ------
    ConfigError
        Rows outside the covered range, naming both; a sparse store's rows whose
        dense size exceeds ``memory_budget``, naming it.
    """
    factors = open_factors(store, version=version)
    k = factors.checked_rank(rank)
    start, stop = _row_range(rows, factors.stored.rows_covered)
    _check_dense_budget(factors, start, stop, memory_budget)
    return _reconstruct_rows(factors, start, stop, k)


def reconstruct_file(
    store: FactorsLike,
    out: str | Path,
    *,
    rows: slice = slice(None),
    rank: int | None = None,
    overwrite: bool = False,
    version: str | None = None,
    block_rows: int | None = None,
    memory_budget: int = DEFAULT_RECONSTRUCT_BUDGET,
) -> OutputReport:
    """Rebuild stored rows ``a:b`` and write them as ``.npy``, ``.parquet`` or ``.zarr``.

    Streams in blocks of whole ``U_raw`` chunks (about 64 MiB of output each by
    default): reads only rows ``a:b`` of ``U_raw``, once; memory is one block.
    For a sparse store the dense output, ``(b − a)·cols·8`` bytes, must fit in
    ``memory_budget`` (else :class:`~streamsvd.errors.ConfigError` naming the
    size), as rows × items of a ratings matrix are far larger than its CSR.
    """
    started = time.perf_counter()
    factors = open_factors(store, version=version)
    k = factors.checked_rank(rank)
    start, stop = _row_range(rows, factors.stored.rows_covered)
    _check_dense_budget(factors, start, stop, memory_budget)
    n_cols = int(factors.vt.shape[1])
    if block_rows is None:
        chunk = int(factors.stored.u_raw.chunks[0])
        block_rows = block_rows_for(chunk, n_cols, 8, budget=OUTPUT_BLOCK_BYTES)
    target, fmt = _output_target(out, overwrite)
    attrs = {
        "streamsvd": {
            "kind": "reconstruction",
            "rank": k,
            "rows": [start, stop],
            "store": factors.store,
            "version": factors.version,
        }
    }
    with _atomic_output(target, fmt, stop - start, n_cols, block_rows, attrs) as writer:
        for a in range(start, stop, block_rows):
            writer.write(_reconstruct_rows(factors, a, min(a + block_rows, stop), k))
        blocks = writer.blocks
    return OutputReport(target, fmt, stop - start, n_cols, blocks, time.perf_counter() - started)


# -- outputs ------------------------------------------------------------------


def _output_target(out: str | Path, overwrite: bool) -> tuple[Path, str]:
    target = Path(out).expanduser()
    fmt = OUTPUT_SUFFIXES.get(target.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"{target}: cannot tell the output format from the suffix "
            f"{target.suffix or '(none)'!r}; use one of {', '.join(OUTPUT_SUFFIXES)}"
        )
    if target.exists() and not overwrite:
        raise StoreExistsError(f"{target} exists; pass --overwrite or choose another path")
    if not target.parent.is_dir():
        raise ConfigError(f"{target}: the folder {target.parent} does not exist; create it first")
    return target, fmt


class _Output(abc.ABC):
    """A float64 (rows × cols) array written block by block at ``path``."""

    def __init__(self, path: Path, n_rows: int | None, n_cols: int, block_rows: int) -> None:
        self.path = path
        self.n_rows = n_rows
        self.n_cols = n_cols
        self.block_rows = block_rows
        self.rows = 0
        self.blocks = 0

    def write(self, block: np.ndarray) -> None:
        self._write(np.ascontiguousarray(block, dtype=np.float64))
        self.rows += block.shape[0]
        self.blocks += 1

    @abc.abstractmethod
    def _write(self, block: np.ndarray) -> None: ...

    @abc.abstractmethod
    def close(self, attrs: dict[str, Any]) -> None: ...

    def abort(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Release handles after a failure (the caller removes the files)."""


class _NpyOutput(_Output):
    """``open_memmap`` of the final shape; rows of unknown count go to a raw file first."""

    def __init__(self, path: Path, n_rows: int | None, n_cols: int, block_rows: int) -> None:
        super().__init__(path, n_rows, n_cols, block_rows)
        self._raw_path = path.with_name(path.name + ".raw")
        self._memmap: Any = None
        self._raw: Any = None
        if n_rows is not None:
            self._memmap = np.lib.format.open_memmap(
                path, mode="w+", dtype=np.float64, shape=(n_rows, n_cols)
            )
        else:
            self._raw = open(self._raw_path, "wb")  # noqa: SIM115 - closed in close/abort

    def _write(self, block: np.ndarray) -> None:
        if self._memmap is not None:
            self._memmap[self.rows : self.rows + block.shape[0]] = block
        else:
            self._raw.write(block.tobytes())

    def close(self, attrs: dict[str, Any]) -> None:
        if self._memmap is not None:
            self._memmap.flush()
            self._memmap = None
            return
        self._raw.close()
        # Rows were unknown until the end (CSV): copy the raw rows under a header.
        target = np.lib.format.open_memmap(
            self.path, mode="w+", dtype=np.float64, shape=(self.rows, self.n_cols)
        )
        if self.rows:
            raw = np.memmap(
                self._raw_path, dtype=np.float64, mode="r", shape=(self.rows, self.n_cols)
            )
            for a in range(0, self.rows, self.block_rows):
                target[a : a + self.block_rows] = raw[a : a + self.block_rows]
            del raw
        target.flush()
        del target
        self._raw_path.unlink()

    def abort(self) -> None:
        self._memmap = None
        if self._raw is not None:
            self._raw.close()
        self._raw_path.unlink(missing_ok=True)


class _ParquetOutput(_Output):
    """``pyarrow.parquet.ParquetWriter``: columns ``c0 … c{k−1}``, one row group per block.

    With ``id_kind`` (``"int"`` or ``"str"``) a leading ``row_id`` column holds the
    ids given to :meth:`write_with_ids`.
    """

    def __init__(
        self,
        path: Path,
        n_rows: int | None,
        n_cols: int,
        block_rows: int,
        *,
        id_kind: str | None = None,
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(path, n_rows, n_cols, block_rows)
        self._pa = pa
        self._names = [f"c{j}" for j in range(n_cols)]
        fields = [(name, pa.float64()) for name in self._names]
        self._id_type = (
            None if id_kind is None else (pa.int64() if id_kind == "int" else pa.string())
        )
        if self._id_type is not None:
            fields.insert(0, ("row_id", self._id_type))
        self._ids: np.ndarray | None = None
        self._schema = pa.schema(fields)
        self._writer = pq.ParquetWriter(str(path), self._schema)

    def write_with_ids(self, block: np.ndarray, ids: np.ndarray) -> None:
        self._ids = ids
        try:
            self.write(block)
        finally:
            self._ids = None

    def _write(self, block: np.ndarray) -> None:
        pa = self._pa
        arrays = [pa.array(block[:, j]) for j in range(self.n_cols)]
        if self._id_type is not None:
            if self._ids is None or self._ids.shape[0] != block.shape[0]:
                raise ValueError("a row_id column needs one id per row: use write_with_ids")
            ids = self._ids.tolist() if self._ids.dtype.kind != "i" else self._ids
            arrays.insert(0, pa.array(ids, type=self._id_type))
        table = pa.Table.from_arrays(arrays, schema=self._schema)
        self._writer.write_table(table, row_group_size=max(1, block.shape[0]))

    def close(self, attrs: dict[str, Any]) -> None:
        self._writer.add_key_value_metadata({"streamsvd": json.dumps(attrs.get("streamsvd", {}))})
        self._writer.close()

    def abort(self) -> None:
        self._writer.close()


class _ZarrOutput(_Output):
    """A Zarr v3 array chunked by whole blocks: every write covers whole chunks, no sharding."""

    def __init__(self, path: Path, n_rows: int | None, n_cols: int, block_rows: int) -> None:

        super().__init__(path, n_rows, n_cols, block_rows)
        self._array = zarr.create_array(
            store=str(path),
            shape=(n_rows or 0, n_cols),
            chunks=(block_rows, n_cols),
            dtype="float64",
            fill_value=0.0,
            zarr_format=3,
            dimension_names=("row", "col"),
        )

    def _write(self, block: np.ndarray) -> None:
        stop = self.rows + block.shape[0]
        if self._array.shape[0] < stop:
            self._array.resize((stop, self.n_cols))
        self._array[self.rows : stop] = block

    def close(self, attrs: dict[str, Any]) -> None:
        self._array.update_attributes(attrs)


_OUTPUTS: dict[str, type[_Output]] = {
    "npy": _NpyOutput,
    "parquet": _ParquetOutput,
    "zarr": _ZarrOutput,
}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def _atomic_output(
    target: Path,
    fmt: str,
    n_rows: int | None,
    n_cols: int,
    block_rows: int,
    attrs: dict[str, Any],
    *,
    id_kind: str | None = None,
) -> Iterator[_Output]:
    """Write to ``.<name>.tmp-<pid>`` beside ``target``; rename on success, remove on failure.

    ``id_kind`` (Parquet only) adds a leading ``row_id`` column (see :class:`_ParquetOutput`).
    """
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    _remove(tmp)
    writer: _Output
    if id_kind is None:
        writer = _OUTPUTS[fmt](tmp, n_rows, n_cols, block_rows)
    else:
        writer = _ParquetOutput(tmp, n_rows, n_cols, block_rows, id_kind=id_kind)
    try:
        yield writer
        if n_rows is not None and writer.rows != n_rows:
            raise InvalidInputError(
                f"{target}: expected {n_rows} rows, wrote {writer.rows}; the input changed "
                "while it was read"
            )
        writer.close(attrs)
    except BaseException:
        writer.abort()
        _remove(tmp)
        raise
    if target.exists():
        _remove(target)
    tmp.rename(target)
