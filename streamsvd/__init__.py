"""streamsvd: the truncated SVD of matrices too large for memory, kept up to date.

The public API is re-exported here; see the README for a tour.
"""

from __future__ import annotations

from streamsvd import errors

__all__ = ["errors"]
__version__ = "0.1.0"
