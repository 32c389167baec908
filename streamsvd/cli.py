"""The ``streamsvd`` command.

Every command prints a clear message and exits non-zero on bad input; the exit
code tells the kind of failure (see ``streamsvd.errors``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from streamsvd.errors import StreamSVDError

app = typer.Typer(
    name="streamsvd",
    help="Keep the truncated SVD of a growing matrix: ingest rows, fit, update, use the factors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

FORMAT_HELP = (
    "auto|npy|csv|parquet|hdf5|zarr, or triplets: row_id,col_id,value CSV/Parquet "
    "into a sparse store (its later sources are always triplets)"
)

StoreArg = Annotated[str, typer.Argument(help="Store: a local path or s3://bucket/prefix.")]


@contextmanager
def _errors_to_exit() -> Iterator[None]:
    try:
        yield
    except StreamSVDError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int | None], None] | None]:
    if not enabled:
        yield None
        return
    tasks: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as bar:

        def update(name: str, done: int, total: int | None) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done, total=total)

        yield update


@app.command()
def ingest(
    store: StoreArg,
    sources: Annotated[
        list[str], typer.Argument(help="Files, landing folders or globs; each file is a batch.")
    ],
    format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "auto",
    dataset: Annotated[
        str | None, typer.Option(help="Dataset path inside HDF5 files (or a Zarr group).")
    ] = None,
    chunk_rows: Annotated[
        int | None, typer.Option(help="Rows per chunk of a new store (default ~8 MiB).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="float32|float64 for a new store (default: from data).")
    ] = None,
    codec: Annotated[
        str, typer.Option(help="auto|lz4|zstd|none for a new store (auto: lz4 if it pays).")
    ] = "auto",
    nan: Annotated[
        str, typer.Option(help="reject|zero|drop: what to do with NaN and Inf.")
    ] = "reject",
    memory_mb: Annotated[int, typer.Option(help="Memory budget of one read block, MiB.")] = 64,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Append row sources to STORE in one commit (creating it on first use)."""
    from streamsvd.store.ingest import IngestOptions
    from streamsvd.store.ingest import ingest as run_ingest

    with _errors_to_exit():
        options = IngestOptions(
            format=format,
            dataset=dataset,
            chunk_rows=chunk_rows,
            dtype=dtype,
            codec=codec,
            nan=nan,
            memory_budget=memory_mb * 1024 * 1024,
        )
        with _progress(progress and err_console.is_terminal) as callback:
            report = run_ingest(store, sources, options=options, progress=callback)
    for skipped in report.skipped:
        console.print(f"skipped {skipped.source}: {skipped.reason}", highlight=False)
    if report.version is None:
        console.print("nothing new to ingest; the store is unchanged", highlight=False)
        return
    for batch in report.batches:
        extra = ""
        if batch.nan_values:
            extra = f" ({batch.nan_values} NaN/Inf values, {batch.dropped_rows} rows dropped)"
        console.print(
            f"batch {batch.id[:20]}… {Path(batch.source).name}: rows "
            f"{batch.row_start}–{batch.row_stop}{extra}",
            highlight=False,
        )
    console.print(
        f"ingested {report.rows_added} rows in {report.seconds:.1f} s → version {report.version}",
        highlight=False,
    )


@app.command()
def info(
    store: StoreArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (a stable interface).")
    ] = False,
    version: Annotated[str | None, typer.Option(help="A version id (default: newest).")] = None,
) -> None:
    """Show rows, columns, chunking, batches, version and the factors of STORE."""
    from streamsvd.store.info import store_info

    with _errors_to_exit():
        summary = store_info(store, version=version)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
        return
    table = Table(show_header=False, box=None)
    for key in ("store", "rows", "cols", "dtype", "chunk_rows", "codec", "batches", "version"):
        table.add_row(key, str(summary[key]))
    factors = summary.get("factors")
    if factors:
        table.add_row("rank", str(factors["rank"]))
        table.add_row("rows covered", str(factors["rows_covered"]))
        table.add_row("relative error", f"{factors['relative_error']:.6g}")
        table.add_row("captured energy", f"{factors['captured_energy']:.6g}")
        top = ", ".join(f"{v:.4g}" for v in factors["singular_values"][:5])
        table.add_row("top singular values", top)
    else:
        table.add_row("factors", "none yet (run `streamsvd fit`)")
    console.print(table)


