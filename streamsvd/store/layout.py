"""Names and metadata of the arrays inside a store (one place, read by every module).

A store is one Icechunk repository (transactional Zarr v3). Its root group holds::

    attrs["streamsvd"]   format version, kind, n_cols, dtype, chunk_rows, codec, created
    matrix               (rows, n_cols) data, append-only, chunks (chunk_rows, n_cols)
    batches              attrs["log"]: one entry per ingested batch
    factors/             written by ``fit`` and ``update`` (see streamsvd.store.factors)
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

FORMAT_KEY = "streamsvd"
FORMAT_VERSION = 1
MATRIX = "matrix"
BATCHES = "batches"
FACTORS = "factors"
BRANCH = "main"

STORE_DTYPES = ("float32", "float64")
CODECS = ("auto", "zstd", "lz4", "none")

# Chosen by measurement (benchmarks/chunking.py; table in the README, "Storage
# defaults"): about 8 MiB of uncompressed rows per chunk, Blosc lz4 with byte
# shuffle. On float32 data a full read pass ran at ~1.8 GB/s with lz4 against
# ~0.5 GB/s with zstd level 1, for a ratio of 1.05 vs 1.08: every fit pass reads
# the whole matrix, so decode speed wins over ratio. "auto" (the default) goes
# one step further: lz4 only where it pays (see resolve_codec).
DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
DEFAULT_CODEC = "auto"
#: ``auto`` compresses when Blosc lz4 shrinks a sample of the first rows at least this much.
AUTO_MIN_RATIO = 1.25


def now() -> str:
    """The current UTC time to the second, ISO 8601 (the time stamps stored in a store)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def default_chunk_rows(n_cols: int, itemsize: int) -> int:
    """Rows per chunk so that one chunk holds about 8 MiB, rounded to 256 rows."""
    rows = DEFAULT_CHUNK_BYTES // max(1, n_cols * itemsize)
    return int(max(256, (rows // 256) * 256))


def default_store_dtype(source_dtype: np.dtype[Any]) -> str:
    """The store dtype picked when none is given, from the first source's dtype.

    float64, int32, int64, uint32, uint64 → float64 (int32 is exact in float64;
    64-bit integers above 2**53 round). Everything narrower (float32, float16,
    8/16-bit integers, bool) → float32, which holds them exactly.
    """
    if source_dtype.kind == "f":
        return "float64" if source_dtype.itemsize >= 8 else "float32"
    if source_dtype.kind in "iu":
        return "float64" if source_dtype.itemsize >= 4 else "float32"
    return "float32"


def resolve_codec(codec: str, sample: np.ndarray | None) -> str:
    """The codec a new store gets: ``codec`` itself, or for ``auto`` lz4 or none.

    ``auto`` compresses ``sample`` (the first rows, in the store dtype) with Blosc
    lz4 + shuffle and keeps lz4 when the ratio is at least :data:`AUTO_MIN_RATIO`,
    else stores the chunks uncompressed. Measured on the fit benchmark's 2 GB
    float32 matrix (ratio 1.05): a read pass took 0.96 s with lz4 and 0.60 s
    without, and every fit pass reads the whole matrix. Data that compresses
    (counts, ratings, repeated values) keeps lz4. No sample (no rows) gives lz4.

    Examples
    --------
    >>> resolve_codec("auto", np.zeros((1000, 10), dtype=np.float32))
    'lz4'
    >>> resolve_codec("auto", np.random.default_rng(0).random((1000, 10)))
    'none'
    >>> resolve_codec("zstd", None)
    'zstd'
    """
    if codec != "auto":
        return codec
    if sample is None or sample.size == 0:
        return "lz4"
    from numcodecs import Blosc

    data = np.ascontiguousarray(sample)
    packed = Blosc(cname="lz4", clevel=1, shuffle=Blosc.SHUFFLE).encode(data)
    return "lz4" if data.nbytes >= AUTO_MIN_RATIO * len(packed) else "none"


def compressors_for(codec: str) -> Any:
    """The Zarr v3 compressor list for a resolved codec name (see :func:`resolve_codec`)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec == "zstd":
        return [ZstdCodec(level=1)]
    if codec == "lz4":
        return [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")]
    if codec == "none":
        return None
    raise ValueError(
        f"codec {codec!r} is not a resolved codec name (zstd, lz4 or none; "
        "'auto' is resolved by layout.resolve_codec)"
    )
