"""Row sources: every format read in blocks equals numpy; bad input gives clear errors."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsvd.errors import (
    ConfigError,
    InvalidInputError,
    ShapeMismatchError,
    SourceNotFoundError,
    UnsupportedFormatError,
)
from streamsvd.store.sources import (
    FORMATS,
    Block,
    Source,
    content_hash,
    expand_sources,
    open_source,
    rows_for_budget,
)
from streamsvd.store.sources import _csv as csv_module
from streamsvd.store.sources import _hash as hash_module

HYPOTHESIS = settings(max_examples=25, deadline=None)
DTYPES = ("float32", "float64", "int32", "bool")


# -- helpers ----------------------------------------------------------------------


def make_matrix(seed: int, n_rows: int, n_cols: int, dtype: str, *, specials: bool) -> np.ndarray:
    """A random matrix; floats span many magnitudes and may hold NaN and ±inf."""
    rng = np.random.default_rng(seed)
    shape = (n_rows, n_cols)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype == "int32":
        return rng.integers(-(2**31), 2**31, size=shape, dtype=np.int32)
    x = rng.standard_normal(shape) * 10.0 ** rng.integers(-8, 9, size=shape)
    if specials:
        x.flat[rng.integers(0, x.size, size=3)] = [np.nan, np.inf, -np.inf]
    return x.astype(dtype)


def read_all(source: Source, max_rows: int) -> np.ndarray:
    """Concatenate the blocks, checking their invariants on the way."""
    blocks = list(source.blocks(max_rows))
    assert blocks, "a non-empty source yields at least one block"
    start = 0
    for i, block in enumerate(blocks):
        assert isinstance(block, Block)
        assert block.row_start == start
        assert block.data.ndim == 2
        assert block.data.shape[1] == source.n_cols
        assert block.data.flags.c_contiguous
        assert block.data.dtype == source.dtype
        # Every block but the last has exactly max_rows rows.
        if i < len(blocks) - 1:
            assert block.data.shape[0] == max_rows
        else:
            assert 1 <= block.data.shape[0] <= max_rows
        start += block.data.shape[0]
    return np.concatenate([b.data for b in blocks])


def csv_text(x: np.ndarray, *, delimiter: str, header: bool, newline: str = "\n") -> str:
    """CSV with repr precision, so float64 values round-trip exactly."""
    lines = [delimiter.join(f"c{j}" for j in range(x.shape[1]))] if header else []
    cell = (lambda v: repr(float(v))) if x.dtype.kind == "f" else (lambda v: str(int(v)))
    lines += [delimiter.join(cell(v) for v in row) for row in x]
    return newline.join(lines) + newline


def write_parquet(path: Path, x: np.ndarray, *, layout: str, row_group_size: int) -> None:
    if layout == "columns":
        table = pa.table({f"c{j}": x[:, j] for j in range(x.shape[1])})
    else:
        value_type = pa.from_numpy_dtype(x.dtype)
        list_type = {
            "list": pa.list_(value_type),
            "large_list": pa.large_list(value_type),
            "fixed_size_list": pa.list_(value_type, x.shape[1]),
        }[layout]
        table = pa.table({"vec": pa.array(list(x), type=list_type)})
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.fixture
def npy_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.npy"
    np.save(path, np.arange(12.0).reshape(4, 3))
    return path


def csv_file(folder: Path, text: str | bytes, name: str = "data.csv") -> Path:
    path = folder / name
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def fname(path: Path) -> str:
    return re.escape(path.name)


@pytest.fixture
def small_chunks() -> Iterator[None]:
    """Make the CSV reader use tiny chunks, so chunk boundaries are exercised."""
    with mock.patch.object(csv_module, "_MIN_CHUNK", 16):
        yield


# -- round trips against numpy (hypothesis) -------------------------------------------

shapes = {
    "n_rows": st.integers(1, 200),
    "n_cols": st.integers(1, 20),
    "max_rows": st.integers(1, 250),
    "seed": st.integers(0, 2**32 - 1),
}


@HYPOTHESIS
@given(**shapes, dtype=st.sampled_from(DTYPES), fortran=st.booleans())
def test_npy_blocks_equal_numpy(
    n_rows: int, n_cols: int, max_rows: int, seed: int, dtype: str, fortran: bool
) -> None:
    x = make_matrix(seed, n_rows, n_cols, dtype, specials=True)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.npy"
        np.save(path, np.asfortranarray(x) if fortran else x)
        with open_source(path) as src:
            assert (src.format, src.n_rows, src.n_cols, src.dtype) == ("npy", *x.shape, x.dtype)
            np.testing.assert_array_equal(read_all(src, max_rows), x)
            assert src.describe_row(n_rows - 1) == f"row {n_rows - 1}"


@HYPOTHESIS
@given(
    **shapes,
    dtype=st.sampled_from(("float64", "float32", "int32")),
    delimiter=st.sampled_from([",", "\t", ";", " "]),
    header=st.booleans(),
    newline=st.sampled_from(["\n", "\r\n"]),
    blank_every=st.sampled_from([0, 1, 7]),
    min_chunk=st.sampled_from([16, 1 << 20]),
)
def test_csv_blocks_equal_numpy(
    n_rows: int,
    n_cols: int,
    max_rows: int,
    seed: int,
    dtype: str,
    delimiter: str,
    header: bool,
    newline: str,
    blank_every: int,
    min_chunk: int,
) -> None:
    x = make_matrix(seed, n_rows, n_cols, dtype, specials=True)
    lines = csv_text(x, delimiter=delimiter, header=header).splitlines()
    # Insert blank lines, remembering the physical line of each data row.
    out: list[str] = []
    data_lines: list[int] = []
    for i, line in enumerate(lines):
        if blank_every and i % blank_every == 0:
            out.append("")
        out.append(line)
        if i >= header:
            data_lines.append(len(out))
    text = newline.join(out) + newline
    with tempfile.TemporaryDirectory() as d, mock.patch.object(csv_module, "_MIN_CHUNK", min_chunk):
        path = Path(d) / "x.csv"
        path.write_bytes(text.encode())
        with open_source(path) as src:
            assert (src.format, src.n_cols, src.n_rows, src.dtype) == ("csv", n_cols, None, "f8")
            assert src.column_names == (tuple(f"c{j}" for j in range(n_cols)) if header else None)
            got = read_all(src, max_rows)
            np.testing.assert_array_equal(got, x.astype(np.float64))
            assert src.n_rows == n_rows
            for row in {0, n_rows // 2, n_rows - 1}:
                assert src.describe_row(row) == f"line {data_lines[row]}"


@HYPOTHESIS
@given(
    **shapes,
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(["columns", "list", "large_list", "fixed_size_list"]),
    row_group_size=st.integers(1, 64),
)
def test_parquet_blocks_equal_numpy(
    n_rows: int, n_cols: int, max_rows: int, seed: int, dtype: str, layout: str, row_group_size: int
) -> None:
    x = make_matrix(seed, n_rows, n_cols, dtype, specials=True)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.parquet"
        write_parquet(path, x, layout=layout, row_group_size=row_group_size)
        with open_source(path) as src:
            assert (src.format, src.n_rows, src.n_cols, src.dtype) == ("parquet", *x.shape, x.dtype)
            np.testing.assert_array_equal(read_all(src, max_rows), x)


@HYPOTHESIS
@given(**shapes, dtype=st.sampled_from(DTYPES), chunk_rows=st.none() | st.integers(1, 64))
def test_hdf5_blocks_equal_numpy(
    n_rows: int, n_cols: int, max_rows: int, seed: int, dtype: str, chunk_rows: int | None
) -> None:
    x = make_matrix(seed, n_rows, n_cols, dtype, specials=True)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.h5"
        with h5py.File(path, "w") as f:
            chunks = None if chunk_rows is None else (min(chunk_rows, n_rows), n_cols)
            f.create_dataset("group/x", data=x, chunks=chunks)
            f.create_dataset("labels", data=np.arange(n_rows))  # 1-D: not a candidate
        with open_source(path) as src:
            assert (src.format, src.n_rows, src.n_cols, src.dtype) == ("hdf5", *x.shape, x.dtype)
            np.testing.assert_array_equal(read_all(src, max_rows), x)


@HYPOTHESIS
@given(
    **shapes,
    dtype=st.sampled_from(DTYPES),
    zarr_format=st.sampled_from([2, 3]),
    chunk_rows=st.integers(1, 64),
)
def test_zarr_blocks_equal_numpy(
    n_rows: int,
    n_cols: int,
    max_rows: int,
    seed: int,
    dtype: str,
    zarr_format: int,
    chunk_rows: int,
) -> None:
    x = make_matrix(seed, n_rows, n_cols, dtype, specials=True)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.zarr"
        arr = zarr.create_array(
            str(path), shape=x.shape, dtype=x.dtype, chunks=(chunk_rows, n_cols),
            zarr_format=zarr_format,
        )  # fmt: skip
        arr[:] = x
        with open_source(path) as src:
            assert (src.format, src.n_rows, src.n_cols, src.dtype) == ("zarr", *x.shape, x.dtype)
            np.testing.assert_array_equal(read_all(src, max_rows), x)


# -- format details ---------------------------------------------------------------------


def test_big_endian_npy_is_read_in_native_order(tmp_path: Path) -> None:
    x = np.arange(6, dtype=">f8").reshape(3, 2)
    np.save(tmp_path / "be.npy", x)
    with open_source(tmp_path / "be.npy") as src:
        assert src.dtype == np.dtype("float64")
        np.testing.assert_array_equal(read_all(src, 2), x)


def test_npy_blocks_are_copies_of_the_memmap(npy_file: Path) -> None:
    with open_source(npy_file) as src:
        for block in src.blocks(2):
            assert block.data.flags.owndata
            assert not isinstance(block.data, np.memmap)


def test_blocks_restart_from_the_first_row(npy_file: Path) -> None:
    with open_source(npy_file) as src:
        first = read_all(src, 3)
        np.testing.assert_array_equal(read_all(src, 3), first)


def test_csv_variants(tmp_path: Path) -> None:
    cases = {
        "spaces.csv": "1, 2, 3\n4 ,5, 6\n",
        "semi.csv": "a;b;c\n1;2;3\n4;5;6\n",
        "tabs.tsv": "a\tb\tc\n1\t2\t3\n4\t5\t6\n",
        "aligned.txt": "   1.0    2.0  3\n  4   5.0     6.0\n",
        "crlf.csv": "a,b,c\r\n1,2,3\r\n4,5,6\r\n",
        "bom.csv": "\ufeffa,b,c\n1,2,3\n4,5,6\n",
        "quoted.csv": '"a","b","c"\n"1",2,3\n4,5,"6"\n',
        "noeol.csv": "1,2,3\n4,5,6",
    }
    for name, text in cases.items():
        with open_source(csv_file(tmp_path, text, name)) as src:
            np.testing.assert_array_equal(read_all(src, 10), [[1, 2, 3], [4, 5, 6]], err_msg=name)


def test_csv_empty_fields_are_nan_and_special_values_parse(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "x,y,z\n1,,3\nnan,inf,-inf\n , 2 ,\n")
    with open_source(path) as src:
        got = read_all(src, 10)
    expected = [[1, np.nan, 3], [np.nan, np.inf, -np.inf], [np.nan, 2, np.nan]]
    np.testing.assert_array_equal(got, expected)


def test_csv_all_numeric_first_line_is_data(tmp_path: Path) -> None:
    with open_source(csv_file(tmp_path, "1e3,-2.5,.5\n")) as src:
        assert src.column_names is None
        np.testing.assert_array_equal(read_all(src, 1), [[1e3, -2.5, 0.5]])
        assert src.describe_row(0) == "line 1"


def test_csv_describe_row_before_reading_scans_the_file(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "a,b\n\n1,2\n\n\n3,4\n5,6\n")
    with open_source(path) as src:
        assert src.describe_row(2) == "line 7"
        assert src.describe_row(1) == "line 6"
        assert src.describe_row(0) == "line 3"
        assert "past the end" in src.describe_row(3)


def test_csv_larger_than_the_parser_chunk_reads_back_exactly(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A CSV larger than the parser's chunk is read in several chunks and blocks."""
    x = rng.standard_normal((30_000, 8))
    path = csv_file(tmp_path, csv_text(x, delimiter=",", header=True))
    assert path.stat().st_size > 2 * csv_module._MIN_CHUNK
    with open_source(path) as src:
        rows = rows_for_budget(src.n_cols, 8, 64 * 1024)
        blocks = list(src.blocks(rows))
    assert len(blocks) > 1
    np.testing.assert_array_equal(np.concatenate([b.data for b in blocks]), x)