@app.command()
def log(store: StoreArg) -> None:
    """List the versions of STORE, newest first, with their messages."""
    from streamsvd.store.repository import Store

    with _errors_to_exit():
        versions = Store.open(store).versions()
    table = Table("version", "time (UTC)", "message")
    for v in versions:
        table.add_row(v.id, v.time.strftime("%Y-%m-%d %H:%M:%S"), v.message)
    console.print(table)


@app.command()
def gc(
    store: StoreArg,
    older_than: Annotated[
        float,
        typer.Option(help="Keep the versions of the last this many days (0: only the newest)."),
    ] = 7.0,
) -> None:
    """Expire versions older than --older-than days and delete files no version uses."""
    from streamsvd.store.cleanup import collect_garbage

    with _errors_to_exit():
        report = collect_garbage(store, older_than_days=older_than)
    console.print(
        f"{report.store}: expired {report.versions_expired} version(s) committed before "
        f"{report.older_than:%Y-%m-%d %H:%M:%S} UTC, kept {report.versions_kept}; deleted "
        f"{report.files_deleted} file(s), {report.bytes_deleted / 1e6:,.1f} MB"
    )


SchedulerOpt = Annotated[
    str,
    typer.Option(
        "--scheduler",
        envvar="DASK_SCHEDULER_ADDRESS",
        help="Dask scheduler address (tcp://host:8786), 'local' for an embedded "
        "LocalCluster, or 'threads'/'sync' for no cluster.",
    ),
]


