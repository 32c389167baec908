"""Parallel updates: partial SVDs of many new files merged in a tree on Dask workers.

The sequential update folds the new files into the factors one after the other
(:func:`streamsvd.linalg.update.append_rows`). With many files the same result —
up to the truncation at the inner nodes, exact when nothing is truncated — is
obtained by merging *partial* SVDs of disjoint row sets
(:func:`streamsvd.linalg.merge.merge_svds`, Brand 2006 / gensim's merge):

1. one Dask task per file reads it (same validation and cast as the ingest) and
   computes its partial SVD ``w_f B_f = U_f diag(s_f) V_fᵀ`` of rank at most
   ``l = k + oversample`` — exact when ``min(b_f, n) ≤ l``, else a randomized range
   finder with ``power_iters`` power iterations (Halko et al. 2011); ``U_f`` stays on
   the worker (persisted);
2. the partials are merged pairwise in a fixed binary tree whose shape depends only
   on the number of files ``F`` (so the result does not depend on the scheduler or
   the number of workers); only ``s``, ``vt``, the energy and the small mixing
   matrices travel;
3. the client merges the root with the stored state ``(s, vt, energy, T)`` — the
   same core step as a sequential update — and expresses the new left factor lazily
   through :func:`streamsvd.linalg.merge._extend_lazy` (``T' = [T; 0] mix`` plus new
   ``U_raw`` columns for directions that vanish on the old rows);
4. for each file, the coefficient ``C_f`` (``r_f × c'``) composing the mixing
   matrices along its path to the root, the final merge and the lazy extension is
   sent back to the worker holding ``U_f``, which returns the new ``U_raw`` rows
   ``U_f C_f`` (``b_f × c'``): O(new rows) comes back, nothing O(rows seen).

Forgetting (``forget = γ``): the sequential update scales everything seen by ``γ``
before each batch, so after ``F`` batches the old rows carry ``γ^F`` and file ``i``
(0-based) carries ``γ^(F−1−i)``. The tree applies exactly these weights (file ``i``'s
``s`` and energy are scaled in its task, the old state by ``γ^F`` in the final merge)
and the store records one forget entry per file as the sequential path does, so
``verify`` measures the same weighted matrix.

Exact accounting: every partial satisfies ``U_fᵀ (w_f B_f − U_f diag(s_f) V_fᵀ) = 0``
(exact truncated SVD, or the SVD of ``Qᵀ B_f`` for a sketch), a property each merge
preserves, hence ``energy' = γ^{2F} energy + Σ_f w_f² ‖B_f‖_F²`` and
``error² = energy' − Σ s'²`` hold exactly, as for a sequential update.

References
----------
M. Brand, "Fast low-rank modifications of the thin singular value decomposition",
Linear Algebra and its Applications 415 (2006) 20–30.
N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness",
SIAM Review 53 (2011) 217–288.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
from dask.delayed import Delayed, delayed
from numpy.typing import NDArray

from streamsvd.errors import ConfigError, InvalidInputError
from streamsvd.linalg.merge import _EPS, PartialSVD, _extend_lazy, _svd, merge_svds
from streamsvd.linalg.tall import squared_norm
from streamsvd.linalg.update import EXTEND_BELOW, _range_basis
from streamsvd.store.ingest import IngestOptions, SourceItem, _cast, _validate
from streamsvd.store.matrix import BatchRecord
from streamsvd.store.sources import rows_for_budget

if TYPE_CHECKING:
    from streamsvd.incremental import _State

__all__ = [
    "TreeUpdate",
    "file_partial_svd",
    "merge_plan",
    "should_run_parallel",
    "tree_fold_in",
]

Array = NDArray[np.float64]

#: Schedulers that never mean "a distributed cluster is in use" for ``parallel=None``.
_LOCAL_SCHEDULERS = ("sync", "synchronous", "threads", "threading", "processes", "local")


# ------------------------------------------------------------------------ decision


def should_run_parallel(
    parallel: bool | None,
    *,
    n_sources: int,
    centred: bool,
    sparse: bool,
    scheduler: str | None,
) -> bool:
    """Whether an update merges its files in a tree (``parallel``) or sequentially.

    Parameters
    ----------
    parallel : bool or None
        ``True``: always (``ConfigError`` when the store does not support it);
        ``False``: never; ``None`` (auto): when there are at least two sources and a
        distributed scheduler is in use — an address passed as ``scheduler`` or a
        current ``distributed.Client``. ``"local"`` (an embedded ``LocalCluster``
        started for this call) does not count: starting it costs more than it saves.
    n_sources : int
        Sources (files, arrays) given to the update.
    centred, sparse : bool
        Whether the factors are centred (PCA mode) / the store is sparse: the tree
        supports neither; auto then falls back to the sequential path.
    scheduler : str, optional
        The ``scheduler`` argument of the update.

    Returns
    -------
    bool
    """
    if parallel is False:
        return False
    unsupported = None
    if centred:
        unsupported = "the factors are centred (fit --center, PCA mode)"
    elif sparse:
        unsupported = "the store is sparse"
    if parallel:
        if unsupported:
            raise ConfigError(
                f"--parallel: {unsupported}; the tree update supports dense, uncentred "
                "factors only. Run the update without --parallel (sequential)."
            )
        return True
    if unsupported or n_sources < 2:
        return False
    if scheduler is not None:
        return scheduler not in _LOCAL_SCHEDULERS
    from streamsvd.engine.fit import current_client

    return current_client() is not None


# ------------------------------------------------------------------- pure pieces


def merge_plan(n_leaves: int) -> list[tuple[int, int]]:
    """The fixed pairwise merge tree over ``n_leaves`` partials.

    Nodes ``0 .. n_leaves − 1`` are the leaves (files in order); internal node
    ``n_leaves + j`` merges ``plan[j] = (first, second)``. Level by level,
    neighbours are paired left to right and an odd last node moves up unchanged,
    so the shape (and the rounding) depends only on ``n_leaves``; the last node
    is the root and older rows always come first (``first`` holds earlier files).

    Examples
    --------
    >>> merge_plan(5)
    [(0, 1), (2, 3), (5, 6), (7, 4)]
    """
    if n_leaves < 1:
        raise ValueError("a merge tree needs at least one leaf")
    level = list(range(n_leaves))
    plan: list[tuple[int, int]] = []
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level) - 1, 2):
            plan.append((level[i], level[i + 1]))
            nxt.append(n_leaves + len(plan) - 1)
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return plan


def tree_depth(n_leaves: int) -> int:
    """Levels of pairwise merges in :func:`merge_plan` (``ceil(log2 n_leaves)``)."""
    return int(np.ceil(np.log2(n_leaves))) if n_leaves > 1 else 0


def file_partial_svd(
    rows: Array, *, width: int, power_iters: int = 2, seed: int = 0, weight: float = 1.0
) -> tuple[PartialSVD, bool]:
    """Partial SVD of one file's rows ``weight · rows`` with its left factor.

    Exact (thin LAPACK SVD) when ``min(b, n) ≤ width``; otherwise the SVD of
    ``Qᵀ rows`` for an orthonormal ``Q`` (``b × width``) from the randomized range
    finder (:func:`streamsvd.linalg.update._range_basis`, seeded). Singular values
    at round-off level (``≤ max(b, n) · eps · s_0``) are dropped. Either way
    ``uᵀ (X − u diag(s) vt) = 0`` and ``energy = ‖X‖_F²`` (all of it), so the merge
    accounting stays exact.

    Parameters
    ----------
    rows : ndarray, shape (b, n)
    width : int
        ``l = k + oversample``: rank of a sketched partial.
    power_iters, seed : int
        Sketch parameters (used only when sketched).
    weight : float
        Row weight (``γ^age`` under forgetting): scales ``s`` and ``energy``.

    Returns
    -------
    (PartialSVD, bool)
        The partial (``u`` of shape ``(b, r)``) and whether it was sketched.

    Notes
    -----
    Memory O(b n) (the file's rows, dense) plus O(b l); cost O(b n min(b, n)) exact,
    O(b n l (2 power_iters + 2)) sketched.
    """
    b, n = rows.shape
    energy = squared_norm(rows) * weight**2
    sketched = False
    if min(b, n) <= width:
        u, s, vt = _svd(rows)
    else:
        basis = _range_basis(
            rows, np.zeros((0, n)), rank=width, oversample=0, power_iters=power_iters, seed=seed
        )
        if basis is None:  # pragma: no cover - excluded by min(b, n) > width
            u, s, vt = _svd(rows)
        else:
            small_u, s, vt = _svd(basis.T @ rows)
            u = basis @ small_u
            sketched = True
    keep = int(np.count_nonzero(s > max(b, n, 1) * _EPS * s[0])) if s.size and s[0] > 0 else 0
    part = PartialSVD(
        u=np.ascontiguousarray(u[:, :keep]),
        s=s[:keep] * weight,
        vt=np.ascontiguousarray(vt[:keep]),
        energy=energy,
    )
    return part, sketched


# ------------------------------------------------------------------ Dask tasks


@dataclass(frozen=True)
class _Leaf:
    """A file's partial SVD, kept on the worker that computed it."""

    part: PartialSVD
    rows: int
    sketched: bool


@dataclass(frozen=True)
class _Node:
    """What travels up the tree: a partial without ``u`` and the mixing of its merge."""

    part: PartialSVD
    mix_first: Array | None = None
    mix_second: Array | None = None


def read_rows(item: SourceItem, options: IngestOptions, dtype: str, n_cols: int) -> Array:
    """All rows of one source, validated and cast exactly as the ingest does, in float64.

    The NaN/Inf policy and the cast to the store dtype are
    :func:`streamsvd.store.ingest._validate` / ``_cast``, so the rows equal those the
    ingest appended to the matrix and errors name the file and row the same way.
    Memory: the whole file, dense float64 (plus one read block).
    """
    store_dtype = np.dtype(dtype)
    source = item.open(options)
    try:
        itemsize = max(np.dtype(source.dtype).itemsize, store_dtype.itemsize)
        step = rows_for_budget(n_cols, itemsize, options.memory_budget)
        parts = []
        for block in source.blocks(step):
            data, _, _ = _validate(block.data, block.row_start, source, options.nan)
            data = _cast(data, store_dtype, block.row_start, source)
            parts.append(np.asarray(data, dtype=np.float64))
    finally:
        source.close()
    return np.vstack(parts) if parts else np.zeros((0, n_cols))


def _leaf_task(
    item: SourceItem,
    options: IngestOptions,
    dtype: str,
    n_cols: int,
    width: int,
    power_iters: int,
    seed: int,
    weight: float,
) -> _Leaf:
    rows = read_rows(item, options, dtype, n_cols)
    part, sketched = file_partial_svd(
        rows, width=width, power_iters=power_iters, seed=seed, weight=weight
    )
    return _Leaf(part=part, rows=int(rows.shape[0]), sketched=sketched)


def _leaf_info(leaf: _Leaf) -> tuple[int, bool]:
    return leaf.rows, leaf.sketched


def _summary_task(leaf: _Leaf) -> _Node:
    p = leaf.part
    return _Node(part=PartialSVD(u=None, s=p.s, vt=p.vt, energy=p.energy))


def _merge_task(first: _Node, second: _Node, rank: int) -> _Node:
    merged = merge_svds(first.part, second.part, rank=rank)
    return _Node(
        part=PartialSVD(u=None, s=merged.s, vt=merged.vt, energy=merged.energy),
        mix_first=merged.mix_first,
        mix_second=merged.mix_second,
    )


def _rows_task(leaf: _Leaf, coef: Array) -> Array:
    u = leaf.part.u
    assert u is not None
    return u @ coef


# ------------------------------------------------------------------- the update


@dataclass(frozen=True)
class TreeUpdate:
    """What a tree update did (for the history entry and the report)."""

    files: int
    depth: int


def tree_fold_in(
    state: _State,
    items: Sequence[SourceItem],
    batches: Sequence[BatchRecord],
    options: IngestOptions,
    *,
    dtype: str,
    forget: float = 1.0,
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
    scheduler: str | None = None,
) -> TreeUpdate:
    """Fold the ingested ``batches`` into ``state`` through a merge tree on Dask.

    ``state`` (see :mod:`streamsvd.incremental`) is updated in place: ``t``, ``s``,
    ``vt``, energy, error, row counters, and ``u_raw`` gets the new rows of every
    batch (in batch order, at the rows the ingest gave them) and, when a new direction
    vanishes on the old rows, new columns (zero on the old rows). The data rows must
    already be in the matrix (ingested in the same transaction); nothing is committed.

    Parameters
    ----------
    state : _State
        Dense, uncentred factors covering every row before ``batches[0]``.
    items : sequence of SourceItem
        The sources given to the update; each batch is matched to its source by name.
    batches : sequence of BatchRecord
        What the ingest appended, in order.
    options : IngestOptions
        How the sources were read (format, dataset, NaN policy, memory budget).
    dtype : str
        The store's dtype (rows are cast to it, then to float64, like the ingest).
    forget : float
        ``γ``: file ``i`` of ``F`` gets weight ``γ^(F−1−i)``, the old state ``γ^F`` —
        the sequential result (see the module docstring).
    oversample, power_iters, seed : int
        Partials have rank at most ``l = k + oversample``; files with more than ``l``
        rows and columns are sketched with ``power_iters`` power iterations, seed
        ``seed + i`` for file ``i``. Inner merges keep rank ``l``, the final one ``k``.
    scheduler : str, optional
        Dask scheduler (as in :func:`streamsvd.fit`); default: the current one.

    Returns
    -------
    TreeUpdate

    Notes
    -----
    Passes: each new file is read twice — once by the ingest in the client, once by
    its task. Memory: a task holds its file dense (O(b_f n)) and keeps ``U_f``
    (O(b_f l)) until its rows are written; the client holds O(F l n) for the tree
    results and the new ``U_raw`` rows (O(Σ b_f c)). Cost independent of the rows
    already seen: old rows of ``U_raw`` and of the matrix are never read.
    """
    from streamsvd.api import _scheduler

    if not batches:
        return TreeUpdate(files=0, depth=0)
    by_name: dict[str, SourceItem] = {}
    for item in items:
        by_name.setdefault(item.name, item)
    n_files = len(batches)
    rank = int(state.s.size)
    width = rank + oversample
    n_cols = int(state.vt.shape[1])
    plan = merge_plan(n_files)
    with _scheduler(scheduler):
        leaves: list[Delayed] = [
            delayed(_leaf_task)(
                by_name[batch.source],
                options,
                dtype,
                n_cols,
                width,
                power_iters,
                seed + i,
                forget ** (n_files - 1 - i),
            )
            for i, batch in enumerate(batches)
        ]
        (held,) = dask.persist(leaves)  # on a cluster: futures, U_f stays on the workers
        nodes: list[Any] = [delayed(_summary_task, pure=True)(leaf) for leaf in held]
        for first, second in plan:
            nodes.append(delayed(_merge_task, pure=True)(nodes[first], nodes[second], width))
        meta_rows = [delayed(_leaf_info, pure=True)(leaf) for leaf in held]
        computed_nodes, row_info = dask.compute(nodes, meta_rows)
        for (count, _), batch in zip(row_info, batches, strict=True):
            if count != batch.rows:
                raise InvalidInputError(
                    f"{batch.source}: read {count} rows for the tree update but the ingest "
                    f"appended {batch.rows}; did the file change during the update?"
                )
        root = computed_nodes[-1].part
        merged = merge_svds(
            (None, state.s, state.vt, state.energy), root, rank=rank, forget=forget**n_files
        )
        # New rows of U_raw are linear in the new-row values: with the identity as
        # values, _extend_lazy returns the map G (k' × c') from U' coordinates to U_raw.
        lazy = _extend_lazy(
            state.t, merged.mix_first, np.eye(merged.s.size), extend_below=EXTEND_BELOW
        )
        down: dict[int, Array] = {len(computed_nodes) - 1: merged.mix_second @ lazy.rows}
        for j in range(len(plan) - 1, -1, -1):
            node = computed_nodes[n_files + j]
            first, second = plan[j]
            down[first] = node.mix_first @ down[n_files + j]
            down[second] = node.mix_second @ down[n_files + j]
        row_tasks = [delayed(_rows_task, pure=True)(held[i], down[i]) for i in range(n_files)]
        new_rows = dask.compute(*row_tasks)
    state.widen_u_raw(lazy.added)
    for batch, rows in zip(batches, new_rows, strict=True):
        start = state.u_raw_rows
        if start != batch.row_start:  # pragma: no cover - an invariant of the store
            raise RuntimeError(f"U_raw has {start} rows but batch starts at {batch.row_start}")
        state.append_u_raw(rows)
    weights = [forget ** (n_files - 1 - i) for i in range(n_files)]
    state.rows_seen = state.rows_seen * forget ** (2 * n_files) + sum(
        b.rows * w**2 for b, w in zip(batches, weights, strict=True)
    )
    state.t = lazy.coef
    state.s = merged.s
    state.vt = merged.vt
    state.energy = float(merged.energy)
    state.relative_error = float(merged.relative_error)
    state.rows += sum(b.rows for b in batches)
    state.sketched += sum(int(flag) for _, flag in row_info)
    return TreeUpdate(files=n_files, depth=tree_depth(n_files))
