"""streamsvd: the truncated SVD of matrices too large for memory, kept up to date.

The public API; see the README for a tour.

>>> import streamsvd
>>> sorted(streamsvd.__all__)[:3]
['Factors', 'GarbageReport', 'IngestOptions']
"""

from __future__ import annotations

from streamsvd import errors
from streamsvd.api import Factors, VerifyReport, export, fit, open_factors, verify
from streamsvd.compression import compression_table
from streamsvd.incremental import UpdateReport, update
from streamsvd.projection import (
    OutputReport,
    project,
    project_file,
    project_triplets,
    reconstruct,
    reconstruct_file,
)
from streamsvd.recommendation import evaluate_recall, recommend
from streamsvd.report import ReportPaths, write_report
from streamsvd.store.cleanup import GarbageReport, collect_garbage
from streamsvd.store.info import store_info as info
from streamsvd.store.ingest import IngestOptions, ingest

__all__ = [
    "Factors",
    "GarbageReport",
    "IngestOptions",
    "OutputReport",
    "ReportPaths",
    "UpdateReport",
    "VerifyReport",
    "collect_garbage",
    "compression_table",
    "errors",
    "evaluate_recall",
    "export",
    "fit",
    "info",
    "ingest",
    "open_factors",
    "project",
    "project_file",
    "project_triplets",
    "recommend",
    "reconstruct",
    "reconstruct_file",
    "update",
    "verify",
    "write_report",
]
__version__ = "0.1.0"
