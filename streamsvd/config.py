"""Configuration: YAML validated by pydantic, overridable by ``STREAMSVD_*`` variables.

One :class:`Settings` object holds the store, the sources, the SVD parameters,
the cluster, the schedule, the drift policy and the report. Nested keys are
overridden with ``__``: ``STREAMSVD_SVD__RANK=20``, ``STREAMSVD_CLUSTER__SCHEDULER=tcp://…``.
The environment wins over the file, the file over the defaults. A wrong key or
value is a :class:`~streamsvd.errors.ConfigError` naming the key, the file and
the allowed values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from streamsvd.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreSettings(_Section):
    """Where the store lives and how a new one is laid out."""

    path: str = Field("streamsvd-store", description="Local path or s3://bucket/prefix")
    chunk_rows: int | None = Field(
        None, ge=1, le=10_000_000, description="Rows per chunk of a new store (None: ~8 MiB)"
    )
    dtype: Literal["float32", "float64"] | None = Field(
        None, description="Value type of a new store (None: from the first source)"
    )
    codec: Literal["auto", "lz4", "zstd", "none"] = Field(
        "auto", description="Compression of a new store (auto: lz4 where it shrinks the data)"
    )
    keep_days: float | None = Field(
        7.0,
        ge=0,
        description="The nightly refit expires versions older than this many days and "
        "deletes unused files (streamsvd gc); None keeps everything",
    )


class SourceSettings(_Section):
    """Where new rows arrive and how they are read."""

    landing: str = Field("landing", description="Landing folder or glob of new row files")
    format: Literal["auto", "npy", "csv", "parquet", "hdf5", "zarr"] = Field(
        "auto", description="Format of the files (auto: from the suffix)"
    )
    dataset: str | None = Field(None, description="Dataset path inside HDF5 files")
    nan: Literal["reject", "zero", "drop"] = Field("reject", description="NaN/Inf policy")
    memory_mb: int = Field(64, ge=1, le=65_536, description="Memory budget of one read block (MiB)")


class SVDSettings(_Section):
    """Parameters of fits and updates."""

    rank: int | str = Field(10, description="k, or a rule: energy:F, tol:F or gd")
    oversample: int = Field(10, ge=0, le=10_000, description="Extra sketch columns p")
    power_iters: int = Field(2, ge=0, le=50, description="Power iterations q (q+1 passes)")
    seed: int = Field(0, ge=0, description="Seed of the random test matrix")
    center: bool = Field(False, description="PCA mode: factor the centred matrix")
    dtype: Literal["float64", "float32"] = Field(
        "float32", description="Arithmetic of the power passes (the final pass is float64)"
    )
    max_rank: int | None = Field(None, ge=1, description="Largest rank a tol: rule may reach")
    forget: float = Field(1.0, gt=0.0, le=1.0, description="Forgetting factor γ of updates")
    sketch_above: int | None = Field(
        None, ge=1, description="Sketch update batches with more rows than this"
    )
    initial_fraction: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Share of the first landing files ingested before the first fit",
    )

    @field_validator("rank")
    @classmethod
    def _rank(cls, value: int | str) -> int | str:
        from streamsvd.linalg.rank import parse_rank

        parse_rank(value)  # raises ConfigError with the allowed forms
        return value


class TLSSettings(_Section):
    """TLS files for a ``tls://`` scheduler (distributed.security.Security)."""

    ca_file: str = Field(..., description="CA certificate")
    client_cert: str = Field(..., description="Client certificate")
    client_key: str = Field(..., description="Client private key")


class ClusterSettings(_Section):
    """Which Dask cluster runs the passes."""

    scheduler: str = Field(
        "local",
        description="'local' (embedded LocalCluster), 'threads', or tcp://host:8786 / tls://…",
    )
    n_workers: int = Field(1, ge=1, le=1024, description="Workers of the embedded cluster")
    threads_per_worker: int | None = Field(
        None, ge=1, le=1024, description="Threads per embedded worker (None: one per core)"
    )
    tls: TLSSettings | None = Field(None, description="TLS for tls:// addresses")

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, value: str) -> str:
        if value in ("local", "threads", "sync") or "://" in value:
            return value
        raise ValueError("must be 'local', 'threads', 'sync' or an address such as tcp://host:8786")


class ScheduleSettings(_Section):
    """Cron schedules of the deployments."""

    update_cron: str = Field("0 * * * *", description="Pipeline: ingest + update")
    refit_cron: str = Field("0 3 * * *", description="Full refit")
    timezone: str = Field("UTC", description="Time zone of the cron schedules")


class DriftSettings(_Section):
    """When the pipeline refits in full."""

    refit_above: str | None = Field(
        "+10%", description="Relative error (0.05) or margin over the last fit (+10%)"
    )
    refit_every_updates: int | None = Field(
        None, ge=1, description="Refit after this many updates whatever the error"
    )

    @field_validator("refit_above")
    @classmethod
    def _policy(cls, value: str | None) -> str | None:
        from streamsvd.incremental import RefitPolicy

        RefitPolicy.parse(value)
        return value


class ReportSettings(_Section):
    """Where reports are written."""

    out: str = Field("streamsvd-report", description="Directory of the report files")
    verify: bool = Field(True, description="Verify the factors (one pass) in each pipeline run")


class Settings(BaseSettings):
    """All of streamsvd's settings (see ``config/demo.yaml``)."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMSVD_", env_nested_delimiter="__", extra="forbid"
    )

    store: StoreSettings = Field(default_factory=lambda: StoreSettings())
    sources: SourceSettings = Field(default_factory=lambda: SourceSettings())
    svd: SVDSettings = Field(default_factory=lambda: SVDSettings())
    cluster: ClusterSettings = Field(default_factory=lambda: ClusterSettings())
    schedule: ScheduleSettings = Field(default_factory=lambda: ScheduleSettings())
    drift: DriftSettings = Field(default_factory=lambda: DriftSettings())
    report: ReportSettings = Field(default_factory=lambda: ReportSettings())
    demo: dict[str, Any] | None = Field(
        None, description="Settings of the generated demo data (make demo only)"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the YAML file (passed as init kwargs).
        return env_settings, init_settings


def load_settings(path: str | Path | None = None) -> Settings:
    """Read and validate a YAML config (environment variables override it).

    Raises
    ------
    ConfigError
        Unreadable file, invalid YAML, an unknown key or a bad value; the
        message names the key, the file and what is allowed.
    """
    raw: dict[str, Any] = {}
    where = "the environment"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{path} must hold a mapping of sections; found {type(loaded).__name__}"
            )
        raw = loaded or {}
    try:
        return Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: " + "; ".join(_describe(e) for e in exc.errors())) from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _describe(error: Any) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        section = error["loc"][0] if len(error["loc"]) > 1 else None
        model: type[BaseModel] = Settings
        if section is not None:
            annotation = Settings.model_fields[str(section)].annotation
            model = annotation if isinstance(annotation, type) else Settings
        allowed = ", ".join(model.model_fields)
        return f"unknown key '{key}' (allowed here: {allowed})"
    return f"'{key}': {error['msg']} (got {error.get('input')!r})"
