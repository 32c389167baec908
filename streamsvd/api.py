"""The Python API: fit a store, open its factors, verify them, export them.

Every function takes a store path (or ``s3://`` URL). ``fit`` runs on the
current ``distributed.Client`` if there is one, else on ``scheduler`` (an
address, ``"local"`` for an embedded LocalCluster) or Dask's threaded
scheduler.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import dask.array as da
import numpy as np
import zarr

from streamsvd.engine import fit_array, verify_array
from streamsvd.engine.fit import compute_pass
from streamsvd.errors import ConfigError, StoreExistsError, VerificationError
from streamsvd.linalg.sketch import error_summary
from streamsvd.store import layout, sparse
from streamsvd.store.factors import (
    StoredFactors,
    URawWriter,
    read_factors,
    write_small_factors,
)
from streamsvd.store.matrix import MatrixMeta, matrix_array, read_meta
from streamsvd.store.repository import Store
from streamsvd.store.row_block import RowBlock, row_blocks_of

#: Round-off of a recorded squared relative error (see :func:`verify`).
ABSOLUTE_ERROR_FLOOR = 1e-11

#: Bytes of stored data per Dask block: large enough that task overhead is
#: negligible, small enough that a worker holds a few blocks in float64. On the
#: 2 GB fit benchmark both neighbours were slower: threaded 6.9 s with 16 MiB and
#: 8.2-8.5 s with 64 MiB blocks, against 6.4-6.6 s (embedded 8.0-8.6 s and
#: 8.1-8.8 s against 6.9-7.8 s).
BLOCK_BYTES = 32 * 1024 * 1024


def block_rows_for(chunk_rows: int, n_cols: int, itemsize: int, budget: int | None = None) -> int:
    """Rows per block: a whole number of chunks of ``chunk_rows`` rows, about ``budget``
    bytes (default :data:`BLOCK_BYTES`, read at each call).

    >>> block_rows_for(100, 10, 8, budget=25_000)
    300
    """
    budget = BLOCK_BYTES if budget is None else budget
    per_chunk = chunk_rows * n_cols * itemsize
    return chunk_rows * max(1, budget // max(1, per_chunk))


def matrix_as_dask(group: zarr.Group, *, block_rows: int | None = None) -> da.Array:
    """The stored matrix as a Dask array whose blocks are whole Zarr chunks.

    For a sparse store every block is a ``scipy.sparse.csr_matrix`` (never densified;
    see :func:`streamsvd.store.sparse.as_dask`).
    """
    meta = read_meta(group)
    if meta.kind == sparse.KIND:
        return sparse.as_dask(group, block_rows=block_rows)
    array = matrix_array(group)
    rows = block_rows or block_rows_for(meta.chunk_rows, meta.n_cols, np.dtype(meta.dtype).itemsize)
    # chunks= explicitly: from_zarr would otherwise follow the inner chunks (dask#12586).
    return da.from_zarr(array, chunks=(rows, meta.n_cols))


@contextlib.contextmanager
def _scheduler(scheduler: str | None) -> Iterator[None]:
    if scheduler is None:
        yield
        return
    if scheduler in ("sync", "synchronous", "threads", "threading"):
        import dask

        with dask.config.set(scheduler=scheduler):
            yield
        return
    from streamsvd.engine.cluster import dask_client

    with dask_client(None if scheduler == "local" else scheduler):
        yield


def fit(
    store: str | Path,
    *,
    rank: int | str = 10,
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
    center: bool = False,
    dtype: str = "float32",
    max_rank: int | None = None,
    scheduler: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit a rank-k truncated SVD of a store's matrix and commit the factors.

    Makes ``power_iters + 1`` passes over the data (more only when a ``tol:``
    rule grows the sketch), each reading every block once. Peak memory per
    worker is O(block·n + n·l), independent of the number of rows; nothing
    that grows with the rows is gathered to the client.

    Parameters
    ----------
    store : str or Path
        The store.
    rank : int or str
        ``k``, ``"energy:F"``, ``"tol:F"`` or ``"gd"``.
    oversample, power_iters, seed, center, dtype, max_rank
        See :func:`streamsvd.engine.fit_array`.
    scheduler : str, optional
        None (current client or threads), ``"local"`` (embedded LocalCluster),
        ``"sync"``, or a scheduler address such as ``tcp://host:8786``.
    progress : bool
        Show a progress bar per pass.

    Returns
    -------
    dict
        The factors' summary (as in ``streamsvd info --json``) and ``version``.

    Examples
    --------
    >>> import numpy as np, tempfile, streamsvd
    >>> from streamsvd.store.ingest import ingest
    >>> tmp = tempfile.mkdtemp()
    >>> rng = np.random.default_rng(0)
    >>> np.save(f"{tmp}/rows.npy", rng.standard_normal((300, 3)) @ rng.standard_normal((3, 20)))
    >>> _ = ingest(f"{tmp}/store", [f"{tmp}/rows.npy"])
    >>> summary = streamsvd.fit(f"{tmp}/store", rank=3, scheduler="sync")
    >>> summary["rank"], summary["relative_error"] < 1e-6  # exact up to round-off
    (3, True)
    """
    started = time.perf_counter()
    with Store.open_for_writing(store, create=False) as opened, _scheduler(scheduler):
        if not opened.is_initialized():
            raise ConfigError(f"store {opened.location} holds no data yet; ingest rows first")
        with opened.transaction() as tx:
            data_version = str(tx.session.snapshot_id)
            group = opened.root(data_version)
            meta = read_meta(group)
            a = matrix_as_dask(group)
            if a.shape[0] == 0:
                raise ConfigError(f"store {opened.location} has no rows; ingest rows first")
            previous = _previous_attrs(group)
            writer = URawWriter(tx.session, chunk_rows=meta.chunk_rows)
            result = fit_array(
                a,
                rank=rank,
                oversample=oversample,
                power_iters=power_iters,
                seed=seed,
                center=center,
                dtype=dtype,
                max_rank=max_rank,
                sink=writer,
                progress=progress,
                blocks=_blocks_read_in_tasks(group, meta, a),
            )
            writer.merge_into_session()
            record = {
                "op": "fit",
                "time": layout.now(),
                "rows": result.rows,
                "rank": result.rank,
                "relative_error": result.relative_error,
                "data_version": data_version,
            }
            attrs = {
                "rank": result.rank,
                "rows_covered": result.rows,
                "cols": int(meta.n_cols),
                "energy": result.energy,
                "relative_error": result.relative_error,
                "captured_energy": result.captured_energy,
                "params": asdict(result.params),
                "rank_reason": result.rank_choice.reason,
                "data_version": data_version,
                "passes": result.passes,
                "timings": {**result.timings, "total": time.perf_counter() - started},
                "updated": record["time"],
                "last_fit": record,
                "history": [*previous.get("history", []), record],
                "compactions": 0,
            }
            write_small_factors(
                zarr.open_group(tx.session.store, mode="a"),
                t=result.t,
                s=result.s,
                vt=result.vt,
                mean=result.mean,
                spectrum=result.singular_values_sketch,
                attrs=attrs,
            )
            version = tx.commit(
                f"fit rank {result.rank} ({result.rank_choice.reason}); "
                f"relative error {result.relative_error:.4g}",
                metadata={"operation": "fit", "rank": result.rank},
            )
    summary = {**_summary(attrs, result.s, center), "version": version}
    return summary


