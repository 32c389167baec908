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

from streamsvd.api import Factors, open_factors
from streamsvd.errors import ConfigError, InvalidInputError, ShapeMismatchError, StoreExistsError
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


def _as_factors(store: FactorsLike, version: str | None) -> Factors:
    if isinstance(store, Factors):
        return store
    return open_factors(store, version=version)


def _check_rank(rank: int | None, factors: Factors) -> int:
    k = factors.rank if rank is None else rank
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= factors.rank:
        raise ConfigError(
            f"--rank must be an integer between 1 and the fitted rank {factors.rank}; got {rank!r}"
        )
    return int(k)


def projection_matrix(
    factors: Factors, *, rank: int | None = None, scores: bool = False
) -> np.ndarray:
    """The (cols × k) matrix ``W`` with ``projection = (x − μ) W``.

    ``W = V[:, :k] S[:k]⁻¹`` (coordinates) or ``V[:, :k]`` (scores); columns of
    numerically zero singular values are 0.
    """
    k = _check_rank(rank, factors)
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
    factors = _as_factors(store, version)
    w = projection_matrix(factors, rank=rank, scores=scores)
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
        block = max(1, (64 * 1024 * 1024) // (8 * max(1, n_cols)))
        arr = da.from_array(np.asarray(x), chunks=(block, n_cols))
    mean = None if factors.mean is None else np.asarray(factors.mean, dtype=np.float64)
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
        As in :func:`streamsvd.store.sources.open_source`.
    memory_budget : int
        Bytes of one input block.
    overwrite : bool
        Replace ``out`` if it exists (else :class:`~streamsvd.errors.StoreExistsError`).
    progress : callable, optional
        ``progress(name, rows_done, rows_total_or_None)`` after each block.

    Returns
    -------
    OutputReport
    """
    started = time.perf_counter()
    factors = _as_factors(store, version)
    w = projection_matrix(factors, rank=rank, scores=scores)
    mean = None if factors.mean is None else np.asarray(factors.mean, dtype=np.float64)
    n_cols, k = w.shape
    target, fmt = _output_target(out, overwrite)
    with open_source(source, format=format, dataset=dataset) as src:
        if src.n_cols != n_cols:
            raise ShapeMismatchError(
                f"{src.path}: has {src.n_cols} columns but the factors of {factors.store} "
                f"have {n_cols}; project rows with the store's columns"
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

    Returns
    -------
    ndarray, shape (b − a, cols), float64

    Raises
    ------
    ConfigError
        Rows outside the covered range, naming both.
    """
    factors = _as_factors(store, version)
    k = _check_rank(rank, factors)
    start, stop = _row_range(rows, factors.stored.rows_covered)
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
) -> OutputReport:
    """Rebuild stored rows ``a:b`` and write them as ``.npy``, ``.parquet`` or ``.zarr``.

    Streams in blocks of whole ``U_raw`` chunks (about 64 MiB of output each by
    default): reads only rows ``a:b`` of ``U_raw``, once; memory is one block.
    """
    started = time.perf_counter()
    factors = _as_factors(store, version)
    k = _check_rank(rank, factors)
    start, stop = _row_range(rows, factors.stored.rows_covered)
    n_cols = int(factors.vt.shape[1])
    if block_rows is None:
        chunk = int(factors.stored.u_raw.chunks[0])
        per_block = max(1, (64 * 1024 * 1024) // (8 * n_cols * chunk))
        block_rows = chunk * per_block
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
    """``pyarrow.parquet.ParquetWriter``: columns ``c0 … c{k−1}``, one row group per block."""

    def __init__(self, path: Path, n_rows: int | None, n_cols: int, block_rows: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(path, n_rows, n_cols, block_rows)
        self._pa = pa
        self._names = [f"c{j}" for j in range(n_cols)]
        self._schema = pa.schema([(name, pa.float64()) for name in self._names])
        self._writer = pq.ParquetWriter(str(path), self._schema)

    def _write(self, block: np.ndarray) -> None:
        pa = self._pa
        table = pa.Table.from_arrays(
            [pa.array(block[:, j]) for j in range(self.n_cols)], schema=self._schema
        )
        self._writer.write_table(table, row_group_size=max(1, block.shape[0]))

    def close(self, attrs: dict[str, Any]) -> None:
        self._writer.add_key_value_metadata({"streamsvd": json.dumps(attrs.get("streamsvd", {}))})
        self._writer.close()

    def abort(self) -> None:
        self._writer.close()


class _ZarrOutput(_Output):
    """A Zarr v3 array chunked by whole blocks: every write covers whole chunks, no sharding."""

    def __init__(self, path: Path, n_rows: int | None, n_cols: int, block_rows: int) -> None:
        import zarr

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
        self._array.attrs.update(attrs)


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
) -> Iterator[_Output]:
    """Write to ``.<name>.tmp-<pid>`` beside ``target``; rename on success, remove on failure."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    _remove(tmp)
    writer = _OUTPUTS[fmt](tmp, n_rows, n_cols, block_rows)
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
