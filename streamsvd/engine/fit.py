"""Randomized SVD of a row-chunked Dask array in ``power_iters + 1`` passes.

Each pass is one ``dask.compute`` over a graph that reads every row block once
and reduces the per-block results (small ``n_cols × l`` matrices, R factors)
in a fixed tree, so the same seed, data and chunking give bit-identical factors
on any scheduler and any number of workers. The numerical steps are in
:mod:`streamsvd.linalg.sketch`; this module only builds and runs the passes.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed, delayed
from numpy.typing import NDArray

from streamsvd.errors import ConfigError, InvalidInputError
from streamsvd.linalg.rank import (
    RankChoice,
    cap_choice,
    choose_rank,
    default_max_rank,
    next_sketch_size,
    parse_rank,
    sketch_size,
)
from streamsvd.linalg.sketch import (
    GRAM_MAX_COND_SQ,
    BlockSums,
    SketchSVD,
    combine,
    error_summary,
    final_block,
    finish_final_pass,
    power_block,
    power_step,
    sketch_svd,
    start_basis,
    truncate,
)

FloatArray = NDArray[np.float64]
#: Fan-in of the reduction tree: partial sums are combined in groups of this size.
TREE_FAN_IN = 8
_DTYPES: dict[str, type[np.floating]] = {"float64": np.float64, "float32": np.float32}


@runtime_checkable
class BlockWriter(Protocol):
    """Writes rows of ``U_raw`` on a worker; picklable, sent with every final task.

    ``write`` stores the rows starting at row ``start`` and returns a token;
    ``merge`` folds tokens into one. Both run inside the tasks of the final pass
    (``write`` in the task that computed the rows, ``merge`` in the reduction
    tree), so ``U_raw`` costs no extra tasks and never leaves the worker.
    """

    def write(self, rows: FloatArray, start: int) -> Any:
        """Store ``rows`` at row ``start``; return a token for :meth:`merge`."""
        ...

    def merge(self, tokens: list[Any]) -> Any:
        """Fold the tokens of several writes (in the order given) into one."""
        ...


@runtime_checkable
class URawSink(Protocol):
    """Where the rows of ``U_raw`` go during the final pass.

    ``open`` is called before each final pass with ``U_raw``'s shape and returns
    the :class:`BlockWriter` the tasks use; ``finish`` receives the token the
    whole pass merged to. With a rank rule that grows the sketch, both are
    called once per attempt; the last call holds the accepted ``U_raw`` (the
    fit's ``t`` pairs with it).
    """

    def open(self, shape: tuple[int, int]) -> BlockWriter:
        """Prepare an ``U_raw`` of ``shape`` (float64) and return its writer."""
        ...

    def finish(self, token: Any) -> None:
        """Receive the merged token of the final pass."""
        ...


@dataclass(frozen=True)
class FitParams:
    """The options a fit ran with (recorded next to the factors)."""

    rank: str
    oversample: int
    power_iters: int
    seed: int
    center: bool
    dtype: str
    width: int
    max_rank: int


@dataclass(frozen=True)
class FitResult:
    """Factors of a fit; ``U = U_raw @ t`` where ``U_raw`` went to the sink.

    Attributes
    ----------
    t : ndarray, shape (l, rank) or (l + 1, rank) in PCA mode
        Rotation; ``U_raw`` is ``[A'Q]`` or ``[A'Q, 1]`` (PCA mode) with
        ``A' = A − 1μ₀ᵀ``, ``μ₀`` the mean known before the final pass (zero
        with ``power_iters=0``, else the exact mean from the first pass).
    s : ndarray, shape (rank,)
        Singular values, descending, ``>= 0``, float64.
    vt : ndarray, shape (rank, n_cols)
        Right singular vectors as orthonormal rows, signs from
        :mod:`streamsvd.linalg.signs`.
    mean : ndarray, shape (n_cols,), or None
        Column mean in PCA mode.
    energy : float
        ``‖A‖_F²`` (of the centred matrix in PCA mode).
    rows : int
        Rows covered.
    relative_error : float
        ``‖A − U S Vᵀ‖_F / ‖A‖_F``, exact (0 for a zero matrix).
    captured_energy : float
        ``Σ s_i² / ‖A‖_F²``.
    rank_choice : RankChoice
        Chosen rank with its reason.
    params : FitParams
    passes : int
        Passes made over the data (all attempts).
    singular_values_sketch : ndarray, shape (<= l,)
        All singular values of the final sketch ``B``.
    timings : dict of str to float
        Seconds per pass (``"pass 1 (power)"``, ...) and in memory.
    """

    t: FloatArray
    s: FloatArray
    vt: FloatArray
    mean: FloatArray | None
    energy: float
    rows: int
    relative_error: float
    captured_energy: float
    rank_choice: RankChoice
    params: FitParams
    passes: int
    singular_values_sketch: FloatArray
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        """Number of components kept."""
        return int(self.s.size)


def current_client() -> Any | None:
    """The ``distributed.Client`` that ``dask.compute`` would use now, or None."""
    if "distributed" not in sys.modules:  # no client without it; importing it takes 0.1 s
        return None
    try:
        from distributed import Client, default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    getter = dask.base.get_scheduler()
    # A client configured as the scheduler (dask.config.set(scheduler=client.get))
    # without being the process-wide default, as streamsvd's own connections are.
    owner = getattr(getter, "__self__", None)
    if isinstance(owner, Client):
        return owner
    try:
        client = default_client()
    except ValueError:
        return None
    return client if getter == client.get else None


#: Tries of a broadcast that a lost worker interrupted.
SCATTER_ATTEMPTS = 3
_sleep = time.sleep  # the wait between tries (tests replace it)


def share(value: Any) -> Any:
    """Put a small in-memory object in the graph once (scattered on a cluster).

    Scattered data has no lineage: if the only worker holding it dies, every task
    that needs it is cancelled. Broadcast, it survives a lost worker, and costs no
    memory that the tasks would not cost anyway (each worker fetches it to run them).
    """
    if value is None:
        return None
    client = current_client()
    if client is None:
        return delayed(value, pure=True)
    from distributed.comm import CommClosedError

    attempt = 1
    while True:
        try:
            return client.scatter(value, broadcast=True)
        except CommClosedError:
            # A worker lost during the broadcast fails the whole call (the
            # scheduler closes the client's comm); the workers left take it again.
            # (Not every OSError: a TimeoutError for "no workers" is final.)
            if attempt == SCATTER_ATTEMPTS:
                raise
            _sleep(0.5 * attempt)
            attempt += 1


def tree_reduce(parts: Sequence[Any], fn: Callable[[list[Any]], Any]) -> Any:
    """Reduce delayed ``parts`` with ``fn`` in a fixed tree of fan-in :data:`TREE_FAN_IN`.

    The tree's shape depends only on ``len(parts)``, so the rounding of the sums
    does not depend on the scheduler or on the number of workers.
    """
    level = list(parts)
    if not level:
        raise ValueError("nothing to reduce")
    while len(level) > 1:
        level = [
            delayed(fn, pure=True)(level[i : i + TREE_FAN_IN])
            for i in range(0, len(level), TREE_FAN_IN)
        ]
    return level[0]


def compute_pass(objs: Sequence[Any], *, progress: bool, label: str) -> tuple[Any, ...]:
    """One ``dask.compute`` over ``objs`` (optionally with a progress display).

    BLAS runs one thread per task meanwhile: Dask already runs a block per core,
    and OpenBLAS threads spinning beside Dask's and Blosc's made the
    100,000-row fit 2.2-3.4× slower on 2 cores (1.9 s with one BLAS thread, 4.2-6.5 s
    without). Remote worker processes get the same from distributed's nanny.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _compute(objs, progress=progress, label=label)


