"""Demo data: a low-rank-plus-noise matrix written as row batches in a landing folder.

The generator also returns the exact singular values of the whole matrix (it
accumulates the Gram matrix AᵀA in float64 while writing), so the demo can
report the fitted error against the optimum.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from streamsvd.errors import ConfigError


class DemoData(BaseModel):
    """The ``demo:`` section of ``config/demo.yaml``."""

    model_config = ConfigDict(extra="forbid")

    rows: int = Field(300_000, ge=10, le=100_000_000, description="Rows in all")
    cols: int = Field(250, ge=2, le=100_000, description="Columns")
    true_rank: int = Field(12, ge=1, description="Rank of the signal")
    noise: float = Field(0.5, ge=0, description="Noise standard deviation")
    batches: int = Field(20, ge=2, le=10_000, description="Files in the landing folder")
    seed: int = Field(42, description="Seed of the generator")


def demo_data(raw: dict[str, Any] | None) -> DemoData:
    from pydantic import ValidationError

    try:
        return DemoData(**(raw or {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"demo.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(problems) from None


def generate(data: DemoData, landing: Path) -> np.ndarray:
    """Write the batches into ``landing`` (existing files are kept); return the exact spectrum.

    Files are written under a temporary name and renamed, so a pipeline reading
    the landing folder never sees half a file.
    """
    rng = np.random.default_rng(data.seed)
    k, n = data.true_rank, data.cols
    right = np.linalg.qr(rng.standard_normal((n, k)))[0]
    # Signal singular values well above the noise edge σ(√m + √n), decaying.
    edge = data.noise * (np.sqrt(data.rows) + np.sqrt(n))
    strengths = edge * (4.0 + 20.0 * 0.7 ** np.arange(k))
    landing.mkdir(parents=True, exist_ok=True)
    gram = np.zeros((n, n))
    bounds = np.linspace(0, data.rows, data.batches + 1).astype(int)
    for i, (start, stop) in enumerate(itertools.pairwise(bounds)):
        rows = stop - start
        left = rng.standard_normal((rows, k)) / np.sqrt(data.rows)
        block = (left * strengths) @ right.T + data.noise * rng.standard_normal((rows, n))
        block = block.astype(np.float32)
        wide = block.astype(np.float64)
        gram += wide.T @ wide
        path = landing / f"batch-{i:04d}.npy"
        if not path.exists():
            tmp = landing / f".batch-{i:04d}.tmp.npy"
            np.save(tmp, block, allow_pickle=False)
            tmp.rename(path)
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0, None))


def optimal_error(spectrum: np.ndarray, rank: int) -> float:
    """Relative Frobenius error of the best rank-``rank`` approximation."""
    total = float(np.sum(spectrum**2))
    return float(np.sqrt(np.sum(spectrum[rank:] ** 2) / total)) if total > 0 else 0.0