def _blocks_read_in_tasks(
    group: zarr.Group, meta: MatrixMeta, a: da.Array
) -> list[RowBlock] | None:
    """Dense rows for a fit's tasks to read themselves (see :mod:`streamsvd.store.row_block`)."""
    if meta.kind == sparse.KIND:
        return None  # a sparse block is assembled from three arrays by its own task
    return row_blocks_of(matrix_array(group), a.chunks[0])


def _previous_attrs(group: zarr.Group) -> dict[str, Any]:
    if layout.FACTORS not in group:
        return {}
    return dict(group[layout.FACTORS].attrs)


def _summary(attrs: dict[str, Any], s: np.ndarray, center: bool) -> dict[str, Any]:
    return {
        "rank": int(attrs["rank"]),
        "rows_covered": int(attrs["rows_covered"]),
        "relative_error": float(attrs["relative_error"]),
        "captured_energy": float(attrs["captured_energy"]),
        "singular_values": [float(v) for v in s],
        "params": attrs["params"],
        "rank_reason": attrs["rank_reason"],
        "center": center,
    }


@dataclass(frozen=True)
class Factors:
    """The factors of one version of a store.

    ``u`` is lazy (a Dask array ``U_raw @ T``); ``s``, ``vt`` and ``mean`` are
    in memory. Obtained from :func:`open_factors`.
    """

    store: str
    version: str
    stored: StoredFactors
    group: zarr.Group = field(repr=False)  # the version's root group (data and factors)

    @property
    def s(self) -> np.ndarray:
        return self.stored.s

    @property
    def vt(self) -> np.ndarray:
        return self.stored.vt

    @property
    def mean(self) -> np.ndarray | None:
        return self.stored.mean

    @property
    def rank(self) -> int:
        return self.stored.rank

    @property
    def attrs(self) -> dict[str, Any]:
        return self.stored.attrs

    @property
    def relative_error(self) -> float:
        return float(self.attrs["relative_error"])

    def checked_rank(self, rank: int | None) -> int:
        """``rank`` (default: the fitted rank), checked to be in ``1 … rank``."""
        k = self.rank if rank is None else rank
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= self.rank:
            raise ConfigError(
                f"--rank must be an integer between 1 and the fitted rank {self.rank}; got {rank!r}"
            )
        return int(k)

    def u_raw(self) -> da.Array:
        array = self.stored.u_raw
        return da.from_zarr(array, chunks=(array.chunks[0] * 8, array.shape[1]))

    @property
    def u(self) -> da.Array:
        """Left singular vectors, shape (rows_covered, rank), lazy."""
        u_raw = self.u_raw()
        t = self.stored.t
        return da.map_blocks(
            np.matmul, u_raw, t, chunks=(u_raw.chunks[0], (self.rank,)), dtype=np.float64
        )