#: In-memory steps of at most this many ``n_cols · l²`` (a QR of ``Q``, the small
#: SVDs) run on one BLAS thread. OpenBLAS leaves its threads spinning after each
#: call: between the passes of the 2 GB fit benchmark (500 × 60) they spun for
#: ≈ 0.1 s a step, and ≈ 0.4 CPU-seconds after the last one, beside the commit
#: (perf, 2 cores). A QR and an SVD of the Gram took as long on one thread as on
#: two at 5,000 × 200 (2e8; 0.068 s against 0.065 s), and 1.4× longer at
#: 20,000 × 300 (1.8e9): hence about 2.7e8.
SMALL_IN_MEMORY_FLOPS = 2**28


def in_memory_blas(n_cols: int, width: int) -> contextlib.AbstractContextManager[Any]:
    """One BLAS thread for in-memory steps on ``n_cols × width`` matrices, when small."""
    if n_cols * width * width > SMALL_IN_MEMORY_FLOPS:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _compute(objs: Sequence[Any], *, progress: bool, label: str) -> tuple[Any, ...]:
    if not progress:
        return tuple(dask.compute(*objs))
    client = current_client()
    if client is not None:
        from distributed import progress as show_progress

        print(f"streamsvd {label}: dashboard {client.dashboard_link}", flush=True)
        futures = client.compute(list(objs))
        show_progress(futures)
        return tuple(client.gather(futures))
    from dask.diagnostics import ProgressBar

    print(f"streamsvd {label}", flush=True)
    with ProgressBar():
        return tuple(dask.compute(*objs))


