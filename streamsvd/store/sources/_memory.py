"""An in-memory array as a source, for the Python API (``streamsvd.update(store, [x])``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xxhash

from streamsvd.errors import InvalidInputError
from streamsvd.store.sources._base import Block, Source, native_numeric_dtype, slice_blocks


class ArraySource(Source):
    """Rows held in a 2-D NumPy array; ``name`` stands in for a path in messages."""

    format = "array"

    def __init__(self, array: np.ndarray, *, name: str = "array") -> None:
        if array.ndim != 2:
            raise InvalidInputError(
                f"{name}: a matrix must be 2-D, got shape {array.shape}; reshape it to (rows, cols)"
            )
        self.path = Path(name)
        self._array = array
        self.n_cols = int(array.shape[1])
        self.n_rows = self._length = int(array.shape[0])
        self.dtype = native_numeric_dtype(array.dtype, self.path, "the array")

    def _blocks(self, max_rows: int) -> Iterator[Block]:
        return slice_blocks(
            self._length, max_rows, lambda a, b: self._array[a:b], np.dtype(self.dtype)
        )


def array_hash(array: np.ndarray) -> str:
    """Content id of an array: its dtype, shape and bytes (xxh3-128)."""
    digest = xxhash.xxh3_128()
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return "xxh3_128:" + digest.hexdigest()
