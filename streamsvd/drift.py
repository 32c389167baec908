"""Drift: should the factors be refitted in full?

An update is exact for the rank-(k+b) problem but truncation discards energy;
every update records its error. A full refit is due when the error exceeds the
budget (an absolute relative error, or a margin over the last full fit's), or
after a number of updates whatever the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamsvd.api import open_factors
from streamsvd.incremental import RefitPolicy


@dataclass(frozen=True)
class DriftDecision:
    """Whether to refit, and why (a sentence for logs and reports)."""

    refit: bool
    reason: str
    relative_error: float
    last_fit_error: float
    budget: float | None
    updates_since_fit: int


def updates_since_fit(history: list[dict[str, Any]]) -> int:
    """How many entries of a factors' history came after its last full fit."""
    count = 0
    for entry in reversed(history):
        if entry.get("op") == "fit":
            break
        count += 1
    return count


def check_drift(
    store: str | Path,
    *,
    refit_above: str | float | None = None,
    refit_every_updates: int | None = None,
) -> DriftDecision:
    """Decide whether the store's factors need a full refit.

    Examples
    --------
    >>> import numpy as np, tempfile, streamsvd
    >>> store = tempfile.mkdtemp() + "/s"
    >>> _ = streamsvd.ingest(store, [np.random.default_rng(0).standard_normal((50, 6))])
    >>> _ = streamsvd.fit(store, rank=2, scheduler="sync")
    >>> check_drift(store, refit_above="+10%").refit
    False
    """
    factors = open_factors(store)
    attrs: dict[str, Any] = factors.attrs
    error = float(attrs["relative_error"])
    history = attrs.get("history", [])
    updates = updates_since_fit(history)
    policy = RefitPolicy.parse(refit_above)
    last_fit = attrs.get("last_fit") or {}
    last_error = float(last_fit.get("relative_error", error))
    budget = policy.budget(last_fit, error) if policy else None
    if budget is not None and error > budget:
        return DriftDecision(
            True,
            f"relative error {error:.4g} exceeds the budget {budget:.4g} "
            f"(last full fit {last_error:.4g}, refit_above={refit_above})",
            error,
            last_error,
            budget,
            updates,
        )
    if refit_every_updates is not None and updates >= refit_every_updates:
        return DriftDecision(
            True,
            f"{updates} updates since the last full fit (refit every {refit_every_updates})",
            error,
            last_error,
            budget,
            updates,
        )
    within = f" within the budget {budget:.4g}" if budget is not None else ""
    return DriftDecision(
        False,
        f"relative error {error:.4g}{within}; {updates} updates since the last full fit",
        error,
        last_error,
        budget,
        updates,
    )
