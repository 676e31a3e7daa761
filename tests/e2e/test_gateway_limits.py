"""A real ``dispatcher gateway`` process under hostile bodies: a 100 MB streamed body is a 413
that costs the gateway no memory to speak of, and the answer comes before authentication."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from e2e.conftest import Server

MB = 1024 * 1024


def _post_streamed(port: int, total: int, chunk: int = MB) -> tuple[int, bytes]:
    """POST ``total`` bytes, chunked, with no API key; stop sending once the server answers.
    Returns (bytes sent, what the server answered)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"POST /v1/notifications HTTP/1.1\r\nHost: gateway\r\n"
                 b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    frame = b"%x\r\n" % chunk + b" " * chunk + b"\r\n"
    sent = 0
    try:
        while sent < total and not select.select([sock], [], [], 0)[0]:
            sock.sendall(frame)
            sent += chunk
        if sent >= total:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed after answering: what we want
    return sent, _read_all(sock)


def _read_all(sock: socket.socket) -> bytes:
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    return answer


class _PeakRss:
    """The highest RSS of a process, sampled every 10 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_100_mb_streamed_body_is_a_413_without_growing_the_gateway(
        dispatcher_env: dict[str, str], start_server: Callable[..., Server]) -> None:
    gateway = start_server(dispatcher_env, "gateway")
    _post_streamed(gateway.port, 4 * MB)  # warm up: the first 413 allocates what later ones reuse
    process = psutil.Process(gateway.pid)
    before = process.memory_info().rss
    read_before = process.io_counters().read_chars
    started = time.monotonic()
    with _PeakRss(gateway.pid) as rss:
        sent, answer = _post_streamed(gateway.port, 100 * MB)
    # What the gateway's own reads took in (every read and recv of the process): the bytes
    # the client managed to send also count what the two ends' socket buffers absorbed, which
    # on loopback can be several MB on a busy machine.
    read = (process.io_counters().read_chars - read_before) / MB
    grew = (rss.peak - before) / MB
    print(f"\n100 MB streamed body: {sent / MB:.0f} MB sent, {read:.1f} MB read by the gateway "
          f"before the answer, RSS {before / MB:.1f} MB -> peak {rss.peak / MB:.1f} MB "
          f"(+{grew:.1f} MB), {time.monotonic() - started:.2f} s")
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"code":"payload_too_large"' in answer.replace(b" ", b"")
    assert read < 5, f"the gateway read {read:.1f} MB"  # it stopped at the 2 MiB limit
    assert sent < 100 * MB  # and answered while the client was still sending
    assert grew < 50, f"the gateway's RSS grew by {grew:.1f} MB"
    with gateway.client() as client:
        assert client.get("/healthz").status_code == 200
