"""Ingest throughput and peak memory against a plain read of the same ``.npy``.

Run::

    .venv/bin/python benchmarks/ingest.py                 # 1,000,000 × 500 float32 (2 GB)
    .venv/bin/python benchmarks/ingest.py --rows 100000   # 10× smaller

Writes a float32 ``.npy`` (low rank plus noise, block by block: never whole in
memory) under ``bench-data/``, then measures, each in its own child process:

1. a plain read: ``np.load(mmap_mode="r")`` summed block by block, in blocks
   of the rows ingest reads at a time. It runs twice: the first run warms the
   page cache, so the second run and the ingest both read from memory (the
   numbers are for a file in the page cache, not for a disk);
2. ``streamsvd.store.ingest.ingest`` of the file into a new store, default
   options (hash pass, read, validate, cast, lz4 encode, Icechunk writes, one
   commit).

Prints seconds, rows/s, MB/s (10^6 bytes of the source per second), peak RSS
and peak anonymous memory of the process tree, and the ratio of each
throughput to the warm plain read. Targets (issue): ingest peak RSS under
1 GB whatever the file size, throughput at least 60% of the plain read. When
ingest is below that, a third child times its parts (``--no-profile`` skips it).
Other processes on the machine make the numbers noisy.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_DATA,
    MB,
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

TARGET_RSS_MB = 1000
TARGET_RATIO = 0.6


def block_rows_of_ingest(cols: int, itemsize: int = 4) -> tuple[int, int]:
    """(rows ingest reads per block, rows per chunk) with the default options."""
    from streamsvd.store import layout
    from streamsvd.store.ingest import DEFAULT_MEMORY_BUDGET
    from streamsvd.store.sources import rows_for_budget

    chunk = layout.default_chunk_rows(cols, itemsize)
    rows = rows_for_budget(cols, itemsize, DEFAULT_MEMORY_BUDGET)
    return max(chunk, (rows // chunk) * chunk), chunk


# ----------------------------------------------------------------------------- children


def child_plain(npy: Path) -> None:
    array = np.load(npy, mmap_mode="r")
    block, _ = block_rows_of_ingest(array.shape[1], array.dtype.itemsize)
    start = time.perf_counter()
    total = 0.0
    for lo in range(0, array.shape[0], block):
        total += float(array[lo : lo + block].sum())
    seconds = time.perf_counter() - start
    mark_measured()
    report({"seconds": seconds, "rows": int(array.shape[0]), "checksum": total})


def child_ingest(npy: Path, store: Path) -> None:
    from streamsvd.store.ingest import ingest

    remove(store)
    result, seconds = timed(lambda: ingest(store, [npy]))
    mark_measured()
    report({"seconds": seconds, "rows": result.rows_added, "library_seconds": result.seconds})


def child_profile(npy: Path, store: Path) -> None:
    """Time the parts of an ingest one by one, then profile a whole ingest."""
    import numcodecs
    import zarr

    from streamsvd.store import layout
    from streamsvd.store.ingest import ingest
    from streamsvd.store.sources import content_hash, open_source

    parts: dict[str, float] = {}
    _, parts["content_hash (xxh3_128, 8 MiB reads)"] = timed(lambda: content_hash(npy))
    source = open_source(npy)
    block, chunk = block_rows_of_ingest(source.n_cols, np.dtype(source.dtype).itemsize)
    copies = 0.0
    finite = 0.0
    encode = 0.0
    blosc = numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE)
    encoded_bytes = 0
    start = time.perf_counter()
    blocks = source.blocks(block)
    while True:
        t0 = time.perf_counter()
        item = next(blocks, None)
        copies += time.perf_counter() - t0
        if item is None:
            break
        t0 = time.perf_counter()
        bool(np.isfinite(item.data).all())
        finite += time.perf_counter() - t0
        t0 = time.perf_counter()
        for lo in range(0, item.data.shape[0], chunk):
            encoded_bytes += len(blosc.encode(item.data[lo : lo + chunk]))
        encode += time.perf_counter() - t0
    source.close()
    parts["read blocks (mmap slice copy)"] = copies
    parts["np.isfinite(...).all()"] = finite
    parts["Blosc lz4 encode per chunk (numcodecs, alone)"] = encode
    parts["  sum of the parts above"] = sum(parts.values())
    loop = time.perf_counter() - start

    # Plain Zarr v3 on local disk, same layout and codec, same chunk-aligned appends.
    plain = store.with_name(store.name + "-plainzarr")
    remove(plain)
    arr = zarr.create_array(
        str(plain),
        shape=(0, source.n_cols),
        chunks=(chunk, source.n_cols),
        dtype="float32",
        compressors=layout.compressors_for("lz4"),
    )
    mm = np.load(npy, mmap_mode="r")

    def write_plain() -> None:
        for lo in range(0, mm.shape[0], block):
            data = np.array(mm[lo : lo + block])
            arr.resize((lo + data.shape[0], source.n_cols))
            arr[lo : lo + data.shape[0]] = data

    _, parts["zarr write to plain LocalStore (copy+encode+write)"] = timed(write_plain)
    remove(plain)

    remove(store)
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    ingest(store, [npy])
    profiler.disable()
    parts["whole ingest under cProfile"] = time.perf_counter() - t0
    remove(store)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(14)
    mark_measured()
    report(
        {
            "parts": parts,
            "loop_seconds": loop,
            "encoded_ratio": mm.nbytes / max(1, encoded_bytes),
            "cprofile": out.getvalue(),
        }
    )


# ------------------------------------------------------------------------------- parent


def row(name: str, m: Measured, nbytes: int, plain_rate: float | None) -> list[object]:
    seconds = float(m.result["seconds"])
    rows = int(m.result["rows"])
    rate = nbytes / seconds / MB
    ratio = f"{rate / plain_rate:.2f}" if plain_rate else "1.00"
    return [
        name,
        f"{seconds:.2f}",
        f"{rows / seconds:,.0f}",
        f"{rate:,.0f}",
        f"{m.rss:,.0f}",
        f"{m.peak_anon_mib:,.0f}",
        ratio,
    ]


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only); True when it was dropped."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=500)
    parser.add_argument("--data-dir", type=Path, default=BENCH_DATA / "ingest")
    parser.add_argument("--keep", action="store_true", help="keep the .npy and the store")
    parser.add_argument("--no-profile", action="store_true", help="never time the parts")
    parser.add_argument("--profile", action="store_true", help="always time the parts")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    npy = args.data_dir / f"rows-{args.rows}x{args.cols}.npy"
    store = args.data_dir / f"store-{args.rows}x{args.cols}"
    if args.child == "plain":
        child_plain(npy)
        return
    if args.child == "ingest":
        child_ingest(npy, store)
        return
    if args.child == "copy":
        seconds = timed(lambda: shutil.copyfile(npy, npy.with_suffix(".copy")))[1]
        mark_measured()
        npy.with_suffix(".copy").unlink()
        report({"seconds": seconds, "rows": args.rows})
        return
    if args.child == "profile":
        child_profile(npy, store)
        return

    passed = ["--rows", str(args.rows), "--cols", str(args.cols), "--data-dir", str(args.data_dir)]
    script = str(Path(__file__).resolve())
    print(f"# ingest benchmark: {args.rows:,} × {args.cols} float32")
    print(machine_note())
    if not npy.exists():
        print(f"writing {npy} ...", flush=True)
        _, seconds = timed(lambda: write_npy(npy, args.rows, args.cols))
        print(f"  written in {seconds:.1f} s", flush=True)
    nbytes = args.rows * args.cols * 4
    block, chunk = block_rows_of_ingest(args.cols)
    print(
        f"source {nbytes / MB:,.0f} MB; ingest reads {block} rows per block "
        f"({block * args.cols * 4 / 2**20:.0f} MiB), {chunk} rows per chunk",
        flush=True,
    )
    try:
        cold = run_child("plain (1st, warms cache)", child_argv(script, "plain", passed))
        plain = run_child("plain read", child_argv(script, "plain", passed))
        ingested = run_child("ingest", child_argv(script, "ingest", passed))
        plain_rate = nbytes / float(plain.result["seconds"]) / MB
        ingest_rate = nbytes / float(ingested.result["seconds"]) / MB
        headers = [
            "what",
            "seconds",
            "rows/s",
            "MB/s",
            "peak RSS MiB",
            "peak anon MiB",
            "ratio to plain read",
        ]
        rows = [
            row("plain read, 1st run (warms the page cache)", cold, nbytes, plain_rate),
            row("plain read (np.load mmap, summed per block)", plain, nbytes, plain_rate),
            row("streamsvd ingest (default options)", ingested, nbytes, plain_rate),
        ]
        print()
        print(markdown_table(headers, rows))
        print()
        print(
            "Both measured reads come from the page cache (the first plain read warmed it). "
            "Peak RSS counts the file pages a process maps; peak anon leaves them out."
        )
        ratio = ingest_rate / plain_rate
        if drop_page_cache():
            # The same two measurements with the file not in the page cache (a file
            # that just arrived from elsewhere), and a plain copy of it on this disk.
            cold_plain = run_child(
                "plain read (cold)", child_argv(script, "plain", passed), before=drop_page_cache
            )
            remove(store)
            cold_ingest = run_child(
                "ingest (cold)", child_argv(script, "ingest", passed), before=drop_page_cache
            )
            copied = run_child(
                "copy (cold)", child_argv(script, "copy", passed), before=drop_page_cache
            )
            cold_rate = nbytes / float(cold_plain.result["seconds"]) / MB
            print()
            print(
                markdown_table(
                    headers,
                    [
                        row("plain read, cold page cache", cold_plain, nbytes, cold_rate),
                        row("streamsvd ingest, cold page cache", cold_ingest, nbytes, cold_rate),
                        row("cp of the file on this disk, cold", copied, nbytes, cold_rate),
                    ],
                )
            )
            ingest_s = float(cold_ingest.result["seconds"])
            print(
                f"cold: ingest / plain read = {float(cold_plain.result['seconds']) / ingest_s:.2f}"
                f"; ingest / cp = {float(copied.result['seconds']) / ingest_s:.2f}"
            )
        else:
            print("\n(the page cache cannot be dropped here: cold runs skipped; needs root)")
        print(
            f"targets: ingest peak RSS {ingested.rss:,.0f} MiB (target < {TARGET_RSS_MB} MB), "
            f"anon {ingested.peak_anon_mib:,.0f} MiB; throughput ratio {ratio:.2f} "
            f"(target ≥ {TARGET_RATIO})"
        )
        if (ratio < TARGET_RATIO and not args.no_profile) or args.profile:
            print("\n## where ingest spends its time (one child, parts timed one by one)")
            prof = run_child("profile", child_argv(script, "profile", passed))
            total = float(ingested.result["seconds"])
            parts = prof.result["parts"]
            table = [
                [name, f"{sec:.2f}", f"{nbytes / sec / MB:,.0f}", f"{sec / total:.2f}"]
                for name, sec in parts.items()
            ]
            print(
                markdown_table(
                    ["part", "seconds", "MB/s", "share of the measured ingest"],
                    table,
                )
            )
            print(f"\nlz4 compression ratio on this data: {prof.result['encoded_ratio']:.2f}")
            print("\ncProfile of one ingest (main thread only; zarr's I/O thread shows as waits):")
            print(prof.result["cprofile"])
    finally:
        if not args.keep:
            remove(store)
            remove(npy)


if __name__ == "__main__":
    main()
