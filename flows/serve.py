"""Serve the pipeline and refit deployments with ``flow.serve`` (no work pool needed)."""

from __future__ import annotations

from pathlib import Path

from prefect import serve as prefect_serve

from flows.pipeline import pipeline_flow, refit_flow
from streamsvd.config import load_settings


def deployments(config: str, *, schedules: bool = True) -> list[object]:
    """The two deployments, one writer at a time (concurrency limit 1 each)."""
    settings = load_settings(config)
    path = str(Path(config).resolve())
    timezone = settings.schedule.timezone
    from prefect.schedules import Cron

    def cron(expr: str) -> list[object] | None:
        return [Cron(expr, timezone=timezone)] if schedules else None

    return [
        pipeline_flow.to_deployment(
            name="streamsvd-pipeline",
            schedules=cron(settings.schedule.update_cron),
            parameters={"config": path},
            concurrency_limit=1,
            tags=["streamsvd"],
        ),
        refit_flow.to_deployment(
            name="streamsvd-refit",
            schedules=cron(settings.schedule.refit_cron),
            parameters={"config": path},
            concurrency_limit=1,
            tags=["streamsvd"],
        ),
    ]


def serve(config: str, *, schedules: bool = True) -> None:
    """Serve until interrupted."""
    prefect_serve(*deployments(config, schedules=schedules))  # type: ignore[arg-type]
