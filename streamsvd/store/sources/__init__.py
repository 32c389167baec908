"""Row sources: matrices in files read in row blocks, in bounded memory.

Formats: ``.npy`` (memory-mapped), CSV/TSV/whitespace text, Parquet (numeric
columns or one list column), HDF5 datasets and Zarr arrays. `open_source`
opens one; `expand_sources` turns files, landing folders and glob patterns
into a list of paths; `content_hash` gives a batch its id; `rows_for_budget`
turns a memory budget into rows per block.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "a.npy"
>>> np.save(path, np.arange(12.0).reshape(4, 3))
>>> with open_source(path) as src:
...     [(b.row_start, b.data.shape) for b in src.blocks(max_rows=3)]
[(0, (3, 3)), (3, (1, 3))]
"""

from __future__ import annotations

from streamsvd.store.sources._base import FORMATS, Block, Source, rows_for_budget
from streamsvd.store.sources._hash import content_hash
from streamsvd.store.sources._open import SUFFIXES, expand_sources, open_source

__all__ = [
    "FORMATS",
    "SUFFIXES",
    "Block",
    "Source",
    "content_hash",
    "expand_sources",
    "open_source",
    "rows_for_budget",
]