def open_factors(store: str | Path | Factors, *, version: str | None = None) -> Factors:
    """Open the factors of a store (the newest version by default).

    Factors already opened are returned as they are, so functions that take
    either a store or its factors open it once.

    Examples
    --------
    >>> import numpy as np, tempfile, streamsvd
    >>> from streamsvd.store.ingest import ingest
    >>> tmp = tempfile.mkdtemp()
    >>> np.save(f"{tmp}/rows.npy", np.random.default_rng(1).standard_normal((50, 4)))
    >>> _ = ingest(f"{tmp}/store", [f"{tmp}/rows.npy"])
    >>> _ = streamsvd.fit(f"{tmp}/store", rank=2, scheduler="sync")
    >>> factors = streamsvd.open_factors(f"{tmp}/store")
    >>> factors.u.shape, factors.s.shape, factors.vt.shape
    ((50, 2), (2,), (2, 4))
    """
    if isinstance(store, Factors):
        return store
    opened = Store.open(store)
    version = version or opened.current_version()
    group = opened.root(version)
    return Factors(str(opened.location), version, read_factors(group), group)


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` measured against what the factors record."""

    recorded_error: float
    measured_error: float
    orthogonality_u: float
    orthogonality_v: float
    ok: bool
    tolerance: float


def verify(
    store: str | Path,
    *,
    version: str | None = None,
    scheduler: str | None = None,
    orthogonality_tol: float = 1e-6,
    check: bool = True,
) -> VerifyReport:
    """Measure ``‖A − U S Vᵀ‖_F / ‖A‖_F`` and the orthogonality of U and V in one pass.

    Raises :class:`~streamsvd.errors.VerificationError` when the measured error
    disagrees with the recorded one, or U or V is not orthonormal, beyond tolerance;
    with ``check=False`` it returns the report instead, ``ok`` saying whether they agree.
    The error comparison is on squared relative errors: both come from float64
    sums, so they agree to ``1e-6`` relative plus ``1e-11`` absolute. The
    absolute term is the round-off of the recorded value, a difference
    ``‖A‖² − Σs²`` (in PCA mode of a centred energy that is itself a
    difference), measured at about 1e-12 after a fit: relative errors below
    ~3e-6 are at that round-off and compare as equal.
    """
    factors = open_factors(store, version=version)
    stored, group = factors.stored, factors.group
    rows = int(stored.attrs["rows_covered"])
    with _scheduler(scheduler):
        if read_meta(group).kind == sparse.KIND:
            # Columns added after the factors were written are zero on the rows they cover.
            a = sparse.as_dask(group, rows=rows, n_cols=stored.vt.shape[1])
        else:
            a = matrix_as_dask(group)[:rows]
        segments = row_weights(stored.attrs)
        if segments:
            if stored.mean is not None:
                raise ConfigError(
                    "verify cannot measure centred (PCA) factors updated with --forget "
                    "(a weighted mean); refit, or verify before forgetting"
                )
            a = _weighted(a, segments)
        u_raw = da.from_zarr(stored.u_raw, chunks=(a.chunks[0], stored.u_raw.shape[1]))
        measured = verify_array(a, u_raw, stored.t, stored.s, stored.vt, stored.mean)
    recorded = float(stored.attrs["relative_error"])
    tolerance = 1e-6 * measured.relative_residual**2 + ABSOLUTE_ERROR_FLOOR
    ok = bool(
        abs(recorded**2 - measured.relative_residual**2) <= tolerance
        and measured.orthogonality_u <= orthogonality_tol
        and measured.orthogonality_v <= orthogonality_tol
    )
    report = VerifyReport(
        recorded_error=recorded,
        measured_error=measured.relative_residual,
        orthogonality_u=measured.orthogonality_u,
        orthogonality_v=measured.orthogonality_v,
        ok=ok,
        tolerance=math.sqrt(tolerance),
    )
    if check and not ok:
        raise VerificationError(
            f"store {factors.store} version {factors.version}: recorded relative error "
            f"{recorded:.9g}, measured {measured.relative_residual:.9g}; "
            f"‖UᵀU − I‖ = {measured.orthogonality_u:.3g}, ‖VᵀV − I‖ = "
            f"{measured.orthogonality_v:.3g} (tolerance {orthogonality_tol:g}). "
            "The factors do not describe the data: refit with `streamsvd fit`."
        )
    return report


def row_weights(attrs: dict[str, Any]) -> list[tuple[int, int, float]]:
    """Segments ``(start, stop, weight)`` of the row weights γ^age left by ``--forget``.

    Empty when every weight is 1. Each batch appended with ``forget=γ`` scaled
    every earlier row by γ; a full fit resets all weights to 1.
    """
    starts: list[tuple[int, float]] = []
    for entry in attrs.get("history", []):
        if entry.get("op") == "fit":
            starts = []
        for start, gamma in entry.get("forget_batches", []):
            starts.append((int(start), float(gamma)))
    if not starts:
        return []
    rows = int(attrs["rows_covered"])
    bounds = [0] + [start for start, _ in starts] + [rows]
    segments = []
    for i in range(len(bounds) - 1):
        weight = float(np.prod([gamma for _, gamma in starts[i:]]))
        if bounds[i + 1] > bounds[i]:
            segments.append((bounds[i], bounds[i + 1], weight))
    return segments


def _weighted(a: da.Array, segments: list[tuple[int, int, float]]) -> da.Array:
    """``diag(ω) A`` for piecewise-constant row weights, block by block (lazy)."""

    def scale(block: Any, block_info: Any = None) -> Any:
        lo, hi = block_info[0]["array-location"][0]
        weights = np.ones(hi - lo)
        for start, stop, weight in segments:
            left, right = max(start, lo), min(stop, hi)
            if left < right:
                weights[left - lo : right - lo] = weight
        if hasattr(block, "multiply"):  # scipy.sparse: stays sparse
            return block.multiply(weights[:, None]).tocsr()
        return block * weights[:, None]

    return da.map_blocks(scale, a, dtype=np.float64, meta=a._meta)


def export(
    store: str | Path,
    out: str | Path,
    *,
    rank: int | None = None,
    version: str | None = None,
    overwrite: bool = False,
    scheduler: str | None = None,
) -> Path:
    """Write the factors as a plain Zarr v3 group that any Zarr reader opens.

    Arrays ``U`` (rows × k, materialized), ``S`` (k), ``Vt`` (k × cols) and, in
    PCA mode, ``mean`` (cols); attributes ``rank``, ``rows``, ``cols``,
    ``relative_error``, ``captured_energy``, ``params``, ``source_version``.
    ``rank`` below the fitted rank writes that truncation (its error is exact,
    from the recorded energy). Written to a temporary directory, then renamed.
    """
    factors = open_factors(store, version=version)
    k = factors.checked_rank(rank)
    target = Path(out)
    if target.exists() and not overwrite:
        raise StoreExistsError(f"{target} exists; pass --overwrite or choose another path")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    rel, captured = error_summary(float(factors.attrs["energy"]), factors.s[:k])
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    u = factors.u[:, :k]
    u_array = group.create_array(
        "U", shape=u.shape, chunks=(u.chunks[0][0] if u.chunks[0] else 1, k), dtype="float64"
    )
    with _scheduler(scheduler):
        # Dask blocks are whole Zarr chunks: no two tasks touch one chunk. Through
        # compute_pass, as the fit's and verify's passes: one BLAS thread per task.
        stored_u = da.store(u, cast(Any, u_array), lock=False, compute=False)
        compute_pass([stored_u], progress=False, label="export")
    group.create_array("S", data=np.ascontiguousarray(factors.s[:k]))
    group.create_array("Vt", data=np.ascontiguousarray(factors.vt[:k]))
    if factors.mean is not None:
        group.create_array("mean", data=factors.mean)
    group.update_attributes(
        {
            "rank": k,
            "rows": int(u.shape[0]),
            "cols": int(factors.vt.shape[1]),
            "relative_error": rel,
            "captured_energy": captured,
            "params": factors.attrs.get("params", {}),
            "source_version": factors.version,
            "source_store": factors.store,
        }
    )
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target
