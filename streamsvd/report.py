"""Reports: PNG plots of the spectrum, the error against rank and the history, and a Markdown page.

:func:`write_report` writes into a folder

* ``spectrum.png``: singular values (log scale) with the fitted rank (vertical
  line) and the Gavish–Donoho threshold (horizontal line) where it can be
  estimated;
* ``energy.png``: captured energy and relative error against rank;
* ``history.png``: relative error of every fit and update in the factors' history;
* ``report.md``: a summary table and the three images (relative links),

and returns their paths and the summary, e.g. for Prefect artifacts. The data
behind each plot comes from a public function (:func:`spectrum_data`,
:func:`history_data`, :func:`report_summary`) that tests can check without
pixels. No pass over the data or ``U_raw``: only the small factors and their
record are read.

Plots are drawn on ``matplotlib.figure.Figure`` objects rendered by the Agg
canvas, without pyplot: no GUI backend, no global backend switch (a notebook
that calls this keeps its own), and no figure left open.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamsvd.api import Factors, open_factors
from streamsvd.compression import compression_table
from streamsvd.drift import updates_since_fit
from streamsvd.linalg.rank import gavish_donoho_lambda, marchenko_pastur_median
from streamsvd.store import layout, sparse
from streamsvd.store.matrix import matrix_array, read_meta


@dataclass(frozen=True)
class SpectrumData:
    """What ``spectrum.png`` shows.

    Attributes
    ----------
    values : ndarray
        Singular values plotted, descending: the fit's sketch spectrum (``l``
        values) when no update came after the fit, else the current ``S``.
    source : str
        ``"sketch"`` or ``"S"``.
    rank : int
        The fitted rank (the vertical line).
    threshold : float or None
        Gavish–Donoho threshold ``τ = λ*(β)·√max(m, n)·σ̂`` (the horizontal line).
    threshold_note : str
        How ``τ`` was obtained, or why it was skipped.
    stale_sketch : ndarray or None
        The last fit's sketch spectrum when updates came after it (drawn faintly).
    """

    values: np.ndarray
    source: str
    rank: int
    threshold: float | None
    threshold_note: str
    stale_sketch: np.ndarray | None = None


@dataclass(frozen=True)
class HistoryPoint:
    """One entry of the factors' history (a fit or an update)."""

    index: int
    op: str
    rows: int
    rank: int
    relative_error: float
    time: str


@dataclass(frozen=True)
class ReportPaths:
    """Files written by :func:`write_report` and the summary they show."""

    out_dir: Path
    markdown: Path
    spectrum: Path
    energy: Path
    history: Path
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> tuple[Path, Path, Path]:
        return (self.spectrum, self.energy, self.history)


def _history(factors: Factors) -> list[dict[str, Any]]:
    return list(factors.attrs.get("history") or [])


def gavish_donoho_threshold(
    s: np.ndarray, energy: float, n_rows: int, n_cols: int
) -> tuple[float | None, str]:
    """The Gavish–Donoho hard threshold for singular values ``s`` (the first ``l``).

    ``τ = λ*(β)·√max(m, n)·σ̂`` with ``σ̂² = (‖A‖_F² − Σ_{i≤l} s_i²)/((m − l)(n − l))``,
    or, when ``s`` is the whole spectrum (``l ≥ min(m, n)``), σ̂ from the median
    singular value (as ``fit(rank="gd")`` does).

    Returns
    -------
    (float or None, str)
        ``τ`` (None when it cannot be estimated) and how it was found or why not.
    """
    if n_rows < 1 or n_cols < 1 or s.size == 0:
        return None, "no Gavish–Donoho threshold: no singular values"
    beta = min(n_rows, n_cols) / max(n_rows, n_cols)
    lam = gavish_donoho_lambda(beta)
    big = max(n_rows, n_cols)
    width = int(s.size)
    if width < min(n_rows, n_cols):
        dof = (n_rows - width) * (n_cols - width)
        resid = max(energy - float(np.sum(s**2)), 0.0)
        if resid <= 0:
            return None, (
                "no Gavish–Donoho threshold: the residual energy is zero, so there is no "
                "noise level to estimate"
            )
        sigma, how = math.sqrt(resid / dof), "from the residual energy"
    else:
        median = float(np.median(s[: min(n_rows, n_cols)]))
        sigma = median / math.sqrt(big * marchenko_pastur_median(beta))
        how = "from the median singular value"
        if sigma <= 0:
            return None, "no Gavish–Donoho threshold: the median singular value is zero"
    tau = lam * math.sqrt(big) * sigma
    return tau, (
        f"Gavish–Donoho threshold τ = λ*(β)·√max(m,n)·σ̂ = {tau:.4g} "
        f"(β = {beta:.3g}, λ* = {lam:.4f}, σ̂ = {sigma:.4g} {how})"
    )


