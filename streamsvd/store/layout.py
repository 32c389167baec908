"""Names and metadata of the arrays inside a store (one place, read by every module).

A store is one Icechunk repository (transactional Zarr v3). Its root group holds::

    attrs["streamsvd"]   format version, kind, n_cols, dtype, chunk_rows, codec, created
    matrix               (rows, n_cols) data, append-only, chunks (chunk_rows, n_cols)
    batches              attrs["log"]: one entry per ingested batch
    factors/             written by ``fit`` and ``update`` (see streamsvd.store.factors)
"""

from __future__ import annotations

from typing import Any

import numpy as np

FORMAT_KEY = "streamsvd"
FORMAT_VERSION = 1
MATRIX = "matrix"
BATCHES = "batches"
FACTORS = "factors"
BRANCH = "main"

STORE_DTYPES = ("float32", "float64")
CODECS = ("zstd", "lz4", "none")

# Chosen by measurement (benchmarks/chunking.py; table in the README, "Storage
# defaults"): about 8 MiB of uncompressed rows per chunk, Blosc lz4 with byte
# shuffle. On float32 data a full read pass ran at ~1.8 GB/s with lz4 against
# ~0.5 GB/s with zstd level 1, for a ratio of 1.05 vs 1.08: every fit pass reads
# the whole matrix, so decode speed wins over ratio.
DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
DEFAULT_CODEC = "lz4"


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


def compressors_for(codec: str) -> Any:
    """The Zarr v3 compressor list for a codec name."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec == "zstd":
        return [ZstdCodec(level=1)]
    if codec == "lz4":
        return [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")]
    return None
