"""One settings object for every component, read from WAMFLEET_* environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "WAMFLEET_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    data_dir: Path = Field(
        default=Path("wamfleet-data"),
        description="Root of the embedded defaults: objects/, catalog.db, demo runs.",
    )
    storage_backend: Literal["local", "s3"] = Field(
        default="local",
        description="`local`: a directory under data_dir; `s3`: MinIO or any S3 API.",
    )
    s3_endpoint: str = Field(default="127.0.0.1:9000", description="host:port of the S3 API.")
    s3_secure: bool = Field(default=False, description="Use HTTPS for the S3 API.")
    s3_region: str | None = Field(default=None, description="S3 region, if the server needs one.")
    s3_bucket: str = Field(default="wamfleet", description="Bucket that holds every wamfleet object.")
    s3_access_key: str | None = Field(default=None, description="S3 access key id.")
    s3_secret_key: SecretStr | None = Field(default=None, description="S3 secret key.")
    catalog_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the catalog (PostgreSQL in production); default: SQLite in data_dir.",
    )
    catalog_pool_size: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Catalog connections each API process keeps open (PostgreSQL). N replicas may hold "
        "N x (pool size + overflow): keep that under the server's max_connections.",
    )
    catalog_max_overflow: int = Field(
        default=10, ge=0, le=1000, description="Extra catalog connections a busy API process may open."
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token for admin routes; `platform serve` generates one if unset."
    )
    api_host: str = Field(default="127.0.0.1", description="Address `wamfleet platform serve` binds.")
    api_port: int = Field(default=8600, ge=0, le=65535, description="Port `wamfleet platform serve` binds.")
    presign_expiry_s: int = Field(
        default=3600, gt=0, le=7 * 24 * 3600, description="Lifetime of upload and download URLs in seconds."
    )
    upload_session_ttl_s: int = Field(
        default=24 * 3600, gt=0, description="An upload session not committed within this time expires."
    )
    store_checksums: Literal["trust", "read-back"] = Field(
        default="trust",
        description="`trust`: a commit checks the SHA-256 the store computes while copying each file "
        "(S3, MinIO, the local store); `read-back`: it reads every byte back to hash it, for S3-compatible "
        "stores that compute no checksums or are not trusted to.",
    )
    max_file_bytes: int = Field(
        default=4 * 1024**3,
        gt=0,
        le=2**63 - 1,
        description="Largest single file an episode may declare (bytes).",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking/registry URI (`mlflow server` URL in production); default: SQLite.",
    )
    registered_model: str = Field(
        default="wamfleet-policy",
        description="Name of the MLflow registered model that holds policy versions.",
    )
    mlflow_ui_url: str | None = Field(
        default=None,
        description="Base URL of the MLflow UI the dashboard links versions and runs to; unset: no links.",
    )
    dashboard_anonymous_read: bool = Field(
        default=True,
        description=(
            "Anyone reaching the API may view the dashboard (read-only), every robot's episodes and their "
            "signed video URLs included; meant for the embedded default on 127.0.0.1 (logs a WARNING "
            "with any other api_host); false: viewing needs the admin token."
        ),
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster for curation and training (`ray://head:10001` on KubeRay); default: local.",
    )
    kfp_host: str | None = Field(
        default=None,
        description="Kubeflow Pipelines API the platform submits retrains to; default: run locally.",
    )
    retrain_min_new_episodes: int = Field(
        default=0,
        ge=0,
        description="Retrain once this many new episodes arrived since the last snapshot (0: off).",
    )
    retrain_max_age_h: float = Field(
        default=0.0,
        ge=0,
        description="Retrain when the last snapshot is older than this many hours (0: off).",
    )
    retrain_schedule_h: float = Field(
        default=0.0, ge=0, description="Retrain every this many hours regardless of new data (0: off)."
    )
    retrain_check_interval_s: float = Field(
        default=300.0, gt=0, description="How often the platform evaluates the retrain policy."
    )
    rollout_backend: Literal["local", "kserve"] = Field(
        default="local", description="Where rollouts serve versions: local processes or KServe."
    )
    rollout_check_interval_s: float = Field(
        default=5.0, gt=0, description="How often the platform evaluates active rollouts' gates."
    )
    kserve_namespace: str = Field(default="wamfleet", description="Namespace of InferenceServices.")
    serving_image: str = Field(
        default="ghcr.io/wamfleet/wamfleet-serving:0.1.0", description="InferenceService predictor image."
    )
    kserve_template_file: Path | None = Field(
        default=None, description="JSON of InferenceService options (GPUs, nodeSelector, tolerations, ...)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def effective_mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def effective_catalog_url(self) -> str:
        return self.catalog_url or f"sqlite:///{(self.data_dir / 'catalog.db').resolve()}"

    def describe(self) -> list[tuple[str, str, str]]:
        """(env var, effective value with secrets masked, description) for every setting."""
        rows = []
        for name, field in type(self).model_fields.items():
            value: Any = getattr(self, name)
            if isinstance(value, SecretStr):
                shown = "********" if value.get_secret_value() else ""
            elif value is None:
                shown = ""
            else:
                shown = str(value)
            rows.append((f"{ENV_PREFIX}{name.upper()}", shown, field.description or ""))
        return rows


def _absolute_sqlite(url: str) -> str:
    """A relative SQLite path would point elsewhere once the runner's cwd is the data dir."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        path = url[len(prefix) :]
        if path and path != ":memory:" and not path.startswith("file:"):
            return prefix + str(Path(path).resolve())
    return url


def runner_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment plus the WAMFLEET_* settings a child process (a retrain runner, a policy
    server, a pipeline step) needs to reach the same data as this one."""
    env = dict(os.environ if base is None else base)
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
    values: dict[str, str | None] = {
        "data_dir": str(settings.data_dir.resolve()),
        "storage_backend": settings.storage_backend,
        "s3_endpoint": settings.s3_endpoint,
        "s3_secure": str(settings.s3_secure).lower(),
        "s3_region": settings.s3_region,
        "s3_bucket": settings.s3_bucket,
        "s3_access_key": settings.s3_access_key,
        "s3_secret_key": secret,
        "catalog_url": _absolute_sqlite(settings.effective_catalog_url),
        "mlflow_tracking_uri": settings.effective_mlflow_uri,
        "registered_model": settings.registered_model,
        "ray_address": settings.ray_address,
        "kfp_host": None,  # a local runner runs here, never submits to KFP itself
        "log_level": settings.log_level,
    }
    for name, value in values.items():
        key = ENV_PREFIX + name.upper()
        if value is None:
            env.pop(key, None)  # an inherited value would contradict the platform's settings
        else:
            env[key] = value
    return env