def row_blocks(a: da.Array) -> list[Delayed]:
    """Row blocks of ``a`` as delayed objects (columns rechunked to one chunk)."""
    if a.ndim != 2:
        raise InvalidInputError(f"fit needs a 2-D array, got shape {a.shape}")
    if len(a.chunks[1]) > 1:
        a = a.rechunk({1: -1})
    return list(a.to_delayed().ravel())


def _matching_blocks(blocks: Sequence[Any], a: da.Array) -> list[Any]:
    """``blocks`` as a list, checked against ``a``'s row blocks: their shapes, and
    their row ranges and dtype where they say them (as a ``RowBlock`` does)."""
    given = list(blocks)
    sizes = [int(r) for r in a.chunks[0]]
    starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()
    expected = [(r, a.shape[1]) for r in sizes]
    shapes = [tuple(getattr(b, "shape", e)) for b, e in zip(given, expected, strict=False)]
    problem = None
    if len(given) != len(sizes) or shapes != expected:
        problem = f"got {len(given)} of shapes {shapes[:3]}" + ("..." if len(shapes) > 3 else "")
    else:
        for i, b in enumerate(given):
            rows = (getattr(b, "start", starts[i]), getattr(b, "stop", starts[i + 1]))
            if rows != (starts[i], starts[i + 1]):
                problem = f"block {i} has rows {rows[0]}:{rows[1]}, a's {starts[i]}:{starts[i + 1]}"
                break
            if np.dtype(getattr(b, "dtype", a.dtype)) != a.dtype:
                problem = f"block {i} is {np.dtype(b.dtype)}, a is {a.dtype}"
                break
    if problem is not None:
        raise InvalidInputError(
            f"blocks must be {len(sizes)} blocks of {a.shape[1]} columns with the rows of "
            f"a's row blocks; {problem}"
        )
    return given


@dataclass(frozen=True)
class _Attempt:
    sketch: SketchSVD
    energy: float
    rows: int
    mean: FloatArray | None
    c: FloatArray | None
    passes: int


def _run_passes(
    a: da.Array,
    blocks: list[Any],
    width: int,
    *,
    power_iters: int,
    seed: int,
    center: bool,
    dtype: type[np.floating],
    sink: URawSink | None,
    progress: bool,
    timings: dict[str, float],
) -> _Attempt:
    """Power passes and the final pass for one sketch width."""
    n_cols = a.shape[1]
    q = start_basis(n_cols, width, seed)
    iters = power_iters if width < n_cols else 0  # Q = I is already exact
    shift: FloatArray | None = None
    cond_sq = float("inf")  # unknown before a power pass: the final pass makes a TSQR
    for it in range(iters):
        label = f"pass {len(timings) + 1} (power {it + 1}/{iters}, l={width})"
        start = time.perf_counter()
        q_d, shift_d = share(q), share(shift)
        parts = [delayed(power_block)(b, q_d, shift_d, dtype, center) for b in blocks]
        (sums,) = compute_pass([tree_reduce(parts, combine)], progress=progress, label=label)
        del parts, q_d  # the graph holds the old Q: free it before the next n × l arrays
        q, mean, cond_sq = power_step(sums, q, center, shift)
        del sums
        if center:
            shift = mean
        timings[label] = time.perf_counter() - start

    # R from the Gram matrix when the last power pass says Z is well conditioned
    # (the estimate came out 1.0-2.9× the truth in tests, never below half of it:
    # hence the margin of 4); checked on the true Gram after the pass, and in the
    # rare miss the pass is made again with the TSQR.
    with_r = cond_sq > GRAM_MAX_COND_SQ / 4
    r, y, energy, mean, c, rows = _final_pass(
        a, blocks, q, shift, center, sink, with_r, progress=progress, timings=timings
    )
    passes = iters + 1
    if r is None:  # the sink already holds this Q's U_raw: only R is missing
        r, y, energy, mean, c, rows = _final_pass(
            a, blocks, q, shift, center, None, True, progress=progress, timings=timings
        )
        passes += 1
    assert r is not None  # with the TSQR there is always an R
    start = time.perf_counter()
    sketch = sketch_svd(r, y)
    timings[next(reversed(timings))] += time.perf_counter() - start
    return _Attempt(sketch, energy, rows, mean, c, passes)


