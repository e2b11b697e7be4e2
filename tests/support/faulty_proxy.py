"""A fault-injecting TCP proxy for tests: an unreliable network in front of a real server.

Every accepted connection meets one fate, drawn with the configured probabilities:

- `slow_down`: answered `HTTP/1.1 503 Slow Down` without reaching the upstream;
- `drop_request`: closed after reading part of the request (a prefix of what was read is
  forwarded, so the upstream sees a truncated request too);
- `drop_response`: forwarded, but the first response is cut off: with probability
  `header_cut_share` inside its status line and headers, else inside its body (a response
  without a body of at least 2 bytes then goes through whole, and no fault is counted);
- `flip_byte`: forwarded, but the first request with a body of at least 1 byte (a PUT of an
  object) has one byte of its body flipped (XOR 0xFF, at a seeded random position), as a bad
  link would; in a chunked body, the byte is in the first non-empty chunk. Besides, every
  later request with a length-framed body, on any parsed connection, is flipped with the same
  probability: a flip-fated connection that carries only a GET flips nothing, and a test that
  needs flips to happen should not hang on the few connections that carry uploads. And the
  first length-framed body after the flip rate turns non-zero is always flipped: a short test
  whose robots upload only a few dozen bodies still sees a flip (at 0.1, about one run in ten
  of 20 bodies saw none);
- otherwise forwarded both ways untouched.

Faults are counted when they actually happen. `set_faults(0, 0, 0)`, or `pass_through()`,
switches the proxy to a plain forwarder at runtime; connections already accepted keep their fate.

moto's S3 server stores whatever body it gets; real S3 and MinIO check it against the request's
digests. With `verify_checksums=True` the proxy does that check for it, on every connection that
forwards requests: a request with a Content-Length body and an `x-amz-checksum-sha256` header
(base64 SHA-256) or a signed `x-amz-content-sha256` (hex SHA-256, what SigV4 clients such as
minio send over plain HTTP) is read whole, after any flip, and if the body does not match, it is
not forwarded: the client gets S3's `400` (`BadDigest`, or `XAmzContentSHA256Mismatch`) and the
connection is closed, counted as `refused_checksum`. Requests without those headers, chunked
ones and `aws-chunked` ones (whose framing the proxy does not decode) are forwarded unverified. A
client that waits for `100 Continue` before sending a body to verify sends it after its own
timeout, since the proxy only forwards the request once it holds the whole body.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import random
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

SLOW_DOWN_RESPONSE = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
)
FAULTS = ("slow_down", "drop_request", "drop_response", "flip_byte")
MAX_HEADER_BYTES = 64 * 1024
_HEX_SHA256 = re.compile(rb"[0-9a-fA-F]{64}")


def _s3_error(code: str, message: str) -> bytes:
    """S3's answer to a request it refuses: 400 with an XML error, and the connection closed."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()
    head = (
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


BAD_DIGEST_RESPONSE = _s3_error(
    "BadDigest", "The SHA256 you specified did not match the calculated checksum."
)
CONTENT_SHA256_MISMATCH_RESPONSE = _s3_error(
    "XAmzContentSHA256Mismatch",
    "The provided 'x-amz-content-sha256' header does not match what was computed.",
)


@dataclass(frozen=True)
class FaultRates:
    slow_down: float = 0.0
    drop_request: float = 0.0
    drop_response: float = 0.0
    flip_byte: float = 0.0

    def __post_init__(self) -> None:
        rates = (self.slow_down, self.drop_request, self.drop_response, self.flip_byte)
        if any(r < 0 for r in rates) or sum(rates) > 1.0:
            raise ValueError(f"fault probabilities must be >= 0 and sum to at most 1: {rates}")


class FaultyProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to `upstream` ("host:port").

    `verify_checksums` makes it refuse bodies that do not match their digest headers, as S3 does.
    """

    def __init__(
        self,
        upstream: str,
        rates: FaultRates | None = None,
        *,
        seed: int | None = None,
        header_cut_share: float = 0.5,
        buffer_size: int = 64 * 1024,
        drain_timeout_s: float = 2.0,
        drain_limit: int = 64 * 1024 * 1024,
        connect_timeout_s: float = 5.0,
        verify_checksums: bool = False,
    ) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self._rates = rates or FaultRates()
        self._rng = random.Random(seed)
        self._flip_owed = self._rates.flip_byte > 0  # the next body is flipped, whatever the roll
        if not 0.0 <= header_cut_share <= 1.0:
            raise ValueError(f"header_cut_share must be in [0, 1]: {header_cut_share}")
        self._header_cut_share = header_cut_share
        self._buffer_size = buffer_size
        self._drain_timeout_s = drain_timeout_s
        self._drain_limit = drain_limit
        self._connect_timeout_s = connect_timeout_s
        self._verify_checksums = verify_checksums
        self._lock = threading.Lock()
        self._counts = dict.fromkeys((*FAULTS, "refused_checksum", "forwarded", "connections"), 0)
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.port = 0

    # Lifecycle ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """host:port to give clients instead of the upstream's."""
        if not self.port:
            raise RuntimeError("the proxy is not started")
        return f"127.0.0.1:{self.port}"

    def start(self) -> Self:
        if self._listener is not None:
            raise RuntimeError("the proxy is already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.settimeout(0.2)  # accept() wakes up this often to notice stop()
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="faulty-proxy-accept", daemon=True)
        self._acceptor.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops accepting, closes every connection and joins every thread."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout_s)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            _shutdown(sock)  # wakes any thread blocked in recv() on it
        for thread in threads:
            thread.join(timeout_s)
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()
            alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"proxy threads did not stop: {alive}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # Control -----------------------------------------------------------------------------

    @property
    def rates(self) -> FaultRates:
        with self._lock:
            return self._rates

    def set_faults(
        self,
        slow_down: float = 0.0,
        drop_request: float = 0.0,
        drop_response: float = 0.0,
        flip_byte: float = 0.0,
    ) -> None:
        rates = FaultRates(slow_down, drop_request, drop_response, flip_byte)
        with self._lock:
            # Owed when flips turn on; a flip still owed stays owed while they stay on.
            self._flip_owed = flip_byte > 0 and (self._flip_owed or self._rates.flip_byte == 0)
            self._rates = rates

    def pass_through(self) -> None:
        self.set_faults(0.0, 0.0, 0.0)

    def counts(self) -> dict[str, int]:
        """Faults injected so far per kind, plus `refused_checksum` (bodies refused as S3 would),
        `forwarded` (connections forwarded untouched) and `connections` accepted."""
        with self._lock:
            return dict(self._counts)

    @property
    def faults_injected(self) -> int:
        counts = self.counts()
        return sum(counts[f] for f in FAULTS)

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    # Connections -------------------------------------------------------------------------

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._stopping.is_set():
                return False
            self._sockets.add(sock)
            return True

    def _release(self, *socks: socket.socket) -> None:
        for sock in socks:
            _shutdown(sock)
            sock.close()
        with self._lock:
            for sock in socks:
                self._sockets.discard(sock)

    def _spawn(self, target: Callable[..., None], *args: object, name: str) -> threading.Thread | None:
        def run() -> None:
            try:
                target(*args)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            if self._stopping.is_set():
                return None
            self._threads.add(thread)
        thread.start()
        return thread

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            client.settimeout(None)
            if not self._track(client):
                client.close()
                return
            with self._lock:
                self._counts["connections"] += 1
                rates = self._rates
                roll = self._rng.random()
                share = self._rng.random()  # where in the request or response to cut
                in_headers = self._rng.random() < self._header_cut_share
            if roll < rates.slow_down:
                fate = "slow_down"
            elif roll < rates.slow_down + rates.drop_request:
                fate = "drop_request"
            elif roll < rates.slow_down + rates.drop_request + rates.drop_response:
                fate = "drop_response"
            elif roll < rates.slow_down + rates.drop_request + rates.drop_response + rates.flip_byte:
                fate = "flip_byte"  # `share` then places the flipped byte in the body
            else:
                fate = "forward"
            self._spawn(self._handle, client, fate, share, in_headers, name=f"faulty-proxy-{fate}")

    def _handle(self, client: socket.socket, fate: str, share: float, in_headers: bool) -> None:
        if fate == "slow_down":
            self._slow_down(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=self._connect_timeout_s)
        except OSError:
            self._release(client)
            return
        upstream.settimeout(None)
        if not self._track(upstream):
            upstream.close()
            self._release(client)
            return
        if fate == "drop_request":
            self._drop_request(client, upstream, share)
            return
        flip_share = share if fate == "flip_byte" else None
        parse = self._verify_checksums or flip_share is not None or self._rates.flip_byte > 0

        def requests() -> None:
            if parse:
                self._pump_requests(client, upstream, flip_share)
            else:
                self._pump(client, upstream)

        def responses() -> None:
            if fate == "drop_response":
                self._cut_response(upstream, client, in_headers, share)
            else:
                self._pump(upstream, client)

        if fate == "forward":
            self._count("forwarded")
        self._forward(client, upstream, requests, responses)

    def _slow_down(self, client: socket.socket) -> None:
        try:
            self._count("slow_down")
            client.sendall(SLOW_DOWN_RESPONSE)
            client.shutdown(socket.SHUT_WR)
            self._drain(client)
        except OSError:
            pass
        finally:
            self._release(client)

    def _drain(self, client: socket.socket) -> None:
        """Reads what the client still sends (a request body) so that closing does not reset the
        connection before the client has read the answer it was sent."""
        client.settimeout(self._drain_timeout_s)
        drained = 0
        while drained < self._drain_limit and not self._stopping.is_set():
            data = client.recv(self._buffer_size)
            if not data:
                break
            drained += len(data)

    def _drop_request(self, client: socket.socket, upstream: socket.socket, share: float) -> None:
        try:
            data = client.recv(self._buffer_size)
            if data:
                # Forward a strict prefix of what arrived: the upstream sees a truncated request.
                upstream.sendall(data[: int(share * len(data))])
                self._count("drop_request")
        except OSError:
            pass
        finally:
            self._release(client, upstream)

    def _forward(
        self,
        client: socket.socket,
        upstream: socket.socket,
        pump_requests: Callable[[], None],
        responses: Callable[[], None],
    ) -> None:
        """Requests flow through `pump_requests` on a thread of their own, responses through
        `responses` on this one."""
        requests = self._spawn(pump_requests, name="faulty-proxy-request")
        try:
            responses()
            if requests is not None:
                # The upstream is done; give the client a moment to read and close by itself
                # (closing with its data unread would reset the connection), then cut.
                requests.join(self._drain_timeout_s)
        finally:
            _shutdown(client)
            _shutdown(upstream)
            if requests is not None:
                requests.join(self._drain_timeout_s)
            self._release(client, upstream)

    def _cut_response(self, src: socket.socket, dst: socket.socket, in_headers: bool, share: float) -> None:
        """Forwards the first response up to a point inside its headers or body, then cuts."""
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < MAX_HEADER_BYTES:
                data = src.recv(self._buffer_size)
                if not data:  # the upstream closed before a whole header block: pass that on
                    dst.sendall(head)
                    _shutdown(dst)
                    return
                head += data
        except OSError:
            _shutdown(src)
            _shutdown(dst)
            return
        end = head.find(b"\r\n\r\n")
        end = len(head) if end < 0 else end + 4
        if in_headers:
            cut: int | None = 1 + int(share * (end - 2))  # 1 .. end - 1: the header block is incomplete
        else:
            length = _content_length(head[:end])
            cut = None if length is None or length < 2 else end + 1 + int(share * (length - 2))
        self._pump(src, dst, cut, head)

    def _pump(
        self, src: socket.socket, dst: socket.socket, cut: int | None = None, pending: bytes = b""
    ) -> None:
        """Copies `pending`, then src -> dst until EOF; with `cut`, closes both after that many bytes."""
        sent = 0
        data = pending
        try:
            while True:
                if not data:
                    data = src.recv(self._buffer_size)
                    if not data:
                        with contextlib.suppress(OSError):
                            dst.shutdown(socket.SHUT_WR)  # pass the half-close on
                        return
                if cut is not None and sent + len(data) > cut:
                    dst.sendall(data[: cut - sent])
                    self._count("drop_response")
                    _shutdown(src)
                    _shutdown(dst)
                    return
                dst.sendall(data)
                sent += len(data)
                data = b""
        except OSError:
            _shutdown(src)
            _shutdown(dst)

    # Requests, one at a time ---------------------------------------------------------------

    def _roll_flip(self) -> float | None:
        """Where to flip this request's body (a share of its length), or None: no flip."""
        with self._lock:
            owed, self._flip_owed = self._flip_owed, False
            if owed or self._rng.random() < self._rates.flip_byte:
                return self._rng.random()
        return None

    def _pump_requests(
        self, client: socket.socket, upstream: socket.socket, flip_share: float | None
    ) -> None:
        """Copies requests client -> upstream one by one, framed by their headers: flips a byte of
        the first body when `flip_share` is set, and with `verify_checksums` refuses a body that
        does not match its digest headers. Anything it cannot frame is copied on as it is."""
        incoming = _Incoming(client, self._buffer_size)
        try:
            while True:
                head = incoming.until(b"\r\n\r\n")
                headers = _headers(head)
                encoding = headers.get(b"transfer-encoding")
                if encoding is not None:
                    upstream.sendall(head)
                    if encoding.lower().rsplit(b",", 1)[-1].strip() != b"chunked":
                        raise _Unframed
                    flip_share = self._stream_chunked(incoming, upstream, flip_share)
                    continue
                declared = _content_length(head)
                if b"content-length" in headers and (declared is None or declared < 0):
                    upstream.sendall(head)
                    raise _Unframed  # a Content-Length that is not a length
                length = declared or 0
                flip_at = None
                if flip_share is None and length > 0:
                    flip_share = self._roll_flip()
                if flip_share is not None and length > 0:
                    flip_at, flip_share = min(int(flip_share * length), length - 1), None
                if not (self._verify_checksums and declared is not None and _has_digest(headers)):
                    upstream.sendall(head)
                    self._stream_body(incoming, upstream, length, flip_at)
                    continue
                body = self._read_body(incoming, upstream, head, length, flip_at)
                refusal = _digest_refusal(headers, body)
                if refusal is not None:
                    self._refuse(client, upstream, refusal)
                    return
                upstream.sendall(head)
                upstream.sendall(body)
        except _ClientClosed:
            # Pass on what the client sent last and its half-close, as the plain pump does.
            with contextlib.suppress(OSError):
                upstream.sendall(incoming.take_buffered())
                upstream.shutdown(socket.SHUT_WR)
        except _Unframed:
            self._pump(client, upstream, pending=incoming.take_buffered())
        except OSError:
            _shutdown(client)
            _shutdown(upstream)

    def _flipped(self, piece: bytes, at: int | None) -> bytes:
        """`piece` with its byte at `at` flipped, if `at` falls inside it (counted then)."""
        if at is None or not 0 <= at < len(piece):
            return piece
        flipped = bytearray(piece)
        flipped[at] ^= 0xFF
        with self._lock:
            self._counts["flip_byte"] += 1
            self._flip_owed = False  # a flip-fated connection paid it
        return bytes(flipped)

    def _stream_body(
        self, incoming: _Incoming, upstream: socket.socket, length: int, flip_at: int | None
    ) -> None:
        sent = 0
        while sent < length:
            piece = incoming.read(length - sent)
            upstream.sendall(self._flipped(piece, None if flip_at is None else flip_at - sent))
            sent += len(piece)

    def _stream_chunked(
        self, incoming: _Incoming, upstream: socket.socket, flip_share: float | None
    ) -> float | None:
        """Copies a chunked body (flipping a byte of its first non-empty chunk when `flip_share`
        is set); returns `flip_share` if no byte was due to be flipped in it."""
        while True:
            line = incoming.until(b"\r\n")
            upstream.sendall(line)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Unframed from None
            if size < 0:
                raise _Unframed
            if size == 0:
                while (trailer := incoming.until(b"\r\n")) != b"\r\n":
                    upstream.sendall(trailer)
                upstream.sendall(trailer)
                return flip_share
            flip_at = None
            if flip_share is not None:
                flip_at, flip_share = min(int(flip_share * size), size - 1), None
            self._stream_body(incoming, upstream, size + 2, flip_at)  # the chunk and its CRLF

    def _read_body(
        self, incoming: _Incoming, upstream: socket.socket, head: bytes, length: int, flip_at: int | None
    ) -> bytes:
        """The whole body, to verify before anything of the request is forwarded; if the client
        closes before its end, what arrived is forwarded as the plain pump would have."""
        pieces: list[bytes] = []
        received = 0
        try:
            while received < length:
                piece = incoming.read(length - received)
                pieces.append(piece)
                received += len(piece)
        except _ClientClosed:
            upstream.sendall(head + self._flipped(b"".join(pieces), flip_at))
            raise
        return self._flipped(b"".join(pieces), flip_at)

    def _refuse(self, client: socket.socket, upstream: socket.socket, response: bytes) -> None:
        """Answers S3's 400 for a body that does not match its digests; the upstream never saw the
        request. The client may read the answer before the connection goes."""
        self._count("refused_checksum")
        try:
            client.sendall(response)
            client.shutdown(socket.SHUT_WR)
            self._drain(client)
        except OSError:
            pass
        finally:
            _shutdown(upstream)  # ends the response pump, and with it the connection


class _ClientClosed(Exception):
    """The client closed its side of the connection."""


class _Unframed(Exception):
    """The client sent something the proxy cannot frame as HTTP requests: copy the rest as it is."""


class _Incoming:
    """Buffered reads from the client, so that bytes past one request start the next one."""

    def __init__(self, sock: socket.socket, buffer_size: int) -> None:
        self._sock = sock
        self._buffer_size = buffer_size
        self._buffer = b""

    def _recv(self, limit: int) -> bytes:
        data = self._sock.recv(min(self._buffer_size, limit))
        if not data:
            raise _ClientClosed
        return data

    def until(self, marker: bytes) -> bytes:
        """Everything up to and including `marker`, which must come within MAX_HEADER_BYTES."""
        start = 0
        while (end := self._buffer.find(marker, start)) < 0:
            if len(self._buffer) >= MAX_HEADER_BYTES:
                raise _Unframed
            start = max(0, len(self._buffer) - len(marker) + 1)
            self._buffer += self._recv(self._buffer_size)
        end += len(marker)
        found, self._buffer = self._buffer[:end], self._buffer[end:]
        return found

    def read(self, limit: int) -> bytes:
        """1 to `limit` bytes; never reads more than `limit` from the socket."""
        if not self._buffer:
            return self._recv(limit)
        found, self._buffer = self._buffer[:limit], self._buffer[limit:]
        return found

    def take_buffered(self) -> bytes:
        found, self._buffer = self._buffer, b""
        return found


def _headers(head: bytes) -> dict[bytes, bytes]:
    """A header block's fields, names lower-cased (the last of repeated ones wins)."""
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return fields


def _checksum_sha256(headers: dict[bytes, bytes]) -> bytes | None:
    """x-amz-checksum-sha256, unless the body is aws-chunked (its framing is not decoded here)."""
    if b"aws-chunked" in headers.get(b"content-encoding", b"").lower():
        return None
    return headers.get(b"x-amz-checksum-sha256")


def _content_sha256(headers: dict[bytes, bytes]) -> bytes | None:
    """x-amz-content-sha256 when it is a digest (not UNSIGNED-PAYLOAD or a STREAMING-... mode)."""
    value = headers.get(b"x-amz-content-sha256", b"")
    return value.lower() if _HEX_SHA256.fullmatch(value) else None


def _has_digest(headers: dict[bytes, bytes]) -> bool:
    return _checksum_sha256(headers) is not None or _content_sha256(headers) is not None


def _digest_refusal(headers: dict[bytes, bytes], body: bytes) -> bytes | None:
    """S3's answer to `body` if it does not match the request's digest headers, else None."""
    digest = hashlib.sha256(body).digest()
    checksum = _checksum_sha256(headers)
    if checksum is not None:
        try:
            expected = base64.b64decode(checksum, validate=True)
        except (binascii.Error, ValueError):
            expected = b""  # not base64: no digest matches it
        if expected != digest:
            return BAD_DIGEST_RESPONSE
    content_sha256 = _content_sha256(headers)
    if content_sha256 is not None and content_sha256 != digest.hex().encode():
        return CONTENT_SHA256_MISMATCH_RESPONSE
    return None


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"content-length":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def faulty_proxy(
    upstream: str, rates: FaultRates | None = None, seed: int | None = None, *, verify_checksums: bool = False
) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(upstream, rates, seed=seed, verify_checksums=verify_checksums).start()
    try:
        yield proxy
    finally:
        proxy.stop()
