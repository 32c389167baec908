"""A crash (SIGKILL) at any point keeps the last commit; a second writer is refused.

Each kill test runs an ingest in a child process that SIGKILLs itself the n-th
time it reaches a named point (``streamsvd.store.checkpoints``), then checks
that the store opens at the version before, and that running the same ingest
again gives exactly the rows of an uninterrupted run.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from streamsvd.errors import StoreLockedError, StoreNotFoundError
from streamsvd.store.ingest import IngestOptions, ingest
from streamsvd.store.matrix import matrix_array, read_batch_log
from streamsvd.store.repository import Store
from tests.conftest import run_killed, write_npy

INGEST_JOB = """
options = streamsvd.IngestOptions(memory_budget=64 * 1024, chunk_rows=256)
streamsvd.ingest(store, sources, options=options)
"""


def run_child(point: str, nth: int, store: Path, sources: list[Path]) -> int:
    return run_killed(INGEST_JOB, point, nth, store, sources)


@pytest.fixture
def batches(tmp_path: Path, rng: np.random.Generator) -> list[Path]:
    # 64 KiB blocks → the 3,000-row file is read in several blocks.
    return [
        write_npy(tmp_path / "first.npy", rng.standard_normal((500, 16))),
        write_npy(tmp_path / "second.npy", rng.standard_normal((3000, 16))),
        write_npy(tmp_path / "third.npy", rng.standard_normal((700, 16))),
    ]


SMALL = IngestOptions(memory_budget=64 * 1024, chunk_rows=256)


def rows_of(store: Path) -> np.ndarray:
    return np.asarray(matrix_array(Store.open(store).root())[:])


@pytest.mark.parametrize(
    ("point", "nth"),
    [("after-open", 1), ("after-block", 1), ("after-block", 4), ("before-commit", 1)],
)
def test_kill_during_ingest_keeps_previous_version(
    tmp_path: Path, batches: list[Path], point: str, nth: int
) -> None:
    reference = tmp_path / "reference"
    ingest(reference, batches[:1], options=SMALL)
    ingest(reference, batches[1:], options=SMALL)

    store = tmp_path / "store"
    ingest(store, batches[:1], options=SMALL)
    before = Store.open(store).current_version()

    assert run_child(point, nth, store, batches[1:]) == -signal.SIGKILL
    assert Store.open(store).current_version() == before
    np.testing.assert_array_equal(rows_of(store), np.load(batches[0]))

    ingest(store, batches[1:], options=SMALL)  # the re-run finishes the work ...
    np.testing.assert_array_equal(rows_of(store), rows_of(reference))
    log = read_batch_log(Store.open(store).root())
    assert [b.id for b in log] == [b.id for b in read_batch_log(Store.open(reference).root())]


def test_kill_after_commit_keeps_the_commit_and_rerun_is_a_no_op(
    tmp_path: Path, batches: list[Path]
) -> None:
    store = tmp_path / "store"
    assert run_child("after-commit", 1, store, batches) == -signal.SIGKILL
    committed = rows_of(store)
    assert committed.shape == (4200, 16)
    report = ingest(store, batches)  # lock released by the kernel; nothing to add
    assert report.version is None
    assert len(report.skipped) == 3
    np.testing.assert_array_equal(rows_of(store), committed)


def test_kill_during_first_ingest_leaves_an_empty_store_that_a_rerun_fills(
    tmp_path: Path, batches: list[Path]
) -> None:
    store = tmp_path / "store"
    assert run_child("after-block", 2, store, batches) == -signal.SIGKILL
    with pytest.raises(StoreNotFoundError, match="holds no data yet"):
        Store.open(store)
    ingest(store, batches, options=SMALL)
    expected = np.vstack([np.load(p) for p in batches])
    np.testing.assert_array_equal(rows_of(store), expected)


HOLDER = textwrap.dedent(
    """
    import sys
    from streamsvd.store.repository import Store
    with Store.open_for_writing(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def test_second_concurrent_writer_gets_a_clear_error(tmp_path: Path, batches: list[Path]) -> None:
    store = tmp_path / "store"
    ingest(store, batches[:1], options=SMALL)
    before = Store.open(store).current_version()
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        try:
            with pytest.raises(StoreLockedError, match=r"being written by another process \(pid"):
                ingest(store, batches[1:], options=IngestOptions())
            # Readers are never blocked by a writer.
            assert Store.open(store).current_version() == before
        finally:
            holder.communicate("\n", timeout=30)
    assert ingest(store, batches[1:]).rows_added == 3700
