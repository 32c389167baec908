"""The demo behind ``make demo``: generate, ingest, fit, verify, summarize.

It generates a low-rank-plus-noise matrix as row batches in a landing folder,
ingests the first half, fits with the configured rank rule, ingests the rest,
refits, verifies in one pass and prints a summary with the true rank, the
chosen rank and the error against the optimum (known exactly here: the
generator accumulates the Gram matrix AᵀA while writing the batches).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

import streamsvd
from streamsvd.errors import ConfigError


class DemoConfig(BaseModel):
    """Settings of the demo (config/demo.yaml)."""

    model_config = ConfigDict(extra="forbid")

    store: Path = Field(Path("demo-data/store"), description="Store path")
    landing: Path = Field(Path("demo-data/landing"), description="Landing folder")
    rows: int = Field(200_000, ge=10, le=100_000_000, description="Rows in all")
    cols: int = Field(200, ge=2, le=100_000, description="Columns")
    true_rank: int = Field(12, ge=1, description="Rank of the signal")
    noise: float = Field(0.5, ge=0, description="Noise standard deviation")
    batches: int = Field(10, ge=2, le=10_000, description="Files in the landing folder")
    seed: int = Field(42, description="Seed of the generator")
    rank: int | str = Field("gd", description="Rank or rule for the fit")
    power_iters: int = Field(2, ge=0, le=20)
    oversample: int = Field(10, ge=0, le=1000)
    scheduler: str = Field("local", description="'local', 'threads' or a scheduler address")


def load_config(path: Path) -> DemoConfig:
    from pydantic import ValidationError

    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        return DemoConfig(**raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None


def generate(config: DemoConfig) -> tuple[list[Path], np.ndarray]:
    """Write the batches (skipping files that exist); return them and the exact spectrum."""
    rng = np.random.default_rng(config.seed)
    k, n = config.true_rank, config.cols
    right = np.linalg.qr(rng.standard_normal((n, k)))[0]
    # Signal singular values well above the noise edge σ(√m + √n), decaying.
    edge = config.noise * (np.sqrt(config.rows) + np.sqrt(n))
    strengths = edge * (4.0 + 20.0 * 0.7 ** np.arange(k))
    config.landing.mkdir(parents=True, exist_ok=True)
    gram = np.zeros((n, n))
    bounds = np.linspace(0, config.rows, config.batches + 1).astype(int)
    files = []
    for i, (start, stop) in enumerate(itertools.pairwise(bounds)):
        rows = stop - start
        left = rng.standard_normal((rows, k)) / np.sqrt(config.rows)
        block = (left * strengths) @ right.T + config.noise * rng.standard_normal((rows, n))
        block = block.astype(np.float32)
        gram += block.T.astype(np.float64) @ block.astype(np.float64)
        path = config.landing / f"batch-{i:04d}.npy"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            np.save(tmp, block, allow_pickle=False)
            tmp.with_suffix(".tmp.npy").rename(path)
        files.append(path)
    spectrum = np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0, None))
    return files, spectrum


def optimal_error(spectrum: np.ndarray, rank: int) -> float:
    total = float(np.sum(spectrum**2))
    return float(np.sqrt(np.sum(spectrum[rank:] ** 2) / total))


def run(config: DemoConfig, console: Console) -> dict[str, Any]:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    files, spectrum = generate(config)
    timings["generate"] = time.perf_counter() - t0
    half = len(files) // 2
    t0 = time.perf_counter()
    first = streamsvd.ingest(config.store, files[:half])
    timings["ingest first half"] = time.perf_counter() - t0
    console.print(f"ingested {first.rows_added} rows ({len(first.skipped)} skipped as known)")
    fit_args: dict[str, Any] = {
        "rank": config.rank,
        "power_iters": config.power_iters,
        "oversample": config.oversample,
        "scheduler": config.scheduler,
    }
    t0 = time.perf_counter()
    fitted = streamsvd.fit(config.store, **fit_args)
    timings["fit first half"] = time.perf_counter() - t0
    console.print(f"fit: rank {fitted['rank']} — {fitted['rank_reason']}")
    t0 = time.perf_counter()
    rest = streamsvd.ingest(config.store, [config.landing])
    timings["ingest rest"] = time.perf_counter() - t0
    console.print(f"ingested {rest.rows_added} more rows from {config.landing}")
    t0 = time.perf_counter()
    refit = streamsvd.fit(config.store, **fit_args)
    timings["fit all rows"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = streamsvd.verify(config.store, scheduler=config.scheduler)
    timings["verify"] = time.perf_counter() - t0
    info = streamsvd.info(config.store)
    return {
        "info": info,
        "fit": refit,
        "verify": report,
        "optimal": optimal_error(spectrum, refit["rank"]),
        "timings": timings,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("config/demo.yaml"))
    args = parser.parse_args(argv)
    console = Console()
    try:
        config = load_config(args.config)
        started = time.perf_counter()
        result = run(config, console)
    except streamsvd.errors.StreamSVDError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise SystemExit(exc.exit_code) from None
    fit, info = result["fit"], result["info"]
    table = Table(title="streamsvd demo", show_header=False)
    table.add_row("store", str(config.store))
    table.add_row("rows × cols", f"{info['rows']} × {info['cols']} ({info['dtype']})")
    table.add_row("batches", str(info["batches"]))
    table.add_row("true rank / chosen rank", f"{config.true_rank} / {fit['rank']}")
    table.add_row("rank rule", fit["rank_reason"])
    table.add_row(
        "relative error / optimal",
        f"{fit['relative_error']:.6f} / {result['optimal']:.6f} "
        f"(ratio {fit['relative_error'] / result['optimal']:.6f})",
    )
    table.add_row("verified (one pass)", f"measured {result['verify'].measured_error:.6f}")
    table.add_row("version", info["version"])
    for name, seconds in result["timings"].items():
        table.add_row(f"time: {name}", f"{seconds:.1f} s")
    table.add_row("total", f"{time.perf_counter() - started:.1f} s")
    console.print(table)
    console.print(f"try: streamsvd info {config.store}   ·   streamsvd log {config.store}")


if __name__ == "__main__":
    main()