def _final_pass(
    a: da.Array,
    blocks: list[Any],
    q: FloatArray,
    shift: FloatArray | None,
    center: bool,
    sink: URawSink | None,
    with_r: bool,
    *,
    progress: bool,
    timings: dict[str, float],
) -> tuple[FloatArray | None, FloatArray, float, FloatArray | None, FloatArray | None, int]:
    """The final pass: ``U_raw`` to the sink, ``(R, Y, f, mean, c, rows)`` back.

    ``R`` is None when it was to come from the Gram matrix (``with_r=False``) and
    that proved too ill-conditioned (:func:`streamsvd.linalg.sketch.gram_r`).
    """
    width = q.shape[1]
    how = "TSQR" if with_r else "Gram"
    label = f"pass {len(timings) + 1} (final, l={width}, R by {how})"
    start = time.perf_counter()
    q_d, shift_d = share(q), share(shift)
    writer = sink.open((a.shape[0], width + int(center))) if sink is not None else None
    starts = np.concatenate([[0], np.cumsum(a.chunks[0])]).astype(int)
    outs = [
        delayed(_final_task, pure=True)(b, q_d, shift_d, center, with_r, int(starts[i]), writer)
        for i, b in enumerate(blocks)
    ]
    root = tree_reduce(outs, functools.partial(_combine_final, writer=writer))
    ((final, token),) = compute_pass([root], progress=progress, label=label)
    if sink is not None:
        sink.finish(token)
    del outs, root, q_d
    r, y, energy, mean, c = finish_final_pass(final, q, center, shift)
    timings[label] = time.perf_counter() - start
    return r, y, energy, mean, c, final.rows


def _final_task(
    block: Any,
    q: FloatArray,
    shift: FloatArray | None,
    ones: bool,
    with_r: bool,
    start: int,
    writer: BlockWriter | None,
) -> tuple[BlockSums, Any]:
    z, sums = final_block(block, q, shift, ones, with_r)
    return sums, (writer.write(z, start) if writer is not None else None)


def _combine_final(
    parts: list[tuple[BlockSums, Any]], writer: BlockWriter | None
) -> tuple[BlockSums, Any]:
    sums = combine([p[0] for p in parts])
    return sums, (writer.merge([p[1] for p in parts]) if writer is not None else None)


