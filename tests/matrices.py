"""Test matrices with a known spectrum, and the optimal truncation error to compare with."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]


def with_spectrum(rng: np.random.Generator, m: int, n: int, sigma: Array) -> Array:
    """An ``m × n`` matrix with singular values ``sigma`` and random singular vectors."""
    left = np.linalg.qr(rng.standard_normal((m, sigma.size)))[0]
    right = np.linalg.qr(rng.standard_normal((n, sigma.size)))[0]
    return (left * sigma) @ right.T


def fast_decay(
    rng: np.random.Generator, m: int, n: int, noise: float = 1e-3, rank: int | None = None
) -> Array:
    """σ_i = 10 · 0.6^i (``i < rank``, default all) plus Gaussian noise of deviation ``noise``."""
    sigma = 10.0 * 0.6 ** np.arange(min(m, n) if rank is None else rank)
    return with_spectrum(rng, m, n, sigma) + noise * rng.standard_normal((m, n))


def low_rank(rng: np.random.Generator, m: int, n: int, rank: int) -> Array:
    """A Gaussian product of rank ``rank`` (exactly, with probability one)."""
    return rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))


def optimal_error(a: Array, rank: int) -> float:
    """The smallest ``‖A − A_k‖_F / ‖A‖_F`` of any rank-``rank`` matrix (LAPACK SVD)."""
    s = np.linalg.svd(a, compute_uv=False)
    return float(np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s**2)))
