"""The store: ingest, batch log, idempotency, bad input, info, versions."""

from __future__ import annotations

import asyncio
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsvd.errors import (
    InvalidInputError,
    NotAStoreError,
    ShapeMismatchError,
    StoreNotFoundError,
)
from streamsvd.store.chunks import is_plain, write_whole_chunks
from streamsvd.store.info import store_info
from streamsvd.store.ingest import IngestOptions, ingest
from streamsvd.store.matrix import matrix_array, read_batch_log, write_rows
from streamsvd.store.repository import Store
from streamsvd.store.row_block import RowBlock, row_blocks_of
from tests.conftest import count_landing_hashes, write_npy


def stored_rows(store: Path) -> np.ndarray:
    return np.asarray(matrix_array(Store.open(store).root())[:])


def test_ingest_appends_batches_in_order(tmp_path: Path, rng: np.random.Generator) -> None:
    parts = [rng.standard_normal((n, 7)) for n in (5, 300, 1)]
    files = [write_npy(tmp_path / f"part{i}.npy", p) for i, p in enumerate(parts)]
    store = tmp_path / "store"
    first = ingest(store, files[:1], options=IngestOptions(chunk_rows=64))
    second = ingest(store, files[1:], options=IngestOptions(chunk_rows=999))  # ignored: exists
    assert first.created
    assert not second.created
    np.testing.assert_array_equal(stored_rows(store), np.vstack(parts))
    log = read_batch_log(Store.open(store).root())
    assert [(b.row_start, b.row_stop) for b in log] == [(0, 5), (5, 305), (305, 306)]
    assert [Path(b.source).name for b in log] == ["part0.npy", "part1.npy", "part2.npy"]
    info = store_info(store)
    assert {k: info[k] for k in ("rows", "cols", "dtype", "chunk_rows", "batches")} == {
        "rows": 306,
        "cols": 7,
        "dtype": "float64",
        "chunk_rows": 64,
        "batches": 3,
    }
    assert info["version"] == second.version
    assert len(Store.open(store).versions()) == 3  # initial + two ingests