def test_parquet_nulls_become_nan(tmp_path: Path) -> None:
    path = tmp_path / "nulls.parquet"
    table = pa.table(
        {
            "i": pa.array([1, None, 3], type=pa.int64()),
            "f": pa.array([None, 2.0, 3.0], type=pa.float32()),
            "b": pa.array([True, False, None]),
        }
    )
    pq.write_table(table, path)
    with open_source(path) as src:
        assert src.dtype == np.float64  # int and bool columns with nulls are read as float
        got = read_all(src, 2)
    np.testing.assert_array_equal(got, [[1, np.nan, 1], [np.nan, 2, 0], [3, 3, np.nan]])


def test_parquet_null_lists_and_elements_become_nan(tmp_path: Path) -> None:
    path = tmp_path / "vec.parquet"
    pq.write_table(pa.table({"v": pa.array([[1, 2], None, [3, None]])}), path)
    with open_source(path) as src:
        assert (src.n_cols, src.dtype) == (2, np.float64)
        np.testing.assert_array_equal(read_all(src, 5), [[1, 2], [np.nan, np.nan], [3, np.nan]])


def test_parquet_ints_without_nulls_keep_their_dtype(tmp_path: Path) -> None:
    path = tmp_path / "ints.parquet"
    pq.write_table(
        pa.table({"a": pa.array([1, 2], pa.int16()), "b": pa.array([3, 4], pa.int16())}), path
    )
    with open_source(path) as src:
        assert src.dtype == np.int16
        assert src.column_names == ("a", "b")


