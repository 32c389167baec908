"""Named points inside a write, where crash tests stop the process.

Production code calls :func:`reached` at each point; it does nothing. Tests
replace it in a child process (``streamsvd.store.checkpoints.reached = ...``)
to SIGKILL itself at the n-th time a point is reached.
"""

from __future__ import annotations


def reached(name: str) -> None:
    """Mark that a write reached the point ``name`` (a no-op outside tests)."""
