"""Object store on a local directory: the embedded default for one machine and for tests."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlencode

from wamfleet.platform.contracts.checksums import CHECKSUM_HEADER, sha256_base64, sha256_file
from wamfleet.platform.storage.base import (
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PresignedPut,
    StorageError,
    validate_key,
    validate_prefix,
)

_COPY_CHUNK = 1 << 20


class LocalObjectStore(ObjectStore):
    """Keys map to files under `root`; writes land in `root/.tmp` and are renamed into place.

    Presigned URLs point at `url_base` (the platform API serves `/objects/<key>`), signed with
    an HMAC key kept in `root/.signing-key`, so URLs survive a restart of the server.
    """

    def __init__(self, root: Path, url_base: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(exist_ok=True)
        self.url_base = url_base.rstrip("/") if url_base else None
        self._signing_key = self._load_signing_key()

    def _load_signing_key(self) -> bytes:
        path = self.root / ".signing-key"
        if not path.exists():
            tmp = self._tmp / f"signing-key-{uuid.uuid4().hex}"
            tmp.write_bytes(secrets.token_bytes(32))
            tmp.chmod(0o600)
            try:
                os.link(tmp, path)  # first writer wins; never overwrite a key URLs depend on
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_bytes()

    def _path(self, key: str) -> Path:
        validate_key(key)
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidKey(f"object key {key!r} escapes the store root")
        return path

    def _info(self, key: str, path: Path) -> ObjectInfo:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        if not path.is_file():
            raise ObjectNotFound(key)
        return ObjectInfo(
            key=key,
            size=st.st_size,
            last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
        )

    def _commit(self, tmp: Path, key: str, path: Path) -> ObjectInfo:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
        except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot store {key!r}: a key and a key prefix collide ({exc})") from exc
        return self._info(key, path)

    def _new_tmp(self) -> Path:
        return self._tmp / uuid.uuid4().hex

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        path = self._path(key)
        tmp = self._new_tmp()
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return self._commit(tmp, key, path)

    def put_stream(self, key: str, stream: BinaryIO, length: int) -> ObjectInfo:
        path = self._path(key)
        tmp = self._new_tmp()
        remaining = length
        try:
            with open(tmp, "wb") as f:
                while remaining > 0:
                    chunk = stream.read(min(_COPY_CHUNK, remaining))
                    if not chunk:
                        raise StorageError(f"stream for {key!r} ended {remaining} bytes short of {length}")
                    f.write(chunk)
                    remaining -= len(chunk)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self._commit(tmp, key, path)

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        """A file to write an object into; it appears at `key` only if the block succeeds."""
        path = self._path(key)
        tmp = self._new_tmp()
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._commit(tmp, key, path)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(key) from None

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        src = self._path(key)
        info = self._info(key, src)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        try:
            shutil.copyfile(src, part)
            os.replace(part, path)
        except FileNotFoundError:
            part.unlink(missing_ok=True)
            raise ObjectNotFound(key) from None
        return info

    def stat(self, key: str) -> ObjectInfo:
        return self._info(key, self._path(key))

    def copy(self, src: str, dst: str, size: int | None = None) -> None:
        source = self._path(src)
        target = self._path(dst)
        tmp = self._new_tmp()
        try:
            shutil.copyfile(source, tmp)
        except (FileNotFoundError, IsADirectoryError):
            tmp.unlink(missing_ok=True)
            raise ObjectNotFound(src) from None
        self._commit(tmp, dst, target)

    def copy_verified(self, src: str, dst: str, size: int | None = None) -> str | None:
        """Copies and hashes in one read: the digest is of the bytes the copy holds."""
        source = self._path(src)
        target = self._path(dst)
        tmp = self._new_tmp()
        digest = hashlib.sha256()
        try:
            with open(source, "rb") as fin, open(tmp, "wb") as fout:
                while chunk := fin.read(_COPY_CHUNK):
                    digest.update(chunk)
                    fout.write(chunk)
        except (FileNotFoundError, IsADirectoryError):
            tmp.unlink(missing_ok=True)
            raise ObjectNotFound(src) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._commit(tmp, dst, target)
        return digest.hexdigest()

    def sha256(self, key: str) -> str:
        path = self._path(key)
        try:
            return sha256_file(path)
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(key) from None

    def local_path(self, key: str) -> Path:
        """Where an object lives on disk (for streaming it back over HTTP)."""
        path = self._path(key)
        self._info(key, path)
        return path

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        # Walk only the directory the prefix points into, then filter by the full prefix.
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        for key in sorted(keys):
            try:
                yield self._info(key, self.root / key)
            except ObjectNotFound:
                continue  # deleted while listing

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except IsADirectoryError:
            return
        # Prune now-empty parent directories so listings and disk stay tidy.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    # Presigned URLs -----------------------------------------------------------------------

    def _signature(self, method: str, key: str, expires_at: int, checksum: str = "") -> str:
        msg = f"{method}\n{key}\n{expires_at}".encode()
        if checksum:  # URLs without one keep the signature they always had
            msg += f"\n{checksum}".encode()
        return hmac.new(self._signing_key, msg, hashlib.sha256).hexdigest()

    def _presign(self, method: str, key: str, expires: timedelta, checksum: str = "") -> str:
        validate_key(key)
        if self.url_base is None:
            raise StorageError(
                "the local object store has no url_base: presigned URLs are served by the platform API"
            )
        if expires.total_seconds() <= 0:
            raise ValueError("expires must be positive")
        expires_at = int(time.time() + expires.total_seconds())
        params: dict[str, str | int] = {"expires": expires_at}
        if checksum:
            params["checksum"] = checksum
        params["signature"] = self._signature(method, key, expires_at, checksum)
        return f"{self.url_base}/{quote(key)}?{urlencode(params)}"

    def presigned_put_url(self, key: str, expires: timedelta) -> str:
        return self._presign("PUT", key, expires)

    def presigned_put(self, key: str, expires: timedelta, sha256: str) -> PresignedPut:
        """The checksum is signed into the URL, as S3 signs its header: the platform's PUT
        handler hashes the body as it arrives and keeps nothing that does not match."""
        checksum = sha256_base64(sha256)
        return PresignedPut(self._presign("PUT", key, expires, checksum), {CHECKSUM_HEADER: checksum})

    def presigned_get_url(self, key: str, expires: timedelta) -> str:
        return self._presign("GET", key, expires)

    def verify_presigned(
        self, method: str, key: str, expires_at: int, signature: str, checksum: str = ""
    ) -> None:
        """Raises PermissionError unless the URL was signed here for this method, key and checksum."""
        validate_key(key)
        expected = self._signature(method.upper(), key, expires_at, checksum)
        # Bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500 before).
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "surrogateescape")):
            raise PermissionError("signature does not match this method and key")
        if time.time() > expires_at:
            raise PermissionError("presigned URL has expired")