def test_hdf5_dataset_by_name(tmp_path: Path) -> None:
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["a"] = np.ones((2, 2))
        f["g/b"] = np.zeros((3, 2), dtype=np.int32)
    with open_source(path, dataset="g/b") as src:
        assert (src.n_rows, src.dtype) == (3, np.int32)
        np.testing.assert_array_equal(read_all(src, 2), np.zeros((3, 2)))


def test_zarr_group_with_one_array_or_named_array(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("inner/x", shape=(4, 2), dtype="f4", chunks=(2, 2))[:] = 1.0
    group.create_array("labels", shape=(4,), dtype="i4", chunks=(4,))
    with open_source(tmp_path / "g.zarr") as src:
        np.testing.assert_array_equal(read_all(src, 3), np.ones((4, 2)))
    with open_source(tmp_path / "g.zarr", dataset="/inner/x") as src:
        assert src.n_rows == 4
    with pytest.raises(SourceNotFoundError, match=r"g\.zarr.*no array 'nope'.*inner/x.*--dataset"):
        open_source(tmp_path / "g.zarr", dataset="nope")


def test_explicit_format_overrides_the_suffix(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "1,2\n3,4\n", "data.dat")
    with open_source(path, format="csv") as src:
        np.testing.assert_array_equal(read_all(src, 1), [[1, 2], [3, 4]])


def test_source_is_a_context_manager_and_closes(npy_file: Path) -> None:
    src = open_source(npy_file)
    with src as entered:
        assert entered is src
    with pytest.raises(InvalidInputError, match=rf"{fname(npy_file)}.*closed"):
        next(iter(src.blocks(1)))
    src.close()  # idempotent


@pytest.mark.parametrize("max_rows", [0, -3, 1.5])
def test_max_rows_must_be_a_positive_integer(npy_file: Path, max_rows: object) -> None:
    with open_source(npy_file) as src, pytest.raises(ConfigError, match="max_rows"):
        src.blocks(max_rows)  # type: ignore[arg-type]


def test_every_format_opens_a_file_of_that_format(tmp_path: Path) -> None:
    x = np.arange(12.0).reshape(4, 3)

    def write_npy(path: Path) -> None:
        with path.open("wb") as f:  # np.save(path) would append ".npy"
            np.save(f, x)

    def write_hdf5(path: Path) -> None:
        with h5py.File(path, "w") as f:
            f["x"] = x

    def write_zarr(path: Path) -> None:
        zarr.open_group(str(path), mode="w").create_array("x", data=x, chunks=(2, 3))

    writers = {
        "npy": write_npy,
        "csv": lambda path: path.write_text(csv_text(x, delimiter=",", header=False)),
        "parquet": lambda path: write_parquet(path, x, layout="columns", row_group_size=2),
        "hdf5": write_hdf5,
        "zarr": write_zarr,
    }
    assert set(FORMATS) == {"auto", *writers}  # a new format needs a case here
    for fmt, write in writers.items():
        path = tmp_path / f"{fmt}.data"  # the suffix names no format: ``format`` decides
        write(path)
        with open_source(path, format=fmt) as src:
            assert src.format == fmt
            np.testing.assert_array_equal(read_all(src, 3), x)


# -- bad input: npy -----------------------------------------------------------------------


def test_npy_truncated(tmp_path: Path) -> None:
    path = tmp_path / "cut.npy"
    np.save(path, np.ones((100, 4)))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(
        InvalidInputError, match=rf"{fname(path)}.*truncated.*{len(data)}.*{len(data) - 10}"
    ):
        open_source(path)


@pytest.mark.parametrize(
    ("array", "error", "pattern"),
    [
        (np.array([[1, "a"]], dtype=object), UnsupportedFormatError, "object dtype"),
        (np.zeros(3, dtype=[("a", "f8"), ("b", "i4")]), UnsupportedFormatError, "structured"),
        (np.zeros((2, 2), dtype=np.complex128), UnsupportedFormatError, "not numeric"),
        (np.array([["a", "b"]]), UnsupportedFormatError, "not numeric"),
        (np.arange(5.0), InvalidInputError, r"1-D.*must be 2-D.*reshape"),
        (np.zeros((2, 2, 2)), InvalidInputError, r"3-D.*must be 2-D"),
        (np.zeros((0, 3)), InvalidInputError, "is empty"),
        (np.zeros((3, 0)), InvalidInputError, "is empty"),
    ],
)
def test_npy_bad_arrays(
    tmp_path: Path, array: np.ndarray, error: type[Exception], pattern: str
) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array, allow_pickle=True)
    with pytest.raises(error, match=rf"{fname(path)}.*{pattern}"):
        open_source(path)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [(b"", "is empty"), (b"not a numpy file at all", "cannot read it as a .npy file")],
)
def test_npy_unreadable(tmp_path: Path, content: bytes, pattern: str) -> None:
    path = tmp_path / "junk.npy"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=rf"{fname(path)}.*{pattern}"):
        open_source(path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(npy_file: Path) -> None:
    npy_file.chmod(0)
    with pytest.raises(InvalidInputError, match=rf"{fname(npy_file)}.*Permission denied"):
        open_source(npy_file)


# -- bad input: csv -----------------------------------------------------------------------


def test_csv_non_numeric_value_names_line_column_and_value(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "a,b,c\n1,2,3\n\n4,oops,6\n")
    with (
        open_source(path) as src,
        pytest.raises(
            InvalidInputError,
            match=rf"{fname(path)}, line 4, column 2 \('b'\): value 'oops'.*remove or convert",
        ),
    ):
        read_all(src, 10)


def test_csv_non_numeric_without_header_and_long_value(tmp_path: Path) -> None:
    long = "x" * 100
    path = csv_file(tmp_path, f"1,2\n3,{long}\n")
    with open_source(path) as src, pytest.raises(InvalidInputError) as info:
        read_all(src, 10)
    message = str(info.value)
    assert re.search(rf"{fname(path)}, line 2, column 2: value 'x{{39}}…'", message), message
    assert long not in message


@pytest.mark.usefixtures("small_chunks")
def test_csv_error_in_a_later_chunk_has_the_physical_line(tmp_path: Path) -> None:
    lines = ["a,b"] + [f"{i},{i}" for i in range(500)]
    lines[300] = "1,NA"
    lines.insert(100, "")
    path = csv_file(tmp_path, "\n".join(lines) + "\n")
    with (
        open_source(path) as src,
        pytest.raises(InvalidInputError, match=rf"{fname(path)}, line 302, column 2"),
    ):
        read_all(src, 7)


def test_csv_ragged_row(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "a,b,c\n1,2,3\n4,5\n")
    with (
        open_source(path) as src,
        pytest.raises(
            ShapeMismatchError, match=rf"{fname(path)}, line 3: found 2 fields, expected 3"
        ),
    ):
        read_all(src, 10)


def test_csv_not_utf8(tmp_path: Path) -> None:
    path = csv_file(tmp_path, b"1,2\n3,\xff\xfe\n")
    with (
        open_source(path) as src,
        pytest.raises(InvalidInputError, match=rf"{fname(path)}, line 2: .*not UTF-8"),
    ):
        read_all(src, 10)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [("", "is empty"), ("\n\n  \n", "is empty"), ("a,b,c\n\n", r"is empty.*header \(line 1\)")],
)
def test_csv_empty(tmp_path: Path, text: str, pattern: str) -> None:
    path = csv_file(tmp_path, text)
    with pytest.raises(InvalidInputError, match=rf"{fname(path)}.*{pattern}"):
        open_source(path)


