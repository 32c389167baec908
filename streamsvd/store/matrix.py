"""The data matrix and the batch log inside a store's root group."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import zarr

from streamsvd.errors import NotAStoreError
from streamsvd.store import layout


@dataclass(frozen=True)
class MatrixMeta:
    """What a store's matrix is: fixed at creation."""

    n_cols: int
    dtype: str
    chunk_rows: int
    codec: str
    kind: str = "dense"
    format: int = layout.FORMAT_VERSION
    created: str = ""


@dataclass(frozen=True)
class BatchRecord:
    """One ingested batch: a source's rows, identified by their content hash."""

    id: str
    source: str
    row_start: int
    row_stop: int
    rows: int
    format: str
    nan_policy: str
    nan_values: int
    dropped_rows: int
    time: str
    # The source file's size and modification time when it was read (-1 for
    # in-memory arrays): a landing-folder listing skips re-hashing a file whose
    # path, size and mtime are logged, so its cost does not grow with history.
    size: int = -1
    mtime_ns: int = -1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def init_matrix(group: zarr.Group, meta: MatrixMeta) -> zarr.Array:
    """Create the empty matrix and batch log in a new store's root group."""
    created = meta.created or layout.now()
    meta = MatrixMeta(**{**asdict(meta), "created": created})
    group.attrs[layout.FORMAT_KEY] = asdict(meta)
    # No sharding codec: Dask writes whole chunks only (dask#12583, zarr#3682).
    array = group.create_array(
        layout.MATRIX,
        shape=(0, meta.n_cols),
        chunks=(meta.chunk_rows, meta.n_cols),
        dtype=meta.dtype,
        compressors=layout.compressors_for(meta.codec),
        fill_value=0.0,
        dimension_names=("row", "col"),
    )
    batches = group.create_group(layout.BATCHES)
    batches.attrs["log"] = []
    return array


def read_meta(group: zarr.Group) -> MatrixMeta:
    raw: Any = group.attrs.get(layout.FORMAT_KEY)
    if not isinstance(raw, dict):
        raise NotAStoreError("the store's root group has no streamsvd metadata")
    if int(raw.get("format", 0)) > layout.FORMAT_VERSION:
        raise NotAStoreError(
            f"the store was written by a newer streamsvd (format {raw.get('format')}, "
            f"this one reads up to {layout.FORMAT_VERSION}); upgrade streamsvd"
        )
    fields = MatrixMeta.__dataclass_fields__
    return MatrixMeta(**{k: v for k, v in raw.items() if k in fields})


def matrix_array(group: zarr.Group) -> zarr.Array:
    return cast(zarr.Array, group[layout.MATRIX])


def read_batch_log(group: zarr.Group) -> list[BatchRecord]:
    entries: list[dict[str, Any]] = cast(Any, group[layout.BATCHES].attrs.get("log", []))
    fields = BatchRecord.__dataclass_fields__
    return [BatchRecord(**{k: v for k, v in e.items() if k in fields}) for e in entries]


def write_batch_log(group: zarr.Group, records: list[BatchRecord]) -> None:
    group[layout.BATCHES].attrs["log"] = [r.to_json() for r in records]


class RowAppender:
    """Appends blocks to the matrix in a background thread, one write in flight.

    Reading and validating the next block overlaps the compression and write of
    the current one; memory holds at most two blocks. Writes keep their order
    (one worker thread). Use as a context manager; :meth:`flush` waits for the
    last write and raises its error, if any.
    """

    def __init__(self, array: zarr.Array) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.array = array
        self.rows = int(array.shape[0])
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamsvd-write")
        self._pending: Any = None

    def append(self, block: np.ndarray[Any, Any]) -> tuple[int, int]:
        """Queue ``block`` for writing after the current rows; returns its row range."""
        self.flush()
        start, stop = self.rows, self.rows + block.shape[0]
        self._pending = self._pool.submit(_write_rows, self.array, block, start)
        self.rows = stop
        return start, stop

    def flush(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> RowAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.flush()
        finally:
            self._pool.shutdown(wait=True)


def _write_rows(array: zarr.Array, block: np.ndarray[Any, Any], start: int) -> None:
    array.resize((start + block.shape[0], array.shape[1]))
    write_rows(array, block, start)


def write_rows(array: zarr.Array, rows: np.ndarray[Any, Any], start: int) -> None:
    """``array[start : start + len(rows)] = rows``, one row chunk per assignment.

    Zarr passes a value that is exactly one chunk to the codecs as it is; a value
    spanning several chunks is copied piece by piece into new fill-valued chunks
    first. Ingest's and the update's appends (:class:`RowAppender`) write this way,
    and ``U_raw``'s rows where :func:`streamsvd.store.chunks.write_whole_chunks`
    cannot (:func:`streamsvd.store.factors.write_u_raw_rows`).
    """
    step = int(array.chunks[0])
    stop = start + rows.shape[0]
    lo = start
    while lo < stop:
        hi = min(stop, (lo // step + 1) * step)
        array[lo:hi] = rows[lo - start : hi - start]
        lo = hi


def append_block(array: zarr.Array, block: np.ndarray[Any, Any]) -> tuple[int, int]:
    """Append rows at the end of the matrix; returns their row range."""
    start = int(array.shape[0])
    _write_rows(array, block, start)
    return start, start + block.shape[0]