def test_same_content_is_a_no_op_that_says_so(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.standard_normal((50, 3)).astype(np.float32)
    a = write_npy(tmp_path / "a.npy", data)
    b = write_npy(tmp_path / "copy-of-a.npy", data)
    store = tmp_path / "s"
    ingest(store, [a])
    version = Store.open(store).current_version()
    again = ingest(store, [a, b])
    assert again.version is None
    assert not again.changed
    assert [s.source for s in again.skipped] == [str(a), str(b)]
    assert "already ingested" in again.skipped[0].reason
    assert Store.open(store).current_version() == version
    assert stored_rows(store).shape == (50, 3)


def test_duplicate_within_one_ingest_is_counted_once(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    data = rng.standard_normal((10, 2))
    a = write_npy(tmp_path / "a.npy", data)
    b = write_npy(tmp_path / "b.npy", data)
    report = ingest(tmp_path / "s", [a, b])
    assert report.rows_added == 10
    assert len(report.skipped) == 1


@pytest.mark.parametrize(
    ("source_dtype", "store_dtype"),
    [
        (np.float32, "float32"),
        (np.float64, "float64"),
        (np.int16, "float32"),
        (np.int64, "float64"),
        (np.bool_, "float32"),
    ],
)
def test_default_store_dtype_follows_the_documented_rule(
    tmp_path: Path, source_dtype: type, store_dtype: str
) -> None:
    data = (np.arange(12).reshape(4, 3) % 2).astype(source_dtype)
    ingest(tmp_path / "s", [write_npy(tmp_path / "x.npy", data)])
    assert store_info(tmp_path / "s")["dtype"] == store_dtype
    np.testing.assert_array_equal(stored_rows(tmp_path / "s"), data.astype(store_dtype))


def test_wrong_column_count_changes_nothing(tmp_path: Path, rng: np.random.Generator) -> None:
    store = tmp_path / "s"
    ingest(store, [write_npy(tmp_path / "a.npy", rng.standard_normal((4, 3)))])
    version = Store.open(store).current_version()
    good = write_npy(tmp_path / "b.npy", rng.standard_normal((4, 3)))
    bad = write_npy(tmp_path / "c.npy", rng.standard_normal((4, 5)))
    with pytest.raises(ShapeMismatchError, match=r"c\.npy: 5 columns, but the store has 3"):
        ingest(store, [good, bad])
    assert Store.open(store).current_version() == version
    assert stored_rows(store).shape == (4, 3)


def test_nan_is_rejected_naming_file_row_and_fix(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.standard_normal((1000, 4))
    data[777, 2] = np.nan
    bad = write_npy(tmp_path / "bad.npy", data)
    store = tmp_path / "s"
    ingest(store, [write_npy(tmp_path / "ok.npy", rng.standard_normal((3, 4)))])
    version = Store.open(store).current_version()
    with pytest.raises(InvalidInputError, match=r"bad\.npy: row 777, column 3 .*--nan zero"):
        ingest(store, [bad], options=IngestOptions(memory_budget=4096))
    assert Store.open(store).current_version() == version


def test_bad_first_ingest_leaves_no_store(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.standard_normal((10, 4))
    data[3, 0] = np.inf
    store = tmp_path / "new"
    with pytest.raises(InvalidInputError, match=r"row 3, column 1 holds inf"):
        ingest(store, [write_npy(tmp_path / "bad.npy", data)])
    assert not store.exists()


def test_nan_zero_and_drop_are_counted(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.standard_normal((20, 3))
    data[[2, 2, 9], [0, 1, 2]] = [np.nan, np.inf, -np.inf]
    src = write_npy(tmp_path / "x.npy", data)
    zero = ingest(tmp_path / "z", [src], options=IngestOptions(nan="zero"))
    assert (zero.batches[0].nan_values, zero.batches[0].dropped_rows) == (3, 0)
    expected = np.where(np.isfinite(data), data, 0)
    np.testing.assert_array_equal(stored_rows(tmp_path / "z"), expected)
    drop = ingest(tmp_path / "d", [src], options=IngestOptions(nan="drop"))
    assert (drop.batches[0].nan_values, drop.batches[0].dropped_rows) == (3, 2)
    np.testing.assert_array_equal(stored_rows(tmp_path / "d"), np.delete(data, [2, 9], axis=0))


def test_float32_overflow_is_an_error(tmp_path: Path) -> None:
    ingest(tmp_path / "s", [write_npy(tmp_path / "a.npy", np.ones((2, 2), np.float32))])
    big = np.ones((3, 2))
    big[1, 1] = 1e300
    with pytest.raises(InvalidInputError, match=r"big\.npy: row 1, column 2 .*--dtype float64"):
        ingest(tmp_path / "s", [write_npy(tmp_path / "big.npy", big)])


def test_path_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "notes.txt").write_text("hello")
    with pytest.raises(NotAStoreError, match=r"dir is not a streamsvd store"):
        Store.open(tmp_path / "dir")
    with pytest.raises(NotAStoreError, match=r"not a streamsvd store"):
        ingest(tmp_path / "dir", [write_npy(tmp_path / "a.npy", np.ones((2, 2)))])
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["notes.txt"]
    with pytest.raises(StoreNotFoundError, match=r"no streamsvd store at .*missing"):
        Store.open(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotAStoreError, match=r"file is a file"):
        Store.open(tmp_path / "file")


def test_foreign_icechunk_repository_is_refused(tmp_path: Path) -> None:
    import icechunk

    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "r")))
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="w").attrs["other"] = 1
    session.commit("someone else's data")
    with pytest.raises(NotAStoreError, match=r"streamsvd did not create"):
        Store.open(tmp_path / "r")


def test_landing_folder_skips_what_was_ingested(tmp_path: Path, rng: np.random.Generator) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    write_npy(landing / "001.npy", rng.standard_normal((5, 2)))
    store = tmp_path / "s"
    assert ingest(store, [landing]).rows_added == 5
    write_npy(landing / "002.npy", rng.standard_normal((7, 2)))
    report = ingest(store, [landing])
    assert report.rows_added == 7
    assert len(report.skipped) == 1
    assert store_info(store)["rows"] == 12


def test_info_json_is_stable(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from streamsvd.cli import app

    src = write_npy(tmp_path / "a.npy", np.ones((3, 4), np.float32))
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(tmp_path / "s"), str(src)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["info", str(tmp_path / "s"), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert {"rows", "cols", "dtype", "chunk_rows", "batches", "version"} <= payload.keys()
    assert (payload["rows"], payload["cols"], payload["batches"]) == (3, 4, 1)
    result = runner.invoke(app, ["log", str(tmp_path / "s")])
    assert result.exit_code == 0
    assert "ingest 1 batch" in result.stdout


def test_cli_bad_input_exits_non_zero_with_message(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from streamsvd.cli import app

    data = np.ones((3, 2))
    data[1, 0] = np.nan
    src = write_npy(tmp_path / "bad.npy", data)
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "s"), str(src)])
    assert result.exit_code == InvalidInputError.exit_code
    assert "bad.npy: row 1, column 1 holds nan" in result.stderr
    result = CliRunner().invoke(app, ["info", str(tmp_path / "nothing")])
    assert result.exit_code == StoreNotFoundError.exit_code