def spectrum_data(store: str | Path | Factors, *, version: str | None = None) -> SpectrumData:
    """The singular values, fitted rank and threshold drawn in ``spectrum.png``.

    The fit stores the whole sketch spectrum (``factors/spectrum``, ``l`` values);
    updates change ``S`` but not it. With no update since the fit the sketch
    spectrum is plotted; after updates the current ``S`` is, with the old
    sketch faintly for context.
    """
    factors = open_factors(store, version=version)
    group = factors.group
    spectrum: np.ndarray | None = None
    factors_group: Any = group[layout.FACTORS]
    if "spectrum" in factors_group:
        spectrum = np.asarray(factors_group["spectrum"][...], dtype=np.float64)
    fresh = updates_since_fit(_history(factors)) == 0
    rows = factors.stored.rows_covered
    cols = int(factors.vt.shape[1])
    energy = float(factors.attrs["energy"])
    if spectrum is not None and fresh:
        values, source, stale = spectrum, "sketch", None
    else:
        values, source, stale = np.asarray(factors.s, dtype=np.float64), "S", spectrum
    tau, note = gavish_donoho_threshold(values, energy, rows, cols)
    return SpectrumData(values, source, factors.rank, tau, note, stale)


def history_data(store: str | Path | Factors, *, version: str | None = None) -> list[HistoryPoint]:
    """The fits and updates recorded in the factors' history, oldest first."""
    factors = open_factors(store, version=version)
    return [
        HistoryPoint(
            index=i,
            op=str(entry.get("op", "?")),
            rows=int(entry.get("rows", 0)),
            rank=int(entry.get("rank", 0)),
            relative_error=float(entry.get("relative_error", math.nan)),
            time=str(entry.get("time", "")),
        )
        for i, entry in enumerate(_history(factors))
    ]


