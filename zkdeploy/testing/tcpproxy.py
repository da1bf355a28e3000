"""A loopback TCP proxy that a test can break on purpose: stall, drop one direction, reset.

Each :class:`TcpProxy` listens on its own 127.0.0.1 port and forwards every connection to one
upstream address.  All proxies share one asyncio event loop running in a daemon thread
(:class:`ProxyLoop`), so a fleet of them costs one thread, not two per connection.

What a test can do to a proxy (every control method is thread-safe and returns once the change
is in force for every connection, present and future):

* ``stall()`` — a link cut as the network does it: nothing is read or delivered in either
  direction, but nothing is lost either; bytes wait (in the kernel's buffers) and flow again on
  ``restore()``, as TCP retransmission would deliver them.  A peer that gave up meanwhile closes
  its socket, and the other side sees the close after ``restore()``.
* ``drop(direction)`` — bytes read in ``direction`` (``UP``: client -> server, ``DOWN``:
  server -> client) are read and thrown away.  A stream that lost bytes is corrupt for a
  length-prefixed protocol, so a test follows it with ``reset()``.
* ``reset()`` — every open connection is closed at once, with a TCP RST to the client
  (``SO_LINGER`` 0); new connections are accepted as usual.
* ``restore()`` — both directions pass again.

Guarantees: no connection is ever made to anything but the upstream given at construction;
``close()`` stops the listener and every connection; a proxy whose upstream refuses closes the
client's connection at once (so a client fails over to its next server).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: directions of a connection: client -> upstream, upstream -> client
UP, DOWN = "up", "down"
#: what a direction does with the bytes it reads
PASS, STALL, DROP = "pass", "stall", "drop"

_CHUNK = 65536


class ProxyLoop:
    """One asyncio loop in a daemon thread for every proxy of a test; ``close()`` ends it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tcpproxy", daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the loop and wait (bounded) for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


class _Link:
    """One proxied connection: two pumps, one per direction."""

    def __init__(self, proxy: TcpProxy, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Close both sides at once; the client gets a RST."""
        for writer, rst in ((self.client, True), (self.upstream, False)):
            sock = writer.get_extra_info("socket")
            if rst and sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """A proxy from ``127.0.0.1:<port>`` to ``upstream`` (host, port) on a shared :class:`ProxyLoop`."""

    def __init__(self, loop: ProxyLoop, upstream: tuple[str, int], port: int = 0,
                 connect_timeout: float = 2.0) -> None:
        self._loop = loop
        self.upstream = upstream
        self.connect_timeout = connect_timeout
        self.modes = {UP: PASS, DOWN: PASS}
        self._gates = {UP: asyncio.Event(), DOWN: asyncio.Event()}
        self._links: set[_Link] = set()
        self._server: asyncio.base_events.Server | None = None
        self.port = port
        self.connections = 0  # accepted so far (for tests and logs)
        loop.call(self._start())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _start(self) -> None:
        for gate in self._gates.values():
            gate.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream),
                                                          self.connect_timeout)
        except (TimeoutError, OSError):
            writer.transport.abort()  # upstream down: the client fails over at once
            return
        link = _Link(self, writer, up_writer)
        self._links.add(link)
        link.tasks = [asyncio.ensure_future(self._pump(link, reader, up_writer, UP)),
                      asyncio.ensure_future(self._pump(link, up_reader, writer, DOWN))]
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._links.discard(link)
            link.abort()

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: str) -> None:
        gate = self._gates[direction]
        try:
            while True:
                await gate.wait()  # stalled: read nothing, so the sender's buffers fill as on a cut link
                data = await reader.read(_CHUNK)
                if not data:
                    break
                await gate.wait()  # a chunk read just before a stall is held, not lost
                if self.modes[direction] == DROP:
                    continue
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            link.abort()  # one side closed or failed: the connection is over

    # -- control (thread-safe) ------------------------------------------------------------------
    async def _set(self, direction: str, mode: str) -> None:
        self.modes[direction] = mode
        if mode == STALL:
            self._gates[direction].clear()
        else:
            self._gates[direction].set()

    def set_mode(self, direction: str, mode: str) -> None:
        if direction not in (UP, DOWN) or mode not in (PASS, STALL, DROP):
            raise ValueError(f"bad direction/mode {direction!r}/{mode!r}")
        self._loop.call(self._set(direction, mode))

    def stall(self) -> None:
        """Cut the link both ways without losing a byte (see the module's docstring)."""
        self.set_mode(UP, STALL)
        self.set_mode(DOWN, STALL)

    def drop(self, direction: str) -> None:
        """Read and discard the bytes of ``direction`` (``UP`` or ``DOWN``)."""
        self.set_mode(direction, DROP)

    def restore(self) -> None:
        """Both directions pass again."""
        self.set_mode(UP, PASS)
        self.set_mode(DOWN, PASS)

    async def _reset(self) -> int:
        links = list(self._links)
        for link in links:
            link.abort()
        return len(links)

    def reset(self) -> int:
        """Close every open connection (RST to the client); the number closed."""
        return self._loop.call(self._reset())

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset()

    def close(self) -> None:
        if not self._loop.loop.is_closed():
            self._loop.call(self._close())


class ProxyGroup:
    """The proxies of one client (one per upstream server), broken and restored together."""

    def __init__(self, loop: ProxyLoop, upstreams: list[tuple[str, int]]) -> None:
        self.proxies = [TcpProxy(loop, up) for up in upstreams]

    @property
    def hosts(self) -> str:
        """The client's connect string: every proxy of the group."""
        return ",".join(p.address for p in self.proxies)

    def stall(self) -> None:
        for p in self.proxies:
            p.stall()

    def drop(self, direction: str) -> None:
        for p in self.proxies:
            p.drop(direction)

    def restore(self) -> None:
        for p in self.proxies:
            p.restore()

    def reset(self) -> int:
        return sum(p.reset() for p in self.proxies)

    def close(self) -> None:
        for p in self.proxies:
            p.close()


def parse_hosts(hosts: str) -> list[tuple[str, int]]:
    """``"127.0.0.1:2181,127.0.0.1:2182"`` -> ``[("127.0.0.1", 2181), ("127.0.0.1", 2182)]``."""
    out = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":")
        out.append((host or "127.0.0.1", int(port)))
    return out
