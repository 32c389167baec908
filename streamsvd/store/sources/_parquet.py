"""Parquet files: numeric columns, or one list column holding each row's vector."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streamsvd.errors import InvalidInputError, ShapeMismatchError
from streamsvd.store.sources._base import Block, Rebuffer, Source, wrap_error

_FLOAT64 = np.dtype(np.float64)


def _is_numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


class ParquetSource(Source):
    """A Parquet file read with `pyarrow.parquet.ParquetFile.iter_batches`.

    Either every column is numeric (int, uint, float, bool) and the columns are
    the matrix columns, or the file has exactly one column of type list,
    large_list or fixed_size_list of a numeric type and each row's vector is a
    matrix row. Nulls are NaN: integer or bool columns that may hold nulls (by
    the file's statistics) are read as float64. Memory is one record batch of
    `max_rows` rows plus pyarrow's page buffers.
    """

    format = "parquet"

    def __init__(
        self,
        path: Path,
        parquet_file: pq.ParquetFile,
        *,
        n_rows: int,
        n_cols: int,
        dtype: np.dtype,
        column_names: tuple[str, ...],
        list_column: bool,
    ) -> None:
        self.path = path
        self._file = parquet_file
        self.n_rows = n_rows
        self.n_cols = n_cols
        self.dtype = dtype
        self.column_names = self._names = column_names
        self.list_column = list_column

    @classmethod
    def open(cls, path: Path) -> ParquetSource:
        """Open `path`, check its schema and derive the dtype."""
        try:
            pf = pq.ParquetFile(path)
            schema = pf.schema_arrow
            n_rows = pf.metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            wrap_error(path, "read it as a Parquet file", exc)
        try:
            return cls._from_file(path, pf, schema, n_rows)
        except BaseException:
            pf.close()
            raise

    @classmethod
    def _from_file(
        cls, path: Path, pf: pq.ParquetFile, schema: pa.Schema, n_rows: int
    ) -> ParquetSource:
        fields = list(schema)
        if not fields or n_rows == 0:
            raise InvalidInputError(
                f"{path}: the file is empty ({n_rows} rows, {len(fields)} columns); nothing to read"
            )
        may_null = _leaves_with_nulls(pf)
        if len(fields) == 1 and _is_list(fields[0].type):
            field = fields[0]
            value_type = field.type.value_type
            if not _is_numeric(value_type):
                raise InvalidInputError(
                    f"{path}: column {field.name!r} holds lists of {value_type}, which is "
                    "not numeric; a list column must hold int, float or bool values: "
                    "convert it"
                )
            dtype = _numpy_dtype(value_type, nullable=any(may_null))
            if pa.types.is_fixed_size_list(field.type):
                n_cols = field.type.list_size
            else:
                n_cols = _first_list_length(path, pf, field.name)
            if n_cols == 0:
                raise InvalidInputError(
                    f"{path}: the file is empty: the lists in column {field.name!r} have no values"
                )
            return cls(
                path, pf, n_rows=n_rows, n_cols=n_cols, dtype=dtype,
                column_names=(field.name,), list_column=True,
            )  # fmt: skip
        bad = [f"{fld.name!r} ({fld.type})" for fld in fields if not _is_numeric(fld.type)]
        if bad:
            lists = any(_is_list(fld.type) for fld in fields)
            hint = (
                "; a list column is read as the rows' vectors only when it is the only column"
                if lists
                else ""
            )
            raise InvalidInputError(
                f"{path}: non-numeric column(s) {', '.join(bad)}; every column must be int, "
                f"float or bool{hint}: remove or convert non-numeric columns"
            )
        # Every column is a flat numeric one here, so field j is leaf column j.
        dtypes = [
            _numpy_dtype(fld.type, nullable=null)
            for fld, null in zip(fields, may_null, strict=True)
        ]
        return cls(
            path, pf, n_rows=n_rows, n_cols=len(fields), dtype=np.result_type(*dtypes),
            column_names=tuple(fld.name for fld in fields), list_column=False,
        )  # fmt: skip

    def _blocks(self, max_rows: int) -> Iterator[Block]:
        rebuffer = Rebuffer(max_rows)
        row = 0
        batches = self._file.iter_batches(batch_size=max_rows, use_threads=True)
        while True:
            try:
                batch = next(batches, None)
            except (OSError, pa.ArrowException) as exc:
                wrap_error(self.path, f"read the rows after row {row}", exc)
            if batch is None:
                break
            if self.list_column:
                data = self._from_lists(batch.column(0), row)
            else:
                data = self._from_columns(batch, row)
            row += batch.num_rows
            yield from rebuffer.push(data)
        yield from rebuffer.flush()

    def _from_columns(self, batch: pa.RecordBatch, row: int) -> np.ndarray:
        out = np.empty((batch.num_rows, self.n_cols), dtype=self.dtype)
        for j, column in enumerate(batch.columns):
            if column.null_count:
                column = self._fill_nulls(column, row, f"column {self._names[j]!r}")
            out[:, j] = column.to_numpy(zero_copy_only=False)
        return out

    def _from_lists(self, column: pa.Array, row: int) -> np.ndarray:
        lengths = pc.list_value_length(column)
        wrong = pc.fill_null(pc.not_equal(lengths, self.n_cols), False)
        if pc.any(wrong).as_py():
            i = int(np.flatnonzero(wrong.to_numpy(zero_copy_only=False))[0])
            raise ShapeMismatchError(
                f"{self.path}, row {row + i}: the list has {lengths[i].as_py()} values, "
                f"expected {self.n_cols} (as in the first non-null row); every row must "
                "have the same length: fix or remove the row"
            )
        values = column.flatten()
        if values.null_count:
            values = self._fill_nulls(values, row, "a list element")
        flat = values.to_numpy(zero_copy_only=False).astype(self.dtype, copy=False)
        if not column.null_count:
            return flat.reshape(len(column), self.n_cols)
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        if self.dtype.kind != "f":
            self._no_nan(row + int(np.flatnonzero(~valid)[0]), "a list (the whole row)")
        out = np.full((len(column), self.n_cols), math.nan, dtype=self.dtype)
        out[valid] = flat.reshape(-1, self.n_cols)
        return out

    def _fill_nulls(self, values: pa.Array, row: int, what: str) -> pa.Array:
        if self.dtype.kind != "f":
            missing = values.is_null().to_numpy(zero_copy_only=False)
            self._no_nan(row + int(np.flatnonzero(missing)[0]), what)
        if not pa.types.is_floating(values.type):
            values = values.cast(pa.float64())
        return pc.fill_null(values, math.nan)

    def _no_nan(self, row: int, what: str) -> None:
        raise InvalidInputError(
            f"{self.path}, row {row}: {what} is null, but the file's statistics say there "
            f"are no nulls so the data is read as {self.dtype}, which cannot hold NaN: "
            "write the file again with statistics, or as float"
        )

    def _close(self) -> None:
        self._file.close()


def _numpy_dtype(t: pa.DataType, *, nullable: bool) -> np.dtype:
    if nullable and not pa.types.is_floating(t):
        return _FLOAT64
    return np.dtype(t.to_pandas_dtype())


def _leaves_with_nulls(pf: pq.ParquetFile) -> list[bool]:
    """For each leaf column, whether it may hold nulls (by the row groups' statistics)."""
    md = pf.metadata
    out = [False] * md.num_columns
    for g in range(md.num_row_groups):
        group = md.row_group(g)
        for c in range(group.num_columns):
            stats = group.column(c).statistics
            if stats is None or not stats.has_null_count or stats.null_count > 0:
                out[c] = True
    return out


def _first_list_length(path: Path, pf: pq.ParquetFile, name: str) -> int:
    try:
        for batch in pf.iter_batches(batch_size=4096, columns=[name]):
            lengths = pc.drop_null(pc.list_value_length(batch.column(0)))
            if len(lengths):
                return int(lengths[0].as_py())
    except (OSError, pa.ArrowException) as exc:
        wrap_error(path, "read it as a Parquet file", exc)
    raise InvalidInputError(f"{path}: the file is empty: every list in column {name!r} is null")
