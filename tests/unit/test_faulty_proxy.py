"""The fault-injecting proxy's byte flips and its S3-style checksum check, against a tiny HTTP server.

The chaos test trusts the proxy to refuse corrupted bodies the way S3 does (moto does not), so
these pin down what reaches the upstream, byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.support.faulty_proxy import FaultRates, FaultyProxy

TIMEOUT = httpx.Timeout(5.0)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    body: bytes


class RecordingServer(ThreadingHTTPServer):
    """Records every request that reaches it."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RecordingHandler)
        self.lock = threading.Lock()
        self.received: list[Received] = []

    def record(self, received: Received) -> None:
        with self.lock:
            self.received.append(received)

    def requests(self) -> list[Received]:
        with self.lock:
            return list(self.received)


class RecordingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients use it
    timeout = 10  # a stuck connection fails the test instead of hanging it

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked_body()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _chunked_body(self) -> bytes:
        body = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b""):
            pass  # trailers
        return body

    def _answer(self) -> None:
        body = self._body()
        assert isinstance(self.server, RecordingServer)
        self.server.record(Received(self.command, self.path, body))
        reply = b"stored" if body else b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_PUT = _answer
    do_GET = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[RecordingServer]:
    server = RecordingServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def proxied(
    server: RecordingServer, rates: FaultRates | None = None, *, verify: bool
) -> Iterator[tuple[FaultyProxy, httpx.Client]]:
    """A proxy in front of `server` and a keep-alive client that talks through it."""
    host, port = server.server_address[:2]
    proxy = FaultyProxy(f"{host!s}:{port}", rates, seed=7, verify_checksums=verify, drain_timeout_s=1.0)
    with proxy, httpx.Client(base_url=f"http://{proxy.endpoint}", timeout=TIMEOUT, trust_env=False) as client:
        yield proxy, client


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def checksum(data: bytes) -> dict[str, str]:
    return {"x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(data).digest()).decode()}


def one_byte_flipped(original: bytes, received: bytes) -> bool:
    differing = [i for i, (a, b) in enumerate(zip(original, received, strict=True)) if a != b]
    return len(differing) == 1 and original[differing[0]] ^ 0xFF == received[differing[0]]


def test_a_body_that_matches_its_checksum_reaches_the_upstream_whole(upstream: RecordingServer) -> None:
    data = payload(200_000)
    with proxied(upstream, verify=True) as (proxy, client):
        response = client.put("/bucket/key", content=data, headers=checksum(data))
        assert response.status_code == 200, response.text
        counts = proxy.counts()
    assert upstream.requests() == [Received("PUT", "/bucket/key", data)]
    assert counts["refused_checksum"] == 0
    assert counts["flip_byte"] == 0


def test_a_flipped_byte_is_refused_with_bad_digest_and_never_reaches_the_upstream(
    upstream: RecordingServer,
) -> None:
    data = payload(100_000)
    with proxied(upstream, FaultRates(flip_byte=1.0), verify=True) as (proxy, client):
        response = client.put("/bucket/bad", content=data, headers=checksum(data))
        assert response.status_code == 400
        assert "<Code>BadDigest</Code>" in response.text
        assert response.headers["content-type"] == "application/xml"
        assert response.headers["connection"] == "close"
        counts = proxy.counts()
        # The network heals: the same PUT goes through, and it is all the upstream ever saw.
        proxy.pass_through()
        response = client.put("/bucket/good", content=data, headers=checksum(data))
        assert response.status_code == 200, response.text
    assert counts["flip_byte"] == 1
    assert counts["refused_checksum"] == 1
    assert upstream.requests() == [Received("PUT", "/bucket/good", data)]


def test_without_verification_a_flipped_byte_reaches_the_upstream(upstream: RecordingServer) -> None:
    data = payload(100_000, seed=1)
    with proxied(upstream, FaultRates(flip_byte=1.0), verify=False) as (proxy, client):
        # A request without a body first: the flip waits for the first body.
        assert client.get("/bucket").status_code == 200
        response = client.put("/bucket/key", content=data, headers=checksum(data))
        assert response.status_code == 200, response.text
        counts = proxy.counts()
    (get, put) = upstream.requests()
    assert get == Received("GET", "/bucket", b"")
    assert put.path == "/bucket/key"
    assert one_byte_flipped(data, put.body)
    assert counts["flip_byte"] == 1
    assert counts["refused_checksum"] == 0


def test_requests_on_one_keep_alive_connection_are_each_verified(upstream: RecordingServer) -> None:
    first, second = payload(70_000, seed=2), payload(130_000, seed=3)
    with proxied(upstream, verify=True) as (proxy, client):
        assert client.put("/bucket/1", content=first, headers=checksum(first)).status_code == 200
        assert client.get("/bucket").status_code == 200
        assert client.put("/bucket/2", content=second, headers=checksum(second)).status_code == 200
        # The third carries the checksum of other bytes: refused, on the same connection.
        refused = client.put("/bucket/3", content=first, headers=checksum(second))
        counts = proxy.counts()
    assert refused.status_code == 400
    assert "BadDigest" in refused.text
    assert upstream.requests() == [
        Received("PUT", "/bucket/1", first),
        Received("GET", "/bucket", b""),
        Received("PUT", "/bucket/2", second),
    ]
    assert counts["connections"] == 1
    assert counts["refused_checksum"] == 1


def test_a_body_without_a_checksum_is_forwarded_unverified(upstream: RecordingServer) -> None:
    data = payload(50_000, seed=4)
    with proxied(upstream, FaultRates(flip_byte=1.0), verify=True) as (proxy, client):
        response = client.put("/bucket/key", content=data)
        assert response.status_code == 200, response.text
        counts = proxy.counts()
    (put,) = upstream.requests()
    assert one_byte_flipped(data, put.body)  # nothing to check it against: it is stored flipped
    assert counts["flip_byte"] == 1
    assert counts["refused_checksum"] == 0


def test_a_chunked_body_is_forwarded_unverified_and_framing_carries_on(upstream: RecordingServer) -> None:
    data = payload(40_000, seed=5)
    with proxied(upstream, verify=True) as (proxy, client):
        # An iterator body goes out chunked: no Content-Length, so it is not verified.
        chunks = iter([data[:10_000], data[10_000:]])
        response = client.put("/bucket/chunked", content=chunks, headers=checksum(b"other bytes"))
        assert response.status_code == 200, response.text
        refused = client.put("/bucket/next", content=data, headers=checksum(b"other bytes"))
        counts = proxy.counts()
    assert refused.status_code == 400
    assert upstream.requests() == [Received("PUT", "/bucket/chunked", data)]
    assert counts["connections"] == 1
    assert counts["refused_checksum"] == 1


def test_a_signed_payload_digest_is_checked_too(upstream: RecordingServer) -> None:
    """SigV4 clients over plain HTTP (minio) send x-amz-content-sha256 and no checksum header."""
    data = payload(30_000, seed=6)
    signed = {"x-amz-content-sha256": hashlib.sha256(data).hexdigest()}
    with proxied(upstream, verify=True) as (proxy, client):
        assert client.put("/bucket/ok", content=data, headers=signed).status_code == 200
        refused = client.put("/bucket/bad", content=data[::-1], headers=signed)
        counts = proxy.counts()
    assert refused.status_code == 400
    assert "<Code>XAmzContentSHA256Mismatch</Code>" in refused.text
    assert upstream.requests() == [Received("PUT", "/bucket/ok", data)]
    assert counts["refused_checksum"] == 1


def test_the_other_faults_still_happen_with_verification_on(upstream: RecordingServer) -> None:
    data = payload(20_000, seed=7)
    with proxied(upstream, FaultRates(slow_down=1.0), verify=True) as (proxy, client):
        assert client.put("/bucket/key", content=data, headers=checksum(data)).status_code == 503
        proxy.set_faults(drop_response=1.0)
        with pytest.raises(httpx.HTTPError):
            client.put("/bucket/key", content=data, headers=checksum(data))
        counts = proxy.counts()
    assert counts["slow_down"] == 1
    assert counts["drop_response"] == 1
    assert upstream.requests() == [Received("PUT", "/bucket/key", data)]  # it got there, its answer did not


def test_the_first_body_is_flipped_once_flips_are_on_however_rare(upstream: RecordingServer) -> None:
    """A chaos test whose robots upload a few dozen bodies at a 0.1 flip rate saw none in about
    one run in ten; the first body after the rate turns on is flipped whatever the roll."""
    first, second = payload(50_000, seed=2), payload(50_000, seed=3)
    with proxied(upstream, verify=False) as (proxy, client):
        assert client.put("/bucket/before", content=first).status_code == 200
        proxy.set_faults(flip_byte=1e-9)  # for connections accepted from now on
        with httpx.Client(base_url=f"http://{proxy.endpoint}", timeout=TIMEOUT, trust_env=False) as fresh:
            assert fresh.put("/bucket/one", content=first).status_code == 200
            assert fresh.put("/bucket/two", content=second).status_code == 200
        counts = proxy.counts()
    before, one, two = upstream.requests()
    assert before.body == first and two.body == second
    assert one_byte_flipped(first, one.body)
    assert counts["flip_byte"] == 1
