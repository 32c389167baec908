"""Delimited text (CSV, TSV, whitespace-separated), parsed in bounded memory.

The file is read in byte chunks that end on a line boundary. Each chunk is
parsed by pyarrow's multi-threaded CSV reader (or, for whitespace-separated
text that pyarrow cannot split, `numpy.loadtxt`). When the fast parser rejects
a chunk, a line-by-line parser re-reads that chunk only: it either raises an
error naming the exact physical line, column and value, or (for inputs the
fast parser is stricter about, such as blank-only fields) returns the rows.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from streamsvd.errors import InvalidInputError, ShapeMismatchError
from streamsvd.store.sources._base import Block, Rebuffer, Source, truncate_value, wrap_error

#: Candidate delimiters, in order of preference on a tie. None = runs of whitespace.
_DELIMITERS = (",", "\t", ";")
_NUMBER = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|nan|inf(?:inity)?)", re.IGNORECASE
)
_BOM = b"\xef\xbb\xbf"
_MIN_CHUNK = 1 << 20  # 1 MiB: small blocks still parse efficiently
_MAX_CHUNK = 256 << 20
_FLOAT64 = np.dtype(np.float64)


def is_number(text: str) -> bool:
    """Whether `text` (surrounding blanks ignored) is a decimal, nan or inf literal."""
    return _NUMBER.fullmatch(text.strip()) is not None


class CsvSource(Source):
    """Numeric delimited text: CSV, TSV, semicolon- or whitespace-separated.

    The first non-blank line is a header when any of its fields is not a number.
    Blank lines are skipped; empty fields are NaN; ``nan``/``inf``/``-inf`` are
    read as such (the caller's NaN policy decides). Values are float64. Memory
    is a few times the text chunk (about one block); the whole file is never
    held. `n_rows` is None until `blocks` has run to the end once.
    """

    format = "csv"
    dtype = _FLOAT64

    def __init__(
        self,
        path: Path,
        *,
        delimiter: str | None,
        n_cols: int,
        column_names: tuple[str, ...] | None,
        header_line: int | None,
        data_offset: int,
        data_line: int,
        bytes_per_line: int,
    ) -> None:
        self.path = path
        self.delimiter = delimiter
        self.n_cols = n_cols
        self.n_rows = None
        self.column_names = column_names
        self.header_line = header_line
        self._data_offset = data_offset
        self._data_line = data_line
        self._bytes_per_line = max(1, bytes_per_line)
        # Map data rows to physical lines: row r at or after _bp_rows[i] is on
        # line _bp_lines[i] + (r - _bp_rows[i]); known for rows < _mapped_rows.
        self._bp_rows: list[int] = []
        self._bp_lines: list[int] = []
        self._mapped_rows = 0
        names = [f"f{i}" for i in range(n_cols)]
        self._arrow_convert = pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.float64()),
            null_values=[""],
            strings_can_be_null=False,
            quoted_strings_can_be_null=True,
        )
        self._arrow_read = pacsv.ReadOptions(column_names=names, use_threads=True)
        self._arrow_parse = pacsv.ParseOptions(
            delimiter=delimiter or " ", newlines_in_values=False, ignore_empty_lines=True
        )

    # -- opening ----------------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> CsvSource:
        """Sniff the delimiter and header of `path`, check it has data rows."""
        try:
            with open(path, "rb") as f:
                return cls._open(path, f)
        except OSError as exc:
            wrap_error(path, "read it", exc)

    @classmethod
    def _open(cls, path: Path, f: IO[bytes]) -> CsvSource:
        start = 3 if f.read(3) == _BOM else 0
        f.seek(start)
        line_no, first, first_offset = _next_nonblank(f, 0)
        if first is None:
            raise InvalidInputError(
                f"{path}: the file is empty (no non-blank line); nothing to read"
            )
        text = _decode(path, first, line_no)
        delimiter = _sniff(text)
        fields = _split(text, delimiter)
        header = any(fld.strip() and not is_number(fld) for fld in fields)
        if header:
            names: tuple[str, ...] | None = tuple(fld.strip() for fld in fields)
            _, data, _ = _next_nonblank(f, line_no)
            if data is None:
                raise InvalidInputError(
                    f"{path}: the file is empty: it has a header (line {line_no}) but no data rows"
                )
            header_line: int | None = line_no
            # Blank lines between header and data are skipped by the parsers.
            data_offset, data_line, sample = first_offset + len(first), line_no + 1, data
        else:
            names, header_line = None, None
            data_offset, data_line, sample = first_offset, line_no, first
        return cls(
            path,
            delimiter=delimiter,
            n_cols=len(fields),
            column_names=names,
            header_line=header_line,
            data_offset=data_offset,
            data_line=data_line,
            bytes_per_line=len(sample),
        )

    # -- reading ----------------------------------------------------------------

    def _blocks(self, max_rows: int) -> Iterator[Block]:
        rebuffer = Rebuffer(max_rows)
        chunk_bytes = min(max(max_rows * self._bytes_per_line, _MIN_CHUNK), _MAX_CHUNK)
        row = 0
        with self._open_data() as f:
            for chunk, first_line in _chunks(f, chunk_bytes, self._data_line, self.path):
                data, lines = self._parse(chunk, first_line)
                self._record_lines(row, data.shape[0], first_line, lines)
                row += data.shape[0]
                yield from rebuffer.push(data)
        yield from rebuffer.flush()
        self.n_rows = row

    def _open_data(self) -> IO[bytes]:
        """The file, positioned at the first data line."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - the caller closes it
            f.seek(self._data_offset)
        except OSError as exc:
            wrap_error(self.path, "read it", exc)
        return f

    def _parse(self, chunk: bytes, first_line: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows of `chunk` and, when blank lines were skipped, their line numbers."""
        try:
            data = self._parse_fast(chunk)
        except (pa.ArrowException, ValueError, UnicodeDecodeError):
            data = None
        if data is None:
            return self._parse_slow(chunk, first_line)
        n_lines = chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
        if data.shape[0] == n_lines:
            return data, None
        nonblank = [i for i, raw in enumerate(chunk.split(b"\n")) if raw.strip()]
        if len(nonblank) != data.shape[0]:  # the fast parser disagrees: trust the slow one
            return self._parse_slow(chunk, first_line)
        return data, np.asarray(nonblank, dtype=np.int64) + first_line

    def _parse_fast(self, chunk: bytes) -> np.ndarray | None:
        if self.delimiter is None and not _single_spaced(chunk):
            if not chunk.strip():
                return np.empty((0, self.n_cols), dtype=_FLOAT64)
            text = io.StringIO(chunk.decode("utf-8"))
            data = np.loadtxt(text, dtype=_FLOAT64, ndmin=2, comments=None, delimiter=None)
            return data if data.shape[1] == self.n_cols else None
        table = pacsv.read_csv(
            pa.py_buffer(chunk),
            read_options=self._arrow_read,
            parse_options=self._arrow_parse,
            convert_options=self._arrow_convert,
        )
        out = np.empty((table.num_rows, self.n_cols), dtype=_FLOAT64)
        for j, column in enumerate(table.columns):
            if column.null_count:
                column = pc.fill_null(column, math.nan)
            out[:, j] = column.to_numpy()
        return out

    def _parse_slow(self, chunk: bytes, first_line: int) -> tuple[np.ndarray, np.ndarray]:
        """Parse line by line; raise on the first bad line, naming it."""
        rows: list[list[float]] = []
        lines: list[int] = []
        for i, raw in enumerate(chunk.split(b"\n")):
            if not raw.strip():
                continue
            line_no = first_line + i
            fields = _split(_decode(self.path, raw, line_no).rstrip("\r"), self.delimiter)
            if len(fields) != self.n_cols:
                raise ShapeMismatchError(
                    f"{self.path}, line {line_no}: found {len(fields)} fields, expected "
                    f"{self.n_cols} ({self._shape_origin()}); every line must have the "
                    "same number of fields: fix or remove the line"
                )
            rows.append([self._parse_field(fld, line_no, j) for j, fld in enumerate(fields)])
            lines.append(line_no)
        data = np.array(rows, dtype=_FLOAT64).reshape(len(rows), self.n_cols)
        return data, np.asarray(lines, dtype=np.int64)

    def _parse_field(self, field: str, line_no: int, j: int) -> float:
        text = field.strip()
        if not text:
            return math.nan
        if _NUMBER.fullmatch(text):
            return float(text)
        name = f" ({self.column_names[j]!r})" if self.column_names else ""
        raise InvalidInputError(
            f"{self.path}, line {line_no}, column {j + 1}{name}: value "
            f"{truncate_value(text)} is not a number; only numeric data can be read: "
            "remove or convert non-numeric columns"
        )

    def _shape_origin(self) -> str:
        if self.header_line is not None:
            return f"the header on line {self.header_line} has {self.n_cols}"
        return f"the first data line, line {self._data_line}, has {self.n_cols}"

    # -- row → line mapping -------------------------------------------------------

    def _record_lines(self, row: int, n: int, first_line: int, lines: np.ndarray | None) -> None:
        if n == 0 or row != self._mapped_rows:  # empty, or known from an earlier pass
            return
        if lines is None:
            self._add_breakpoint(row, first_line)
        else:
            offsets = lines - np.arange(n)
            for i in (0, *(np.flatnonzero(np.diff(offsets)) + 1)):
                self._add_breakpoint(row + int(i), int(lines[i]))
        self._mapped_rows = row + n

    def _add_breakpoint(self, row: int, line: int) -> None:
        if self._bp_rows and self._bp_lines[-1] - self._bp_rows[-1] == line - row:
            return
        self._bp_rows.append(row)
        self._bp_lines.append(line)

    def describe_row(self, row: int) -> str:
        """Physical 1-based line of data row `row` (0-based), e.g. ``"line 19"``."""
        if row >= self._mapped_rows and not self._scan_to(row):
            return f"data row {row} (past the end of the file)"
        i = bisect.bisect_right(self._bp_rows, row) - 1
        return f"line {self._bp_lines[i] + row - self._bp_rows[i]}"

    def _scan_to(self, row: int) -> bool:
        """Map rows to lines by scanning the text (no parsing) up to `row`."""
        self._bp_rows, self._bp_lines, self._mapped_rows = [], [], 0
        with self._open_data() as f:
            try:
                n = 0
                for line_no, raw in enumerate(f, start=self._data_line):
                    if raw.strip():
                        self._add_breakpoint(n, line_no)
                        n += 1
                        self._mapped_rows = n
                        if n > row:
                            return True
            except OSError as exc:
                wrap_error(self.path, "read it", exc)
        return False


# -- helpers --------------------------------------------------------------------


def _chunks(f: IO[bytes], size: int, first_line: int, path: Path) -> Iterator[tuple[bytes, int]]:
    """Byte chunks of whole lines, each with the physical number of its first line."""
    rest = b""
    while True:
        try:
            new = f.read(size)
        except OSError as exc:
            wrap_error(path, f"read it near line {first_line}", exc)
        if not new:
            if rest:
                yield rest, first_line
            return
        buf = rest + new if rest else new
        cut = buf.rfind(b"\n")
        if cut < 0:  # a line longer than the chunk: keep reading
            rest = buf
            continue
        chunk, rest = buf[: cut + 1], buf[cut + 1 :]
        yield chunk, first_line
        first_line += chunk.count(b"\n")


def _next_nonblank(f: IO[bytes], line_no: int) -> tuple[int, bytes | None, int]:
    """Read to the next non-blank line: (its line number, its bytes, its offset)."""
    while True:
        offset = f.tell()
        raw = f.readline()
        if not raw:
            return line_no, None, offset
        line_no += 1
        if raw.strip():
            return line_no, raw, offset


def _decode(path: Path, raw: bytes, line_no: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"{path}, line {line_no}: the text is not UTF-8 ({exc.reason} at byte "
            f"{exc.start} of the line); is it a binary file? Pass --format for another format"
        ) from exc


def _sniff(line: str) -> str | None:
    """Delimiter of a line: the most frequent of comma, tab, semicolon; else whitespace."""
    counts = [line.count(d) for d in _DELIMITERS]
    best = max(counts)
    if best > 0:
        return _DELIMITERS[counts.index(best)]
    return None if len(line.split()) > 1 else ","


def _split(line: str, delimiter: str | None) -> list[str]:
    line = line.rstrip("\r\n")
    if delimiter is None:
        return line.split()
    return next(csv.reader([line], delimiter=delimiter))


def _single_spaced(chunk: bytes) -> bool:
    """Whether whitespace-separated text uses single spaces only (pyarrow can split it)."""
    return not (
        b"  " in chunk
        or b"\t" in chunk
        or b"\n " in chunk
        or b" \n" in chunk
        or b" \r" in chunk
        or chunk.startswith(b" ")
        or chunk.endswith(b" ")
    )