# -- bad input: parquet -------------------------------------------------------------------


def test_parquet_non_numeric_columns(tmp_path: Path) -> None:
    path = tmp_path / "mixed.parquet"
    pq.write_table(
        pa.table({"x": [1.0, 2.0], "name": ["a", "b"], "when": pa.array([1, 2], pa.date32())}), path
    )
    with pytest.raises(
        InvalidInputError, match=rf"{fname(path)}.*'name'.*'when'.*remove or convert"
    ):
        open_source(path)


def test_parquet_list_of_strings(tmp_path: Path) -> None:
    path = tmp_path / "strs.parquet"
    pq.write_table(pa.table({"v": [["a"], ["b"]]}), path)
    with pytest.raises(InvalidInputError, match=rf"{fname(path)}.*'v' holds lists of string"):
        open_source(path)


def test_parquet_ragged_lists(tmp_path: Path) -> None:
    path = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"v": [[1.0, 2.0], [3.0, 4.0], [5.0]]}), path)
    with (
        open_source(path) as src,
        pytest.raises(
            ShapeMismatchError, match=rf"{fname(path)}, row 2: the list has 1 values, expected 2"
        ),
    ):
        read_all(src, 2)


def test_parquet_corrupt_and_empty(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(InvalidInputError, match=rf"{fname(bad)}: cannot read it as a Parquet file"):
        open_source(bad)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.float64())}), empty)
    with pytest.raises(InvalidInputError, match=rf"{fname(empty)}.*is empty"):
        open_source(empty)