def fit_array(
    a: da.Array,
    *,
    rank: int | str = 10,
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
    center: bool = False,
    dtype: str = "float32",
    max_rank: int | None = None,
    sink: URawSink | None = None,
    progress: bool = False,
    blocks: Sequence[Any] | None = None,
) -> FitResult:
    """Truncated SVD (or PCA) of a row-chunked Dask array by randomized sketching.

    Parameters
    ----------
    a : dask.array.Array, shape (n_rows, n_cols)
        Row-chunked (columns are rechunked to one chunk if needed); dense or
        scipy.sparse blocks, any real dtype (cast to float64 per block).
    rank : int or str
        ``k``, ``"energy:x"``, ``"tol:x"``, ``"gd"`` or ``"gd:σ"``; see
        :mod:`streamsvd.linalg.rank`.
    oversample : int
        Extra sketch columns ``p``; the sketch width is ``l = min(k + p, n_cols)``.
    power_iters : int
        Power iterations ``q``, one pass each, re-orthonormalized every time.
    seed : int
        Seed of the Gaussian test matrix.
    center : bool
        PCA mode: factor ``A − 1μᵀ`` with the column mean ``μ`` found in the
        same passes (no extra pass).
    dtype : {"float32", "float64"}
        Arithmetic of the power passes (default float32); the final pass is
        always float64. The power passes only steer the subspace ``Q``: a
        float32 rounding of ``Q`` (about 1e-7 relative) changes the error of
        the projection by a negligible amount, and the final pass, which forms
        ``B`` and the exact error accounting, stays float64. It makes the power
        passes 1.5× faster (benchmarks/fit.py's floor passes). ``tol:`` rules below
        ``10·√eps`` of float32 (3.5e-3) need ``dtype="float64"``.
    max_rank : int, optional
        Largest rank a rule may choose; default ``min(n_rows, n_cols, 1000)``.
    sink : URawSink, optional
        Receives ``U_raw`` (see :class:`URawSink`); without one, ``U_raw`` is
        not kept and only ``t``, ``s``, ``vt`` are returned.
    progress : bool
        Show a progress bar per pass (dashboard link on a distributed client).
    blocks : sequence, optional
        What the tasks of a pass read, one per row block of ``a``, with its rows
        and all its columns: objects that ``np.asarray`` turns into the block,
        such as :class:`streamsvd.store.row_block.RowBlock`, which reads it
        then; reading and computing a block are then one task. Default: the
        blocks of ``a``, each read by a task of its own.

    Returns
    -------
    FitResult

    Raises
    ------
    ConfigError
        Invalid options, a rank above ``min(n_rows, n_cols)``, or a ``tol:``/
        ``energy:`` rule not met within ``max_rank``.
    InvalidInputError
        ``a`` is not 2-D or has no rows.

    Notes
    -----
    Passes over the data: ``power_iters + 1`` (a single pass when
    ``l >= n_cols``, which is then the exact SVD); a rule that grows the sketch
    repeats them for each width tried. Peak memory per worker:
    ``O(chunk_rows · n_cols + n_cols · l)``; the client holds ``O(n_cols · l)``;
    nothing that grows with ``n_rows`` is gathered. Uses the current Dask
    scheduler or client.

    Examples
    --------
    >>> import dask, dask.array as da, numpy as np
    >>> x = np.random.default_rng(0).standard_normal((60, 8))
    >>> with dask.config.set(scheduler="sync"):
    ...     res = fit_array(da.from_array(x, chunks=(20, 8)), rank=3, oversample=5)
    >>> bool(np.allclose(res.s, np.linalg.svd(x, compute_uv=False)[:3]))
    True
    >>> res.passes
    1
    """
    if not isinstance(a, da.Array):
        raise InvalidInputError(f"fit_array needs a dask array, got {type(a).__name__}")
    if a.ndim != 2:
        raise InvalidInputError(f"fit needs a 2-D array, got shape {a.shape}")
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not supported; use 'float64' or 'float32'")
    if power_iters < 0 or oversample < 0:
        raise ConfigError(
            f"power_iters={power_iters} and oversample={oversample} must both be >= 0"
        )
    if any(np.isnan(c) for c in a.chunks[0]):
        raise InvalidInputError(
            "fit needs known row-chunk sizes, got unknown (nan) ones; "
            "call a.compute_chunk_sizes() first"
        )
    n_rows, n_cols = a.shape
    if n_rows == 0 or n_cols == 0:
        raise InvalidInputError(f"cannot fit an empty matrix of shape {a.shape}")
    rule = parse_rank(rank, dtype=dtype)
    width = sketch_size(rule, oversample, n_cols, n_rows, max_rank)
    cap = max_rank if max_rank is not None else default_max_rank(n_rows, n_cols)
    blocks = row_blocks(a) if blocks is None else _matching_blocks(blocks, a)
    timings: dict[str, float] = {}
    passes = 0
    while True:
        with in_memory_blas(n_cols, width):
            attempt = _run_passes(
                a,
                blocks,
                width,
                power_iters=power_iters,
                seed=seed,
                center=center,
                dtype=_DTYPES[dtype],
                sink=sink,
                progress=progress,
                timings=timings,
            )
        passes += attempt.passes
        choice = choose_rank(rule, attempt.sketch.s, attempt.energy, n_rows, n_cols)
        grown = next_sketch_size(
            rule,
            choice,
            width,
            oversample=oversample,
            n_rows=n_rows,
            n_cols=n_cols,
            max_rank=cap,
        )
        if grown is None:
            break
        width = grown
    if rule.kind != "fixed":
        choice = cap_choice(choice, min(cap, n_rows, n_cols))
    with in_memory_blas(n_cols, width):
        t, s, vt = truncate(attempt.sketch, choice.rank, attempt.c)
    relative_error, captured = error_summary(attempt.energy, s)
    return FitResult(
        t=t,
        s=s,
        vt=vt,
        mean=attempt.mean,
        energy=attempt.energy,
        rows=attempt.rows,
        relative_error=relative_error,
        captured_energy=captured,
        rank_choice=choice,
        params=FitParams(
            rank=str(rule),
            oversample=oversample,
            power_iters=power_iters,
            seed=seed,
            center=center,
            dtype=dtype,
            width=width,
            max_rank=cap,
        ),
        passes=passes,
        singular_values_sketch=attempt.sketch.s.copy(),
        timings=timings,
    )
