"""Open, create and write a store: one Icechunk repository, one writer at a time.

Every write is a :class:`Transaction`: a writable Icechunk session taken under
the store's writer lock and committed once, at the end. Readers open a
read-only session of one snapshot, so they see a whole version or none of it;
a crash before the commit leaves the last committed version as it was.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import icechunk
import zarr

from streamsvd.errors import (
    ConflictError,
    NotAStoreError,
    StoreNotFoundError,
)
from streamsvd.store import checkpoints, layout
from streamsvd.store.location import StoreLocation, parse_location
from streamsvd.store.lock import writer_lock


@dataclass(frozen=True)
class Version:
    """One committed version of a store."""

    id: str
    message: str
    time: dt.datetime
    metadata: dict[str, Any] = field(default_factory=dict)


class Transaction:
    """A write in progress: changes are invisible to readers until :meth:`commit`."""

    def __init__(self, store: Store, session: Any) -> None:
        self.store = store
        self.session = session
        self.group = zarr.open_group(session.store, mode="a")

    def commit(self, message: str, metadata: dict[str, Any] | None = None) -> str:
        """Commit the changes as one new version; returns its id."""
        checkpoints.reached("before-commit")
        try:
            version = str(self.session.commit(message, metadata=metadata or {}))
        except icechunk.ConflictError as exc:
            raise ConflictError(
                f"store {self.store.location} changed while this write was in progress "
                f"({exc}); nothing was written. Run the command again."
            ) from None
        checkpoints.reached("after-commit")
        return version


class Store:
    """A streamsvd store.

    Use :meth:`open` for an existing store and :meth:`transaction` to write.
    The constructor does no I/O.
    """

    def __init__(self, location: StoreLocation, repo: Any) -> None:
        self.location = location
        self.repo = repo

    # -- opening -------------------------------------------------------------
    @classmethod
    def open(cls, url: str | Path) -> Store:
        """Open an existing store for reading.

        Raises
        ------
        StoreNotFoundError
            Nothing at ``url``, or a store that holds no data yet.
        NotAStoreError
            ``url`` holds something streamsvd did not create.
        """
        location = parse_location(url)
        repo = _open_repo(location)
        if repo is None:
            raise StoreNotFoundError(
                f"no streamsvd store at {location}; create one with "
                f"`streamsvd ingest {location} SOURCE...`"
            )
        store = cls(location, repo)
        if not store.is_initialized():
            if store._is_fresh_repository():
                raise StoreNotFoundError(
                    f"store {location} holds no data yet; add rows with "
                    f"`streamsvd ingest {location} SOURCE...`"
                )
            raise NotAStoreError(
                f"{location} is an Icechunk repository that streamsvd did not create "
                f"(its root group has no '{layout.FORMAT_KEY}' attribute); "
                "give the path of a streamsvd store or a new path"
            )
        return store

    @classmethod
    @contextmanager
    def open_for_writing(cls, url: str | Path, *, create: bool = True) -> Iterator[Store]:
        """Open (or create) a store and hold its writer lock for the block.

        If the store was created here and the block fails before anything is
        committed, the new directory is removed again: bad input leaves no trace.
        """
        location = parse_location(url)
        created_dir = False
        with ExitStack() as stack:
            if location.path is not None:
                created_dir = not location.path.exists()
                if location.path.exists() and not location.path.is_dir():
                    raise NotAStoreError(
                        f"{location} is a file, not a streamsvd store; give a directory path"
                    )
                stack.enter_context(writer_lock(location.path))
            try:
                repo = _open_repo(location)
                if repo is None:
                    if not create:
                        raise StoreNotFoundError(f"no streamsvd store at {location}")
                    repo = icechunk.Repository.create(location.storage())
                store = cls(location, repo)
                if not store.is_initialized() and not store._is_fresh_repository():
                    raise NotAStoreError(
                        f"{location} is an Icechunk repository that streamsvd did not create; "
                        "give the path of a streamsvd store or a new path"
                    )
                yield store
            except BaseException:
                if created_dir and location.path is not None:
                    store_fresh = _open_repo(location)
                    if store_fresh is None or cls(location, store_fresh)._is_fresh_repository():
                        shutil.rmtree(location.path, ignore_errors=True)
                raise

    # -- reading -------------------------------------------------------------
    def root(self, version: str | None = None) -> zarr.Group:
        """The root group of a version (the newest by default), read-only."""
        if version is None:
            session = self.repo.readonly_session(branch=layout.BRANCH)
        else:
            session = self.repo.readonly_session(snapshot_id=version)
        return zarr.open_group(session.store, mode="r")

    def is_initialized(self) -> bool:
        try:
            group = self.root()
        except Exception:  # an empty repository has no root group yet
            return False
        return layout.FORMAT_KEY in group.attrs

    def _is_fresh_repository(self) -> bool:
        """True for an Icechunk repository with no commit but its initial one."""
        ancestry = list(self.repo.ancestry(branch=layout.BRANCH))
        return len(ancestry) <= 1

    def current_version(self) -> str:
        return str(self.repo.lookup_branch(layout.BRANCH))

    def versions(self) -> list[Version]:
        """Committed versions, newest first."""
        return [
            Version(
                id=snap.id,
                message=snap.message,
                time=snap.written_at,
                metadata=dict(snap.metadata or {}),
            )
            for snap in self.repo.ancestry(branch=layout.BRANCH)
        ]

    # -- writing -------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A writable session; uncommitted changes are discarded on exit.

        Call this inside :meth:`open_for_writing` (which holds the lock).
        """
        session = self.repo.writable_session(layout.BRANCH)
        yield Transaction(self, session)

    def __repr__(self) -> str:
        return f"Store({str(self.location)!r})"


def _open_repo(location: StoreLocation) -> Any | None:
    """The Icechunk repository at ``location``, or None when there is none."""
    if location.path is not None:
        path = location.path
        if not path.exists():
            return None
        if not path.is_dir():
            raise NotAStoreError(f"{location} is a file, not a streamsvd store")
        if not any(path.iterdir()):
            return None
    storage = location.storage()
    try:
        exists = icechunk.Repository.exists(storage)
    except Exception as exc:
        raise NotAStoreError(f"cannot read a store at {location}: {exc}") from None
    if not exists:
        if location.path is None:
            return None  # an empty S3 prefix: a store can be created there
        raise NotAStoreError(
            f"{location} is not a streamsvd store (no Icechunk repository there); "
            "give the path of a store, or a new path to create one"
        )
    return icechunk.Repository.open(storage)
