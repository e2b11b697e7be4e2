"""One suite, both backends: the local directory store and S3 (moto's server on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
import urllib3

from tests.conftest import make_s3_store
from wamfleet.platform.contracts.checksums import CHECKSUM_HEADER, sha256_base64
from wamfleet.platform.storage import InvalidKey, LocalObjectStore, ObjectNotFound, ObjectStore, StorageError


def test_put_get_stat_delete(object_store: ObjectStore) -> None:
    info = object_store.put_bytes("a/b/c.bin", b"hello")
    assert info.size == 5
    assert object_store.get_bytes("a/b/c.bin") == b"hello"
    assert object_store.stat("a/b/c.bin").size == 5
    assert object_store.exists("a/b/c.bin")
    object_store.put_bytes("a/b/c.bin", b"replaced")
    assert object_store.get_bytes("a/b/c.bin") == b"replaced"
    object_store.delete("a/b/c.bin")
    assert not object_store.exists("a/b/c.bin")
    object_store.delete("a/b/c.bin")  # deleting twice is fine


def test_missing_objects_raise_object_not_found(object_store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        object_store.get_bytes("nope/x")
    with pytest.raises(ObjectNotFound):
        object_store.stat("nope/x")
    with pytest.raises(ObjectNotFound):
        object_store.get_file("nope/x", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_list_is_recursive_sorted_and_prefix_filtered(object_store: ObjectStore) -> None:
    for key in [
        "ep/r2/x/manifest.json",
        "ep/r1/y/data.parquet",
        "ep/r1/x/data.parquet",
        "other/z",
        "ep/r10/q",
    ]:
        object_store.put_bytes(key, key.encode())
    assert [i.key for i in object_store.list("ep/r1/")] == ["ep/r1/x/data.parquet", "ep/r1/y/data.parquet"]
    assert [i.key for i in object_store.list("ep/r1")] == [
        "ep/r1/x/data.parquet",
        "ep/r1/y/data.parquet",
        "ep/r10/q",
    ]
    assert len(list(object_store.list(""))) == 5
    assert list(object_store.list("absent/")) == []


def test_files_and_streams(object_store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 100)
    assert object_store.put_file("f/src.bin", src).size == 25600
    out = tmp_path / "nested" / "out.bin"
    assert object_store.get_file("f/src.bin", out).size == 25600
    assert out.read_bytes() == src.read_bytes()
    object_store.put_stream("f/stream", io.BytesIO(b"0123456789"), 10)
    assert object_store.get_bytes("f/stream") == b"0123456789"


@pytest.mark.parametrize(
    "key",
    [
        "../escape",
        "a/../../escape",
        "/abs/path",
        "a//b",
        "a/./b",
        "a\\b",
        "",
        "a/.hidden",
        "a/b c",
        "x" * 1100,
    ],
)
def test_keys_that_escape_or_are_malformed_are_rejected(object_store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        object_store.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        object_store.get_bytes(key)


def test_presigned_get_url_expires_in_the_future(object_store: ObjectStore) -> None:
    object_store.put_bytes("p/q", b"payload")
    url = object_store.presigned_get_url("p/q", timedelta(minutes=5))
    assert url.startswith("http://127.0.0.1:")
    assert "p/q" in url


def test_large_object_goes_through_multipart(moto_endpoint: str) -> None:
    store = make_s3_store(moto_endpoint, part_size=5 * 1024 * 1024)
    blob = bytes(range(256)) * (13 * 1024 * 1024 // 256)  # 13 MiB: three parts
    store.put_stream("big/blob", io.BytesIO(blob), len(blob))
    assert store.stat("big/blob").size == len(blob)
    assert store.get_bytes("big/blob") == blob


def test_s3_part_size_below_minimum_is_refused(moto_endpoint: str) -> None:
    with pytest.raises(ValueError, match="part_size"):
        make_s3_store(moto_endpoint, part_size=1024)


def test_s3_presigned_put_and_get_work_over_http(moto_endpoint: str) -> None:
    store = make_s3_store(moto_endpoint)
    put_url = store.presigned_put_url("robots/r1/upload.bin", timedelta(minutes=5))
    assert httpx.put(put_url, content=b"from a robot").status_code == 200
    assert store.get_bytes("robots/r1/upload.bin") == b"from a robot"
    get_url = store.presigned_get_url("robots/r1/upload.bin", timedelta(minutes=5))
    assert httpx.get(get_url).content == b"from a robot"
    assert "X-Amz-Expires=300" in get_url


def test_s3_unreachable_server_raises_storage_error() -> None:
    import urllib3

    no_retry = urllib3.PoolManager(retries=False, timeout=2)
    with pytest.raises(StorageError):
        make_s3_store("127.0.0.1:9", http_client=no_retry)


def test_local_presigned_urls_are_signed_per_method_and_key(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path, url_base="http://127.0.0.1:8080/objects")
    url = store.presigned_put_url("episodes/r1/e/data.parquet", timedelta(minutes=1))
    parsed = urlparse(url)
    assert parsed.path == "/objects/episodes/r1/e/data.parquet"
    query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    expires, signature = int(query["expires"]), query["signature"]
    store.verify_presigned("PUT", "episodes/r1/e/data.parquet", expires, signature)
    with pytest.raises(PermissionError, match="signature"):
        store.verify_presigned("GET", "episodes/r1/e/data.parquet", expires, signature)
    with pytest.raises(PermissionError, match="signature"):
        store.verify_presigned("PUT", "episodes/r2/e/data.parquet", expires, signature)
    with pytest.raises(PermissionError, match="signature"):
        store.verify_presigned("PUT", "episodes/r1/e/data.parquet", expires + 3600, signature)
    # The signing key survives a restart: URLs handed out before stay valid.
    LocalObjectStore(tmp_path).verify_presigned("PUT", "episodes/r1/e/data.parquet", expires, signature)


def test_local_presigned_url_expiry(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path, url_base="http://127.0.0.1:8080/objects")
    expired_at = 1_000_000
    signature = store._signature("GET", "a/b", expired_at)
    with pytest.raises(PermissionError, match="expired"):
        store.verify_presigned("GET", "a/b", expired_at, signature)


def test_local_store_without_url_base_cannot_presign(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="url_base"):
        LocalObjectStore(tmp_path).presigned_get_url("a/b", timedelta(minutes=1))


def test_local_writes_are_atomic(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put_bytes("k/v", b"original")

    class Exploding(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() > 0:
                raise OSError("link dropped")
            return super().read(4)

    with pytest.raises(OSError, match="link dropped"):
        store.put_stream("k/v", Exploding(b"new content!"), 12)
    assert store.get_bytes("k/v") == b"original"  # the old object is intact
    with pytest.raises(StorageError, match="short"):
        store.put_stream("k/w", io.BytesIO(b"abc"), 10)
    assert not store.exists("k/w")
    assert list((tmp_path / ".tmp").iterdir()) == []  # no temp files left behind
    assert [i.key for i in store.list("")] == ["k/v"]


def test_local_store_rejects_symlink_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    store = LocalObjectStore(root)
    (root / "link").symlink_to(outside)
    with pytest.raises(InvalidKey, match="escapes"):
        store.put_bytes("link/x", b"x")
    assert list(outside.iterdir()) == []


def test_copy_and_sha256(object_store: ObjectStore) -> None:
    import hashlib

    payload = b"episode bytes" * 1000
    object_store.put_bytes("uploads/s1/data.parquet", payload)
    object_store.copy("uploads/s1/data.parquet", "episodes/r/e/data.parquet")
    assert object_store.stat("episodes/r/e/data.parquet").size == len(payload)
    assert object_store.get_bytes("episodes/r/e/data.parquet") == payload
    assert object_store.sha256("episodes/r/e/data.parquet") == hashlib.sha256(payload).hexdigest()
    with pytest.raises(ObjectNotFound):
        object_store.copy("uploads/none", "episodes/x")
    with pytest.raises(ObjectNotFound):
        object_store.sha256("uploads/none")


def test_s3_responses_cut_short_are_errors_not_short_reads(moto_endpoint: str) -> None:
    """Regression: a response cut inside its headers once read as size 0 / the empty sha256."""
    import socket
    import threading

    direct = make_s3_store(moto_endpoint)
    direct.put_bytes("uploads/s/videos/wrist.mp4", b"x" * 26_224)
    host, port = moto_endpoint.split(":")
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def cut_after_status_line() -> None:
        # Forwards each request, then returns only the status line and one header.
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            with client, socket.create_connection((host, int(port))) as upstream:
                upstream.sendall(client.recv(65536))
                response = upstream.recv(65536)
                client.sendall(response[: response.index(b"\r\n") + 2] + b"Server: cut\r\n")

    thread = threading.Thread(target=cut_after_status_line, daemon=True)
    thread.start()
    try:
        no_retry = urllib3.PoolManager(retries=False, timeout=5)
        endpoint = f"127.0.0.1:{listener.getsockname()[1]}"
        via = make_s3_store(endpoint, direct.bucket, create_bucket=False, http_client=no_retry)
        for read in (via.stat, via.sha256, via.get_bytes):
            with pytest.raises(StorageError):
                read("uploads/s/videos/wrist.mp4")
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_copy_verified_reports_the_sha256_of_the_bytes_copied(object_store: ObjectStore) -> None:
    """The commit's fast path: the store hashes what it copies (S3/MinIO/moto: CopyObject with
    x-amz-checksum-algorithm SHA256; the local store while it copies), so nobody reads it back."""
    data = b"episode bytes" * 1000
    object_store.put_bytes("uploads/s/data.bin", data)
    digest = object_store.copy_verified("uploads/s/data.bin", "commits/s/a/data.bin", len(data))
    assert digest == hashlib.sha256(data).hexdigest()
    assert object_store.get_bytes("commits/s/a/data.bin") == data
    with pytest.raises(ObjectNotFound):
        object_store.copy_verified("uploads/s/none.bin", "commits/s/a/none.bin", 1)


def test_s3_presigned_put_signs_the_checksum_header(moto_endpoint: str) -> None:
    """minio's presigner signs only `host`; the checksum must be a signed header, or S3 ignores
    it (a query parameter is not checked) and a damaged body would be stored."""
    store = make_s3_store(moto_endpoint)
    data = b"from a robot"
    put = store.presigned_put("robots/r1/upload.bin", timedelta(minutes=5), hashlib.sha256(data).hexdigest())
    query = {k: v[0] for k, v in parse_qs(urlparse(put.url).query).items()}
    assert query["X-Amz-SignedHeaders"].split(";") == ["host", CHECKSUM_HEADER]
    assert put.headers == {CHECKSUM_HEADER: sha256_base64(hashlib.sha256(data).hexdigest())}
    assert httpx.put(put.url, content=data, headers=put.headers).status_code == 200
    assert store.get_bytes("robots/r1/upload.bin") == data


def test_local_presigned_put_binds_the_checksum_into_its_signature(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path, url_base="http://127.0.0.1:8080/objects")
    digest = hashlib.sha256(b"x").hexdigest()
    put = store.presigned_put("uploads/s/data.parquet", timedelta(minutes=1), digest)
    query = {k: v[0] for k, v in parse_qs(urlparse(put.url).query).items()}
    assert query["checksum"] == put.headers[CHECKSUM_HEADER] == sha256_base64(digest)
    expires, signature = int(query["expires"]), query["signature"]
    store.verify_presigned("PUT", "uploads/s/data.parquet", expires, signature, query["checksum"])
    other = sha256_base64(hashlib.sha256(b"y").hexdigest())
    with pytest.raises(PermissionError, match="signature"):  # a swapped checksum breaks the URL
        store.verify_presigned("PUT", "uploads/s/data.parquet", expires, signature, other)


class _CutShort:
    """An S3 endpoint whose every answer is a response cut off as a bad link cuts it: the status
    line and headers whole except the last, whose value stops mid-way, or an XML body that is empty."""

    def __init__(self, response: bytes) -> None:
        import socket
        import threading

        self.response = response
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(self.response)


@pytest.mark.parametrize(
    ("call", "response"),
    [
        pytest.param(
            "stat",
            b'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nETag: "abc"\r\nLast-Modified: Fri, 04 De\r\n\r\n',
            id="stat-date-cut",
        ),
        pytest.param(
            "copy",
            b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: 0\r\n\r\n",
            id="copy-empty-xml",
        ),
    ],
)
def test_a_response_cut_short_is_a_storage_error_not_a_crash(call: str, response: bytes) -> None:
    """Seen under the chaos proxy: minio raised ValueError and ParseError, which the API answered
    as 500s; a store that fails is a StorageError (503, retry)."""
    server = _CutShort(response)
    try:
        store = make_s3_store(server.endpoint, "cut-short", create_bucket=False)
        action = (
            (lambda: store.stat("a/b.bin")) if call == "stat" else (lambda: store.copy("a/b.bin", "a/c.bin"))
        )
        with pytest.raises(StorageError):
            action()
    finally:
        server.sock.close()