def report_summary(
    store: str | Path | Factors,
    *,
    version: str | None = None,
    table: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The summary table of ``report.md``: store, version, shape, rank, error, compression.

    ``kind`` is the store's matrix kind (``dense`` or ``sparse``); a sparse store adds
    ``nnz`` and ``density`` (of the whole stored matrix), and its ``data_bytes`` are
    its CSR bytes (see :func:`~streamsvd.compression.compression_table`; pass its
    ``table`` when you have it: it sizes the stored chunks).
    """
    factors = open_factors(store, version=version)
    group = factors.group
    table = table if table is not None else compression_table(factors)
    history = _history(factors)
    last_fit = factors.attrs.get("last_fit") or {}
    params = factors.attrs.get("params") or {}
    meta = read_meta(group)
    kind = meta.kind
    extra: dict[str, Any] = {}
    if kind == sparse.KIND:
        rows = sparse.n_rows(group)
        stored = sparse.nnz(group)
        extra = {
            "nnz": stored,
            "density": stored / (rows * meta.n_cols) if rows and meta.n_cols else 0.0,
        }
    else:
        rows = int(matrix_array(group).shape[0])
    return {
        "store": factors.store,
        "version": factors.version,
        "kind": kind,
        **extra,
        "rows": rows,
        "rows_covered": factors.stored.rows_covered,
        "cols": int(factors.vt.shape[1]),
        "rank": factors.rank,
        "rank_rule": str(params.get("rank", factors.rank)),
        "rank_reason": str(factors.attrs.get("rank_reason", "")),
        "center": factors.mean is not None,
        "relative_error": float(factors.attrs["relative_error"]),
        "captured_energy": float(factors.attrs["captured_energy"]),
        "compression_ratio": float(table[-1]["ratio"]),
        "factor_bytes": int(table[-1]["factor_bytes"]),
        "data_bytes": int(table[-1]["data_bytes"]),
        "last_fit": last_fit.get("time"),
        "updates_since_fit": updates_since_fit(history),
        "updates": sum(1 for entry in history if entry.get("op") == "update"),
    }


# -- plots --------------------------------------------------------------------


def _figure(width: float = 6.4, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _plot_spectrum(data: SpectrumData, path: Path) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    index = np.arange(1, data.values.size + 1)
    positive = data.values > 0
    if data.stale_sketch is not None and np.any(data.stale_sketch > 0):
        old = data.stale_sketch
        keep = old > 0
        ax.plot(
            np.arange(1, old.size + 1)[keep],
            old[keep],
            color="0.7",
            marker=".",
            lw=1,
            label="sketch at the last fit",
        )
    label = "sketch singular values" if data.source == "sketch" else "singular values S"
    ax.plot(index[positive], data.values[positive], marker="o", ms=3, lw=1.2, label=label)
    if np.any(positive):
        ax.set_yscale("log")
    ax.axvline(data.rank + 0.5, color="tab:red", ls="--", lw=1, label=f"rank k = {data.rank}")
    if data.threshold is not None and data.threshold > 0:
        ax.axhline(
            data.threshold,
            color="tab:green",
            ls=":",
            lw=1.2,
            label=rf"Gavish–Donoho $\tau$ = {data.threshold:.3g}",
        )
    ax.set_xlabel("index i")
    ax.set_ylabel(r"singular value $s_i$")
    ax.set_title("Spectrum")
    ax.legend(loc="upper right", fontsize="small")
    fig.savefig(path, dpi=100)


def _plot_energy(table: list[dict[str, Any]], rank: int, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    fig = _figure(6.4, 5.0)
    top, bottom = fig.subplots(2, 1, sharex=True)
    ranks = [row["rank"] for row in table]
    top.plot(ranks, [row["captured_energy"] for row in table], marker="o", ms=3)
    top.set_ylabel("captured energy")
    top.set_ylim(0, 1.02)
    top.set_title("Error against rank (exact, from the recorded energy)")
    bottom.plot(
        ranks, [row["relative_error"] for row in table], marker="o", ms=3, color="tab:orange"
    )
    bottom.set_ylabel(r"relative error $\|A - A_r\|_F / \|A\|_F$")
    bottom.set_xlabel("rank r")
    if all(row["relative_error"] > 0 for row in table):
        bottom.set_yscale("log")
    for ax in (top, bottom):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.axvline(rank, color="tab:red", ls="--", lw=1)
        ax.grid(True, alpha=0.3)
    fig.savefig(path, dpi=100)


def _plot_history(points: list[HistoryPoint], path: Path) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    if points:
        ax.plot([p.rows for p in points], [p.relative_error for p in points], color="0.6", lw=1)
    for op, marker, color in (("fit", "o", "tab:blue"), ("update", "^", "tab:orange")):
        chosen = [p for p in points if p.op == op]
        if chosen:
            ax.scatter(
                [p.rows for p in chosen],
                [p.relative_error for p in chosen],
                marker=marker,
                color=color,
                label=op,
                zorder=3,
            )
    ax.set_xlabel("rows covered")
    ax.set_ylabel("relative error")
    ax.set_title("History of fits and updates")
    ax.grid(True, alpha=0.3)
    if points:
        ax.legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=100)


# -- the report ---------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(summary: dict[str, Any], spectrum: SpectrumData, table: list[dict[str, Any]]) -> str:
    from streamsvd.compression import format_bytes

    ratio = summary["compression_ratio"]
    sparse_store = summary.get("kind") == sparse.KIND
    compression = (
        f"{ratio:.3g} ({format_bytes(summary['data_bytes'])} of data"
        + (" as CSR" if sparse_store else "")
        + f" → {format_bytes(summary['factor_bytes'])} of float64 factors)"
    )
    if ratio < 1:
        compression += "; below 1: the factors are larger than the data" + (
            " (usual for sparse data: the factors are dense)" if sparse_store else ""
        )
    rows = [
        ("store", f"`{summary['store']}`"),
        ("version", f"`{summary['version']}`"),
        ("rows (covered by the factors)", f"{summary['rows']} ({summary['rows_covered']})"),
        ("cols", str(summary["cols"])),
    ]
    if sparse_store:
        rows += [
            ("stored entries (nnz)", str(summary["nnz"])),
            ("density", f"{summary['density']:.4g}"),
        ]
    rows += [
        ("rank", str(summary["rank"])),
        ("rank rule", f"`{summary['rank_rule']}`"),
        ("rank reason", summary["rank_reason"]),
        ("PCA mode (centred)", "yes" if summary["center"] else "no"),
        ("relative error", f"{summary['relative_error']:.6g}"),
        ("captured energy", f"{summary['captured_energy']:.6g}"),
        ("compression ratio at rank k", compression),
        ("last fit", str(summary["last_fit"])),
        (
            "updates since the last fit (all)",
            f"{summary['updates_since_fit']} ({summary['updates']})",
        ),
    ]
    plotted = (
        "the sketch spectrum of the last fit"
        if spectrum.source == "sketch"
        else "the current singular values S (updates came after the last fit)"
    )
    lines = ["# streamsvd report", "", "| | |", "| --- | --- |"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in rows]
    lines += [
        "",
        "## Spectrum",
        "",
        "![Singular values, fitted rank and Gavish–Donoho threshold](spectrum.png)",
        "",
        f"Plotted: {plotted}. {spectrum.threshold_note}.",
        "",
        "## Error against rank",
        "",
        "![Captured energy and relative error against rank](energy.png)",
        "",
        "| rank | relative error | captured energy | factor bytes | ratio |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['rank']} | {r['relative_error']:.4g} | {r['captured_energy']:.6g} | "
        f"{format_bytes(r['factor_bytes'])} | {r['ratio']:.3g} |"
        for r in table
    ]
    lines += [
        "",
        "## History",
        "",
        "![Relative error of every fit and update](history.png)",
        "",
    ]
    return "\n".join(lines)


def write_report(
    store: str | Path | Factors, out_dir: str | Path, *, version: str | None = None
) -> ReportPaths:
    """Write ``spectrum.png``, ``energy.png``, ``history.png`` and ``report.md`` into ``out_dir``.

    Reads only the small factors and their record (no pass over the data);
    creates ``out_dir`` if needed and replaces files of the same names.

    Parameters
    ----------
    store : str, Path or Factors
        A store (its newest factors, or ``version``) or factors already opened.
    out_dir : str or Path
        Folder of the report.
    version : str, optional

    Returns
    -------
    ReportPaths
        The paths written and the summary dict of the table.

    Examples
    --------
    >>> import numpy as np, tempfile, streamsvd
    >>> tmp = tempfile.mkdtemp()
    >>> _ = streamsvd.ingest(f"{tmp}/store", [np.random.default_rng(0).standard_normal((80, 10))])
    >>> _ = streamsvd.fit(f"{tmp}/store", rank=3, scheduler="sync")
    >>> paths = write_report(f"{tmp}/store", f"{tmp}/report")
    >>> paths.markdown.name, [p.name for p in paths.images], paths.summary["rank"]
    ('report.md', ['spectrum.png', 'energy.png', 'history.png'], 3)
    """
    factors = open_factors(store, version=version)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    spectrum = spectrum_data(factors)
    table = compression_table(factors)
    points = history_data(factors)
    summary = report_summary(factors, table=table)
    summary["gd_threshold"] = spectrum.threshold
    paths = ReportPaths(
        out_dir=out,
        markdown=out / "report.md",
        spectrum=out / "spectrum.png",
        energy=out / "energy.png",
        history=out / "history.png",
        summary=summary,
    )
    _plot_spectrum(spectrum, paths.spectrum)
    _plot_energy(table, factors.rank, paths.energy)
    _plot_history(points, paths.history)
    paths.markdown.write_text(_markdown(summary, spectrum, table) + "\n", encoding="utf-8")
    return paths
