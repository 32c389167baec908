"""The `Source` interface, `Block`, and helpers shared by every backend."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

import numpy as np

from streamsvd.errors import ConfigError, InvalidInputError, UnsupportedFormatError

#: Formats `open_source` understands; ``"auto"`` picks one from the path.
FORMATS: tuple[str, ...] = ("auto", "npy", "csv", "parquet", "hdf5", "zarr")

#: dtype kinds a source may yield: bool, signed and unsigned integers, floats.
NUMERIC_KINDS = "biuf"

_MAX_VALUE_CHARS = 40


@dataclass(frozen=True)
class Block:
    """Consecutive data rows read from a source.

    Attributes
    ----------
    row_start : int
        Index (0-based, data rows only) of the block's first row within its source.
    data : numpy.ndarray
        C-contiguous array of shape ``(n_rows_in_block, n_cols)`` in the source's
        native dtype (bool, int*, uint* or float*).
    """

    row_start: int
    data: np.ndarray

    @property
    def row_stop(self) -> int:
        """Index one past the block's last row."""
        return self.row_start + int(self.data.shape[0])


class Source(abc.ABC):
    """A matrix stored in a file (or a Zarr directory), read in row blocks.

    Obtain one with `open_source`; constructors do no I/O. A source is a context
    manager and is closed on exit. Every call to `blocks` reads from the first
    row again; memory is bounded by one block plus the reader's own buffers,
    never by the size of the file.

    Attributes
    ----------
    path : pathlib.Path
        The file or directory read.
    format : str
        One of ``FORMATS`` other than ``"auto"``.
    n_cols : int
        Number of columns.
    n_rows : int or None
        Number of data rows, or None where it is unknown without reading the
        whole file (CSV, until `blocks` has run to the end once).
    dtype : numpy.dtype
        dtype (native byte order) of the blocks' data.
    column_names : tuple of str or None
        Column names where the format has them (CSV header, Parquet columns).
    """

    path: Path
    format: str
    n_cols: int
    n_rows: int | None
    dtype: np.dtype
    column_names: tuple[str, ...] | None = None
    _closed: bool = False

    def blocks(self, max_rows: int) -> Iterator[Block]:
        """Yield the data rows as consecutive blocks.

        Parameters
        ----------
        max_rows : int
            Rows per block (>= 1). Every block but the last has exactly this many
            rows; use `rows_for_budget` to derive it from a memory budget.

        Yields
        ------
        Block
            Blocks whose ``row_start`` values are 0, max_rows, 2·max_rows, ...

        Raises
        ------
        InvalidInputError
            When the data breaks a rule (non-numeric, ragged, unreadable), naming
            the file and the row or line.
        """
        if isinstance(max_rows, bool) or not isinstance(max_rows, int | np.integer):
            raise ConfigError(f"max_rows must be an integer >= 1, got {max_rows!r}")
        if max_rows < 1:
            raise ConfigError(f"max_rows must be >= 1, got {max_rows}")
        if self._closed:
            raise InvalidInputError(
                f"{self.path}: the source is closed; open it again with open_source()"
            )
        return self._blocks(int(max_rows))

    @abc.abstractmethod
    def _blocks(self, max_rows: int) -> Iterator[Block]:
        """Yield blocks of exactly `max_rows` rows (the last may be shorter)."""

    def describe_row(self, row: int) -> str:
        """Say where data row `row` (0-based) is, for error messages.

        Returns
        -------
        str
            ``"row 17"`` (the 0-based data row index) for array formats;
            ``"line 19"`` (the 1-based physical line, header included) for CSV.
        """
        return f"row {row}"

    def close(self) -> None:
        """Release the file handles; idempotent."""
        if not self._closed:
            self._closed = True
            self._close()

    def _close(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Release backend resources."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        rows = "?" if self.n_rows is None else str(self.n_rows)
        return (
            f"<{type(self).__name__} {self.format} {str(self.path)!r} "
            f"({rows} × {self.n_cols}, {self.dtype})>"
        )


def rows_for_budget(n_cols: int, itemsize: int, budget_bytes: int) -> int:
    """Rows per block such that one block of ``(rows, n_cols)`` fits in `budget_bytes`.

    Parameters
    ----------
    n_cols : int
        Columns of the matrix (>= 1).
    itemsize : int
        Bytes per value (``dtype.itemsize``, >= 1).
    budget_bytes : int
        Memory allowed for one block (>= 1).

    Returns
    -------
    int
        ``max(1, budget_bytes // (n_cols * itemsize))``: at least one row even
        when a single row exceeds the budget.

    Examples
    --------
    >>> rows_for_budget(1000, 8, 16 * 2**20)
    2097
    """
    if n_cols < 1 or itemsize < 1:
        raise InvalidInputError(
            f"n_cols and itemsize must be >= 1, got n_cols={n_cols}, itemsize={itemsize}"
        )
    if budget_bytes < 1:
        raise ConfigError(f"the memory budget must be >= 1 byte, got {budget_bytes}")
    return max(1, budget_bytes // (n_cols * itemsize))


def truncate_value(value: object) -> str:
    """``repr`` of a bad value for a message, cut to 40 characters."""
    text = str(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 1] + "…"
    return repr(text)


def native_numeric_dtype(
    dtype: np.dtype, path: Path, what: str, *, error: type[InvalidInputError] | None = None
) -> np.dtype:
    """Check that `dtype` is bool/int/uint/float; return it in native byte order."""
    if dtype.names is not None or dtype.subdtype is not None:
        kind = "a structured (record)" if dtype.names is not None else "a sub-array"
        raise (error or UnsupportedFormatError)(
            f"{path}: {what} has {kind} dtype {dtype}; a matrix needs one numeric "
            "dtype (bool, int, uint or float): save a plain 2-D array instead"
        )
    if dtype.kind not in NUMERIC_KINDS:
        raise (error or UnsupportedFormatError)(
            f"{path}: {what} has dtype {dtype}, which is not numeric; a matrix needs "
            "bool, int, uint or float values: convert the data first"
        )
    return dtype.newbyteorder("=")


def require_2d(shape: tuple[int, ...], path: Path, what: str) -> tuple[int, int]:
    """Check that `shape` is 2-D and non-empty; return ``(n_rows, n_cols)``."""
    if len(shape) != 2:
        hint = (
            "reshape it to (n_rows, n_cols), e.g. x.reshape(-1, 1) for one column"
            if len(shape) < 2
            else "reshape it to (n_rows, n_cols)"
        )
        raise InvalidInputError(
            f"{path}: {what} is {len(shape)}-D with shape {tuple(shape)}; a matrix must "
            f"be 2-D: {hint}"
        )
    n_rows, n_cols = int(shape[0]), int(shape[1])
    if n_rows == 0 or n_cols == 0:
        raise InvalidInputError(
            f"{path}: {what} is empty (shape {(n_rows, n_cols)}); a matrix needs at "
            "least one row and one column"
        )
    return n_rows, n_cols


def wrap_error(path: Path, doing: str, exc: BaseException) -> NoReturn:
    """Re-raise a library exception as `InvalidInputError` naming the file."""
    detail = str(exc).strip() or type(exc).__name__
    raise InvalidInputError(f"{path}: cannot {doing}: {detail}") from exc


def slice_blocks(
    n_rows: int, max_rows: int, read: Callable[[int, int], np.ndarray], dtype: np.dtype
) -> Iterator[Block]:
    """Blocks of a random-access source: ``read(start, stop)`` returns those rows."""
    for start in range(0, n_rows, max_rows):
        stop = min(start + max_rows, n_rows)
        data = np.ascontiguousarray(read(start, stop), dtype=dtype)
        yield Block(start, data)


class Rebuffer:
    """Regroup arrays of any number of rows into blocks of exactly `max_rows` rows."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self._next_row = 0

    def push(self, data: np.ndarray) -> Iterator[Block]:
        """Add rows; yield every full block now available."""
        start = 0
        n = data.shape[0]
        if self._n_pending:
            take = min(self.max_rows - self._n_pending, n)
            self._pending.append(data[:take])
            self._n_pending += take
            start = take
            if self._n_pending == self.max_rows:
                yield self._emit(np.concatenate(self._pending))
        while n - start >= self.max_rows:
            yield self._emit(data[start : start + self.max_rows])
            start += self.max_rows
        if start < n:
            self._pending = [data[start:]]
            self._n_pending = n - start

    def flush(self) -> Iterator[Block]:
        """Yield the last, partial block if any rows are left."""
        if self._n_pending:
            yield self._emit(np.concatenate(self._pending))

    def _emit(self, data: np.ndarray) -> Block:
        self._pending = []
        self._n_pending = 0
        block = Block(self._next_row, np.ascontiguousarray(data))
        self._next_row += data.shape[0]
        return block
