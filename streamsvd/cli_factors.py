"""Commands that use the factors: ``project``, ``reconstruct``, ``compress-report``, ``report``.

Registered on the ``streamsvd`` Typer app when ``streamsvd.cli`` imports this module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from streamsvd.cli import StoreArg, _errors_to_exit, _progress, app, console, err_console

OutArg = Annotated[
    Path,
    typer.Option("--out", help="Output: .npy, .parquet or .zarr (the suffix picks the format)."),
]
RankOpt = Annotated[
    int | None, typer.Option(help="Use the first K components (default: all fitted).")
]
VersionOpt = Annotated[str | None, typer.Option(help="A version id (default: newest).")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace OUT if it exists.")]


@app.command()
def project(
    store: StoreArg,
    source: Annotated[
        str,
        typer.Argument(
            help="Rows to project: any source ingest reads; for a sparse store also "
            "triplets (row_id, col_id, value)."
        ),
    ],
    out: OutArg,
    rank: RankOpt = None,
    scores: Annotated[
        bool,
        typer.Option(
            help="PCA scores (x − μ)·V instead of coordinates (x − μ)·V·S⁻¹ (the rows of U)."
        ),
    ] = False,
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="auto|npy|csv|parquet|hdf5|zarr|triplets (auto picks triplets on a sparse "
            "store for a CSV/Parquet file with columns row_id, col_id, value).",
        ),
    ] = "auto",
    dataset: Annotated[
        str | None, typer.Option(help="Dataset path inside HDF5 files (or a Zarr group).")
    ] = None,
    memory_mb: Annotated[int, typer.Option(help="Memory budget of one read block, MiB.")] = 128,
    overwrite: OverwriteOpt = False,
    version: VersionOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Fold the rows of SOURCE into the factor space of STORE (one pass, bounded memory).

    Coordinates are (x − μ)·V·S⁻¹: for a stored row, its row of U. μ is the
    column mean in PCA mode (fit --center), else 0; components with a zero
    singular value map to 0.

    On a sparse store, triplets fold in one row per row_id (order of first
    appearance, zero off its items); OUT must be .parquet, with a row_id column.
    """
    from streamsvd.projection import project_file

    with _errors_to_exit(), _progress(progress and err_console.is_terminal) as callback:
        report = project_file(
            store,
            source,
            out,
            rank=rank,
            scores=scores,
            format=format,
            dataset=dataset,
            memory_budget=memory_mb * 1024 * 1024,
            overwrite=overwrite,
            version=version,
            progress=callback,
        )
    console.print(
        f"projected {report.rows} rows onto {report.cols} components "
        f"({'scores' if scores else 'coordinates'}) → {report.path} ({report.format}) "
        f"in {report.seconds:.2f} s",
        highlight=False,
    )


@app.command()
def reconstruct(
    store: StoreArg,
    rows: Annotated[
        str, typer.Option("--rows", help="Row range A:B (0-based, B excluded), A:, :B or A.")
    ],
    out: OutArg,
    rank: RankOpt = None,
    overwrite: OverwriteOpt = False,
    version: VersionOpt = None,
    memory_mb: Annotated[
        int,
        typer.Option(
            help="Sparse stores: largest dense output, MiB ((B−A)·cols·8 bytes); "
            "rows of a sparse store reconstruct dense."
        ),
    ] = 256,
) -> None:
    """Rebuild stored rows A:B as U·S·Vᵀ (+ μ), reading only those rows of U_raw.

    The rows are dense (rows × cols), also for a sparse store; there the output
    must fit in --memory-mb.
    """
    from streamsvd.projection import parse_rows, reconstruct_file

    with _errors_to_exit():
        report = reconstruct_file(
            store,
            out,
            rows=parse_rows(rows),
            rank=rank,
            overwrite=overwrite,
            version=version,
            memory_budget=memory_mb * 1024 * 1024,
        )
    console.print(
        f"reconstructed {report.rows} rows × {report.cols} columns → {report.path} "
        f"({report.format}) in {report.seconds:.2f} s",
        highlight=False,
    )


@app.command("compress-report")
def compress_report(
    store: StoreArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON: one object per rank.")
    ] = False,
    factor_dtype: Annotated[
        str, typer.Option(help="float64|float32: dtype the factors are counted in.")
    ] = "float64",
    version: VersionOpt = None,
) -> None:
    """Bytes of the factors at each rank against bytes of the data, with the exact error."""
    from streamsvd.compression import compression_table, format_bytes

    with _errors_to_exit():
        table = compression_table(store, version=version, factor_dtype=factor_dtype)
    if as_json:
        sys.stdout.write(json.dumps(table, indent=2) + "\n")
        return
    first = table[0]
    stored = first["data_stored_bytes"]
    layout = (
        f"as CSR, {first['data_nnz']} stored entries; {first['data_dtype']} values"
        if first["data_format"] == "csr"
        else first["data_dtype"]
    )
    caption = (
        f"data: {format_bytes(first['data_bytes'])} uncompressed ({layout})"
        + (f", {format_bytes(stored)} stored" if stored is not None else "")
        + f"; factors counted as {factor_dtype}"
    )
    larger = [row["rank"] for row in table if row["ratio"] < 1]
    if larger:
        caption += f"\nratio < 1 from rank {larger[0]}: the factors are LARGER than the data" + (
            " (usual for sparse data: the factors are dense, rows·r + r·cols values)"
            if first["data_format"] == "csr"
            else ""
        )
    out = Table(
        "rank",
        "factor bytes",
        "ratio",
        "relative error",
        "captured energy",
        caption=caption,
    )
    for row in table:
        out.add_row(
            str(row["rank"]),
            format_bytes(row["factor_bytes"]),
            f"{row['ratio']:.3g}",
            f"{row['relative_error']:.6g}",
            f"{row['captured_energy']:.6g}",
        )
    console.print(out)


@app.command()
def report(
    store: StoreArg,
    out: Annotated[Path, typer.Option("--out", help="Folder of the report (created).")],
    version: VersionOpt = None,
) -> None:
    """Write spectrum.png, energy.png, history.png and report.md into OUT."""
    from streamsvd.report import write_report

    with _errors_to_exit():
        paths = write_report(store, out, version=version)
    console.print(
        f"wrote {paths.markdown} with {', '.join(p.name for p in paths.images)}",
        highlight=False,
    )
