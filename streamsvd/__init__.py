"""streamsvd: the truncated SVD of matrices too large for memory, kept up to date.

The public API; see the README for a tour.

>>> import streamsvd
>>> sorted(streamsvd.__all__)[:3]
['Factors', 'IngestOptions', 'errors']
"""

from __future__ import annotations

from streamsvd import errors
from streamsvd.api import Factors, VerifyReport, export, fit, open_factors, verify
from streamsvd.incremental import UpdateReport, update
from streamsvd.store.info import store_info as info
from streamsvd.store.ingest import IngestOptions, ingest

__all__ = [
    "Factors",
    "IngestOptions",
    "UpdateReport",
    "VerifyReport",
    "errors",
    "export",
    "fit",
    "info",
    "ingest",
    "open_factors",
    "update",
    "verify",
]
__version__ = "0.1.0"
