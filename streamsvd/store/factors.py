"""The factors inside a store: ``U_raw``, ``T``, ``S``, ``Vt``, ``mean`` and their record.

``U = U_raw @ T``: ``U_raw`` (rows × c) is row-chunked like the data and
append-only; ``T`` (c × k) is a small rotation that updates change instead of
rewriting old rows. The factors are written in the same commit as the data
they describe, so readers see old or new factors, never a mix.

``U_raw`` is written by Dask tasks through Icechunk fork sessions: a
coordinator fork creates the array, every final-pass task writes its rows in
its own copy of that fork, and the copies are merged up the pass's reduction
tree before the one commit.
(Forks that each create the array would silently drop each other's chunks;
``tests/test_fit_store.py`` guards this.)
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import zarr

from streamsvd.errors import NoFactorsError
from streamsvd.store import layout
from streamsvd.store.chunks import write_whole_chunks
from streamsvd.store.matrix import write_rows

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

    Implements the engine's sink protocol: :meth:`open` creates the array in a
    coordinator fork and returns a :class:`ForkWriter` that the final-pass tasks
    use on the workers; :meth:`finish` receives the forks they merged. A fit that
    grows its sketch calls both once per attempt; only the last attempt is kept.
    :meth:`merge_into_session` then moves it into the session, before the commit.
    """

    def __init__(self, session: Any, *, chunk_rows: int) -> None:
        self._session = session
        self._chunk_rows = chunk_rows
        self._coordinator: Any = None
        self._done: Any = None

    def open(self, shape: tuple[int, int]) -> ForkWriter:
        self._coordinator = self._session.fork()
        group = zarr.open_group(self._coordinator.store, mode="a")
        if layout.FACTORS in group:
            del group[layout.FACTORS]
        group.create_array(
            f"{layout.FACTORS}/{U_RAW}",
            shape=shape,
            chunks=(self._chunk_rows, shape[1]),
            dtype="float64",
            fill_value=0.0,
            compressors=None,
            dimension_names=("row", "component"),
        )
        return ForkWriter(pickle.dumps(self._coordinator))

    def finish(self, merged: Any) -> None:
        self._coordinator.merge(merged)
        self._done = self._coordinator

    def merge_into_session(self) -> None:
        """Move the rows written by the last attempt into the session."""
        if self._done is None:
            raise RuntimeError("no U_raw was written: the fit's final pass did not run")
        self._session.merge(self._done)


def write_u_raw_rows(array: zarr.Array, rows: np.ndarray, start: int) -> None:
    """Write rows of ``U_raw`` from row ``start``: whole plain chunks straight to the
    store (:func:`streamsvd.store.chunks.write_whole_chunks`), else a chunk at a time."""
    if not write_whole_chunks(array, rows, start):
        # Skip zarr's scan of every chunk for all-zero ones: U_raw's (rare) zero
        # chunks would only be stored, not lost.
        write_rows(array.with_config({"write_empty_chunks": True}), rows, start)


@dataclass(frozen=True)
class ForkWriter:
    """Writes rows of ``U_raw`` into its own copy of the coordinator fork.

    Every :meth:`write` unpickles a fresh copy of the fork (the bytes are our
    own session, made in this process tree: nothing untrusted is unpickled) and
    returns it; :meth:`merge` folds such copies into the first one.
    """

    fork_bytes: bytes

    def write(self, rows: np.ndarray, start: int) -> Any:
        fork = pickle.loads(self.fork_bytes)
        array = zarr.open_array(fork.store, path=f"{layout.FACTORS}/{U_RAW}", mode="a")
        write_u_raw_rows(array, rows, start)
        return fork

    def merge(self, forks: list[Any]) -> Any:
        first = forks[0]
        for other in forks[1:]:
            first.merge(other)
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
    # One metadata write: attrs.update() would rewrite the whole (growing) record once
    # per key, 18 times per update (2.5 ms each on a store with about 20 updates behind it).
    factors.update_attributes(attrs)


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
