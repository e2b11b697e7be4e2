"""Object storage: one interface, a local-directory backend and an S3 (MinIO) backend."""

from wamfleet.platform.storage.base import (
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StorageError,
    validate_key,
)
from wamfleet.platform.storage.factory import open_object_store
from wamfleet.platform.storage.local import LocalObjectStore
from wamfleet.platform.storage.s3 import S3ObjectStore

__all__ = [
    "InvalidKey",
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "S3ObjectStore",
    "StorageError",
    "open_object_store",
    "validate_key",
]
