"""Object store on any S3 API (MinIO in production) through the minio SDK."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO
from xml.etree.ElementTree import ParseError

import certifi
import urllib3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError
from botocore.session import get_session
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.error import MinioException, S3Error

from wamfleet.platform.contracts.checksums import CHECKSUM_HEADER, sha256_base64, sha256_hex
from wamfleet.platform.storage.base import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PresignedPut,
    StorageError,
    validate_key,
    validate_prefix,
)

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_SINGLE_COPY = 5 * 1024**3  # larger sources need a multipart copy (compose)
POOL_SIZE = 64
_MISSING = {"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"}
# What a store call raises when the store or the link fails. A response cut short inside its
# headers reaches minio with partial values (urllib3 only logs it): a date that does not parse is
# a ValueError, an empty XML body a ParseError. Both are the store's failure (503), not ours (500).
TRANSPORT_ERRORS = (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError, ParseError)


class S3ObjectStore(ObjectStore):
    """One bucket; objects larger than `part_size` are uploaded as S3 multipart uploads."""

    def __init__(
        self,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        bucket: str,
        *,
        secure: bool = False,
        region: str | None = None,
        part_size: int = 16 * 1024 * 1024,
        create_bucket: bool = True,
        http_client: urllib3.PoolManager | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        self.bucket = bucket
        self.part_size = part_size
        self._endpoint = f"{'https' if secure else 'http'}://{endpoint}"
        self._credentials = (access_key, secret_key)
        self._region = region or "us-east-1"
        self._signer: Any = None  # botocore's S3 client, made on first use
        if http_client is None:
            # minio's own default, with a pool that fits the API server's concurrent handlers.
            http_client = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=30, read=300),
                maxsize=POOL_SIZE,
                cert_reqs="CERT_REQUIRED",
                ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
                retries=urllib3.Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            )
        self.client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http_client,
        )
        if create_bucket:
            try:
                if not self.client.bucket_exists(bucket):
                    self.client.make_bucket(bucket)
            except S3Error as exc:
                if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise StorageError(f"cannot create bucket {bucket!r}: {exc}") from exc
            except TRANSPORT_ERRORS as exc:
                raise StorageError(f"cannot reach the S3 API at {endpoint}: {exc}") from exc

    def _wrap(self, key: str, exc: Exception) -> StorageError:
        if isinstance(exc, S3Error) and exc.code in _MISSING:
            return ObjectNotFound(key)
        return StorageError(f"object store error on {key!r}: {exc}")

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self.put_stream(key, io.BytesIO(data), len(data))

    def put_stream(self, key: str, stream: BinaryIO, length: int) -> ObjectInfo:
        validate_key(key)
        try:
            self.client.put_object(self.bucket, key, stream, length, part_size=self.part_size)
        except TRANSPORT_ERRORS as exc:
            raise self._wrap(key, exc) from exc
        return ObjectInfo(key=key, size=length)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        validate_key(key)
        try:
            self.client.fput_object(self.bucket, key, str(path), part_size=self.part_size)
        except TRANSPORT_ERRORS as exc:
            raise self._wrap(key, exc) from exc
        return ObjectInfo(key=key, size=path.stat().st_size)

    def _read(self, key: str, sink: Callable[[bytes], object]) -> int:
        """Streams an object into `sink`; a response cut short is an error, never a short read.

        A connection dropped inside the response headers looks to the HTTP client like a
        complete response without Content-Length (so, 0 bytes): insist on the header and on
        receiving exactly that many bytes.
        """
        validate_key(key)
        response = None
        try:
            response = self.client.get_object(self.bucket, key)
            declared = response.headers.get("content-length")
            if declared is None:
                raise StorageError(f"object store error on {key!r}: response without Content-Length")
            received = 0
            for chunk in response.stream(1 << 20):
                sink(chunk)
                received += len(chunk)
            if received != int(declared):
                raise StorageError(f"object store error on {key!r}: got {received} of {declared} bytes")
            return received
        except TRANSPORT_ERRORS as exc:
            raise self._wrap(key, exc) from exc
        finally:
            if response is not None:
                response.close()
                response.release_conn()

    def get_bytes(self, key: str) -> bytes:
        buffer = io.BytesIO()
        self._read(key, buffer.write)
        return buffer.getvalue()

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        try:
            with open(part, "wb") as f:
                size = self._read(key, f.write)
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
        return ObjectInfo(key=key, size=size)

    def stat(self, key: str) -> ObjectInfo:
        validate_key(key)
        try:
            stat = self.client.stat_object(self.bucket, key)
        except TRANSPORT_ERRORS as exc:
            raise self._wrap(key, exc) from exc
        headers = stat.metadata or {}
        if "content-length" not in {k.lower() for k in headers} or not stat.etag:
            raise StorageError(f"object store error on {key!r}: incomplete HEAD response")
        return ObjectInfo(key=key, size=stat.size or 0, last_modified=stat.last_modified)

    def copy(self, src: str, dst: str, size: int | None = None) -> None:
        """One CopyObject request; sources over 5 GiB go through a multipart compose."""
        try:
            self._server_copy(src, dst, size, hash_sha256=False)
        except TRANSPORT_ERRORS as exc:
            raise self._wrap(src, exc) from exc

    def copy_verified(self, src: str, dst: str, size: int | None = None) -> str | None:
        """CopyObject with `x-amz-checksum-algorithm: SHA256`: the store hashes the bytes it
        copies, and HEAD (checksum mode) reports that hash. S3, MinIO and moto do; a store that
        reports none gets None (the caller reads back). Over 5 GiB (a compose): None."""
        try:
            if not self._server_copy(src, dst, size, hash_sha256=True):
                return None
            stat = self.client.stat_object(self.bucket, dst, extra_headers={"x-amz-checksum-mode": "ENABLED"})
        except TRANSPORT_ERRORS as exc:
            raise self._wrap(src, exc) from exc
        headers = {k.lower(): v for k, v in (stat.metadata or {}).items()}
        reported = headers.get(CHECKSUM_HEADER)
        return sha256_hex(reported) if isinstance(reported, str) else None

    def _server_copy(self, src: str, dst: str, size: int | None, *, hash_sha256: bool) -> bool:
        """One CopyObject, asking the store to hash the copy with `hash_sha256` (True), or a
        multipart compose for sources over 5 GiB, which asks nothing (False)."""
        validate_key(src)
        validate_key(dst)
        if size is None:
            size = self.stat(src).size
        if size > MAX_SINGLE_COPY:
            self.client.compose_object(self.bucket, dst, [ComposeSource(self.bucket, src)])
            return False
        algorithm: dict[str, str | list[str] | tuple[str]] = {"x-amz-checksum-algorithm": "SHA256"}
        self.client.copy_object(
            self.bucket, dst, CopySource(self.bucket, src), metadata=algorithm if hash_sha256 else None
        )
        return True

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        self._read(key, digest.update)
        return digest.hexdigest()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        try:
            for obj in self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True):
                if obj.is_dir or obj.object_name is None:
                    continue
                yield ObjectInfo(
                    key=obj.object_name,
                    size=obj.size or 0,
                    last_modified=obj.last_modified,
                )
        except TRANSPORT_ERRORS as exc:
            raise self._wrap(prefix, exc) from exc

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            self.client.remove_object(self.bucket, key)
        except TRANSPORT_ERRORS as exc:
            error = self._wrap(key, exc)
            if not isinstance(error, ObjectNotFound):
                raise error from exc

    def presigned_put_url(self, key: str, expires: timedelta) -> str:
        validate_key(key)
        try:
            return self.client.presigned_put_object(self.bucket, key, expires=expires)
        except TRANSPORT_ERRORS as exc:
            raise self._wrap(key, exc) from exc

    def presigned_put(self, key: str, expires: timedelta, sha256: str) -> PresignedPut:
        """PutObject presigned with the checksum as a signed header (botocore's presigner: minio's
        signs only `host`). S3 answers a PUT without it 403, and one whose body does not match
        it 400 BadDigest, storing nothing."""
        validate_key(key)
        checksum = sha256_base64(sha256)
        try:
            url = self._boto().generate_presigned_url(
                "put_object",
                Params={"Bucket": self.bucket, "Key": key, "ChecksumSHA256": checksum},
                ExpiresIn=int(expires.total_seconds()),
            )
        except BotoCoreError as exc:
            raise self._wrap(key, exc) from exc
        return PresignedPut(str(url), {CHECKSUM_HEADER: checksum})

    def _boto(self) -> Any:
        if self._signer is None:
            path_style = "amazonaws.com" not in self._endpoint  # MinIO and other hosts: path style
            self._signer = get_session().create_client(
                "s3",
                endpoint_url=self._endpoint,
                aws_access_key_id=self._credentials[0],
                aws_secret_access_key=self._credentials[1],
                region_name=self._region,
                config=BotoConfig(
                    signature_version="s3v4", s3={"addressing_style": "path" if path_style else "auto"}
                ),
            )
        return self._signer

    def presigned_get_url(self, key: str, expires: timedelta) -> str:
        validate_key(key)
        try:
            return self.client.presigned_get_object(self.bucket, key, expires=expires)
        except TRANSPORT_ERRORS as exc:
            raise self._wrap(key, exc) from exc
