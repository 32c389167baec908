"""Measure the store defaults: chunk size and codec, by write and read throughput.

Run: ``.venv/bin/python benchmarks/chunking.py [--mb 512]``. Writes stores of
float32 low-rank-plus-noise data with each codec and chunk size, then times one
full read pass (the fit's access pattern: row blocks, one chunk after another)
and reports MB/s and the compression ratio. Reading matters more than the
ratio: every fit pass reads the whole matrix.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from streamsvd.store.matrix import MatrixMeta, append_block, init_matrix
from streamsvd.store.repository import Store


def make_block(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    basis = rng.standard_normal((20, cols)).astype(np.float32)
    coef = rng.standard_normal((rows, 20)).astype(np.float32)
    return coef @ basis + 0.01 * rng.standard_normal((rows, cols), dtype=np.float32)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=512, help="matrix size in MB")
    parser.add_argument("--cols", type=int, default=500)
    args = parser.parse_args()
    rows = args.mb * 1024 * 1024 // (4 * args.cols)
    rng = np.random.default_rng(0)
    data = make_block(rng, rows, args.cols)
    raw_mb = rows * args.cols * 4 / 1e6
    print(f"{rows} x {args.cols} float32 = {raw_mb:.0f} MB")
    print(f"{'codec':6} {'chunk MiB':>9} {'write MB/s':>10} {'read MB/s':>9} {'ratio':>6}")
    tmp = Path(tempfile.mkdtemp(prefix="streamsvd-chunking-"))
    try:
        for codec in ("zstd", "lz4", "none"):
            for chunk_mib in (2, 8, 32):
                chunk_rows = chunk_mib * 1024 * 1024 // (4 * args.cols)
                path = tmp / f"{codec}-{chunk_mib}"
                t0 = time.perf_counter()
                with Store.open_for_writing(path) as store, store.transaction() as tx:
                    meta = MatrixMeta(args.cols, "float32", chunk_rows, codec)
                    array = init_matrix(tx.group, meta)
                    # Chunk-aligned writes, as ingest does.
                    for start in range(0, rows, 8 * chunk_rows):
                        append_block(array, data[start : start + 8 * chunk_rows])
                    tx.commit("bench")
                write = raw_mb / (time.perf_counter() - t0)
                group = Store.open(path).root()
                array = group["matrix"]
                assert isinstance(array, zarr.Array)
                t0 = time.perf_counter()
                total = 0.0
                step = 8 * chunk_rows
                for start in range(0, rows, step):
                    total += float(array[start : start + step].sum())
                read = raw_mb / (time.perf_counter() - t0)
                ratio = raw_mb * 1e6 / du(path)
                print(f"{codec:6} {chunk_mib:9d} {write:10.0f} {read:9.0f} {ratio:6.2f}")
                shutil.rmtree(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
