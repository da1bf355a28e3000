"""The chaos suite's loopback TCP proxy: what a client sees when the proxy stalls, drops and resets."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from zkdeploy.testing.tcpproxy import DOWN, ProxyGroup, ProxyLoop, TcpProxy, parse_hosts


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            data = self.request.recv(4096)
            if not data:
                return
            self.server.received.append(data)  # type: ignore[attr-defined]
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[socketserver.ThreadingTCPServer]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    server.received = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def loop() -> Iterator[ProxyLoop]:
    lp = ProxyLoop()
    yield lp
    lp.close()


def _connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    sock.settimeout(1.0)
    return sock


def test_bytes_pass_both_ways(echo, loop):
    proxy = TcpProxy(loop, echo.server_address)
    with _connect(proxy) as sock:
        sock.sendall(b"hello")
        assert sock.recv(100) == b"hello"
    proxy.close()


def test_a_stalled_link_delivers_nothing_until_restored_and_loses_nothing(echo, loop):
    proxy = TcpProxy(loop, echo.server_address)
    with _connect(proxy) as sock:
        proxy.stall()
        sock.sendall(b"ping")
        with pytest.raises(TimeoutError):
            sock.recv(100)
        assert echo.received == []
        proxy.restore()
        assert sock.recv(100) == b"ping"
    proxy.close()


def test_dropped_replies_after_the_request_was_applied_then_a_reset(echo, loop):
    proxy = TcpProxy(loop, echo.server_address)
    with _connect(proxy) as sock:
        proxy.drop(DOWN)
        sock.sendall(b"write")
        deadline = time.monotonic() + 2
        while not echo.received and time.monotonic() < deadline:
            time.sleep(0.01)
        assert echo.received == [b"write"]  # the server got (applied) it
        with pytest.raises(TimeoutError):
            sock.recv(100)                  # the reply is lost
        assert proxy.reset() == 1
        with pytest.raises((ConnectionResetError, ConnectionAbortedError)):
            data = sock.recv(100)
            if data == b"":
                raise ConnectionResetError("closed")
    proxy.restore()
    with _connect(proxy) as again:          # the client reconnects through the same proxy
        again.sendall(b"x")
        assert again.recv(100) == b"x"
    proxy.close()


def test_an_upstream_that_is_down_closes_the_client_at_once(loop):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()
    proxy = TcpProxy(loop, dead)
    with _connect(proxy) as sock:
        assert sock.recv(100) == b""
    proxy.close()


def test_a_group_breaks_and_restores_every_proxy(echo, loop):
    group = ProxyGroup(loop, [echo.server_address, echo.server_address])
    assert parse_hosts(group.hosts) == [("127.0.0.1", p.port) for p in group.proxies]
    socks = [_connect(p) for p in group.proxies]
    group.stall()
    for s in socks:
        s.sendall(b"a")
    time.sleep(0.2)
    assert echo.received == []
    group.restore()
    assert [s.recv(10) for s in socks] == [b"a", b"a"]
    assert group.reset() == 2
    for s in socks:
        s.close()
    group.close()
