"""Ingest: append row sources to a store, validated, in bounded memory, one commit.

Memory stays within a budget whatever the file size: sources are read in row
blocks of at most ``memory_budget`` bytes. Every ingest is one commit: readers
see all of its batches or none, a crash leaves the previous version, and a
re-run finishes the work. A batch whose content hash is already in the log is
skipped (said so in the report), which makes retries idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any, cast

import numpy as np

from streamsvd.errors import ConfigError, InvalidInputError, ShapeMismatchError
from streamsvd.store import checkpoints, layout, sparse
from streamsvd.store.matrix import (
    BatchRecord,
    MatrixMeta,
    RowAppender,
    init_matrix,
    matrix_array,
    read_batch_log,
    read_meta,
    write_batch_log,
)
from streamsvd.store.repository import Store, Transaction
from streamsvd.store.sources import (
    Source,
    content_hash,
    expand_sources,
    open_source,
    rows_for_budget,
)
from streamsvd.store.sources._memory import ArraySource, array_hash

NAN_POLICIES = ("reject", "zero", "drop")
DEFAULT_MEMORY_BUDGET = 64 * 1024 * 1024  # measured: benchmarks/ingest.py, README

ProgressCallback = Callable[[str, int, int | None], None]
#: Called with each validated block as written: (rows in the store dtype, first
#: store row, whether it is the first block of its batch).
BlockCallback = Callable[[np.ndarray, int, bool], None]
SourceLike = str | Path | np.ndarray


@dataclass(frozen=True)
class IngestOptions:
    """How sources are read and, for a new store, how it is laid out.

    Parameters
    ----------
    format : str
        ``auto`` (from the suffix) or one of npy, csv, parquet, hdf5, zarr; or
        ``triplets``: ``row_id, col_id, value`` CSV/Parquet files into a sparse store
        (see :mod:`streamsvd.store.triplets`). Sources of an existing sparse store are
        always read as triplets.
    dataset : str, optional
        Dataset path inside HDF5 files (or array path inside a Zarr group).
    chunk_rows : int, optional
        Rows per chunk of a new store (default: about 8 MiB per chunk).
    dtype : str, optional
        ``float32`` or ``float64`` for a new store (default: from the first source).
    codec : str
        Compression of a new store: ``auto`` (default: lz4 when it shrinks the first
        rows by 20 % or more, else none; see :func:`streamsvd.store.layout.resolve_codec`),
        ``lz4``, ``zstd`` or ``none``.
    nan : str
        ``reject`` (default) NaN/Inf, ``zero`` them, or ``drop`` their rows.
    memory_budget : int
        Bytes of one block read from a source.
    """

    format: str = "auto"
    dataset: str | None = None
    chunk_rows: int | None = None
    dtype: str | None = None
    codec: str = layout.DEFAULT_CODEC
    nan: str = "reject"
    memory_budget: int = DEFAULT_MEMORY_BUDGET

    def __post_init__(self) -> None:
        if self.nan not in NAN_POLICIES:
            raise ConfigError(f"--nan must be one of {', '.join(NAN_POLICIES)}; got {self.nan!r}")
        if self.dtype is not None and self.dtype not in layout.STORE_DTYPES:
            raise ConfigError(
                f"--dtype must be one of {', '.join(layout.STORE_DTYPES)}; got {self.dtype!r}"
            )
        if self.codec not in layout.CODECS:
            raise ConfigError(
                f"--codec must be one of {', '.join(layout.CODECS)}; got {self.codec!r}"
            )
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise ConfigError(f"--chunk-rows must be at least 1; got {self.chunk_rows}")
        if self.memory_budget < 1024:
            raise ConfigError(
                f"the memory budget must be at least 1024 bytes; got {self.memory_budget}"
            )


@dataclass(frozen=True)
class Skipped:
    """A source that was not ingested, and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class IngestReport:
    """What an ingest did."""

    store: str
    version: str | None
    batches: list[BatchRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    rows_added: int = 0
    seconds: float = 0.0
    created: bool = False

    @property
    def changed(self) -> bool:
        return self.version is not None


def ingest(
    store: str | Path,
    sources: Sequence[SourceLike],
    *,
    options: IngestOptions | None = None,
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """Append the rows of ``sources`` to ``store`` in one commit.

    The store is created on first use. Sources are files, directories (landing
    folders: new files in name order) or globs; each file is one batch.

    Parameters
    ----------
    store : str or Path
        A local path or ``s3://bucket/prefix``.
    sources : sequence of str, Path or ndarray
        Files, directories or glob patterns; in-memory 2-D arrays too (Python API).
    options : IngestOptions, optional
        Reading and layout options.
    progress : callable, optional
        Called as ``progress(source_name, rows_done, rows_total_or_None)``.

    Returns
    -------
    IngestReport
        The new version (None when nothing changed), batches and skipped sources.

    Memory: one block of at most ``options.memory_budget`` bytes, twice (read and
    cast), plus one chunk being compressed per thread. Passes: one over each source
    to hash it, one to read it.
    """
    options = options or IngestOptions()
    started = time.perf_counter()
    items = resolve_sources(sources)
    with Store.open_for_writing(store) as opened:
        created = not opened.is_initialized()
        with opened.transaction() as tx:
            report = ingest_into(tx, items, options, progress, created=created)
            if report.batches:
                version = tx.commit(
                    _commit_message(report.batches),
                    metadata={"operation": "ingest", "batches": [b.id for b in report.batches]},
                )
            else:
                version = None
        return IngestReport(
            store=str(opened.location),
            version=version,
            batches=report.batches,
            skipped=report.skipped,
            rows_added=sum(b.rows for b in report.batches),
            seconds=time.perf_counter() - started,
            created=created and version is not None,
        )


@dataclass(frozen=True)
class SourceItem:
    """One batch to ingest: a file path or an in-memory array."""

    name: str
    path: Path | None = None
    array: np.ndarray | None = None

    def identify(self, dataset: str | None) -> tuple[str, tuple[int, int]]:
        """The batch id and the ``(size, mtime_ns)`` the file had just before hashing.

        The stat is taken first: a file changed while (or after) it is hashed then
        logs the stat of the content that was hashed, or an older one, never a newer
        stat under an older hash (which would let a landing listing skip the change).
        Arrays have no stat: ``(-1, -1)``.
        """
        if self.array is not None:
            return array_hash(self.array), (-1, -1)
        path = Path(self.path or self.name)
        stat = file_stat(path)
        return content_hash(path, dataset=dataset), stat

    def open(self, options: IngestOptions) -> Source:
        if self.array is not None:
            return ArraySource(self.array, name=self.name)
        path = Path(self.path or self.name)
        return open_source(path, format=options.format, dataset=options.dataset)


def resolve_sources(sources: Sequence[SourceLike]) -> list[SourceItem]:
    """Expand paths (folders, globs) in order; arrays stay as they are."""
    items: list[SourceItem] = []
    pending: list[str | Path] = []

    def flush() -> None:
        if pending:
            items.extend(SourceItem(str(p), path=p) for p in expand_sources(pending))
            pending.clear()

    for index, source in enumerate(sources):
        if isinstance(source, np.ndarray):
            flush()
            items.append(SourceItem(f"array[{index}]", array=source))
        else:
            pending.append(source)
    flush()
    return items


@dataclass
class _Partial:
    batches: list[BatchRecord]
    skipped: list[Skipped]


def ingest_into(
    tx: Transaction,
    items: list[SourceItem],
    options: IngestOptions,
    progress: ProgressCallback | None,
    *,
    created: bool,
    on_block: BlockCallback | None = None,
) -> _Partial:
    """Ingest ``items`` into an open transaction (no commit); see :func:`ingest`.

    Triplet files (``options.format == "triplets"``, or any source of an existing
    sparse store) go to :func:`streamsvd.store.triplets.ingest_triplets_into`.
    """
    group = tx.group
    meta = None if created else read_meta(group)
    if options.format == "triplets" or (meta is not None and meta.kind == sparse.KIND):
        from streamsvd.store.triplets import ingest_triplets_into

        return cast(
            _Partial,
            ingest_triplets_into(
                tx, items, options, progress, created=created, on_block=on_block, meta=meta
            ),
        )
    log = [] if created else read_batch_log(group)
    known = {b.id: b for b in log}
    partial = _Partial(batches=[], skipped=[])

    # Open everything and check shapes before the first write: a wrong column
    # count anywhere fails the whole ingest before any data moves.
    opened: list[tuple[str, str, tuple[int, int], Source]] = []
    try:
        for item in items:
            path = item.name
            if item.array is not None and item.array.ndim == 2 and item.array.shape[0] == 0:
                partial.skipped.append(Skipped(path, "no rows: nothing to do"))
                continue
            batch_id, stat = item.identify(options.dataset)
            if batch_id in known:
                prev = known[batch_id]
                partial.skipped.append(
                    Skipped(
                        str(path),
                        f"already ingested as batch {batch_id[:20]}… from {prev.source} "
                        f"(rows {prev.row_start}–{prev.row_stop}); nothing to do",
                    )
                )
                continue
            if any(batch_id == other for _, other, _, _ in opened):
                partial.skipped.append(
                    Skipped(str(path), "same content as an earlier source in this ingest")
                )
                continue
            source = item.open(options)
            opened.append((path, batch_id, stat, source))
            expected = meta.n_cols if meta is not None else opened[0][3].n_cols
            if source.n_cols != expected:
                where = (
                    f"the store has {expected} columns"
                    if meta is not None
                    else f"the first source {opened[0][0]} has {expected}"
                )
                raise ShapeMismatchError(
                    f"{path}: {source.n_cols} columns, but {where}; every row of a store "
                    "has the same columns. Fix the file, or ingest it into another store."
                )
        if not opened:
            return partial
        if meta is None:
            first = opened[0][3]
            dtype = options.dtype or layout.default_store_dtype(np.dtype(first.dtype))
            chunk_rows = options.chunk_rows or layout.default_chunk_rows(
                first.n_cols, np.dtype(dtype).itemsize
            )
            sample = _first_rows(first, chunk_rows, dtype) if options.codec == "auto" else None
            codec = layout.resolve_codec(options.codec, sample)
            meta = MatrixMeta(n_cols=first.n_cols, dtype=dtype, chunk_rows=chunk_rows, codec=codec)
            init_matrix(group, meta)
        array = matrix_array(group)
        checkpoints.reached("after-open")
        for path, batch_id, stat, source in opened:
            record = _ingest_one(
                array, meta, path, batch_id, stat, source, options, progress, on_block
            )
            log.append(record)
            partial.batches.append(record)
        write_batch_log(group, log)
    finally:
        for _, _, _, source in opened:
            source.close()
    return partial


def _first_rows(source: Source, rows: int, dtype: str) -> np.ndarray | None:
    """Up to ``rows`` first rows of ``source`` in ``dtype`` (a sample for the codec)."""
    blocks = source.blocks(rows)
    try:
        block = next(blocks, None)
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()
    if block is None:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(block.data, dtype=dtype)


def _ingest_one(
    array: Any,
    meta: MatrixMeta,
    path: str,
    batch_id: str,
    stat: tuple[int, int],
    source: Source,
    options: IngestOptions,
    progress: ProgressCallback | None,
    on_block: BlockCallback | None,
) -> BatchRecord:
    store_dtype = np.dtype(meta.dtype)
    itemsize = max(np.dtype(source.dtype).itemsize, store_dtype.itemsize)
    # Blocks are whole multiples of the chunk so writes stay chunk-aligned.
    rows = rows_for_budget(meta.n_cols, itemsize, options.memory_budget)
    rows = max(meta.chunk_rows, (rows // meta.chunk_rows) * meta.chunk_rows)
    row_start = array.shape[0]
    nan_values = dropped = done = 0
    first = True
    with RowAppender(array) as appender:
        for block in source.blocks(rows):
            data, n_bad, n_dropped = _validate(block.data, block.row_start, source, options.nan)
            nan_values += n_bad
            dropped += n_dropped
            data = _cast(data, store_dtype, block.row_start, source)
            if data.shape[0]:
                start, _ = appender.append(data)
                if on_block is not None:
                    on_block(data, start, first)
                    first = False
            done += block.data.shape[0]
            if progress is not None:
                progress(Path(path).name, done, source.n_rows)
            checkpoints.reached("after-block")
    row_stop = array.shape[0]
    if done == 0:
        raise InvalidInputError(f"{path} is empty: it has no data rows. Remove it or fill it.")
    size, mtime_ns = stat
    return BatchRecord(
        id=batch_id,
        source=path,
        row_start=row_start,
        row_stop=row_stop,
        rows=row_stop - row_start,
        format=source.format,
        nan_policy=options.nan,
        nan_values=nan_values,
        dropped_rows=dropped,
        time=layout.now(),
        size=size,
        mtime_ns=mtime_ns,
    )


def file_stat(path: str | Path) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a regular file, ``(-1, -1)`` for anything else."""
    try:
        stat = Path(path).stat()
    except OSError:
        return -1, -1
    if not S_ISREG(stat.st_mode):
        return -1, -1
    return int(stat.st_size), int(stat.st_mtime_ns)


def _validate(
    data: np.ndarray[Any, Any], row_start: int, source: Source, policy: str
) -> tuple[np.ndarray[Any, Any], int, int]:
    """Apply the NaN/Inf policy; returns (data, values replaced, rows dropped)."""
    if data.dtype.kind != "f":
        return data, 0, 0
    finite = np.isfinite(data)
    if finite.all():
        return data, 0, 0
    if policy == "reject":
        row, col = np.argwhere(~finite)[0]
        value = data[row, col]
        raise InvalidInputError(
            f"{source.path}: {source.describe_row(row_start + int(row))}, column {int(col) + 1} "
            f"holds {value}; NaN and Inf are rejected. Clean the file, or pass --nan zero "
            "(replace them by 0) or --nan drop (drop their rows)."
        )
    if policy == "zero":
        bad = int((~finite).sum())
        data = np.where(finite, data, 0).astype(data.dtype, copy=False)
        return data, bad, 0
    keep = finite.all(axis=1)
    bad = int((~finite).sum())
    return np.ascontiguousarray(data[keep]), bad, int((~keep).sum())


def _cast(
    data: np.ndarray[Any, Any], dtype: np.dtype[Any], row_start: int, source: Source
) -> np.ndarray[Any, Any]:
    if data.dtype == dtype:
        return data
    with np.errstate(over="ignore", invalid="ignore"):
        cast = data.astype(dtype)
    if data.dtype.kind == "f" and dtype.itemsize < data.dtype.itemsize:
        finite = np.isfinite(cast)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            raise InvalidInputError(
                f"{source.path}: {source.describe_row(row_start + int(row))}, column "
                f"{int(col) + 1} holds {data[row, col]}, beyond the range of the store's "
                f"{dtype}; create the store with --dtype float64 or scale the data."
            )
    return cast


def _commit_message(batches: list[BatchRecord]) -> str:
    rows = sum(b.rows for b in batches)
    names = ", ".join(Path(b.source).name for b in batches[:3])
    more = f" and {len(batches) - 3} more" if len(batches) > 3 else ""
    return f"ingest {len(batches)} batch(es), {rows} rows: {names}{more}"