@app.command()
def fit(
    store: StoreArg,
    rank: Annotated[
        str, typer.Option(help="k, or a rule: energy:0.9, tol:0.05 or gd (Gavish–Donoho).")
    ] = "10",
    oversample: Annotated[int, typer.Option(help="Extra sketch columns p.")] = 10,
    power_iters: Annotated[int, typer.Option(help="Power iterations q (q+1 passes).")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the random test matrix.")] = 0,
    center: Annotated[bool, typer.Option(help="PCA mode: factor the centred matrix.")] = False,
    dtype: Annotated[
        str, typer.Option(help="float64|float32 arithmetic of the power passes.")
    ] = "float32",
    max_rank: Annotated[
        int | None, typer.Option(help="Largest rank a tol: rule may grow to.")
    ] = None,
    scheduler: SchedulerOpt = "local",
    progress: Annotated[bool, typer.Option(help="Show a progress bar per pass.")] = True,
) -> None:
    """Fit a rank-k truncated SVD of STORE in q+1 passes and commit the factors."""
    import streamsvd

    with _errors_to_exit():
        summary = streamsvd.fit(
            store,
            rank=rank,  # parse_rank reads "50" as well as "energy:0.9"
            oversample=oversample,
            power_iters=power_iters,
            seed=seed,
            center=center,
            dtype=dtype,
            max_rank=max_rank,
            scheduler=scheduler,
            progress=progress and err_console.is_terminal,
        )
    console.print(
        f"rank {summary['rank']} ({summary['rank_reason']}); relative error "
        f"{summary['relative_error']:.6g}, captured energy {summary['captured_energy']:.6g} "
        f"→ version {summary['version']}",
        highlight=False,
    )


@app.command()
def verify(
    store: StoreArg,
    scheduler: SchedulerOpt = "local",
    version: Annotated[str | None, typer.Option(help="A version id (default: newest).")] = None,
) -> None:
    """Measure the true residual and orthogonality in one pass; fail if they disagree."""
    import streamsvd

    with _errors_to_exit():
        report = streamsvd.verify(store, scheduler=scheduler, version=version)
    console.print(
        f"relative error: recorded {report.recorded_error:.9g}, measured "
        f"{report.measured_error:.9g}; ‖UᵀU − I‖ = {report.orthogonality_u:.2e}, "
        f"‖VᵀV − I‖ = {report.orthogonality_v:.2e}: ok",
        highlight=False,
    )


@app.command()
def export(
    store: StoreArg,
    out: Annotated[Path, typer.Argument(help="Output path of the plain Zarr v3 group.")],
    rank: Annotated[
        int | None, typer.Option(help="Write a smaller truncation (default: all).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    scheduler: SchedulerOpt = "threads",
) -> None:
    """Export the factors (U, S, Vt, mean) as a plain Zarr group any Zarr reader opens."""
    import streamsvd

    with _errors_to_exit():
        path = streamsvd.export(store, out, rank=rank, overwrite=overwrite, scheduler=scheduler)
    console.print(f"wrote {path}", highlight=False)


@app.command()
def update(
    store: StoreArg,
    sources: Annotated[
        list[str] | None,
        typer.Argument(help="New files, landing folders or globs (none: catch up only)."),
    ] = None,
    format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "auto",
    dataset: Annotated[str | None, typer.Option(help="Dataset path inside HDF5 files.")] = None,
    nan: Annotated[str, typer.Option(help="reject|zero|drop: NaN and Inf.")] = "reject",
    memory_mb: Annotated[int, typer.Option(help="Memory budget of one read block, MiB.")] = 64,
    forget: Annotated[
        float, typer.Option(help="γ in (0, 1]: down-weight old rows before each batch.")
    ] = 1.0,
    refit_above: Annotated[
        str | None,
        typer.Option(help="Refit when the error exceeds X (e.g. 0.05) or +P% over the last fit."),
    ] = None,
    sketch_above: Annotated[
        int | None, typer.Option(help="Sketch batches with more rows than this (default exact).")
    ] = None,
    scheduler: SchedulerOpt = "local",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    parallel: Annotated[
        bool | None,
        typer.Option(
            "--parallel/--no-parallel",
            help="Merge the files' partial SVDs in a tree on Dask workers (default: when "
            "there are 2+ files and --scheduler is a cluster address).",
        ),
    ] = None,
) -> None:
    """Ingest new rows and update the factors in one commit (reads only the new rows)."""
    import streamsvd
    from streamsvd.store.ingest import IngestOptions

    with _errors_to_exit():
        options = IngestOptions(
            format=format, dataset=dataset, nan=nan, memory_budget=memory_mb * 1024 * 1024
        )
        with _progress(progress and err_console.is_terminal) as callback:
            report = streamsvd.update(
                store,
                sources or [],
                options=options,
                forget=forget,
                refit_above=refit_above,
                sketch_above=sketch_above,
                scheduler=scheduler,
                progress=callback,
                parallel=parallel,
            )
    for skipped in report.skipped:
        console.print(f"skipped {skipped.source}: {skipped.reason}", highlight=False)
    if report.version is None:
        console.print("nothing new: the store and its factors are unchanged", highlight=False)
        return
    console.print(
        f"updated with {report.rows_added} rows in {report.seconds:.2f} s (commit "
        f"{report.commit_seconds:.2f} s): rank {report.rank}, relative error "
        f"{report.relative_error:.6g}"
        + ("; compacted U_raw" if report.compacted else "")
        + f" → version {report.version}",
        highlight=False,
    )
    if report.refit:
        console.print(report.refit["reason"], highlight=False)


def main() -> None:
    """Entry point of the ``streamsvd`` console script."""
    app()


# Commands that use the factors (project, reconstruct, compress-report, report).
import streamsvd.cli_factors  # noqa: E402
import streamsvd.cli_recommend  # noqa: E402, F401

if __name__ == "__main__":
    main()
