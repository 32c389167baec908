"""The flows: ingest, fit, update, refit, and the scheduled pipeline.

Each flow takes the path of a YAML config (``config/*.yaml``; ``STREAMSVD_*``
variables override it) and only sequences tasks.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger

from flows.tasks import (
    collect_garbage,
    drift_check,
    fit_store,
    ingest_files,
    initial_files,
    list_new_files,
    publish_report,
    store_state,
    update_with,
    verify_store,
)
from streamsvd.config import Settings, load_settings
from streamsvd.engine.cluster import cluster_address, configure_tls


def _settings(config: str | None) -> Settings:
    settings = load_settings(config)
    tls = settings.cluster.tls
    if tls is not None:
        configure_tls(tls.ca_file, tls.client_cert, tls.client_key)
    return settings


def _cluster(settings: Settings) -> Any:
    return cluster_address(
        settings.cluster.scheduler,
        n_workers=settings.cluster.n_workers,
        threads_per_worker=settings.cluster.threads_per_worker,
    )


@flow(name="streamsvd-ingest")
def ingest_flow(config: str | None = None) -> dict[str, Any]:
    """Ingest every new file of the landing folder in one commit."""
    settings = _settings(config)
    files = list_new_files(settings)
    if not files:
        return {"version": None, "rows_added": 0}
    return ingest_files(settings, files)


@flow(name="streamsvd-fit")
def fit_flow(config: str | None = None) -> dict[str, Any]:
    """A full fit of the store, then a verification pass."""
    settings = _settings(config)
    with _cluster(settings) as scheduler:
        summary = fit_store(settings, scheduler)
        if settings.report.verify:
            verify_store(settings, scheduler)
    return summary


@flow(name="streamsvd-update")
def update_flow(config: str | None = None) -> list[dict[str, Any]]:
    """Update the factors with every new file, one commit per file."""
    settings = _settings(config)
    return [update_with(settings, f) for f in list_new_files(settings)]


@flow(name="streamsvd-pipeline")
def pipeline_flow(config: str | None = None, force_refit: bool = False) -> dict[str, Any]:
    """The scheduled pipeline.

    New files → (first run: ingest a share of them and fit) → update batch by
    batch → drift check → refit when the budget is spent → verify → report.
    """
    logger = get_run_logger()
    settings = _settings(config)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    files = list_new_files(settings)
    state = store_state(settings)
    fitted: dict[str, Any] | None = None
    refit_reason = ""
    ingested = 0
    with _cluster(settings) as scheduler:
        if not state["has_factors"]:
            if not files and not state["exists"]:
                logger.info("no store and no files yet: nothing to do")
                return {"version": None, "updates": [], "fit": None}
            first = initial_files(files, settings.svd.initial_fraction) if files else 0
            t0 = time.perf_counter()
            if first:
                ingest_files(settings, files[:first])
                ingested = first
            timings["ingest"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            fitted = fit_store(settings, scheduler)
            timings["fit"] = time.perf_counter() - t0
            files = files[first:]
        t0 = time.perf_counter()
        updates = [update_with(settings, f) for f in files]
        timings["updates"] = time.perf_counter() - t0
        drift = drift_check(settings)
        # A fit made in this run with no update after it is already the full refit.
        fresh_fit = fitted is not None and not updates
        if drift["refit"] or (force_refit and not fresh_fit):
            refit_reason = drift["reason"] if drift["refit"] else "forced"
            t0 = time.perf_counter()
            fitted = fit_store(settings, scheduler)
            timings["refit"] = time.perf_counter() - t0
        verified = None
        if settings.report.verify:
            t0 = time.perf_counter()
            verified = verify_store(settings, scheduler)
            timings["verify"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    run = {
        "ingested": ingested,
        "updates": len(updates),
        "refit_reason": refit_reason,
        "timings": timings,
    }
    report = publish_report(settings, run)
    return {
        "version": report["info"]["version"],
        "info": report["info"],
        "fit": fitted,
        "updates": updates,
        "verify": verified,
        "refit_reason": refit_reason,
        "timings": timings,
        "report": report["report"],
    }


@flow(name="streamsvd-refit")
def refit_flow(config: str | None = None) -> dict[str, Any]:
    """The nightly refit: catch up with new files, fit in full, verify, report, then
    expire versions older than ``store.keep_days`` (each fit writes a new ``U_raw``)."""
    result = pipeline_flow(config, force_refit=True)
    result["gc"] = collect_garbage(_settings(config))
    return result
