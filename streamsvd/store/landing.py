"""A landing folder: which of its files are new to a store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from streamsvd.errors import SourceNotFoundError, StoreNotFoundError
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
        known = {b.id for b in read_batch_log(Store.open(store).root())}
    except StoreNotFoundError:
        known = set()
    return [p for p in paths if content_hash(p, dataset=dataset) not in known]
