"""The factors inside a store: ``U_raw``, ``T``, ``S``, ``Vt``, ``mean`` and their record.

``U = U_raw @ T``: ``U_raw`` (rows × c) is row-chunked like the data and
append-only; ``T`` (c × k) is a small rotation that updates change instead of
rewriting old rows. The factors are written in the same commit as the data
they describe, so readers see old or new factors, never a mix.

``U_raw`` is written by Dask tasks through Icechunk fork sessions: a
coordinator fork creates the array, every task writes its rows in its own copy
of that fork, and the copies are merged back in a tree before the one commit.
(Forks that each create the array would silently drop each other's chunks;
``tests/test_fit_store.py`` guards this.)
"""

from __future__ import annotations

import datetime as dt
import pickle
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import zarr

from streamsvd.errors import NoFactorsError
from streamsvd.store import layout

U_RAW = "U_raw"


@dataclass(frozen=True)
class StoredFactors:
    """Factors as read from a store: small arrays in memory, ``U_raw`` lazy.

    ``U = u_raw @ t`` has shape (rows_covered, rank). In PCA mode ``mean`` is
    the column mean and the factors are those of the centred matrix.
    """

    u_raw: zarr.Array
    t: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    mean: np.ndarray | None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return int(self.s.shape[0])

    @property
    def rows_covered(self) -> int:
        return int(self.attrs["rows_covered"])


class URawWriter:
    """Writes the rows of ``U_raw`` from Dask tasks into a writable session.

    Implements the engine's sink protocol: :meth:`lazy_store` returns a Dask
    collection computed in the same pass as the rest of the fit; :meth:`finish`
    collects what the tasks wrote. A fit that grows its sketch calls both once
    per attempt; only the last attempt is kept. :meth:`merge_into_session` then
    moves it into the session, before the commit.
    """

    def __init__(self, session: Any, *, chunk_rows: int) -> None:
        self._session = session
        self._chunk_rows = chunk_rows
        self._coordinator: Any = None
        self._done: Any = None

    def lazy_store(self, z: Any) -> Any:
        import dask

        self._coordinator = self._session.fork()
        group = zarr.open_group(self._coordinator.store, mode="a")
        if layout.FACTORS in group:
            del group[layout.FACTORS]
        group.create_array(
            f"{layout.FACTORS}/{U_RAW}",
            shape=z.shape,
            chunks=(self._chunk_rows, z.shape[1]),
            dtype="float64",
            fill_value=0.0,
            compressors=None,
            dimension_names=("row", "component"),
        )
        fork_bytes = pickle.dumps(self._coordinator)
        starts = np.concatenate([[0], np.cumsum(z.chunks[0])])
        blocks = z.to_delayed().ravel()
        written = [
            dask.delayed(_write_rows, pure=True)(block, int(starts[i]), fork_bytes)
            for i, block in enumerate(blocks)
        ]
        # Merge the forks pairwise up a tree: no task holds more than two.
        while len(written) > 1:
            written = [
                dask.delayed(_merge_forks, pure=True)(*written[i : i + 2])
                for i in range(0, len(written), 2)
            ]
        return written[0]

    def finish(self, merged: Any) -> None:
        self._coordinator.merge(merged)
        self._done = self._coordinator

    def merge_into_session(self) -> None:
        """Move the rows written by the last attempt into the session."""
        if self._done is None:
            raise RuntimeError("no U_raw was written: the fit's final pass did not run")
        self._session.merge(self._done)


def _write_rows(block: np.ndarray, start: int, fork_bytes: bytes) -> Any:
    # The bytes are our own fork session, made in this process tree; nothing
    # untrusted is unpickled here.
    fork = pickle.loads(fork_bytes)
    array = zarr.open_array(fork.store, path=f"{layout.FACTORS}/{U_RAW}", mode="a")
    array[start : start + block.shape[0]] = block
    return fork


def _merge_forks(first: Any, second: Any = None) -> Any:
    if second is not None:
        first.merge(second)
    return first


def write_small_factors(
    group: zarr.Group,
    *,
    t: np.ndarray,
    s: np.ndarray,
    vt: np.ndarray,
    mean: np.ndarray | None,
    spectrum: np.ndarray | None,
    attrs: dict[str, Any],
) -> None:
    """Write ``T``, ``S``, ``Vt``, ``mean`` and the record into ``factors/``.

    Arrays given as None are left as they are.
    """
    factors = group.require_group(layout.FACTORS)
    for name, value in (("T", t), ("S", s), ("Vt", vt), ("mean", mean), ("spectrum", spectrum)):
        if value is None:
            continue
        if name in factors:
            del factors[name]
        value = np.ascontiguousarray(value, dtype=np.float64)
        array = factors.create_array(
            name, shape=value.shape, dtype="float64", chunks=value.shape or (1,), fill_value=0.0
        )
        array[...] = value
    factors.attrs.update(attrs)


def read_factors(group: zarr.Group) -> StoredFactors:
    """Read the factors of a version; raises :class:`NoFactorsError` if there are none."""
    if layout.FACTORS not in group:
        raise NoFactorsError("the store has no factors yet; run `streamsvd fit STORE` first")
    factors = cast(zarr.Group, group[layout.FACTORS])

    def small(name: str) -> np.ndarray:
        return np.asarray(cast(zarr.Array, factors[name])[...])

    mean = small("mean") if "mean" in factors else None
    return StoredFactors(
        u_raw=cast(zarr.Array, factors[U_RAW]),
        t=small("T"),
        s=small("S"),
        vt=small("Vt"),
        mean=mean,
        attrs=dict(factors.attrs),
    )


def factors_summary(group: zarr.Group) -> dict[str, Any]:
    """The ``factors`` object of ``streamsvd info --json``."""
    factors = read_factors(group)
    attrs = factors.attrs
    return {
        "rank": factors.rank,
        "rows_covered": int(attrs["rows_covered"]),
        "relative_error": float(attrs["relative_error"]),
        "captured_energy": float(attrs["captured_energy"]),
        "singular_values": [float(v) for v in factors.s],
        "params": attrs.get("params", {}),
        "rank_reason": attrs.get("rank_reason", ""),
        "data_version": attrs.get("data_version"),
        "center": factors.mean is not None,
        "updated": attrs.get("updated"),
    }


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
