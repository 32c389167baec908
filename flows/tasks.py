"""Prefect tasks: each calls one library function and logs what it did."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from prefect import get_run_logger as _prefect_run_logger
from prefect import task
from prefect.cache_policies import NONE
from prefect.exceptions import MissingContextError

import streamsvd
from streamsvd.config import Settings
from streamsvd.drift import check_drift
from streamsvd.errors import StoreLockedError, StreamSVDError
from streamsvd.store.landing import new_sources


def get_run_logger() -> Any:
    """The run logger inside a flow or task run; a plain logger for ``task.fn()`` calls."""
    try:
        return _prefect_run_logger()
    except MissingContextError:
        import logging

        return logging.getLogger("streamsvd.flows")


def is_transient(exc: BaseException) -> bool:
    """I/O that may succeed when tried again: network, time-outs, a busy store."""
    if isinstance(exc, StoreLockedError | ConnectionError | TimeoutError):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, StreamSVDError)


def _retry_transient(task_: Any, task_run: Any, state: Any) -> bool:
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [5, 30],
    "retry_condition_fn": _retry_transient,
    "cache_policy": NONE,
}


def ingest_options(settings: Settings) -> streamsvd.IngestOptions:
    return streamsvd.IngestOptions(
        format=settings.sources.format,
        dataset=settings.sources.dataset,
        chunk_rows=settings.store.chunk_rows,
        dtype=settings.store.dtype,
        codec=settings.store.codec,
        nan=settings.sources.nan,
        memory_budget=settings.sources.memory_mb * 1024 * 1024,
    )


@task(name="list-new-files", **RETRIES)
def list_new_files(settings: Settings) -> list[str]:
    """Files in the landing folder not yet in the store's batch log, in name order."""
    files = new_sources(
        settings.store.path, [settings.sources.landing], dataset=settings.sources.dataset
    )
    get_run_logger().info("%d new file(s) in %s", len(files), settings.sources.landing)
    return [str(f) for f in files]


@task(name="store-state", cache_policy=NONE)
def store_state(settings: Settings) -> dict[str, Any]:
    """Rows, version and whether the store has factors yet."""
    try:
        info = streamsvd.info(settings.store.path)
    except streamsvd.errors.StoreNotFoundError:
        return {"exists": False, "has_factors": False, "rows": 0, "version": None}
    return {
        "exists": True,
        "has_factors": info["factors"] is not None,
        "rows": info["rows"],
        "version": info["version"],
    }


@task(name="ingest", **RETRIES)
def ingest_files(settings: Settings, files: list[str]) -> dict[str, Any]:
    """Ingest files in one commit; returns the new version and row count."""
    report = streamsvd.ingest(settings.store.path, files, options=ingest_options(settings))
    get_run_logger().info(
        "ingested %d rows from %d file(s) → %s", report.rows_added, len(files), report.version
    )
    return {"version": report.version, "rows_added": report.rows_added, "seconds": report.seconds}


@task(name="fit", **RETRIES)
def fit_store(settings: Settings, scheduler: str) -> dict[str, Any]:
    """A full fit with the configured SVD parameters."""
    svd = settings.svd
    summary = streamsvd.fit(
        settings.store.path,
        rank=svd.rank,
        oversample=svd.oversample,
        power_iters=svd.power_iters,
        seed=svd.seed,
        center=svd.center,
        dtype=svd.dtype,
        max_rank=svd.max_rank,
        scheduler=scheduler,
    )
    get_run_logger().info(
        "fit: rank %d (%s), relative error %.6g → %s",
        summary["rank"],
        summary["rank_reason"],
        summary["relative_error"],
        summary["version"],
    )
    return summary


@task(name="update", **RETRIES)
def update_with(settings: Settings, file: str) -> dict[str, Any]:
    """Ingest one file and update the factors in one commit."""
    report = streamsvd.update(
        settings.store.path,
        [file],
        options=ingest_options(settings),
        forget=settings.svd.forget,
        sketch_above=settings.svd.sketch_above,
    )
    get_run_logger().info(
        "update %s: +%d rows, relative error %.6g (%.2f s, commit %.2f s) → %s",
        Path(file).name,
        report.rows_added,
        report.relative_error,
        report.seconds,
        report.commit_seconds,
        report.version,
    )
    return {
        "file": file,
        "version": report.version,
        "rows_added": report.rows_added,
        "relative_error": report.relative_error,
        "seconds": report.seconds,
        "commit_seconds": report.commit_seconds,
        "compacted": report.compacted,
    }


