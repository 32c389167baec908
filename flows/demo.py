"""``make demo``: generate a matrix in a landing folder and run the pipeline flow on it.

No server to start: Prefect runs the flow in its ephemeral mode, Dask on an
embedded LocalCluster (both as set in ``config/demo.yaml``).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from flows.pipeline import pipeline_flow
from streamsvd.config import load_settings
from streamsvd.demo import demo_data, generate, optimal_error


def run_demo(config: str) -> None:
    console = Console()
    settings = load_settings(config)
    data = demo_data(settings.demo)
    started = time.perf_counter()
    console.print(
        f"generating {data.rows} × {data.cols} (rank {data.true_rank} + noise) in "
        f"{data.batches} files under {settings.sources.landing} …"
    )
    spectrum = generate(data, Path(settings.sources.landing))
    generated = time.perf_counter() - started
    result = pipeline_flow(config=config)
    info = result["info"]
    factors = info["factors"]
    optimum = optimal_error(spectrum, factors["rank"])
    table = Table(title="streamsvd demo: the pipeline flow, end to end", show_header=False)
    table.add_row("store", str(Path(settings.store.path).resolve()))
    table.add_row("report", str(Path(result["report"]).resolve()))
    table.add_row("rows × cols", f"{info['rows']} × {info['cols']} ({info['dtype']})")
    table.add_row("batches", f"{info['batches']} ({len(result['updates'])} by update)")
    table.add_row("true rank / chosen rank", f"{data.true_rank} / {factors['rank']}")
    table.add_row("rank rule", factors["rank_reason"])
    table.add_row(
        "relative error / optimal",
        f"{factors['relative_error']:.6f} / {optimum:.6f} "
        f"(ratio {factors['relative_error'] / optimum:.5f})",
    )
    if result["verify"]:
        table.add_row("verified (one pass)", f"measured {result['verify']['measured_error']:.6f}")
    table.add_row("refit", result["refit_reason"] or "not needed")
    table.add_row("version", info["version"])
    table.add_row("time: generate", f"{generated:.1f} s")
    for name, seconds in result["timings"].items():
        table.add_row(f"time: {name}", f"{seconds:.1f} s")
    table.add_row("time: all", f"{time.perf_counter() - started:.1f} s")
    console.print(table)
    console.print(
        f"next: streamsvd info {settings.store.path}  ·  streamsvd log {settings.store.path}"
    )
