"""`.npy` files, read through a read-only memory map."""

from __future__ import annotations

import contextlib
import math
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from streamsvd.errors import InvalidInputError, UnsupportedFormatError
from streamsvd.store.sources._base import (
    Block,
    Source,
    native_numeric_dtype,
    require_2d,
    slice_blocks,
    wrap_error,
)


class NpySource(Source):
    """A 2-D numeric array in a ``.npy`` file (NumPy format 1.0–3.0).

    Blocks are copies of row slices of a read-only memory map: memory is one
    block, whatever the size of the file. Fortran-ordered files are read
    correctly but each block gathers strided rows (slower).
    """

    format = "npy"

    def __init__(self, path: Path, array: np.ndarray, dtype: np.dtype) -> None:
        self.path = path
        self._array: Any = array
        self.n_rows, self.n_cols = int(array.shape[0]), int(array.shape[1])
        self.dtype = dtype

    @classmethod
    def open(cls, path: Path) -> NpySource:
        """Check the header and size of `path`, then memory-map it."""
        try:
            size = os.path.getsize(path)
            if size == 0:
                raise InvalidInputError(f"{path}: the file is empty (0 bytes); nothing to read")
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                shape, _fortran, dtype = _read_header(f, version)
                offset = f.tell()
        except InvalidInputError:
            raise
        except (OSError, ValueError, SyntaxError) as exc:
            wrap_error(path, "read it as a .npy file", exc)
        if dtype.hasobject:
            raise UnsupportedFormatError(
                f"{path}: the array has object dtype {dtype}; streamsvd never unpickles "
                "data: save a numeric array (e.g. x.astype(np.float64))"
            )
        dtype = native_numeric_dtype(dtype, path, "the array")
        require_2d(shape, path, "the array")
        expected = offset + math.prod(shape) * dtype.itemsize
        if size < expected:
            raise InvalidInputError(
                f"{path}: the file is truncated: its header says {shape} {dtype} "
                f"({expected} bytes with the header), but the file has {size} bytes; "
                "copy or write it again"
            )
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            wrap_error(path, "memory-map it", exc)
        return cls(path, array, dtype)

    def _blocks(self, max_rows: int) -> Iterator[Block]:
        array = self._array

        def read(start: int, stop: int) -> np.ndarray:
            try:
                block = np.array(array[start:stop], dtype=self.dtype, order="C")
            except OSError as exc:  # e.g. an I/O error on a network file system
                wrap_error(self.path, f"read rows {start}..{stop - 1}", exc)
            _release(array, start, stop)
            return block

        return slice_blocks(int(array.shape[0]), max_rows, read, self.dtype)

    def _close(self) -> None:
        # Blocks are copies, so dropping the last reference unmaps the file.
        self._array = None


def _release(array: Any, start: int, stop: int) -> None:
    """Drop the pages of rows ``start:stop`` from this process's mapping.

    The rows were copied out; without this, every page read stays mapped and
    counts in the resident set until the whole file is (peak RSS would grow
    with the file). The kernel keeps them in its page cache, so nothing is
    read twice. C-ordered files only; a no-op where ``madvise`` is missing.
    """
    mm = getattr(array, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not array.flags.c_contiguous:
        return
    row_bytes = int(np.prod(array.shape[1:])) * array.dtype.itemsize
    base = int(array.offset)
    page = mmap.PAGESIZE
    first = (base + start * row_bytes) // page * page
    last = (base + stop * row_bytes) // page * page  # keep the page shared with the next rows
    if last > first:
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_DONTNEED, first, last - first)


def _read_header(f: Any, version: tuple[int, int]) -> tuple[tuple[int, ...], bool, np.dtype]:
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    # NumPy 3.0 headers are 2.0 headers in UTF-8; numpy has no public reader.
    return np.lib.format._read_array_header(f, version)  # type: ignore[attr-defined]
