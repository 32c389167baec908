"""One writer per store.

Icechunk on a local filesystem does not guard concurrent commits, so every
write to a local store holds an exclusive lock on the hidden file
``.<store name>.streamsvd.lock`` beside the store directory (beside, not inside:
Icechunk creates repositories only in empty directories). The lock is a
``flock``: the kernel releases it when the process dies, even by SIGKILL, so a
crash never leaves a stale lock. Object stores (S3) get no lock file: there
Icechunk's conditional writes detect a concurrent commit and the second writer
fails with :class:`~streamsvd.errors.ConflictError` instead of losing an update.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import filelock

from streamsvd.errors import StoreLockedError

LOCK_SUFFIX = ".streamsvd.lock"


def lock_path_for(store_dir: Path) -> Path:
    """The lock file of a local store: a hidden sibling of its directory."""
    return store_dir.parent / f".{store_dir.name}{LOCK_SUFFIX}"


@contextmanager
def writer_lock(store_dir: Path) -> Iterator[None]:
    """Hold the exclusive writer lock of a local store.

    Parameters
    ----------
    store_dir : Path
        The store directory (its parent is created if missing). Does not wait:
        a lock held by another writer fails at once.

    Raises
    ------
    StoreLockedError
        Another process holds the lock.
    """
    store_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = lock_path_for(store_dir)
    lock = filelock.FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        holder = _read_holder(lock_path)
        raise StoreLockedError(
            f"store {store_dir} is being written by another process{holder}; "
            "streamsvd allows one writer per store. Wait for it to finish and run again "
            "(a crashed writer releases the lock by itself)."
        ) from None
    try:
        _write_holder(lock_path)
        yield
    finally:
        lock.release()


def _write_holder(lock_path: Path) -> None:
    # Informational only (for the error message of a second writer): flock does
    # the locking, so a stale pid here is harmless.
    with suppress(OSError):
        lock_path.with_name(lock_path.name + ".pid").write_text(str(os.getpid()))


def _read_holder(lock_path: Path) -> str:
    try:
        pid = lock_path.with_name(lock_path.name + ".pid").read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