# -- bad input: hdf5 and zarr -------------------------------------------------------------


def test_hdf5_dataset_choice_errors(tmp_path: Path) -> None:
    path = tmp_path / "many.h5"
    with h5py.File(path, "w") as f:
        f["a"] = np.ones((2, 2))
        f["b"] = np.ones((3, 2))
        f["names"] = np.array([b"x", b"y"])
    with pytest.raises(
        InvalidInputError, match=rf"{fname(path)}: 2 2-D numeric datasets.*/a.*/b.*--dataset"
    ):
        open_source(path)
    with pytest.raises(
        SourceNotFoundError, match=rf"{fname(path)}: 'c' does not exist.*/names.*--dataset"
    ):
        open_source(path, dataset="c")
    with pytest.raises(
        UnsupportedFormatError, match=rf"{fname(path)}: dataset '/names'.*not numeric"
    ):
        open_source(path, dataset="names")


def test_hdf5_without_matrix_and_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "vec.h5"
    with h5py.File(path, "w") as f:
        f["v"] = np.arange(4)
    with pytest.raises(
        InvalidInputError, match=rf"{fname(path)}: no 2-D numeric dataset.*/v \(4,\)"
    ):
        open_source(path)
    with pytest.raises(InvalidInputError, match=rf"{fname(path)}: dataset '/v' is 1-D"):
        open_source(path, dataset="v")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n garbage")
    with pytest.raises(InvalidInputError, match=rf"{fname(bad)}: cannot read it as an HDF5 file"):
        open_source(bad)


