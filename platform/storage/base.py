"""The object-store interface every component uses, and the key rules both backends enforce."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

MAX_KEY_BYTES = 1024
_KEY_SEGMENT = re.compile(r"^[A-Za-z0-9._=+@,-]+$")


class StorageError(Exception):
    """Any failure of the object store that the caller may want to report or retry."""


class ObjectNotFound(StorageError, KeyError):
    def __str__(self) -> str:
        return f"no object at key {self.args[0]!r}"


class InvalidKey(StorageError, ValueError):
    pass


def validate_key(key: str) -> str:
    """Keys are relative, '/'-separated, and can never climb out of the store's root."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("object key must be a non-empty string")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidKey(f"object key longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/") or "\\" in key:
        raise InvalidKey(f"object key {key!r} must be relative and use '/' separators")
    for segment in key.split("/"):
        if not segment or segment.startswith("."):
            # Also rules out '.' and '..'; dot-names are reserved for the stores' own files.
            raise InvalidKey(f"object key {key!r} has an empty segment or one starting with '.'")
        if not _KEY_SEGMENT.fullmatch(segment):  # `match` would let "name\n" through
            raise InvalidKey(f"object key {key!r} has a character outside [A-Za-z0-9._=+@,-]")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key, optionally ending in '/'."""
    if prefix:
        validate_key(prefix.rstrip("/") or "/")
    return prefix


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime | None = None


@dataclass(frozen=True)
class PresignedPut:
    """A URL for one PUT, and the headers that PUT must carry."""

    url: str
    headers: dict[str, str]


class ObjectStore(ABC):
    """put/get/stat/list/delete plus presigned URLs; implementations are thread-safe."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> ObjectInfo: ...

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, length: int) -> ObjectInfo:
        """Stores exactly `length` bytes read from `stream`; large objects go in parts."""

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        with open(path, "rb") as f:
            return self.put_stream(key, f, path.stat().st_size)

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def get_file(self, key: str, path: Path) -> ObjectInfo:
        """Downloads to `path` atomically (a partial download never appears at `path`)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo: ...

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, recursively, in key order."""

    @abstractmethod
    def copy(self, src: str, dst: str, size: int | None = None) -> None:
        """Server-side copy; `dst` appears whole or not at all. `size`: the source's, if known."""

    @abstractmethod
    def sha256(self, key: str) -> str:
        """Hex sha256 of the stored bytes, computed by streaming the object."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Removes the object; deleting a missing key is not an error."""

    @abstractmethod
    def presigned_put_url(self, key: str, expires: timedelta) -> str: ...

    def presigned_put(self, key: str, expires: timedelta, sha256: str) -> PresignedPut:
        """A PUT URL for bytes whose SHA-256 is `sha256` (hex). Stores that check checksums bind
        it into the URL (the PUT must carry `headers`) and refuse a body that does not match."""
        return PresignedPut(self.presigned_put_url(key, expires), {})

    def copy_verified(self, src: str, dst: str, size: int | None = None) -> str | None:
        """A server-side copy during which the store computes the copy's SHA-256 itself: returns
        it (hex), or None from a store that computes none (the caller then reads the bytes back)."""
        self.copy(src, dst, size)
        return None

    @abstractmethod
    def presigned_get_url(self, key: str, expires: timedelta) -> str: ...
