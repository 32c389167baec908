"""Peak memory of ``fit`` on a sparse store whose dense form would not fit anywhere.

    python benchmarks/sparse_memory.py [--rows 2000000] [--cols 2000000] [--nnz-per-row 5]

Writes random triplets (``nnz-per-row`` distinct columns per row) to Parquet, ingests
them into a sparse store, then runs ``fit`` (rank 10, oversample 10, one power
iteration) in a fresh process and prints that process's peak RSS (``ru_maxrss``), the
times and the dense size the matrix would have. ``tests/test_sparse.py`` runs it
(marked ``slow``) and checks the fit stays within 2 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_triplets(path: Path, rows: int, cols: int, per_row: int, seed: int) -> int:
    """Random triplets with ``per_row`` entries per row (duplicates summed on ingest)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    row_ids = np.repeat(np.arange(rows, dtype=np.int64), per_row)
    col_ids = rng.integers(0, cols, size=rows * per_row, dtype=np.int64)
    values = rng.standard_normal(rows * per_row)
    pq.write_table(
        pa.table({"row_id": row_ids, "col_id": col_ids, "value": values}),
        path,
        row_group_size=1 << 20,
    )
    return int(row_ids.size)


def fit_child(store: str, rank: int, power_iters: int) -> dict[str, float]:
    """Run in the child process: fit and report the peak RSS of this process."""
    import streamsvd

    started = time.perf_counter()
    summary = streamsvd.fit(
        store, rank=rank, oversample=10, power_iters=power_iters, scheduler="threads"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "fit_seconds": time.perf_counter() - started,
        "peak_rss_bytes": float(peak),
        "relative_error": float(summary["relative_error"]),
        "rank": float(summary["rank"]),
    }


def run(rows: int, cols: int, per_row: int, *, workdir: Path, rank: int = 10) -> dict[str, float]:
    """Generate, ingest, then fit in a child process; returns the measurements."""
    import streamsvd

    source = workdir / "triplets.parquet"
    store = workdir / "store"
    started = time.perf_counter()
    triplets = write_triplets(source, rows, cols, per_row, seed=0)
    generated = time.perf_counter() - started
    started = time.perf_counter()
    streamsvd.ingest(store, [source], options=streamsvd.IngestOptions(format="triplets"))
    ingested = time.perf_counter() - started
    child = subprocess.run(
        [sys.executable, __file__, "--child", str(store), "--rank", str(rank)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(child.stdout.strip().splitlines()[-1])
    info = streamsvd.info(store)
    return {
        **result,
        "rows": float(rows),
        "cols": float(info["cols"]),
        "nnz": float(info["nnz"]),
        "triplets": float(triplets),
        "dense_bytes": float(rows) * float(info["cols"]) * 8,
        "generate_seconds": generated,
        "ingest_seconds": ingested,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--cols", type=int, default=2_000_000)
    parser.add_argument("--nnz-per-row", type=int, default=5)
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(fit_child(args.child, args.rank, power_iters=1)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.rows, args.cols, args.nnz_per_row, workdir=Path(tmp), rank=args.rank)
    for key, value in result.items():
        print(f"{key:>18}: {value:.6g}")


if __name__ == "__main__":
    main()