@task(name="check-drift", cache_policy=NONE)
def drift_check(settings: Settings) -> dict[str, Any]:
    """Whether the error budget is spent (or the refit cadence reached)."""
    decision = check_drift(
        settings.store.path,
        refit_above=settings.drift.refit_above,
        refit_every_updates=settings.drift.refit_every_updates,
    )
    get_run_logger().info("drift: %s", decision.reason)
    return {"refit": decision.refit, "reason": decision.reason}


@task(name="verify", **RETRIES)
def verify_store(settings: Settings, scheduler: str) -> dict[str, Any]:
    """One pass: measured residual and orthogonality against the record."""
    report = streamsvd.verify(settings.store.path, scheduler=scheduler)
    get_run_logger().info(
        "verify: recorded %.9g, measured %.9g", report.recorded_error, report.measured_error
    )
    return {
        "recorded_error": report.recorded_error,
        "measured_error": report.measured_error,
        "orthogonality_u": report.orthogonality_u,
        "orthogonality_v": report.orthogonality_v,
    }


@task(name="gc", **RETRIES)
def collect_garbage(settings: Settings) -> dict[str, Any]:
    """Expire versions older than ``store.keep_days`` and delete files no version uses."""
    days = settings.store.keep_days
    if days is None:
        return {"skipped": True}
    report = streamsvd.collect_garbage(settings.store.path, older_than_days=days)
    get_run_logger().info(
        "gc: expired %d version(s), deleted %d file(s), %.1f MB",
        report.versions_expired,
        report.files_deleted,
        report.bytes_deleted / 1e6,
    )
    return {
        "versions_expired": report.versions_expired,
        "versions_kept": report.versions_kept,
        "bytes_deleted": report.bytes_deleted,
    }


@task(name="publish-report", cache_policy=NONE)
def publish_report(settings: Settings, run: dict[str, Any]) -> dict[str, Any]:
    """Prefect artifacts: a table, a Markdown summary, and the report's plots.

    The report (PNG plots and ``report.md``) is written to ``report.out``; the
    plots are embedded in a Markdown artifact as data URIs, so the Prefect UI
    shows them without access to that directory.
    """
    import base64

    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    info = streamsvd.info(settings.store.path)
    paths = streamsvd.write_report(settings.store.path, settings.report.out)
    images = []
    for image in paths.images:
        encoded = base64.b64encode(image.read_bytes()).decode("ascii")
        images.append(f"![{image.stem}](data:image/png;base64,{encoded})")
    create_markdown_artifact(
        key="streamsvd-plots",
        markdown="\n\n".join(["# streamsvd report", *images]),
        description=f"spectrum, energy and error history; files in {paths.out_dir}",
    )
    factors = info["factors"] or {}
    rows = [
        {"metric": "rows", "value": info["rows"]},
        {"metric": "cols", "value": info["cols"]},
        {"metric": "batches", "value": info["batches"]},
        {"metric": "rank", "value": factors.get("rank")},
        {"metric": "relative error", "value": factors.get("relative_error")},
        {"metric": "captured energy", "value": factors.get("captured_energy")},
        {"metric": "version", "value": info["version"]},
    ]
    rows += [{"metric": f"seconds: {k}", "value": round(v, 3)} for k, v in run["timings"].items()]
    create_table_artifact(key="streamsvd-run", table=rows, description="streamsvd pipeline run")
    lines = [
        f"# streamsvd: {settings.store.path}",
        "",
        f"- version `{info['version']}`, {info['rows']} rows × {info['cols']} cols, "
        f"{info['batches']} batches",
        f"- rank {factors.get('rank')}: {factors.get('rank_reason', '')}",
        f"- relative error {factors.get('relative_error', float('nan')):.6g}, captured energy "
        f"{factors.get('captured_energy', float('nan')):.6g}",
        f"- this run: {run['ingested']} files ingested, {run['updates']} updates, "
        f"refit: {run['refit_reason'] or 'no'}",
    ]
    lines.append(f"- report: `{paths.markdown}`")
    create_markdown_artifact(key="streamsvd-summary", markdown="\n".join(lines))
    return {"info": info, "markdown": "\n".join(lines), "report": str(paths.markdown)}


def initial_files(files: list[str], fraction: float) -> int:
    """How many of the first files to ingest before the first fit (at least one)."""
    return max(1, min(len(files), math.ceil(len(files) * fraction)))
