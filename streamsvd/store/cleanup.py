"""Removing old versions and unreferenced files from a store (``streamsvd gc``).

Every commit keeps the versions before it, and every fit writes a new ``U_raw``
(``rows × l`` float64, ``l + 1`` columns in PCA mode: 480 MB at a million rows and
``l = 60``), so a store under a nightly refit grows by that much a night. An
interrupted write also leaves the chunks it wrote without a commit that references
them. :func:`collect_garbage` expires the versions older than a threshold (Icechunk's
``expire_snapshots``: the newest version is always kept) and then deletes the files no
kept version references and that are older than the threshold (``garbage_collect``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from streamsvd.errors import ConfigError
from streamsvd.store.repository import Store


@dataclass(frozen=True)
class GarbageReport:
    """What :func:`collect_garbage` removed."""

    store: str
    older_than: dt.datetime
    versions_expired: int
    versions_kept: int
    files_deleted: int
    bytes_deleted: int


def collect_garbage(store: str | Path, *, older_than_days: float = 7.0) -> GarbageReport:
    """Expire versions older than ``older_than_days`` and delete unreferenced files.

    Holds the store's writer lock (local stores), so no streamsvd write runs
    meanwhile. Files younger than the threshold are never deleted, so on S3,
    where there is no lock, a write in progress elsewhere keeps its files as long
    as it started less than ``older_than_days`` ago. The newest version (data,
    batch log and factors) is never touched.

    Parameters
    ----------
    store : str or Path
    older_than_days : float
        Keep every version committed in the last this many days (``0``: keep only
        the newest version).

    Returns
    -------
    GarbageReport

    Examples
    --------
    >>> import tempfile, numpy as np, streamsvd
    >>> tmp = tempfile.mkdtemp()
    >>> _ = streamsvd.ingest(f"{tmp}/s", [np.ones((10, 3))])
    >>> _ = streamsvd.ingest(f"{tmp}/s", [np.zeros((5, 3))])
    >>> report = collect_garbage(f"{tmp}/s", older_than_days=0)
    >>> report.versions_kept  # the newest version and the repository's empty first one
    2
    """
    if not older_than_days >= 0:
        raise ConfigError(f"--older-than must be a number of days >= 0; got {older_than_days}")
    threshold = dt.datetime.now(dt.UTC) - dt.timedelta(days=older_than_days)
    with Store.open_for_writing(store, create=False) as opened:
        expired = opened.repo.expire_snapshots(older_than=threshold)
        summary = opened.repo.garbage_collect(delete_object_older_than=threshold)
        kept = len(opened.versions())
    files = (
        summary.chunks_deleted
        + summary.manifests_deleted
        + summary.snapshots_deleted
        + summary.attributes_deleted
        + summary.transaction_logs_deleted
    )
    return GarbageReport(
        store=str(opened.location),
        older_than=threshold,
        versions_expired=len(expired),
        versions_kept=kept,
        files_deleted=int(files),
        bytes_deleted=int(summary.bytes_deleted),
    )