def test_landing_listing_does_not_rehash_logged_files(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamsvd.store.landing as landing

    folder = tmp_path / "landing"
    folder.mkdir()
    old = write_npy(folder / "001.npy", rng.standard_normal((5, 2)))
    ingest(tmp_path / "s", [folder])
    new = write_npy(folder / "002.npy", rng.standard_normal((4, 2)))
    hashed = count_landing_hashes(monkeypatch)
    assert landing.new_sources(tmp_path / "s", [folder]) == [new]
    assert hashed == [new]  # the logged, unchanged file was not read
    old.write_bytes(old.read_bytes())  # same content, new mtime: hashed, still known
    hashed.clear()
    assert landing.new_sources(tmp_path / "s", [folder]) == [new]
    assert sorted(hashed) == [old, new]


def test_a_file_changed_after_hashing_logs_the_stat_of_the_hashed_content(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamsvd.store.ingest as ingest_module
    import streamsvd.store.landing as landing

    folder = tmp_path / "landing"
    folder.mkdir()
    path = write_npy(folder / "001.npy", rng.standard_normal((5, 2)))
    before = path.stat()
    real_hash = ingest_module.content_hash

    def hash_then_change(file: Path, *, dataset: str | None = None) -> str:
        digest = real_hash(file, dataset=dataset)
        write_npy(Path(file), rng.standard_normal((6, 2)))  # arrives while being ingested
        return digest

    monkeypatch.setattr(ingest_module, "content_hash", hash_then_change)
    ingest(tmp_path / "s", [folder])
    (entry,) = read_batch_log(Store.open(tmp_path / "s").root())
    assert (entry.size, entry.mtime_ns) == (before.st_size, before.st_mtime_ns)
    # The new content was not logged under the old stat: the listing hashes it again.
    assert landing.new_sources(tmp_path / "s", [folder]) == [path]


def test_auto_codec_compresses_only_data_that_shrinks(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    noise = rng.standard_normal((3000, 40)).astype(np.float32)
    ratings = rng.integers(0, 6, size=(3000, 40)).astype(np.float32)
    for name, data, codec in (("noise", noise, "none"), ("ratings", ratings, "lz4")):
        ingest(tmp_path / name, [write_npy(tmp_path / f"{name}.npy", data)])
        assert store_info(tmp_path / name)["codec"] == codec
        compressors = matrix_array(Store.open(tmp_path / name).root()).compressors
        assert (len(compressors) > 0) == (codec == "lz4")
        np.testing.assert_array_equal(stored_rows(tmp_path / name), data)
    fixed = IngestOptions(codec="zstd")
    ingest(tmp_path / "fixed", [write_npy(tmp_path / "fixed.npy", noise)], options=fixed)
    assert store_info(tmp_path / "fixed")["codec"] == "zstd"


def test_gc_removes_old_factors_and_orphans_but_keeps_the_newest(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    from typer.testing import CliRunner

    import streamsvd
    from streamsvd.cli import app

    store = tmp_path / "s"
    data = rng.standard_normal((300, 12))
    ingest(store, [write_npy(tmp_path / "a.npy", data)])
    for seed in (1, 2):  # two fits: the first one's U_raw is garbage once expired
        streamsvd.fit(store, rank=3, seed=seed, scheduler="sync")
    before = streamsvd.open_factors(store)
    size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    result = CliRunner().invoke(app, ["gc", str(store), "--older-than", "0"])
    assert result.exit_code == 0, result.output
    assert "expired" in result.output
    assert "deleted" in result.output
    after = streamsvd.open_factors(store)
    np.testing.assert_array_equal(after.s, before.s)
    np.testing.assert_array_equal(np.asarray(after.u), np.asarray(before.u))
    np.testing.assert_array_equal(stored_rows(store), data)
    assert len(Store.open(store).versions()) == 2  # the newest and the empty first one
    assert sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) < size
    assert streamsvd.verify(store, scheduler="sync", check=False).ok
    bad = CliRunner().invoke(app, ["gc", str(store), "--older-than", "-1"])
    assert bad.exit_code != 0
    assert "--older-than" in bad.output


@settings(max_examples=40, deadline=None)
@given(
    chunk=st.integers(1, 9),
    writes=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 25)), min_size=1, max_size=5),
)
def test_write_rows_by_chunk_equals_one_assignment(chunk, writes):
    rng = np.random.default_rng(len(writes) * 100 + chunk)
    array = zarr.create_array(
        zarr.storage.MemoryStore(), shape=(70, 3), chunks=(chunk, 3), dtype="float64"
    )
    expect = np.zeros((70, 3))
    for start, length in writes:
        rows = rng.standard_normal((length, 3))
        write_rows(array, rows, start)  # unaligned starts, partial and whole chunks
        expect[start : start + length] = rows
    np.testing.assert_array_equal(array[:], expect)


