"""The Dask passes: fit and verify over row-chunked Dask arrays.

The numerical steps live in :mod:`streamsvd.linalg`; this package builds the
graphs, runs one ``dask.compute`` per pass and reduces in fixed trees.
"""

from __future__ import annotations

from streamsvd.engine.fit import FitParams, FitResult, URawSink, fit_array
from streamsvd.engine.verify import VerifyResult, verify_array

__all__ = ["FitParams", "FitResult", "URawSink", "VerifyResult", "fit_array", "verify_array"]
