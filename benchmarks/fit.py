"""streamsvd fit against its peers and against the floor, on one store, in one invocation.

Run::

    .venv/bin/python benchmarks/fit.py                  # 1,000,000 × 500 float32 (2 GB)
    .venv/bin/python benchmarks/fit.py --quick          # 100,000 × 500 (10× smaller)
    .venv/bin/python benchmarks/fit.py --rows 300000 --skip sklearn

The matrix is ``G·diag(σ)·Vᵀ/√m + N(0, 0.01²)`` with ``σ_i = 10·√m·0.9^i``
(i < 100), written block by block to a ``.npy`` and ingested into a store
under ``bench-data/`` (not timed). The reference is exact: the eigenvalues of
the float64 Gram matrix ``AᵀA`` (accumulated block by block) give the optimal
rank-k error, ``Σ_{i>k} λ_i``.

Measured, each in its own child process (peak memory of the whole process
tree, polled every 50 ms; see ``_common.py``), at rank 50, oversampling 10,
q = 2 power iterations, seed 0:

* ``streamsvd.fit`` on its embedded LocalCluster (``scheduler="local"``, the
  cluster start is inside the wall time) and on the threaded scheduler in
  process (``scheduler=None``). The wall time includes writing ``U_raw`` and
  the commit (the fit refits the store in place);
* ``dask.array.linalg.svd_compressed(compute=True, iterator="QR")`` on
  ``matrix_as_dask`` of the same store, threaded scheduler, its ``u, s, v``
  persisted (``u`` is m×k in memory, not gathered anywhere); passes counted by
  counting block reads;
* scikit-learn ``randomized_svd`` (``n_iter=q``, QR normalizer) on the matrix
  loaded in memory (the load is not timed but its memory counts);
* the floor: one plain read pass (``a.sum()`` through Dask, threaded) and one
  pass of the block products ``A_iᵀ(A_i Ω)``, Ω n×60, in float64 (cast per
  slice, as the fit does) and in float32, by row slices that stay in cache;
  each run four times in its child. The floor of a q = 2 fit at the precision
  streamsvd uses is 2 float32 passes + 1 float64 pass (it leaves out the R
  factor and writing ``U_raw``, which the fit also does);
* not in the floor, to show what the fit's one write costs here: ``U_raw``'s
  bytes (rows × 60 float64) written as new plain files from two threads (the first
  of two writes is shown: the second reuses the pages the first freed).

Every method runs ``--repeat`` times (default 3), each time in a new child, in
rounds (every method once, then again), so a slow spell of this shared machine
falls on all of them; the table shows each method's fastest run (for the floor,
the fastest of all its timed runs) and its highest memory peaks, and all the
times are printed below it. Every method's error is measured after its timed
part, block by block: ``‖A − U S Vᵀ‖_F`` over the optimal rank-k error (1.00 is
optimal). For streamsvd the recorded (exact, pass-free) error is shown and
checked against the measured one.
Targets (issue): wall ≤ 0.5× dask's with no worse error; wall ≤ 1.3× the floor;
peak RSS under 1 GB and flat in m.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_DATA,
    Measured,
    child_argv,
    machine_note,
    mark_measured,
    markdown_table,
    remove,
    report,
    run_child,
    timed,
    write_npy,
)

RANK = 50
OVERSAMPLE = 10
POWER_ITERS = 2
SEED = 0
ERROR_BLOCK_ROWS = 32768
METHODS = (
    "floor-read",
    "floor-f64",
    "floor-f32",
    "floor-write",
    "streamsvd-local",
    "streamsvd-threads",
    "dask",
    "sklearn",
)


def open_matrix(store: Path) -> Any:
    from streamsvd.store.repository import Store

    return Store.open(store).root()


def residual_sq(
    store: Path, u_rows: Callable[[int, int], np.ndarray], s: np.ndarray, vt: np.ndarray
) -> float:
    """``‖A − U S Vᵀ‖_F²`` in float64, block by block (U read by ``u_rows(lo, hi)``)."""
    matrix = open_matrix(store)["matrix"]
    us_vt = vt.astype(np.float64)
    s = np.asarray(s, dtype=np.float64)
    total = 0.0
    for lo in range(0, matrix.shape[0], ERROR_BLOCK_ROWS):
        hi = min(matrix.shape[0], lo + ERROR_BLOCK_ROWS)
        a = np.asarray(matrix[lo:hi], dtype=np.float64)
        u = np.asarray(u_rows(lo, hi), dtype=np.float64)
        a -= (u * s) @ us_vt
        total += float(np.einsum("ij,ij->", a, a))
    return total


# ----------------------------------------------------------------------------- children


def child_write(store: Path) -> None:
    """Write ``U_raw``'s bytes (rows × l float64) as new plain files, two threads.

    Not part of the floor: it shows what the fit's one write costs on this
    machine (new page-cache pages; much dearer on first touch in this VM).
    """
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from streamsvd.api import matrix_as_dask

    a = matrix_as_dask(open_matrix(store))
    block = np.random.default_rng(SEED).standard_normal((a.chunks[0][0], RANK + OVERSAMPLE))
    sizes = a.chunks[0]
    runs = []
    for _ in range(2):
        folder = Path(tempfile.mkdtemp(dir=store.parent))

        def write(i: int, folder: Path = folder) -> None:
            block[: sizes[i]].tofile(folder / f"{i}.bin")

        def write_all() -> None:
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(write, range(len(sizes))))

        runs.append(timed(write_all)[1])
        remove(folder)
    mark_measured()
    # The first write is the one a fit meets (and the only one in "all runs"): the
    # second reuses the pages the first freed.
    first, second = runs
    report({"seconds": first, "runs": [first], "second": second, "passes": "–"})


def child_floor(store: Path, kind: str) -> None:
    import dask.array as da

    from streamsvd.api import matrix_as_dask

    a = matrix_as_dask(open_matrix(store))
    width = RANK + OVERSAMPLE
    omega = np.random.default_rng(SEED).standard_normal((a.shape[1], width))
    if kind == "read":
        work = a.sum(dtype=np.float64)
    else:
        dtype = np.float64 if kind == "f64" else np.float32
        om = omega.astype(dtype)

        # By row slices of 2 MiB, as streamsvd's kernels do: both products of a
        # slice run while it is in cache (the fastest way found to do them).
        step = max(16, 2 * 1024 * 1024 // (a.shape[1] * np.dtype(dtype).itemsize))

        def products(block: np.ndarray) -> np.ndarray:
            yt = np.zeros((width, block.shape[1]))
            for lo in range(0, block.shape[0], step):
                b = block[lo : lo + step].astype(dtype, copy=False)
                yt += (b @ om).T @ b
            return yt.T[None]

        parts = a.map_blocks(
            products,
            new_axis=2,
            chunks=((1,) * a.numblocks[0], (a.shape[1],), (width,)),
            dtype=dtype,
            meta=np.empty((0, 0, 0), dtype=dtype),
        )
        work = parts.sum(axis=0)
    # Twice with each BLAS setting (streamsvd runs one BLAS thread per Dask task,
    # see streamsvd.engine.fit.compute_pass): the first pass also pays for opening
    # the store and warming up; the floor is the fastest of the four.
    from threadpoolctl import threadpool_limits

    runs = [timed(lambda: da.compute(work))[1] for _ in range(2)]
    with threadpool_limits(limits=1, user_api="blas"):
        runs += [timed(lambda: da.compute(work))[1] for _ in range(2)]
    mark_measured()
    report({"seconds": min(runs), "runs": runs, "passes": 1, "blocks": a.numblocks[0]})


def child_streamsvd(store: Path, scheduler: str | None) -> None:
    import streamsvd

    summary, seconds = timed(
        lambda: streamsvd.fit(
            store,
            rank=RANK,
            oversample=OVERSAMPLE,
            power_iters=POWER_ITERS,
            seed=SEED,
            scheduler=scheduler,
        )
    )
    mark_measured()
    factors = streamsvd.open_factors(store)
    u = factors.u
    res = residual_sq(store, lambda lo, hi: u[lo:hi].compute(), factors.s, factors.vt)
    report(
        {
            "seconds": seconds,
            "passes": int(factors.attrs["passes"]),
            "recorded_relative_error": float(summary["relative_error"]),
            "residual_sq": res,
            "timings": factors.attrs.get("timings", {}),
        }
    )


def child_dask(store: Path) -> None:
    import dask
    import dask.array as da

    from streamsvd.api import matrix_as_dask

    a = matrix_as_dask(open_matrix(store))
    reads = [0]
    lock = threading.Lock()

    def count(block: np.ndarray) -> np.ndarray:
        if block.shape[0]:
            with lock:
                reads[0] += 1
        return block

    counted = a.map_blocks(count, dtype=a.dtype, meta=np.empty((0, 0), dtype=a.dtype))

    def run() -> tuple[Any, Any, Any]:
        u, s, v = da.linalg.svd_compressed(
            counted,
            k=RANK,
            n_power_iter=POWER_ITERS,
            n_oversamples=OVERSAMPLE,
            iterator="QR",
            compute=True,
            seed=SEED,
        )
        return dask.persist(u, s, v)

    (u, s, v), seconds = timed(run)
    mark_measured()
    blocks_read = reads[0]
    s_np, v_np = dask.compute(s, v)
    res = residual_sq(store, lambda lo, hi: u[lo:hi].compute(), s_np, v_np)
    report(
        {
            "seconds": seconds,
            "passes": blocks_read / a.numblocks[0],
            "residual_sq": res,
            "dtype": str(u.dtype),
        }
    )


def child_sklearn(store: Path) -> None:
    from sklearn.utils.extmath import randomized_svd

    matrix = open_matrix(store)["matrix"]

    def load() -> np.ndarray:
        out = np.empty(matrix.shape, dtype=matrix.dtype)
        for lo in range(0, matrix.shape[0], ERROR_BLOCK_ROWS):
            out[lo : lo + ERROR_BLOCK_ROWS] = matrix[lo : lo + ERROR_BLOCK_ROWS]
        return out

    a, load_seconds = timed(load)
    (u, s, vt), seconds = timed(
        lambda: randomized_svd(
            a,
            RANK,
            n_oversamples=OVERSAMPLE,
            n_iter=POWER_ITERS,
            power_iteration_normalizer="QR",
            random_state=SEED,
        )
    )
    mark_measured()
    res = residual_sq(store, lambda lo, hi: u[lo:hi], s, vt)
    report(
        {
            "seconds": seconds,
            "load_seconds": load_seconds,
            "passes": 2 * POWER_ITERS + 2,
            "residual_sq": res,
        }
    )


def run_as_child(name: str, store: Path) -> None:
    if name == "floor-write":
        child_write(store)
    elif name.startswith("floor-"):
        child_floor(store, name.removeprefix("floor-"))
    elif name == "streamsvd-local":
        child_streamsvd(store, "local")
    elif name == "streamsvd-threads":
        child_streamsvd(store, None)
    elif name == "dask":
        child_dask(store)
    elif name == "sklearn":
        child_sklearn(store)
    else:
        raise SystemExit(f"unknown child {name!r}")


# ------------------------------------------------------------------------------- parent


def reference(store: Path, cache: Path) -> dict[str, float]:
    """‖A‖_F² and the optimal rank-k error², from the float64 Gram matrix."""
    if cache.exists():
        return dict(json.loads(cache.read_text()))
    matrix = open_matrix(store)["matrix"]
    n = matrix.shape[1]
    gram = np.zeros((n, n))
    energy = 0.0
    for lo in range(0, matrix.shape[0], ERROR_BLOCK_ROWS):
        a = np.asarray(matrix[lo : lo + ERROR_BLOCK_ROWS], dtype=np.float64)
        gram += a.T @ a
        energy += float(np.einsum("ij,ij->", a, a))
    eig = np.sort(np.linalg.eigvalsh(gram))[::-1]
    ref = {
        "energy": energy,
        "optimal_sq": float(eig[RANK:].sum()),
        "trace": float(eig.sum()),
        "sigma_k": float(np.sqrt(eig[RANK - 1])),
        "sigma_k1": float(np.sqrt(eig[RANK])),
        "sigma_1": float(np.sqrt(eig[0])),
    }
    cache.write_text(json.dumps(ref))
    return ref


def prepare(rows: int, cols: int, data_dir: Path) -> Path:
    from streamsvd.store.ingest import ingest

    store = data_dir / f"store-{rows}x{cols}"
    if (store / "ready").exists():
        return store
    remove(store)
    npy = data_dir / f"rows-{rows}x{cols}.npy"
    print(f"writing {npy} ...", flush=True)
    _, seconds = timed(lambda: write_npy(npy, rows, cols))
    print(f"  written in {seconds:.1f} s; ingesting ...", flush=True)
    result = ingest(store, [npy])
    print(f"  ingested in {result.seconds:.1f} s", flush=True)
    remove(npy)
    (store / "ready").write_text("")
    return store


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 rows")
    parser.add_argument("--cols", type=int, default=500)
    parser.add_argument("--data-dir", type=Path, default=BENCH_DATA / "fit")
    parser.add_argument("--skip", nargs="*", default=[], choices=METHODS, help="methods to skip")
    parser.add_argument("--keep", action="store_true", help="keep the store for a rerun")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of every method (the fastest is shown)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_as_child(args.child, args.store)
        return
    rows = 100_000 if args.quick else args.rows
    script = str(Path(__file__).resolve())
    print(f"# fit benchmark: {rows:,} × {args.cols} float32, rank {RANK}, p={OVERSAMPLE}, ")
    print(f"q={POWER_ITERS}, seed {SEED}")
    print(machine_note(), flush=True)
    store = prepare(rows, args.cols, args.data_dir)
    try:
        ref, ref_seconds = timed(lambda: reference(store, store.parent / f"ref-{rows}.json"))
        optimal = float(np.sqrt(ref["optimal_sq"]))
        print(
            f"reference ({ref_seconds:.1f} s): ‖A‖_F = {np.sqrt(ref['energy']):.6g}, optimal "
            f"rank-{RANK} error {optimal:.6g} (relative {optimal / np.sqrt(ref['energy']):.4g}), "
            f"σ_1 = {ref['sigma_1']:.4g}, σ_{RANK} = {ref['sigma_k']:.4g}, "
            f"σ_{RANK + 1} = {ref['sigma_k1']:.4g}",
            flush=True,
        )
        runs: dict[str, list[Measured]] = {}
        # Rounds in turn (not one method's runs back to back), so a slow spell of
        # this shared machine falls on every method alike.
        for round_no in range(1, args.repeat + 1):
            for name in METHODS:
                if name in args.skip:
                    continue
                print(f"running {name} ({round_no}/{args.repeat}) ...", flush=True)
                argv = child_argv(script, name, ["--store", str(store)])
                try:
                    measured = run_child(name, argv)
                except RuntimeError as exc:
                    print(f"  {name} failed: {exc}", flush=True)
                else:
                    runs.setdefault(name, []).append(measured)
                    print(f"  {name}: {measured.result['seconds']:.2f} s", flush=True)
        print_tables({name: fastest(ms) for name, ms in runs.items()}, ref, rows, args.cols)
    finally:
        if not args.keep:
            remove(store)
            remove(store.parent / f"ref-{rows}.json")


def fastest(runs: list[Measured]) -> Measured:
    """The fastest of a method's runs, with every run's time and the highest peaks."""
    best = min(runs, key=lambda m: float(m.result["seconds"]))
    # the floor children time several runs each (and report the one that counts)
    all_seconds = [float(t) for m in runs for t in m.result.get("runs", [m.result["seconds"]])]
    return dataclasses.replace(
        best,
        result={**best.result, "all_seconds": all_seconds},
        peak_rss_mib=max(m.peak_rss_mib for m in runs),
        peak_anon_mib=max(m.peak_anon_mib for m in runs),
        child_hwm_mib=max(m.child_hwm_mib for m in runs),
    )


def print_tables(results: dict[str, Measured], ref: dict[str, float], rows: int, cols: int) -> None:
    optimal = float(np.sqrt(ref["optimal_sq"]))
    norm = float(np.sqrt(ref["energy"]))
    f64, f32 = results.get("floor-f64"), results.get("floor-f32")
    # The chosen precision: float32 power passes, a float64 final pass.
    floor = (
        POWER_ITERS * float(f32.result["seconds"]) + float(f64.result["seconds"])
        if f64 and f32
        else None
    )
    base = results.get("streamsvd-local")
    base_wall = float(base.result["seconds"]) if base else None
    labels = {
        "streamsvd-local": "streamsvd fit, LocalCluster (scheduler='local')",
        "streamsvd-threads": "streamsvd fit, threads in process (scheduler=None)",
        "dask": "dask svd_compressed (QR, compute=True), threads",
        "sklearn": "scikit-learn randomized_svd, in memory",
        "floor-read": "floor: 1 plain read pass (a.sum() via dask)",
        "floor-f64": "floor: 1 pass A_iᵀ(A_i Ω), float64",
        "floor-f32": "floor: 1 pass A_iᵀ(A_i Ω), float32",
        "floor-write": f"not in the floor: U_raw's bytes ({RANK + OVERSAMPLE} float64 a row) "
        "as new files",
    }
    table: list[list[object]] = []
    for name in METHODS:
        if name not in results:
            continue
        m = results[name]
        wall = float(m.result["seconds"])
        passes = m.result.get("passes", "")
        if name == "dask":
            passes = f"{passes:g} counted (2q+2 = {2 * POWER_ITERS + 2})"
        elif name == "sklearn":
            passes = f"{passes} in memory (2q+2)"
        if "residual_sq" in m.result:
            measured = float(np.sqrt(m.result["residual_sq"]))
            err = f"{measured / optimal:.4f}"
        else:
            err = "–"
        table.append(
            [
                labels[name],
                str(passes),
                f"{wall:.2f}",
                f"{wall / base_wall:.2f}" if base_wall else "–",
                f"{wall / floor:.2f}" if floor else "–",
                f"{m.rss:,.0f}",
                f"{m.peak_anon_mib:,.0f}",
                err,
            ]
        )
    if floor is not None:
        table.append(
            [
                f"floor of a q={POWER_ITERS} fit: {POWER_ITERS} float32 + 1 float64 product passes",
                str(POWER_ITERS + 1),
                f"{floor:.2f}",
                f"{floor / base_wall:.2f}" if base_wall else "–",
                "1.00",
                "–",
                "–",
                "–",
            ]
        )
    headers = [
        "method",
        "passes",
        "wall s",
        "× streamsvd (local)",
        "× floor",
        "peak RSS MiB",
        "peak anon MiB",
        "error/optimal",
    ]
    print()
    print(f"## {rows:,} × {cols} float32, rank {RANK}, q={POWER_ITERS}, p={OVERSAMPLE}")
    print()
    print(markdown_table(headers, table))
    print()
    print(
        f"optimal rank-{RANK} error {optimal:.6g} = {optimal / norm:.4e} of ‖A‖_F "
        "(exact, from the eigenvalues of the float64 Gram matrix); error/optimal is "
        "‖A − U S Vᵀ‖_F measured block by block over it. Peak RSS is the process tree "
        "(LocalCluster: client + nanny + worker, shared libraries counted per process); "
        "peak anon leaves out file-backed and shared pages."
    )
    for name in ("streamsvd-local", "streamsvd-threads"):
        if name in results:
            r = results[name].result
            measured = float(np.sqrt(r["residual_sq"])) / norm
            recorded = float(r["recorded_relative_error"])
            timings = ", ".join(f"{k}: {v:.2f} s" for k, v in r["timings"].items())
            print(
                f"{name}: recorded relative error {recorded:.6e}, measured {measured:.6e} "
                f"(differ by {abs(recorded - measured) / measured:.1e} relative); {timings}"
            )
    runs = "; ".join(
        f"{n}: " + ", ".join(f"{t:.2f}" for t in m.result["all_seconds"])
        for n, m in results.items()
    )
    print(f"all runs (s; the table shows the fastest of each, peaks the highest): {runs}")
    if "sklearn" in results:
        print(
            f"sklearn: loading the matrix into memory took "
            f"{results['sklearn'].result['load_seconds']:.2f} s (not in the wall time)."
        )
    if "dask" in results:
        print(f"dask: factors in {results['dask'].result['dtype']}.")
    if base_wall and "dask" in results:
        dask_wall = float(results["dask"].result["seconds"])
        print(f"target wall ≤ 0.5 × dask: streamsvd (local) is {base_wall / dask_wall:.2f} × dask")
    print(time.strftime("finished %H:%M:%S"))


if __name__ == "__main__":
    main()
