"""A fault-injecting TCP proxy for tests: an unreliable network in front of a real server.

Every accepted connection meets one fate, drawn with the configured probabilities:

- `slow_down`: answered `HTTP/1.1 503 Slow Down` without reaching the upstream;
- `drop_request`: closed after reading part of the request (a prefix of what was read is
  forwarded, so the upstream sees a truncated request too);
- `drop_response`: forwarded, but the first response is cut off: with probability
  `header_cut_share` inside its status line and headers, else inside its body (a response
  without a body of at least 2 bytes then goes through whole, and no fault is counted);
- otherwise forwarded both ways untouched.

Faults are counted when they actually happen. `set_faults(0, 0, 0)`, or `pass_through()`,
switches the proxy to a plain forwarder at runtime; connections already accepted keep their fate.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

SLOW_DOWN_RESPONSE = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
)
FAULTS = ("slow_down", "drop_request", "drop_response")
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class FaultRates:
    slow_down: float = 0.0
    drop_request: float = 0.0
    drop_response: float = 0.0

    def __post_init__(self) -> None:
        rates = (self.slow_down, self.drop_request, self.drop_response)
        if any(r < 0 for r in rates) or sum(rates) > 1.0:
            raise ValueError(f"fault probabilities must be >= 0 and sum to at most 1: {rates}")


class FaultyProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to `upstream` ("host:port")."""

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
    ) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self._rates = rates or FaultRates()
        self._rng = random.Random(seed)
        if not 0.0 <= header_cut_share <= 1.0:
            raise ValueError(f"header_cut_share must be in [0, 1]: {header_cut_share}")
        self._header_cut_share = header_cut_share
        self._buffer_size = buffer_size
        self._drain_timeout_s = drain_timeout_s
        self._drain_limit = drain_limit
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._counts = dict.fromkeys((*FAULTS, "forwarded", "connections"), 0)
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
        self, slow_down: float = 0.0, drop_request: float = 0.0, drop_response: float = 0.0
    ) -> None:
        rates = FaultRates(slow_down, drop_request, drop_response)
        with self._lock:
            self._rates = rates

    def pass_through(self) -> None:
        self.set_faults(0.0, 0.0, 0.0)

    def counts(self) -> dict[str, int]:
        """Faults injected so far per kind, plus `forwarded` and `connections` accepted."""
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
        elif fate == "drop_response":
            self._forward(client, upstream, lambda: self._cut_response(upstream, client, in_headers, share))
        else:
            self._count("forwarded")
            self._forward(client, upstream, lambda: self._pump(upstream, client))

    def _slow_down(self, client: socket.socket) -> None:
        try:
            self._count("slow_down")
            client.sendall(SLOW_DOWN_RESPONSE)
            client.shutdown(socket.SHUT_WR)
            # Read what the client still sends (a request body) so that closing does not
            # reset the connection before the client has read the 503.
            client.settimeout(self._drain_timeout_s)
            drained = 0
            while drained < self._drain_limit and not self._stopping.is_set():
                data = client.recv(self._buffer_size)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass
        finally:
            self._release(client)

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

    def _forward(self, client: socket.socket, upstream: socket.socket, responses: Callable[[], None]) -> None:
        """Requests flow on a thread of their own, responses through `responses` on this one."""
        requests = self._spawn(self._pump, client, upstream, name="faulty-proxy-request")
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
    upstream: str, rates: FaultRates | None = None, seed: int | None = None
) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(upstream, rates, seed=seed).start()
    try:
        yield proxy
    finally:
        proxy.stop()
