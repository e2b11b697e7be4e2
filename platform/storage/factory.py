"""Builds the configured object store from settings."""

from __future__ import annotations

from wamfleet.platform.settings import Settings
from wamfleet.platform.storage.base import ObjectStore
from wamfleet.platform.storage.local import LocalObjectStore
from wamfleet.platform.storage.s3 import S3ObjectStore


def open_object_store(settings: Settings, url_base: str | None = None) -> ObjectStore:
    if settings.storage_backend == "s3":
        secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
        return S3ObjectStore(
            settings.s3_endpoint,
            settings.s3_access_key,
            secret,
            settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
    return LocalObjectStore(settings.objects_dir, url_base=url_base)