def test_zarr_one_dimensional_and_plain_directory(tmp_path: Path) -> None:
    zarr.create_array(str(tmp_path / "v.zarr"), shape=(5,), dtype="f8")
    with pytest.raises(InvalidInputError, match=r"v\.zarr: the array is 1-D.*must be 2-D"):
        open_source(tmp_path / "v.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(UnsupportedFormatError, match=r"plain: is a directory but not a Zarr array"):
        open_source(tmp_path / "plain")


# -- open_source errors -------------------------------------------------------------------


def test_unknown_suffix_names_file_formats_and_option(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "1,2\n", "data.xlsx")
    with pytest.raises(
        UnsupportedFormatError, match=r"data\.xlsx.*'\.xlsx'.*\.csv.*--format \(npy, csv"
    ):
        open_source(path)


def test_missing_path_and_bad_options(tmp_path: Path, npy_file: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"nothere\.npy: no such file"):
        open_source(tmp_path / "nothere.npy")
    with pytest.raises(UnsupportedFormatError, match=r"unknown format 'xls'.*auto, npy"):
        open_source(npy_file, format="xls")
    with pytest.raises(
        ConfigError, match=r"--dataset 'x' applies to HDF5 files and Zarr groups only"
    ):
        open_source(npy_file, dataset="x")


# -- expand_sources -----------------------------------------------------------------------


def test_expand_landing_folder(tmp_path: Path) -> None:
    land = tmp_path / "landing"
    land.mkdir()
    for name in [
        "b.csv",
        "a.npy",
        "c.parquet",
        ".hidden.csv",
        "d.csv.tmp",
        "e.npy.part",
        "notes.md",
    ]:
        (land / name).write_text("x")
    (land / "sub").mkdir()
    (land / "sub" / "f.csv").write_text("x")
    zarr.create_array(str(land / "z.zarr"), shape=(2, 2), dtype="f8")
    assert expand_sources([land]) == [land / "a.npy", land / "b.csv", land / "c.parquet"]
    # A Zarr directory is one source, not a folder to list.
    assert expand_sources([land / "z.zarr"]) == [land / "z.zarr"]


def test_expand_globs_files_and_duplicates(tmp_path: Path) -> None:
    for name in ["x2.csv", "x1.csv", "x3.csv.part", "y.npy"]:
        (tmp_path / name).write_text("1")
    got = expand_sources(
        [str(tmp_path / "y.npy"), str(tmp_path / "x*.csv*"), tmp_path / "x1.csv", tmp_path]
    )
    assert got == [tmp_path / "y.npy", tmp_path / "x1.csv", tmp_path / "x2.csv"]
    assert expand_sources([str(tmp_path / "x[2].csv")]) == [tmp_path / "x2.csv"]


def test_expand_nothing_found(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceNotFoundError, match=r"empty: the directory holds no file"):
        expand_sources([tmp_path / "empty"])
    with pytest.raises(SourceNotFoundError, match=r"\*\.h5: no file matches"):
        expand_sources([str(tmp_path / "*.h5")])
    with pytest.raises(SourceNotFoundError, match=r"missing\.csv: no such file"):
        expand_sources([tmp_path / "missing.csv"])


# -- content_hash -------------------------------------------------------------------------


def test_content_hash_stable_and_sensitive(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.bytes(3 * 1024 * 1024 + 17)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(data)
    b.write_bytes(data)
    h = content_hash(a)
    assert h == f"xxh3_128:{xxhash.xxh3_128(data).hexdigest()}"
    assert content_hash(b) == h == content_hash(a)
    changed = bytearray(data)
    changed[2_000_000] ^= 1
    b.write_bytes(bytes(changed))
    assert content_hash(b) != h
    assert content_hash(a, dataset="x") != h
    assert content_hash(a, dataset="x") != content_hash(a, dataset="y")


def test_content_hash_across_buffer_boundaries(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.bytes(10_007)
    (tmp_path / "f").write_bytes(data)
    with mock.patch.object(hash_module, "_BUFFER_BYTES", 1000):
        assert content_hash(tmp_path / "f") == f"xxh3_128:{xxhash.xxh3_128(data).hexdigest()}"


def test_content_hash_of_a_zarr_directory(tmp_path: Path) -> None:
    def make(path: Path, value: float) -> None:
        arr = zarr.create_array(str(path), shape=(4, 2), dtype="f8", chunks=(2, 2))
        arr[:] = 1.0
        arr[3, 1] = value

    make(tmp_path / "a.zarr", 1.0)
    make(tmp_path / "b.zarr", 1.0)
    make(tmp_path / "c.zarr", 2.0)
    assert content_hash(tmp_path / "a.zarr") == content_hash(tmp_path / "b.zarr")
    assert content_hash(tmp_path / "a.zarr") != content_hash(tmp_path / "c.zarr")
    with pytest.raises(SourceNotFoundError, match=r"gone: no such file"):
        content_hash(tmp_path / "gone")


# -- rows_for_budget and memory -----------------------------------------------------------


def test_rows_for_budget() -> None:
    assert rows_for_budget(1000, 8, 16 * 2**20) == 2097
    assert rows_for_budget(10, 4, 4000) == 100
    assert rows_for_budget(10**6, 8, 1000) == 1  # a row bigger than the budget: one row
    with pytest.raises(InvalidInputError, match="n_cols"):
        rows_for_budget(0, 8, 100)
    with pytest.raises(ConfigError, match="budget"):
        rows_for_budget(3, 8, 0)


def test_large_npy_is_read_within_the_budget(tmp_path: Path) -> None:
    """A 4 MB file in blocks of a 0.5 MB budget: no block exceeds the budget."""
    n_rows, n_cols = 4_000, 125  # 4 MB of float64
    path = tmp_path / "big.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n_rows, n_cols))
    step = 1_000
    for start in range(0, n_rows, step):
        out[start : start + step] = np.arange(start, start + step)[:, None]
    out.flush()
    del out
    budget = 500_000
    with open_source(path) as src:
        rows = rows_for_budget(src.n_cols, src.dtype.itemsize, budget)
        total, largest = 0, 0
        for block in src.blocks(rows):
            largest = max(largest, block.data.nbytes)
            assert block.data[0, 0] == block.row_start
            assert block.data[-1, -1] == block.row_stop - 1
            total += block.data.shape[0]
    assert total == n_rows
    assert largest <= budget
    assert rows == 500
