"""A landing folder: which of its files are new to a store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from streamsvd.errors import SourceNotFoundError, StoreNotFoundError
from streamsvd.store.ingest import file_stat
from streamsvd.store.matrix import read_batch_log
from streamsvd.store.repository import Store
from streamsvd.store.sources import content_hash, expand_sources


def new_sources(
    store: str | Path, specs: Sequence[str | Path], *, dataset: str | None = None
) -> list[Path]:
    """Files of ``specs`` (folders, globs, files) whose content is not yet in the store's log.

    In name order; a missing store means every file is new; an empty landing
    folder gives an empty list (not an error: nothing has arrived yet).
    """
    try:
        paths = expand_sources(specs)
    except SourceNotFoundError:
        return []
    try:
        log = read_batch_log(Store.open(store).root())
    except StoreNotFoundError:
        log = []
    known = {b.id for b in log}
    # A file logged under the same path with the same size and mtime is not read
    # again: without this every run would hash the whole landing folder.
    unchanged = {(b.source, b.size, b.mtime_ns) for b in log if b.size >= 0}
    new = []
    for path in paths:
        if (str(path), *file_stat(path)) in unchanged:
            continue
        if content_hash(path, dataset=dataset) not in known:
            new.append(path)
    return new