def plain_array(store=None, **kw):
    kw = {"shape": (10, 3), "chunks": (4, 3), "dtype": "float64", "compressors": None, **kw}
    return zarr.create_array(store if store is not None else zarr.storage.MemoryStore(), **kw)


@pytest.mark.parametrize("store_kind", ["memory", "local"])
def test_write_whole_chunks_stores_what_zarr_stores(rng, tmp_path, store_kind):
    # A LocalStore is given views of the rows (it writes them before returning);
    # a MemoryStore, which would keep them, is given copies.
    store = zarr.storage.LocalStore(tmp_path) if store_kind == "local" else None
    direct = plain_array(store=store)
    through_zarr = plain_array()
    rows = rng.standard_normal((10, 3))
    for lo, hi in [(0, 8), (8, 10)]:  # two whole chunks, then the edge chunk (padded)
        assert write_whole_chunks(direct, rows[lo:hi], lo)
        through_zarr[lo:hi] = rows[lo:hi]
    rows_written = rows.copy()
    rows[:] = np.nan  # the rows are passed without a copy: the store must not keep them
    np.testing.assert_array_equal(direct[:], rows_written)
    for key in ["c/0/0", "c/1/0", "c/2/0"]:  # the same stored bytes, key by key
        proto = zarr.core.buffer.default_buffer_prototype()
        stored = [zarr.core.sync.sync(a.store.get(key, proto)) for a in (direct, through_zarr)]
        assert stored[0].to_bytes() == stored[1].to_bytes()


def test_write_whole_chunks_declines_what_it_cannot_write(rng):
    rows = rng.standard_normal((4, 3))
    assert not write_whole_chunks(plain_array(), rows, 2)  # not at a chunk boundary
    assert not write_whole_chunks(plain_array(), rows[:3], 0)  # ends inside a chunk
    compressed = plain_array(compressors=zarr.codecs.ZstdCodec())
    assert not write_whole_chunks(compressed, rows, 0)  # chunks are not plain bytes
    assert is_plain(plain_array())
    assert not is_plain(compressed)
    assert not is_plain(plain_array(chunks=(4, 2)))  # chunks must span the columns

    async def on_a_loop():
        return write_whole_chunks(plain_array(), rows, 0)

    assert not asyncio.run(on_a_loop())  # a running loop is left to zarr's own thread
    untouched = plain_array()
    write_whole_chunks(untouched, rows, 2)
    np.testing.assert_array_equal(untouched[:], np.zeros((10, 3)))


def test_row_blocks_read_their_rows_and_unpickle_one_array_per_process():
    data = np.arange(60.0).reshape(20, 3)
    array = zarr.create_array(zarr.storage.MemoryStore(), shape=(20, 3), chunks=(5, 3), dtype="f8")
    array[:] = data
    blocks = row_blocks_of(array, (8, 8, 4))
    assert [b.shape for b in blocks] == [(8, 3), (8, 3), (4, 3)]
    np.testing.assert_array_equal(np.vstack([np.asarray(b) for b in blocks]), data)
    assert np.asarray(blocks[2], dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="no copy to avoid"):
        np.asarray(blocks[0], copy=False)
    copies = [pickle.loads(pickle.dumps(b)) for b in blocks]
    assert copies[0].array is copies[1].array is copies[2].array  # one array, its caches shared
    assert copies[0].array is not array
    np.testing.assert_array_equal(np.vstack([np.asarray(b) for b in copies]), data)
    alone = pickle.loads(pickle.dumps(RowBlock(array, 3, 6)))  # made without row_blocks_of
    np.testing.assert_array_equal(np.asarray(alone), data[3:6])
    with pytest.raises(ValueError, match="outside an array of 20 rows"):
        RowBlock(array, 15, 21)


def test_compressors_for_refuses_names_that_are_not_resolved_codecs():
    from streamsvd.store import layout

    assert layout.compressors_for("none") is None
    assert len(layout.compressors_for("zstd")) == 1
    for name in ("auto", "zsdt"):  # unresolved, and a typo: never stored uncompressed silently
        with pytest.raises(ValueError, match="not a resolved codec name"):
            layout.compressors_for(name)
