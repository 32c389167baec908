"""Incremental updates: new rows are ingested and the factors updated in one commit.

The update reads only the new rows (Brand 2006 row append, see
:mod:`streamsvd.linalg.update`): old rows of ``U_raw`` are never rewritten, only
the small rotation ``T`` changes and new rows are appended to ``U_raw``; the cost
per batch does not depend on the number of rows already seen. When ``T`` grows
ill-conditioned the store compacts ``U_raw ← U_raw T`` (one pass over ``U_raw``,
never over the data) and records it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import scipy.sparse
import zarr
from threadpoolctl import threadpool_limits

from streamsvd.api import block_rows_for
from streamsvd.engine.tree_update import should_run_parallel, tree_fold_in
from streamsvd.errors import ConfigError, NoFactorsError
from streamsvd.linalg.compaction import compact_rows, compacted_t, needs_compaction
from streamsvd.linalg.sketch import error_summary
from streamsvd.linalg.sparse_update import append_sparse_rows
from streamsvd.linalg.update import append_rows
from streamsvd.linalg.update_centered import append_rows_centered
from streamsvd.store import layout, sparse
from streamsvd.store.factors import read_factors, write_small_factors, write_u_raw_rows
from streamsvd.store.ingest import (
    IngestOptions,
    ProgressCallback,
    Skipped,
    SourceLike,
    ingest_into,
    resolve_sources,
)
from streamsvd.store.matrix import BatchRecord, RowAppender, matrix_array, read_meta
from streamsvd.store.repository import Store

#: Condition number of T above which U_raw is compacted (see linalg.compaction).
MAX_CONDITION = 1e8
#: Bytes of ``U_raw`` (float64) read and rewritten per step of a compaction.
COMPACTION_BLOCK_BYTES = 64 * 1024 * 1024


@dataclass
class _State:
    """The factors being updated, in memory except ``U_raw``."""

    u_raw: zarr.Array
    t: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    energy: float
    mean: np.ndarray | None
    rows_seen: float
    ones: np.ndarray | None
    relative_error: float
    rows: int
    last_fit: dict[str, Any]  # the record of the last full fit, read with the factors
    sketched: int = 0
    u_raw_writes: RowAppender | None = None  # held by appending_u_raw()

    @contextmanager
    def appending_u_raw(self) -> Iterator[None]:
        """Write new ``U_raw`` rows in the background for the block (all written on exit)."""
        with RowAppender(self.u_raw) as writes:
            self.u_raw_writes = writes
            try:
                yield
            finally:
                self.u_raw_writes = None

    def _writes(self) -> RowAppender:
        if self.u_raw_writes is None:  # pragma: no cover - an invariant of update()
            raise RuntimeError("U_raw rows are appended only inside appending_u_raw()")
        return self.u_raw_writes

    @property
    def u_raw_rows(self) -> int:
        """Rows of ``U_raw``, those still being written included."""
        return self._writes().rows

    def widen_u_raw(self, new_columns: int) -> None:
        """Add ``new_columns`` to ``U_raw``; they read as the fill value 0 on the
        old rows, so nothing old is rewritten."""
        if not new_columns:
            return
        self._writes().flush()
        self.u_raw.resize((self.u_raw.shape[0], self.u_raw.shape[1] + new_columns))

    def append_u_raw(self, rows: np.ndarray) -> None:
        """Append rows to ``U_raw``, written in the background."""
        self._writes().append(rows)


@dataclass(frozen=True)
class RefitPolicy:
    """When an update triggers a full refit.

    ``absolute``: refit when the relative error exceeds this value; ``percent``:
    when it exceeds the last full fit's error by this many percent.
    Parse from ``"0.05"`` or ``"+10%"`` with :meth:`parse`.
    """

    absolute: float | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str | float | None) -> RefitPolicy | None:
        if text is None:
            return None
        if isinstance(text, float | int):
            return cls(absolute=float(text))
        raw = text.strip()
        try:
            if raw.startswith("+") and raw.endswith("%"):
                return cls(percent=float(raw[1:-1]))
            return cls(absolute=float(raw))
        except ValueError:
            pass
        raise ConfigError(
            f"--refit-above must be a relative error such as 0.05 or a margin over the last "
            f"full fit such as +10%; got {text!r}"
        )

    def budget(self, last_fit: dict[str, Any], error: float) -> float:
        """The error allowed before a refit; ``last_fit`` is the factors' record of
        their last full fit (its error, or else ``error``, is the base of ``+P%``)."""
        if self.absolute is not None:
            return self.absolute
        base = float(last_fit.get("relative_error", error))
        return base * (1.0 + (self.percent or 0.0) / 100.0)


@dataclass(frozen=True)
class UpdateReport:
    """What an update did."""

    store: str
    version: str | None
    rows_added: int
    rank: int
    relative_error: float
    batches: list[BatchRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    compacted: bool = False
    sketched_blocks: int = 0
    refit: dict[str, Any] | None = None
    seconds: float = 0.0
    commit_seconds: float = 0.0
    budget: float | None = None


def update(
    store: str | Path,
    sources: Sequence[SourceLike] = (),
    *,
    options: IngestOptions | None = None,
    forget: float = 1.0,
    refit_above: str | float | None = None,
    sketch_above: int | None = None,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
    parallel: bool | None = None,
) -> UpdateReport:
    """Ingest new rows and update the factors in one commit.

    Rows already in the store but not yet covered by the factors (ingested after
    the last fit or update) are folded in first, so an update with no sources
    catches the factors up with the data.

    Parameters
    ----------
    store : str or Path
        A store with factors (run :func:`streamsvd.fit` first).
    sources : sequence of str, Path or ndarray
        New batches: files, landing folders, globs or in-memory arrays. A batch
        already in the log, or an array of zero rows, is a no-op (said so).
    options : IngestOptions, optional
        How sources are read (format, NaN policy, memory budget).
    forget : float
        ``γ`` in (0, 1]: old rows are down-weighted by ``γ`` before each batch
        (gensim's ``decay``); the recorded energy follows the weights.
    refit_above : str or float, optional
        ``0.05`` (relative error) or ``"+10%"`` (over the last full fit's error):
        run a full fit, with the last fit's parameters, when exceeded.
    sketch_above : int, optional
        Batches with more rows than this are sketched first (randomized, accounting
        still exact); default exact.
    scheduler : str, optional
        Dask scheduler for a refit and for a parallel update (see :func:`streamsvd.fit`).
    parallel : bool, optional
        Merge the new files' partial SVDs in a tree on Dask workers
        (:mod:`streamsvd.engine.tree_update`) instead of folding them in one after
        the other. ``None`` (default): when there are at least two sources and a
        distributed scheduler is in use (an address, or a current
        ``distributed.Client``), and the store is dense and uncentred. ``True`` on a
        centred or sparse store raises :class:`ConfigError`. In parallel mode each
        new file is read twice (by the ingest in the client and by its task) and
        ``sketch_above`` does not apply (files with more than ``k + 10`` rows and
        columns are sketched).

    Returns
    -------
    UpdateReport

    Memory: one block of the ingest budget plus O((k + b)·(n + k)) for the core
    step; cost independent of the rows already seen. Passes over old data: none.

    Examples
    --------
    >>> import numpy as np, tempfile, streamsvd
    >>> rng = np.random.default_rng(0)
    >>> rows = rng.standard_normal((400, 3)) @ rng.standard_normal((3, 12))
    >>> store = tempfile.mkdtemp() + "/store"
    >>> _ = streamsvd.ingest(store, [rows[:200]])
    >>> _ = streamsvd.fit(store, rank=3, scheduler="sync")
    >>> report = streamsvd.update(store, [rows[200:]])
    >>> report.rows_added, report.rank, report.relative_error < 1e-6  # round-off
    (200, 3, True)
    """
    options = options or IngestOptions()
    if not 0.0 < forget <= 1.0:
        raise ConfigError(f"--forget must be in (0, 1]; got {forget}")
    policy = RefitPolicy.parse(refit_above)
    started = time.perf_counter()
    items = resolve_sources(sources)
    # One BLAS thread: the update's products are many and mid-sized, and OpenBLAS's
    # second thread spun between them on the core that the ingest's writer needs. A
    # 50,000-row batch took 0.8-1.3 s (1.0-1.7 CPU-s) this way against 1.1-1.7 s
    # (2.0-3.1 CPU-s) with two BLAS threads (benchmarks/update.py's data, 2 cores).
    with (
        threadpool_limits(limits=1, user_api="blas"),
        Store.open_for_writing(store, create=False) as opened,
    ):
        if not opened.is_initialized():
            raise NoFactorsError(
                f"store {opened.location} holds no data yet; ingest rows and fit first"
            )
        with opened.transaction() as tx:
            group = tx.group
            state = _load_state(group)
            meta = read_meta(group)
            is_sparse = meta.kind == sparse.KIND
            n_rows = sparse.n_rows(group) if is_sparse else int(matrix_array(group).shape[0])
            block_rows = max(meta.chunk_rows, 1)
            use_tree = should_run_parallel(
                parallel,
                n_sources=len(items),
                centred=state.mean is not None,
                sparse=is_sparse,
                scheduler=scheduler,
            )

            # New rows of U_raw are written in the background while the next block is
            # folded in (one write in flight); everything below reads U_raw after it.
            with state.appending_u_raw():
                # Where each batch starts and the γ applied before it: the row weights
                # (γ^age) that `verify` needs to measure the weighted matrix.
                forget_batches: list[list[float]] = []

                def fold_in(rows: Any, start: int, first_of_batch: bool) -> None:
                    if first_of_batch and forget != 1.0:
                        forget_batches.append([start, forget])
                    _append(state, rows, forget if first_of_batch else 1.0, sketch_above)

                # Rows ingested since the factors were last written: fold them in first.
                covered = state.rows
                caught_up = n_rows - covered
                if caught_up > 0:
                    step = block_rows * 16
                    for start in range(covered, n_rows, step):
                        stop = min(start + step, n_rows)
                        if is_sparse:
                            block: Any = sparse.read_rows(group, start, stop)
                        else:
                            block = np.asarray(matrix_array(group)[start:stop])
                        fold_in(block, start, start == covered)
                tree_record: dict[str, Any] = {}
                if use_tree:
                    partial = ingest_into(tx, items, options, progress, created=False)
                    tree = tree_fold_in(
                        state,
                        items,
                        partial.batches,
                        options,
                        dtype=meta.dtype,
                        forget=forget,
                        scheduler=scheduler,
                    )
                    if forget != 1.0:
                        forget_batches.extend([b.row_start, forget] for b in partial.batches)
                    if tree.files:
                        tree_record = {
                            "parallel": True,
                            "tree_depth": tree.depth,
                            "tree_files": tree.files,
                        }
                else:
                    partial = ingest_into(
                        tx, items, options, progress, created=False, on_block=fold_in
                    )
            rows_added = sum(b.rows for b in partial.batches)
            if not partial.batches and caught_up == 0:
                return UpdateReport(
                    store=str(opened.location),
                    version=None,
                    rows_added=0,
                    rank=int(state.s.size),
                    relative_error=state.relative_error,
                    skipped=partial.skipped,
                    seconds=time.perf_counter() - started,
                )
            compacted = _maybe_compact(state)
            record = {
                "op": "update",
                "time": layout.now(),
                "rows": state.rows,
                "rows_added": rows_added + caught_up,
                "rank": int(state.s.size),
                "relative_error": state.relative_error,
                "forget": forget,
                "forget_batches": forget_batches,
                "compacted": compacted,
                "sketched_blocks": state.sketched,
                **tree_record,
            }
            _write_state(tx.session, state, record)
            commit_started = time.perf_counter()
            version = tx.commit(
                f"update +{rows_added + caught_up} rows; relative error "
                f"{state.relative_error:.4g}" + ("; compacted U_raw" if compacted else ""),
                metadata={"operation": "update", "batches": [b.id for b in partial.batches]},
            )
            commit_seconds = time.perf_counter() - commit_started
    last_fit = state.last_fit
    budget = policy.budget(last_fit, state.relative_error) if policy else None
    refit = None
    if budget is not None and state.relative_error > budget:
        from streamsvd.api import fit

        params = cast(dict[str, Any], last_fit.get("params") or {})
        refit = fit(store, scheduler=scheduler, **_fit_args(params))
        refit["reason"] = (
            f"relative error {state.relative_error:.4g} after the update exceeded the budget "
            f"{budget:.4g}: refit"
        )
    return UpdateReport(
        store=str(opened.location),
        version=refit["version"] if refit else version,
        rows_added=rows_added + caught_up,
        rank=int(refit["rank"]) if refit else int(state.s.size),
        relative_error=float(refit["relative_error"]) if refit else state.relative_error,
        batches=partial.batches,
        skipped=partial.skipped,
        compacted=compacted,
        sketched_blocks=state.sketched,
        refit=refit,
        seconds=time.perf_counter() - started,
        commit_seconds=commit_seconds,
        budget=budget,
    )


def _fit_args(params: dict[str, Any]) -> dict[str, Any]:
    keys = ("rank", "oversample", "power_iters", "seed", "center", "dtype", "max_rank")
    return {k: params[k] for k in keys if k in params}


def _load_state(group: zarr.Group) -> _State:
    stored = read_factors(group)
    attrs = stored.attrs
    ones = None
    factors = cast(zarr.Group, group[layout.FACTORS])
    if stored.mean is not None and "ones" in factors:
        ones = np.asarray(cast(zarr.Array, factors["ones"])[...])
    return _State(
        u_raw=stored.u_raw,
        t=stored.t,
        s=stored.s,
        vt=stored.vt,
        energy=float(attrs["energy"]),
        mean=stored.mean,
        rows_seen=float(attrs.get("rows_seen", attrs["rows_covered"])),
        ones=ones,
        relative_error=float(attrs["relative_error"]),
        rows=int(attrs["rows_covered"]),
        last_fit=dict(attrs.get("last_fit") or {}),
    )


def _append(state: _State, rows: np.ndarray, forget: float, sketch_above: int | None) -> None:
    """Fold ``rows`` into ``state`` and append their ``U_raw`` rows.

    A scipy.sparse batch (sparse store) goes to
    :func:`streamsvd.linalg.sparse_update.append_sparse_rows`, never densified.
    """
    rank = int(state.s.size)
    if scipy.sparse.issparse(rows):
        if state.mean is not None:
            raise ConfigError(
                "the factors of this sparse store are centred (fit --center): a centred "
                "update would densify the new rows. Refit with `streamsvd fit` instead, or "
                "fit without --center to update incrementally."
            )
        result: Any = append_sparse_rows(
            state.t, state.s, state.vt, state.energy, rows, rank=rank, forget=forget
        )
        state.rows_seen = state.rows_seen * forget**2 + rows.shape[0]
    elif state.mean is not None:
        rows = np.asarray(rows, dtype=np.float64)
        centred = append_rows_centered(
            state.t,
            state.s,
            state.vt,
            state.energy,
            rows,
            last_mean=state.mean,
            last_rows_seen=state.rows_seen,
            last_ones=state.ones,
            rank=rank,
            forget=forget,
            sketch_above=sketch_above,
        )
        state.mean = centred.updated_mean
        state.rows_seen = centred.updated_rows_seen
        state.ones = centred.updated_ones
        result = centred
    else:
        rows = np.asarray(rows)  # float32 stays float32: append_rows casts it by slices
        result = append_rows(
            state.t,
            state.s,
            state.vt,
            state.energy,
            rows,
            rank=rank,
            forget=forget,
            sketch_above=sketch_above,
        )
        state.rows_seen = state.rows_seen * forget**2 + rows.shape[0]
    state.widen_u_raw(result.u_raw_columns_added)
    state.append_u_raw(result.new_u_raw_rows)
    state.t = result.updated_t
    state.s = result.updated_s
    state.vt = result.updated_vt
    state.energy = float(result.updated_energy)
    state.relative_error = float(result.relative_error)
    state.rows += rows.shape[0]
    state.sketched += int(result.sketched)


def _maybe_compact(state: _State) -> bool:
    """Compact ``U_raw ← U_raw T`` in place when ``T`` is ill-conditioned.

    One pass over ``U_raw`` in row blocks of whole chunks; the new ``U_raw`` has
    ``k`` columns (``k + 1`` in PCA mode: the weight column survives).
    """
    if not needs_compaction(state.t, max_condition=MAX_CONDITION):
        return False
    u_raw = state.u_raw
    rank = int(state.s.size)
    centered = state.mean is not None
    width = rank + 1 if centered else rank
    chunk_rows = u_raw.chunks[0]
    step = block_rows_for(chunk_rows, u_raw.shape[1], 8, budget=COMPACTION_BLOCK_BYTES)
    old_width = u_raw.shape[1]
    if width > old_width:
        u_raw.resize((u_raw.shape[0], width))
    for start in range(0, u_raw.shape[0], step):
        stop = min(start + step, u_raw.shape[0])
        block = np.asarray(u_raw[start:stop, :old_width])
        new = compact_rows(block, state.t, ones=state.ones if centered else None)
        out = np.zeros((stop - start, u_raw.shape[1]))
        out[:, :width] = new
        write_u_raw_rows(u_raw, out, start)
    u_raw.resize((u_raw.shape[0], width))
    state.t, state.ones = compacted_t(rank, centered=centered)
    return True


def _write_state(session: Any, state: _State, record: dict[str, Any]) -> None:
    group = zarr.open_group(session.store, mode="a")
    factors = cast(zarr.Group, group[layout.FACTORS])
    attrs: dict[str, Any] = dict(factors.attrs)
    attrs.update(
        {
            "rank": int(state.s.size),
            "rows_covered": state.rows,
            "rows_seen": state.rows_seen,
            "energy": state.energy,
            "relative_error": state.relative_error,
            "captured_energy": error_summary(state.energy, state.s)[1],
            "updated": record["time"],
            "history": [*attrs.get("history", []), record],
            "compactions": int(attrs.get("compactions", 0)) + int(record["compacted"]),
            "u_raw_columns": int(state.u_raw.shape[1]),
            "cols": int(state.vt.shape[1]),
        }
    )
    if record["forget"] != 1.0:
        attrs["forget_applied"] = True
    write_small_factors(
        group,
        t=state.t,
        s=state.s,
        vt=state.vt,
        mean=state.mean,
        spectrum=None,
        attrs=attrs,
    )
    if state.ones is not None:
        if "ones" in factors:
            del factors["ones"]
        factors.create_array("ones", data=np.ascontiguousarray(state.ones))
