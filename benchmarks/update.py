"""Incremental updates against scikit-learn IncrementalPCA and against a full refit.

Run::

    .venv/bin/python benchmarks/update.py             # 1,000,000 × 500 float32 (2 GB), rank 50
    .venv/bin/python benchmarks/update.py --quick     # 100,000 × 500

The matrix is the fit benchmark's (``G·diag(σ)·Vᵀ/√m + N(0, 0.01²)``, σ_i = 10·√m·0.9^i,
i < 100). streamsvd fits the first half (q = 2, p = 10, rank 50), then appends the
rest in 10 batches with ``streamsvd.update`` — each batch is ingested and the factors
updated in one durable commit; the time is shown with the commit separately. The same
batches go through ``IncrementalPCA.partial_fit`` (rank 50; it starts from the first
half in batches of the same size). A full ``streamsvd.fit`` of all rows is the third
column. Flatness: 1,000-row batches appended at 100,000 and at 1,000,000 rows already
seen (median of 5). Errors are ‖A − A V Vᵀ‖_F (PCA: of the centred matrix) over the
optimum, from the exact float64 Gram matrix. Each method runs in its own child process;
peak memory is of the whole process tree (``_common.py``).

Targets (issue #4): per-batch time flat in rows seen (ratio ≤ 1.2); ≤ 0.5× the
IncrementalPCA time per batch with final error ≤ 1.02× optimal, U included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_DATA,
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
BATCHES = 10
SMALL_ROWS = 1000
REPEATS = 5


def split_files(npy: Path, out: Path, rows: int) -> dict[str, Any]:
    """Cut the matrix into the base half, 10 batches and small batches (files)."""
    data = np.load(npy, mmap_mode="r")
    half = rows // 2
    step = (rows - half) // BATCHES
    out.mkdir(parents=True, exist_ok=True)
    base = out / "base.npy"
    np.save(base, np.asarray(data[:half]))
    batches = []
    for i in range(BATCHES):
        path = out / f"batch-{i:02d}.npy"
        np.save(path, np.asarray(data[half + i * step : half + (i + 1) * step]))
        batches.append(str(path))
    rng = np.random.default_rng(1)
    small = []
    for i in range(2 * REPEATS):
        path = out / f"small-{i:02d}.npy"
        picks = np.sort(rng.choice(rows, SMALL_ROWS, replace=False))
        np.save(path, np.asarray(data[picks]) * (1 + 1e-6 * i))  # distinct content
        small.append(str(path))
    head = out / "head-100k.npy"
    np.save(head, np.asarray(data[: min(100_000, rows)]))
    return {"base": str(base), "batches": batches, "small": small, "head": str(head)}


def optimum(npy: Path, centred: bool) -> float:
    data = np.load(npy, mmap_mode="r")
    n = data.shape[1]
    gram, total = np.zeros((n, n)), np.zeros(n)
    for lo in range(0, data.shape[0], 65536):
        a = np.asarray(data[lo : lo + 65536], dtype=np.float64)
        gram += a.T @ a
        total += a.sum(axis=0)
    if centred:
        mean = total / data.shape[0]
        gram -= data.shape[0] * np.outer(mean, mean)
    eig = np.sort(np.linalg.eigvalsh(gram))[::-1]
    return float(np.sqrt(max(eig[RANK:].sum(), 0.0)))


def projection_error(npy: Path, vt: np.ndarray, mean: np.ndarray | None) -> float:
    data = np.load(npy, mmap_mode="r")
    total = 0.0
    for lo in range(0, data.shape[0], 65536):
        a = np.asarray(data[lo : lo + 65536], dtype=np.float64)
        if mean is not None:
            a = a - mean
        r = a - (a @ vt.T) @ vt
        total += float(np.einsum("ij,ij->", r, r))
    return float(np.sqrt(total))


# ----------------------------------------------------------------------------- children


def child_streamsvd(files: dict[str, Any], work: Path) -> None:
    import streamsvd

    store = work / "store"
    remove(store)
    streamsvd.ingest(store, [files["base"]])
    streamsvd.fit(store, rank=RANK, scheduler="local")
    per_batch, commits = [], []
    for path in files["batches"]:
        result, _ = timed(lambda p=path: streamsvd.update(store, [p]))
        per_batch.append(result.seconds)
        commits.append(result.commit_seconds)
    small_at_1m = [streamsvd.update(store, [p]).seconds for p in files["small"][:REPEATS]]
    mark_measured()
    factors = streamsvd.open_factors(store)
    report(
        {
            "per_batch": per_batch,
            "commit": commits,
            "small_at_end": small_at_1m,
            "recorded_error": float(factors.attrs["relative_error"]),
            "vt": factors.vt.tolist(),
            "u_kept": True,
        }
    )


def child_small_at_100k(files: dict[str, Any], work: Path) -> None:
    import streamsvd

    store = work / "store-100k"
    remove(store)
    streamsvd.ingest(store, [files["head"]])
    streamsvd.fit(store, rank=RANK, scheduler="local")
    small = [streamsvd.update(store, [p]).seconds for p in files["small"][REPEATS:]]
    mark_measured()
    report({"small": small})
    remove(store)


def child_ipca(files: dict[str, Any], work: Path) -> None:
    from sklearn.decomposition import IncrementalPCA

    ipca = IncrementalPCA(n_components=RANK)
    base = np.load(files["base"], mmap_mode="r")
    step = np.load(files["batches"][0], mmap_mode="r").shape[0]
    for lo in range(0, base.shape[0], step):
        ipca.partial_fit(np.asarray(base[lo : lo + step]))
    per_batch = []
    for path in files["batches"]:
        batch = np.load(path)
        _, seconds = timed(lambda b=batch: ipca.partial_fit(b))
        per_batch.append(seconds)
    mark_measured()
    report({"per_batch": per_batch, "vt": ipca.components_.tolist(), "mean": ipca.mean_.tolist()})


def child_refit(files: dict[str, Any], work: Path) -> None:
    import streamsvd

    store = work / "store"  # holds all rows after the streamsvd child
    summary, seconds = timed(lambda: streamsvd.fit(store, rank=RANK, scheduler="local"))
    mark_measured()
    vt = streamsvd.open_factors(store).vt
    report({"seconds": seconds, "vt": vt.tolist(), "recorded_error": summary["relative_error"]})


CHILDREN = {
    "streamsvd": child_streamsvd,
    "small-100k": child_small_at_100k,
    "ipca": child_ipca,
    "refit": child_refit,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 rows")
    parser.add_argument("--cols", type=int, default=500)
    parser.add_argument("--data-dir", type=Path, default=BENCH_DATA / "update")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        CHILDREN[args.child](json.loads(Path(args.files).read_text()), args.data_dir)
        return
    rows = 100_000 if args.quick else args.rows
    work = args.data_dir
    work.mkdir(parents=True, exist_ok=True)
    print(machine_note(), flush=True)
    npy = work / f"rows-{rows}x{args.cols}.npy"
    if not npy.exists():
        print(f"writing {npy} ...", flush=True)
        write_npy(npy, rows, args.cols)
    files = split_files(npy, work / "files", rows)
    manifest = work / "files.json"
    manifest.write_text(json.dumps(files))
    print("exact optimum from the Gram matrix ...", flush=True)
    best = optimum(npy, centred=False)
    best_centred = optimum(npy, centred=True)
    results = {}
    for name in ("streamsvd", "small-100k", "ipca", "refit"):
        print(f"running {name} ...", flush=True)
        argv = child_argv(__file__, name, ["--files", str(manifest), "--data-dir", str(work)])
        results[name] = run_child(name, argv)
    ours, ipca = results["streamsvd"].result, results["ipca"].result
    our_error = projection_error(npy, np.array(ours["vt"]), None) / best
    ipca_error = projection_error(npy, np.array(ipca["vt"]), np.array(ipca["mean"])) / best_centred
    ours_batch = statistics.median(ours["per_batch"])
    ipca_batch = statistics.median(ipca["per_batch"])
    refit = results["refit"].result["seconds"]
    refit_error = projection_error(npy, np.array(results["refit"].result["vt"]), None) / best
    print()
    print(f"{rows} × {args.cols} float32, rank {RANK}; batches of {(rows - rows // 2) // BATCHES}")
    print(
        markdown_table(
            [
                "method",
                "per batch s (median)",
                "of which commit s",
                "× IPCA",
                "final error/optimal",
                "keeps U",
                "peak RSS MiB",
            ],
            [
                [
                    "streamsvd update",
                    f"{ours_batch:.2f}",
                    f"{statistics.median(ours['commit']):.3f}",
                    f"{ours_batch / ipca_batch:.2f}",
                    f"{our_error:.4f}",
                    "yes",
                    f"{results['streamsvd'].rss:.0f}",
                ],
                [
                    "IncrementalPCA.partial_fit",
                    f"{ipca_batch:.2f}",
                    "–",
                    "1.00",
                    f"{ipca_error:.4f}",
                    "no",
                    f"{results['ipca'].rss:.0f}",
                ],
                [
                    "streamsvd full refit (all rows)",
                    f"{refit:.2f}",
                    "–",
                    f"{refit / ipca_batch:.2f}",
                    f"{refit_error:.4f}",
                    "yes",
                    f"{results['refit'].rss:.0f}",
                ],
            ],
        )
    )
    at_100k = statistics.median(results["small-100k"].result["small"])
    at_end = statistics.median(ours["small_at_end"])
    print()
    print(
        markdown_table(
            ["1,000-row batch", "seconds (median of 5)", "ratio"],
            [
                ["at 100,000 rows seen", f"{at_100k:.3f}", "1.00"],
                [f"at {rows:,} rows seen", f"{at_end:.3f}", f"{at_end / at_100k:.2f}"],
            ],
        )
    )
    print()
    print("per-batch seconds (streamsvd):", " ".join(f"{s:.2f}" for s in ours["per_batch"]))
    print("per-batch seconds (IPCA):     ", " ".join(f"{s:.2f}" for s in ipca["per_batch"]))


if __name__ == "__main__":
    main()
