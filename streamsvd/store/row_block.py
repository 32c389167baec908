"""Rows of a stored array that a Dask task reads itself.

A pass over a Dask array built with ``da.from_zarr`` is two tasks a block: one
reads it, the next computes on it. Handing the kernel a :class:`RowBlock`
instead makes reading and computing one task, and the block never travels
between workers. On the 2 GB fit benchmark the embedded LocalCluster spent 3-4
ms between tasks on each thread; with half the tasks its fit took 6.97-7.24 s
against 7.28-7.71 s (three alternating pairs), the threaded scheduler's
6.34-6.68 s against 6.22-6.87 s.
"""

from __future__ import annotations

import functools
import itertools
import pickle
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import zarr


class RowBlock:
    """Rows ``start:stop`` of ``array``, read when converted by ``np.asarray``.

    Every task of a pass carries one, as the array's pickled bytes (made once for
    all the blocks by :func:`row_blocks_of`: 1.6 KB for an Icechunk store; a zarr
    ``MemoryStore`` would carry its data too), and a process unpickles them once,
    however many blocks of the array its tasks read.

    Examples
    --------
    >>> import zarr, numpy as np
    >>> z = zarr.create_array(zarr.storage.MemoryStore(), shape=(6, 2), chunks=(2, 2), dtype="i4")
    >>> z[:] = np.arange(12).reshape(6, 2)
    >>> block = RowBlock(z, 2, 4)
    >>> block.shape
    (2, 2)
    >>> np.asarray(block, dtype=np.float64)
    array([[4., 5.],
           [6., 7.]])
    """

    __slots__ = ("_pickled", "array", "start", "stop")

    def __init__(
        self, array: zarr.Array, start: int, stop: int, *, pickled: bytes | None = None
    ) -> None:
        if not 0 <= start <= stop <= array.shape[0]:
            raise ValueError(f"rows {start}:{stop} are outside an array of {array.shape[0]} rows")
        self.array = array
        self.start = start
        self.stop = stop
        self._pickled = pickled

    def __reduce__(self) -> tuple[Any, ...]:
        # The array travels as bytes that a process unpickles once (see _array_from):
        # the tasks of a pass on one worker then share one array and its store's
        # caches, as the tasks of ``da.from_zarr`` share their one array key.
        pickled = self._pickled if self._pickled is not None else pickle.dumps(self.array)
        return (_row_block_from, (type(self), pickled, self.start, self.stop))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the rows, as read."""
        return (self.stop - self.start, *self.array.shape[1:])

    @property
    def dtype(self) -> np.dtype[Any]:
        """The array's dtype."""
        return np.dtype(self.array.dtype)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("a RowBlock's rows are read from the store: there is no copy to avoid")
        rows = np.asarray(self.array[self.start : self.stop])
        return rows if dtype is None else rows.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"RowBlock({self.array.path or '/'}, rows {self.start}:{self.stop})"


@functools.lru_cache(maxsize=1)  # the array of the fit at hand; an older one is let go
def _array_from(pickled: bytes) -> zarr.Array:
    """The array these bytes pickle, unpickled once per process (our own bytes)."""
    return cast(zarr.Array, pickle.loads(pickled))


def _row_block_from(cls: type[RowBlock], pickled: bytes, start: int, stop: int) -> RowBlock:
    return cls(_array_from(pickled), start, stop, pickled=pickled)


def row_blocks_of(array: zarr.Array, row_chunks: Sequence[int]) -> list[RowBlock]:
    """One :class:`RowBlock` per block of rows, in order (``row_chunks``: rows of each).

    >>> import zarr
    >>> z = zarr.create_array(zarr.storage.MemoryStore(), shape=(5, 1), dtype="f8")
    >>> [(b.start, b.stop) for b in row_blocks_of(z, (2, 2, 1))]
    [(0, 2), (2, 4), (4, 5)]
    """
    starts = np.concatenate([[0], np.cumsum(row_chunks, dtype=np.int64)])
    pickled = pickle.dumps(array)  # once for all the blocks
    return [
        RowBlock(array, int(lo), int(hi), pickled=pickled) for lo, hi in itertools.pairwise(starts)
    ]
